/* vm_mdev.c - guest side of t_vm_mdev.sh: what VFIO reports about DMA that
 * a device really did, measured with ldtest, libdirty's TEST DMA device
 * (tests/vm/mdev/ldtest.c; its module must be loaded).
 *
 * a. type1 pinned scope: with only an emulated-IOMMU (mdev) group in the
 *    container, VFIO_IOMMU_DIRTY_PAGES reports the pages the device pinned
 *    (or wrote with vfio_dma_rw), page by page, not every mapped page; the
 *    same for VFIO_IOMMU_UNMAP_DMA + VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP.
 * b. device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/REPORT/STOP):
 *    REPORT gives exactly the pages written in the logged ranges, clears
 *    them, never shows writes outside the ranges; plus what the 6.1 core
 *    and this device do with a second START, a REPORT after STOP, and
 *    malformed requests.
 * c. bad input to the device (bad IOVA, too many pages, odd register
 *    accesses) fails through the status register or the access, and the
 *    guest survives.
 *
 * Every check prints expected vs actual. Ends with "vm_mdev: RESULT ..."
 * and exits 0, or 1 if any check failed.
 *   --part a|b|c      run these parts (default: abc)
 *   --no-report       the kernel's VFIO core cannot REPORT (6.12 without
 *                     IOMMUFD_DRIVER): part b expects EOPNOTSUPP instead
 */
#include "mdev-dev.h"
#include "vm-check.h"
#include "vfio-edu.h"
#include "../mdev/ldtest-regs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#define PAGE 4096u
#define FILL 0xa5a5a5a5a5a5a5a5ull	/* what pages nobody wrote hold */

/* The mappings: far apart, so a range or unmap never bisects another. */
#define IOVA_A 0x10000000ull
#define PAGES_A 64u
#define IOVA_B 0x20000000ull
#define PAGES_B 16u
#define IOVA_E 0x30000000ull
#define PAGES_E 16u
#define IOVA_C 0x40000000ull
#define PAGES_C 16u
#define IOVA_UNMAPPED 0x70000000ull

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t pattern;

static const char *errname(int err)
{
	static char buf[64];

	if (err == 0)
		return "0 (success)";
	snprintf(buf, sizeof(buf), "%s (%d)", strerror(err < 0 ? -err : err), err < 0 ? -err : err);
	return buf;
}

/* An expected errno (positive) vs what a call returned (0 or -errno). */
static bool check_err(int want, int got, const char *what)
{
	char w[64];

	snprintf(w, sizeof(w), "%s", errname(want));
	return vm_check(-got == want, "%s: expected %s, got %s", what, w, errname(got));
}

/* ---- page sets ---- */

static bool bit(const uint64_t *bm, unsigned i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

/* "0,3,5-7" for the set bits of bm[0..n). */
static const char *fmt_bits(const uint64_t *bm, unsigned n, char *buf, size_t len)
{
	size_t used = 0;
	unsigned i = 0;

	buf[0] = '\0';
	while (i < n && used < len) {
		unsigned j;

		if (!bit(bm, i)) {
			i++;
			continue;
		}
		for (j = i; j + 1 < n && bit(bm, j + 1); j++)
			;
		used += (size_t)snprintf(buf + used, len - used, "%s%u", used ? "," : "", i);
		if (j > i && used < len)
			used += (size_t)snprintf(buf + used, len - used, "-%u", j);
		i = j + 1;
	}
	if (!buf[0])
		snprintf(buf, len, "none");
	return buf;
}

static void set_bits(uint64_t *bm, unsigned n, const unsigned *pages, size_t count)
{
	memset(bm, 0, (n + 63) / 64 * 8);
	for (size_t i = 0; i < count; i++)
		bm[pages[i] / 64] |= 1ull << (pages[i] % 64);
}

/* Compare the reported bitmap of n pages with the expected pages, page by
 * page; prints both sets and every page that differs. */
static bool check_pages(const char *what, const uint64_t *got, unsigned n, const unsigned *pages,
			size_t count)
{
	uint64_t want[(PAGES_A + 63) / 64 * 4] = { 0 };
	char w[256], g[256];
	unsigned bad = 0;
	bool ok;

	if ((n + 63) / 64 > ARRAY_LEN(want)) {
		vm_check(false, "%s: bitmap of %u pages is larger than this test expects", what, n);
		return false;
	}
	set_bits(want, n, pages, count);
	for (unsigned i = 0; i < n; i++)
		bad += bit(want, i) != bit(got, i);
	ok = vm_check(bad == 0, "%s: expected pages {%s}, reported {%s}", what,
		   fmt_bits(want, n, w, sizeof(w)), fmt_bits(got, n, g, sizeof(g)));
	for (unsigned i = 0; i < n && bad; i++)
		if (bit(want, i) != bit(got, i))
			printf("vm_mdev:        page %u: expected %s, reported %s\n", i,
			       bit(want, i) ? "dirty" : "clean", bit(got, i) ? "dirty" : "clean");
	return ok;
}

/* ---- the device ---- */

static uint32_t reg32(const struct mdev_dev *m, uint32_t reg)
{
	uint32_t v = 0xdeadbeef;
	int rc = mdev_read32(m, reg, &v);

	if (rc)
		vm_check(false, "read of register %#x: %s", reg, errname(rc));
	return v;
}

static uint64_t reg64(const struct mdev_dev *m, uint32_t reg)
{
	uint64_t v = 0xdeadbeefdeadbeefull;
	int rc = mdev_read64(m, reg, &v);

	if (rc)
		vm_check(false, "read of register %#x: %s", reg, errname(rc));
	return v;
}

/* One device command; returns -STATUS (0 or -errno); *done = DONE. */
static int dev_cmd(const struct mdev_dev *m, uint32_t cmd, uint64_t iova, uint32_t npages,
		   uint32_t flags, uint32_t *done)
{
	int rc;

	if ((rc = mdev_write64(m, LDTEST_REG_IOVA, iova)) ||
	    (rc = mdev_write32(m, LDTEST_REG_NPAGES, npages)) ||
	    (rc = mdev_write32(m, LDTEST_REG_FLAGS, flags)) ||
	    (rc = mdev_write64(m, LDTEST_REG_PATTERN, pattern)) ||
	    (rc = mdev_write32(m, LDTEST_REG_CMD, cmd))) {
		vm_check(false, "register write for command %u: %s", cmd, errname(rc));
		return rc;
	}
	if (done)
		*done = reg32(m, LDTEST_REG_DONE);
	return -(int)reg32(m, LDTEST_REG_STATUS);
}

/* A WRITE that must succeed and write (or pin) npages pages. */
static bool dev_write(const struct mdev_dev *m, uint64_t iova, uint32_t npages, uint32_t flags,
		      const char *what)
{
	uint32_t done = 0, want = (flags & LDTEST_F_NO_DATA) ? 0 : npages;
	int rc = dev_cmd(m, LDTEST_CMD_WRITE, iova, npages, flags, &done);

	return vm_check(rc == 0 && done == want,
		     "device WRITE %s (iova %#" PRIx64 ", %u page%s, flags %#x): expected status 0 "
		     "and %u pages written, got status %s, %u written",
		     what, iova, npages, npages == 1 ? "" : "s", flags, want, errname(rc), done);
}

/* Pages of buf (IOVA base) listed in written hold the stamp, all others FILL. */
static bool check_data(const char *what, const uint8_t *buf, uint64_t base, unsigned npages,
		       const unsigned *written, size_t count)
{
	unsigned bad = 0;

	for (unsigned p = 0; p < npages; p++) {
		bool w = false;
		uint64_t want, first = 0;
		unsigned wrong = 0;

		for (size_t i = 0; i < count; i++)
			w |= written[i] == p;
		want = w ? LDTEST_STAMP(pattern, base + (uint64_t)p * PAGE) : FILL;
		for (unsigned k = 0; k < PAGE / 8; k++) {
			uint64_t v;

			memcpy(&v, buf + (size_t)p * PAGE + k * 8, 8);
			if (v != want && !wrong++)
				first = v;
		}
		if (wrong) {
			if (bad++ < 8)
				printf("vm_mdev:        %s page %u: expected every word %#" PRIx64
				       " (%s), %u of %u words differ (first %#" PRIx64 ")\n",
				       what, p, want, w ? "device stamp" : "untouched", wrong, PAGE / 8,
				       first);
		}
	}
	return vm_check(bad == 0, "%s data: expected the stamp in exactly the %zu written page(s) of %u, "
		     "%u page(s) wrong", what, count, npages, bad);
}

static uint8_t *map_buffer(int container, uint64_t iova, unsigned npages)
{
	size_t size = (size_t)npages * PAGE;
	uint8_t *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED) {
		vm_check(false, "mmap of %zu bytes: %s", size, strerror(errno));
		return NULL;
	}
	memset(buf, 0xa5, size);
	if (vfio_type1_map_dma(container, buf, iova, size)) {
		vm_check(false, "VFIO_IOMMU_MAP_DMA of %u pages at %#" PRIx64, npages, iova);
		munmap(buf, size);
		return NULL;
	}
	return buf;
}

static int type1_get(const struct mdev_dev *m, uint64_t iova, unsigned npages, uint64_t *bm)
{
	return vfio_type1_dirty_get(m->container, iova, (uint64_t)npages * PAGE, PAGE, bm,
				    (npages + 63) / 64 * 8);
}

/* ---- a. type1 pinned scope ---- */

static void part_a(const struct mdev_dev *m, uint8_t *a)
{
	uint64_t bm[(PAGES_A + 63) / 64], unmapped = 0, pgsize = 0;
	uint32_t unmaps0;
	uint8_t *b;
	int rc;

	printf("vm_mdev: --- a. type1 dirty tracking, pinned-page scope ---\n");
	rc = vfio_type1_dirty_pgsize(m->container, &pgsize);
	vm_check(rc == 0 && pgsize == PAGE, "type1 migration capability page size: expected %u, got %" PRIu64
	      " (%s)", PAGE, pgsize, errname(rc));

	/* A pin held from before START: type1 seeds its bitmaps with pins. */
	dev_write(m, IOVA_A + 3 * PAGE, 1, LDTEST_F_KEEP_PINNED, "A[3] before START, keep pinned");
	vm_check(reg32(m, LDTEST_REG_PINNED) == 1, "PINNED register: expected 1, got %u",
	      reg32(m, LDTEST_REG_PINNED));
	rc = vfio_type1_dirty_start(m->container);
	if (!vm_check(rc == 0, "VFIO_IOMMU_DIRTY_PAGES START: %s", errname(rc)))
		return;

	rc = type1_get(m, IOVA_A, PAGES_A, bm);
	if (!vm_check(rc == 0, "GET_BITMAP #1 (nothing since START): %s", errname(rc)))
		return;
	check_pages("type1 GET #1, right after START", bm, PAGES_A, (unsigned[]){ 3 }, 1);

	dev_write(m, IOVA_A + 0 * PAGE, 1, 0, "A[0] pin+dma_rw+unpin");
	dev_write(m, IOVA_A + 5 * PAGE, 3, 0, "A[5..7] pin+dma_rw+unpin");
	dev_write(m, IOVA_A + 20 * PAGE, 1, LDTEST_F_NO_PIN, "A[20] vfio_dma_rw only");
	dev_write(m, IOVA_A + 30 * PAGE, 2, LDTEST_F_KEEP_PINNED, "A[30..31] keep pinned");
	dev_write(m, IOVA_A + 40 * PAGE, 1, LDTEST_F_NO_DATA, "A[40] pin+unpin, no data");
	dev_write(m, IOVA_A + 50 * PAGE, 1, LDTEST_F_KMAP, "A[50] pin+kmap write+unpin");
	rc = type1_get(m, IOVA_A, PAGES_A, bm);
	if (vm_check(rc == 0, "GET_BITMAP #2: %s", errname(rc))) {
		static const unsigned want[] = { 0, 3, 5, 6, 7, 20, 30, 31, 40, 50 };

		if (check_pages("type1 GET #2, after the device's writes", bm, PAGES_A, want,
				ARRAY_LEN(want)))
			add_result("type1_pinned_scope=%u/%u ", (unsigned)ARRAY_LEN(want), PAGES_A);
	}
	rc = type1_get(m, IOVA_A, PAGES_A, bm);
	if (vm_check(rc == 0, "GET_BITMAP #3: %s", errname(rc)))
		check_pages("type1 GET #3, no device activity (pages still pinned)", bm, PAGES_A,
			    (unsigned[]){ 3, 30, 31 }, 3);

	{
		uint32_t done = 0;

		rc = dev_cmd(m, LDTEST_CMD_UNPIN, IOVA_A + 30 * PAGE, 2, 0, &done);
		vm_check(rc == 0 && done == 2, "device UNPIN A[30..31]: expected status 0, 2 unpinned; got %s, %u",
		      errname(rc), done);
	}
	rc = type1_get(m, IOVA_A, PAGES_A, bm);
	if (vm_check(rc == 0, "GET_BITMAP #4: %s", errname(rc)))
		check_pages("type1 GET #4, after UNPIN of A[30..31] (pinned during the interval)", bm,
			    PAGES_A, (unsigned[]){ 3, 30, 31 }, 3);
	rc = type1_get(m, IOVA_A, PAGES_A, bm);
	if (vm_check(rc == 0, "GET_BITMAP #5: %s", errname(rc)))
		check_pages("type1 GET #5, only A[3] still pinned", bm, PAGES_A, (unsigned[]){ 3 }, 1);

	{
		static const unsigned written[] = { 0, 3, 5, 6, 7, 20, 30, 31, 50 };

		check_data("A", a, IOVA_A, PAGES_A, written, ARRAY_LEN(written));
	}

	/* A pin that fails half way (the span leaves mapping A) is unwound,
	 * but the pages it did pin were marked dirty on the way. */
	{
		uint32_t done = 0;

		rc = dev_cmd(m, LDTEST_CMD_WRITE, IOVA_A + 60 * PAGE, 8, 0, &done);
		vm_check(-rc == EINVAL && done == 0 && reg32(m, LDTEST_REG_PINNED) == 1,
		      "device WRITE A[60..67] (4 pages past mapping A): expected status %s, 0 written, "
		      "1 pin held; got %s, %u, %u", "EINVAL", errname(rc), done,
		      reg32(m, LDTEST_REG_PINNED));
		rc = type1_get(m, IOVA_A, PAGES_A, bm);
		if (vm_check(rc == 0, "GET_BITMAP #6: %s", errname(rc)))
			check_pages("type1 GET #6, after the failed pin of A[60..67]", bm, PAGES_A,
				    (unsigned[]){ 3, 60, 61, 62, 63 }, 5);
	}

	/* Unmap with the dirty bitmap: mapping B, one page written, one kept
	 * pinned across the unmap (the device's dma_unmap must drop it). */
	b = map_buffer(m->container, IOVA_B, PAGES_B);
	if (!b)
		return;
	unmaps0 = reg32(m, LDTEST_REG_UNMAP_CALLS);
	dev_write(m, IOVA_B + 2 * PAGE, 1, 0, "B[2]");
	dev_write(m, IOVA_B + 9 * PAGE, 1, LDTEST_F_KEEP_PINNED, "B[9] keep pinned");
	rc = vfio_type1_unmap_dma_dirty(m->container, IOVA_B, (uint64_t)PAGES_B * PAGE, PAGE, bm,
					sizeof(bm), &unmapped);
	if (vm_check(rc == 0 && unmapped == (uint64_t)PAGES_B * PAGE,
		  "UNMAP_DMA of B with GET_DIRTY_BITMAP: expected 0 and %u bytes, got %s and %" PRIu64,
		  PAGES_B * PAGE, errname(rc), unmapped)) {
		if (check_pages("type1 unmap bitmap of B", bm, PAGES_B, (unsigned[]){ 2, 9 }, 2))
			add_result("unmap_bitmap=2/%u ", PAGES_B);
	}
	vm_check(reg32(m, LDTEST_REG_UNMAP_CALLS) > unmaps0 && reg32(m, LDTEST_REG_PINNED) == 1,
	      "device dma_unmap callback: expected >= 1 call and the B[9] pin dropped (1 pin left); "
	      "got %u call(s), %u pin(s)", reg32(m, LDTEST_REG_UNMAP_CALLS) - unmaps0,
	      reg32(m, LDTEST_REG_PINNED));
	check_data("B", b, IOVA_B, PAGES_B, (unsigned[]){ 2, 9 }, 2);
	munmap(b, (size_t)PAGES_B * PAGE);

	rc = vfio_type1_dirty_stop(m->container);
	vm_check(rc == 0, "VFIO_IOMMU_DIRTY_PAGES STOP: %s", errname(rc));
}

/* ---- b. device DMA logging ---- */

static int report(const struct mdev_dev *m, uint64_t iova, unsigned npages, uint64_t pgsize,
		  uint64_t *bm, size_t bm_words)
{
	memset(bm, 0, bm_words * 8);
	return vfio_dma_logging_report(m->device, iova, (uint64_t)npages * PAGE, pgsize, bm);
}

static bool report_check(const struct mdev_dev *m, const char *what, uint64_t iova, unsigned npages,
			 const unsigned *pages, size_t count)
{
	uint64_t bm[(PAGES_A + 63) / 64];
	int rc = report(m, iova, npages, PAGE, bm, ARRAY_LEN(bm));

	if (!vm_check(rc == 0, "REPORT %s: %s", what, errname(rc)))
		return false;
	return check_pages(what, bm, npages, pages, count);
}

static void set_max_ranges(unsigned n)
{
	char v[16];
	int fd = open("/sys/module/ldtest/parameters/log_max_ranges", O_WRONLY | O_CLOEXEC);

	snprintf(v, sizeof(v), "%u", n);
	if (fd < 0 || write(fd, v, strlen(v)) != (ssize_t)strlen(v))
		vm_check(false, "cannot set /sys/module/ldtest/parameters/log_max_ranges to %u: %s", n,
		      strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void part_b(const struct mdev_dev *m)
{
	struct vfio_device_feature_dma_logging_range two[2] = {
		{ IOVA_A, (uint64_t)PAGES_A * PAGE },
		{ IOVA_E, (uint64_t)PAGES_E * PAGE },
	};
	struct vfio_device_feature_dma_logging_range *many;
	uint64_t bm[4096], pgsize;
	uint32_t maxr;
	uint8_t *e, *c;
	int rc;

	printf("vm_mdev: --- b. device DMA logging ---\n");
	e = map_buffer(m->container, IOVA_E, PAGES_E);
	c = map_buffer(m->container, IOVA_C, PAGES_C);
	if (!e || !c)
		return;

	check_err(0, vfio_feature_probe(m->device, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
					VFIO_DEVICE_FEATURE_SET), "PROBE DMA_LOGGING_START (SET)");
	check_err(0, vfio_feature_probe(m->device, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
					VFIO_DEVICE_FEATURE_GET), "PROBE DMA_LOGGING_REPORT (GET)");
	maxr = reg32(m, LDTEST_REG_LOG_MAX_RANGES);
	printf("vm_mdev: device registers: log page size %" PRIu64 ", max ranges %u\n",
	       reg64(m, LDTEST_REG_LOG_PGSIZE), maxr);

	/* Requests the 6.1 core refuses before the driver sees them. */
	rc = report(m, IOVA_A, PAGES_A, PAGE, bm, ARRAY_LEN(bm));
	check_err(EINVAL, rc, "REPORT before any START (device: logging off)");
	pgsize = 2u << 20;
	rc = vfio_dma_logging_start(m->device, two, 2, &pgsize);
	check_err(EINVAL, rc, "START with a 2 MiB page-size hint and 256 KiB ranges "
		  "(core: ranges must be aligned to the hint)");
	pgsize = PAGE;
	rc = vfio_dma_logging_start(m->device, two, 0, &pgsize);
	check_err(EINVAL, rc, "START with 0 ranges (core)");
	{
		struct vfio_device_feature_dma_logging_range ov[2] = {
			{ IOVA_A, 2 * PAGE }, { IOVA_A + PAGE, 2 * PAGE } };

		pgsize = PAGE;
		rc = vfio_dma_logging_start(m->device, ov, 2, &pgsize);
		check_err(EINVAL, rc, "START with overlapping ranges (core)");
	}
	many = calloc(257, sizeof(*many));
	if (!many) {
		vm_check(false, "out of memory");
		return;
	}
	for (unsigned i = 0; i < 257; i++) {
		many[i].iova = IOVA_C + (uint64_t)i * 2 * PAGE;
		many[i].length = PAGE;
	}
	pgsize = PAGE;
	rc = vfio_dma_logging_start(m->device, many, 257, &pgsize);
	check_err(E2BIG, rc, "START with 257 ranges (core: at most PAGE_SIZE / 16 = 256)");
	/* The device's own table limit, played small. */
	set_max_ranges(2);
	maxr = reg32(m, LDTEST_REG_LOG_MAX_RANGES);
	pgsize = PAGE;
	rc = vfio_dma_logging_start(m->device, many, 3, &pgsize);
	check_err(E2BIG, rc, "START with 3 ranges, device limit 2 (device)");
	vm_check(maxr == 2, "LOG_MAX_RANGES register with log_max_ranges=2: expected 2, got %u", maxr);
	set_max_ranges(256);
	pgsize = PAGE;
	rc = vfio_dma_logging_start(m->device, many, 256, &pgsize);
	check_err(0, rc, "START with 256 ranges (the core's maximum)");
	check_err(0, vfio_dma_logging_stop(m->device), "STOP after it");
	free(many);

	/* The real START: A and E, a 64 KiB hint; the device picks 4 KiB. */
	pgsize = 64u << 10;
	rc = vfio_dma_logging_start(m->device, two, 2, &pgsize);
	if (!vm_check(rc == 0 && pgsize == PAGE,
		   "START of A (64 pages) and E (16 pages) with a 64 KiB hint: expected 0 and page "
		   "size %u, got %s and %" PRIu64, PAGE, errname(rc), pgsize))
		return;
	add_result("log_pgsize=%" PRIu64 " log_max_ranges=%u ", pgsize,
		   reg32(m, LDTEST_REG_LOG_MAX_RANGES));
	{
		uint64_t p2 = PAGE;

		rc = vfio_dma_logging_start(m->device, two, 2, &p2);
		check_err(EBUSY, rc, "second START without STOP");
		add_result("start_twice=%s ", rc ? strerror(-rc) : "accepted");
		vm_check(reg32(m, LDTEST_REG_LOG_RANGES) == 2,
		      "logging after the refused START: expected 2 ranges, got %u",
		      reg32(m, LDTEST_REG_LOG_RANGES));
	}

	dev_write(m, IOVA_A + 1 * PAGE, 1, 0, "A[1]");
	dev_write(m, IOVA_A + 10 * PAGE, 3, 0, "A[10..12]");
	dev_write(m, IOVA_A + 20 * PAGE, 1, LDTEST_F_KEEP_PINNED, "A[20] keep pinned");
	dev_write(m, IOVA_A + 25 * PAGE, 1, LDTEST_F_NO_DATA, "A[25] pin only, no data");
	dev_write(m, IOVA_A + 33 * PAGE, 1, LDTEST_F_NO_PIN, "A[33] vfio_dma_rw only");
	dev_write(m, IOVA_A + 34 * PAGE, 1, LDTEST_F_KMAP, "A[34] through the pinned page");
	dev_write(m, IOVA_A + 63 * PAGE, 1, 0, "A[63] (last page)");
	dev_write(m, IOVA_E + 0 * PAGE, 1, 0, "E[0]");
	dev_write(m, IOVA_E + 15 * PAGE, 1, 0, "E[15]");
	dev_write(m, IOVA_C + 2 * PAGE, 1, 0, "C[2] (outside the logged ranges)");
	{
		static const unsigned want[] = { 1, 10, 11, 12, 20, 33, 34, 63 };

		if (report_check(m, "DMA log REPORT of A", IOVA_A, PAGES_A, want, ARRAY_LEN(want)))
			add_result("log_report=%u/%u ", (unsigned)ARRAY_LEN(want), PAGES_A);
	}
	report_check(m, "DMA log REPORT of E", IOVA_E, PAGES_E, (unsigned[]){ 0, 15 }, 2);
	if (report_check(m, "DMA log REPORT of A again (read-and-clear)", IOVA_A, PAGES_A, NULL, 0))
		add_result("second_report=empty ");
	report_check(m, "DMA log REPORT of E again (read-and-clear)", IOVA_E, PAGES_E, NULL, 0);
	report_check(m, "DMA log REPORT of C (not logged; C[2] was written)", IOVA_C, PAGES_C, NULL, 0);
	{
		/* One REPORT over everything from A to the end of C. */
		uint64_t span = IOVA_C + (uint64_t)PAGES_C * PAGE - IOVA_A;
		uint64_t *big = calloc(span / PAGE / 64 + 1, 8);
		unsigned n = 0;

		if (!big) {
			vm_check(false, "out of memory");
			return;
		}
		rc = vfio_dma_logging_report(m->device, IOVA_A, span, PAGE, big);
		for (uint64_t i = 0; i < span / PAGE; i++)
			n += (big[i / 64] >> (i % 64)) & 1;
		vm_check(rc == 0 && n == 0, "REPORT of A..C (%" PRIu64 " pages, ranges and holes): expected 0 "
		      "and no page, got %s and %u page(s)", span / PAGE, errname(rc), n);
		free(big);
	}
	check_data("C", c, IOVA_C, PAGES_C, (unsigned[]){ 2 }, 1);
	check_data("E", e, IOVA_E, PAGES_E, (unsigned[]){ 0, 15 }, 2);

	/* REPORT at other page sizes than START's: bits are per REPORT page. */
	dev_write(m, IOVA_A + 4 * PAGE, 1, 0, "A[4]");
	dev_write(m, IOVA_A + 9 * PAGE, 1, 0, "A[9]");
	dev_write(m, IOVA_E + 3 * PAGE, 1, 0, "E[3]");
	rc = report(m, IOVA_A, PAGES_A, 2 * PAGE, bm, ARRAY_LEN(bm));
	if (vm_check(rc == 0, "REPORT of A at 8 KiB: %s", errname(rc)))
		check_pages("DMA log REPORT of A at 8 KiB pages (A[4] -> bit 2, A[9] -> bit 4)", bm,
			    PAGES_A / 2, (unsigned[]){ 2, 4 }, 2);
	rc = report(m, IOVA_E, PAGES_E, 2u << 20, bm, ARRAY_LEN(bm));
	if (vm_check(rc == 0, "REPORT of E at 2 MiB: %s", errname(rc)))
		check_pages("DMA log REPORT of E at 2 MiB pages (E[3] -> bit 0)", bm, 1,
			    (unsigned[]){ 0 }, 1);
	vm_check(reg32(m, LDTEST_REG_LOG_DIRTY) == 0, "pages left in the device log: expected 0, got %u",
	      reg32(m, LDTEST_REG_LOG_DIRTY));
	rc = report(m, IOVA_A, PAGES_A, 2048, bm, ARRAY_LEN(bm));
	check_err(EINVAL, rc, "REPORT at 2 KiB pages (core: at least 4 KiB)");
	rc = report(m, IOVA_A, PAGES_A, 3 * PAGE, bm, ARRAY_LEN(bm));
	check_err(EINVAL, rc, "REPORT at 12 KiB pages (core: a power of two)");

	/* A REPORT of length 0 gets through the core: nothing set, nothing
	 * cleared. */
	dev_write(m, IOVA_A + 2 * PAGE, 1, 0, "A[2]");
	memset(bm, 0, sizeof(bm));
	rc = vfio_dma_logging_report(m->device, IOVA_A, 0, PAGE, bm);
	{
		unsigned n = 0;

		for (size_t i = 0; i < ARRAY_LEN(bm); i++)
			n += (unsigned)__builtin_popcountll(bm[i]);
		vm_check(rc == 0 && n == 0, "REPORT of length 0: expected 0 and no bit set, got %s and %u bit(s)",
		      errname(rc), n);
	}
	/* An unaligned REPORT window (the core does not check alignment):
	 * bits count from the window's start; a page only partly inside is
	 * reported and stays in the log. */
	dev_write(m, IOVA_A + 1 * PAGE, 1, 0, "A[1]");
	rc = vfio_dma_logging_report(m->device, IOVA_A + PAGE / 2, 2 * PAGE, PAGE,
				     memset(bm, 0, sizeof(bm)));
	if (vm_check(rc == 0, "REPORT of [A + 2 KiB, + 8 KiB): %s", errname(rc)))
		check_pages("unaligned REPORT (A[1] inside: bits 0-1; A[2] half inside: bit 1)", bm, 2,
			    (unsigned[]){ 0, 1 }, 2);
	report_check(m, "DMA log REPORT of A after the unaligned one (A[2] kept, A[1] cleared)",
		     IOVA_A, PAGES_A, (unsigned[]){ 2 }, 1);

	/* REPORT only ORs into the caller's bitmap. */
	dev_write(m, IOVA_A + 6 * PAGE, 1, 0, "A[6]");
	memset(bm, 0, sizeof(bm));
	bm[0] = 1ull << 7;
	rc = vfio_dma_logging_report(m->device, IOVA_A, (uint64_t)PAGES_A * PAGE, PAGE, bm);
	if (vm_check(rc == 0, "REPORT into a bitmap with bit 7 already set: %s", errname(rc)))
		check_pages("REPORT ORs into the bitmap (A[6] written, bit 7 preset)", bm, PAGES_A,
			    (unsigned[]){ 6, 7 }, 2);

	/* A write, then STOP: the log goes with it. */
	dev_write(m, IOVA_A + 8 * PAGE, 1, 0, "A[8] (never reported: STOP follows)");
	check_err(0, vfio_dma_logging_stop(m->device), "STOP");
	rc = report(m, IOVA_A, PAGES_A, PAGE, bm, ARRAY_LEN(bm));
	check_err(EINVAL, rc, "REPORT after STOP");
	add_result("report_after_stop=%s ", rc ? strerror(-rc) : "accepted");
	check_err(0, vfio_dma_logging_stop(m->device), "STOP again (without START)");

	/* START after STOP works, with a fresh log; pages written before an
	 * unmap are still reported after it. */
	pgsize = PAGE;
	rc = vfio_dma_logging_start(m->device, &two[1], 1, &pgsize);
	check_err(0, rc, "START of E alone after STOP");
	report_check(m, "DMA log REPORT of E right after the new START", IOVA_E, PAGES_E, NULL, 0);
	dev_write(m, IOVA_E + 5 * PAGE, 1, 0, "E[5]");
	rc = vfio_type1_unmap_dma(m->container, IOVA_E, (uint64_t)PAGES_E * PAGE);
	vm_check(rc == 0, "UNMAP_DMA of E while it is logged: %s", errname(rc));
	report_check(m, "DMA log REPORT of E after E was unmapped", IOVA_E, PAGES_E,
		     (unsigned[]){ 5 }, 1);
	check_err(0, vfio_dma_logging_stop(m->device), "final STOP");

	rc = vfio_type1_unmap_dma(m->container, IOVA_C, (uint64_t)PAGES_C * PAGE);
	vm_check(rc == 0, "UNMAP_DMA of C: %s", errname(rc));
	munmap(e, (size_t)PAGES_E * PAGE);
	munmap(c, (size_t)PAGES_C * PAGE);
}

/* Kernels whose VFIO core cannot fill a REPORT bitmap (Debian's 6.12:
 * IOMMUFD_DRIVER off makes iova_bitmap_* stubs): START and STOP still reach
 * the driver, every REPORT fails with EOPNOTSUPP. */
static void part_b_no_report(const struct mdev_dev *m)
{
	struct vfio_device_feature_dma_logging_range r = { IOVA_A, (uint64_t)PAGES_A * PAGE };
	uint64_t bm[(PAGES_A + 63) / 64], pgsize = 64u << 10, p2 = PAGE;
	int rc;

	printf("vm_mdev: --- b. device DMA logging (REPORT unsupported by this kernel) ---\n");
	check_err(0, vfio_feature_probe(m->device, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
					VFIO_DEVICE_FEATURE_SET), "PROBE DMA_LOGGING_START (SET)");
	rc = vfio_dma_logging_start(m->device, &r, 1, &pgsize);
	if (!vm_check(rc == 0 && pgsize == PAGE, "START of A with a 64 KiB hint: expected 0 and page size "
		   "%u, got %s and %" PRIu64, PAGE, errname(rc), pgsize))
		return;
	add_result("log_pgsize=%" PRIu64 " ", pgsize);
	rc = vfio_dma_logging_start(m->device, &r, 1, &p2);
	check_err(EBUSY, rc, "second START without STOP");
	add_result("start_twice=%s ", rc ? strerror(-rc) : "accepted");
	dev_write(m, IOVA_A + 1 * PAGE, 1, 0, "A[1]");
	rc = report(m, IOVA_A, PAGES_A, PAGE, bm, ARRAY_LEN(bm));
	check_err(EOPNOTSUPP, rc, "REPORT of A (core without IOMMUFD_DRIVER)");
	add_result("report=%s ", rc ? strerror(-rc) : "works");
	vm_check(reg32(m, LDTEST_REG_LOG_DIRTY) == 1,
	      "pages in the device log (never reported): expected 1, got %u",
	      reg32(m, LDTEST_REG_LOG_DIRTY));
	check_err(0, vfio_dma_logging_stop(m->device), "STOP");
	rc = report(m, IOVA_A, PAGES_A, PAGE, bm, ARRAY_LEN(bm));
	check_err(EOPNOTSUPP, rc, "REPORT after STOP");
}

/* ---- c. bad input ---- */

static void part_c(const struct mdev_dev *m)
{
	uint32_t pinned0 = reg32(m, LDTEST_REG_PINNED), v32 = 0;
	uint64_t v64 = 0;
	uint8_t small[2];
	struct {
		const char *what;
		uint32_t cmd, flags, npages;
		uint64_t iova;
		int want;
	} bad[] = {
		{ "WRITE at an unmapped IOVA", LDTEST_CMD_WRITE, 0, 1, IOVA_UNMAPPED, EINVAL },
		{ "WRITE (dma_rw only) at an unmapped IOVA", LDTEST_CMD_WRITE, LDTEST_F_NO_PIN, 1,
		  IOVA_UNMAPPED, EINVAL },
		{ "WRITE of 0 pages", LDTEST_CMD_WRITE, 0, 0, IOVA_A, EINVAL },
		{ "WRITE of 513 pages", LDTEST_CMD_WRITE, 0, LDTEST_MAX_PAGES + 1, IOVA_A, E2BIG },
		{ "WRITE of 0xffffffff pages", LDTEST_CMD_WRITE, 0, 0xffffffffu, IOVA_A, E2BIG },
		{ "WRITE at an unaligned IOVA", LDTEST_CMD_WRITE, 0, 1, IOVA_A + 8, EINVAL },
		{ "WRITE wrapping past 2^64", LDTEST_CMD_WRITE, 0, 2, 0xfffffffffffff000ull, EOVERFLOW },
		{ "WRITE with NO_PIN|KEEP_PINNED", LDTEST_CMD_WRITE,
		  LDTEST_F_NO_PIN | LDTEST_F_KEEP_PINNED, 1, IOVA_A, EINVAL },
		{ "WRITE with NO_DATA|KMAP", LDTEST_CMD_WRITE, LDTEST_F_NO_DATA | LDTEST_F_KMAP, 1,
		  IOVA_A, EINVAL },
		{ "WRITE with an unknown flag", LDTEST_CMD_WRITE, 0x100, 1, IOVA_A, EINVAL },
		{ "UNPIN of pages not pinned", LDTEST_CMD_UNPIN, 0, 4, IOVA_A + 40 * PAGE, ENOENT },
		{ "unknown command 99", 99, 0, 1, IOVA_A, EINVAL },
		{ "command 0", 0, 0, 1, IOVA_A, EINVAL },
	};

	printf("vm_mdev: --- c. bad input ---\n");
	for (size_t i = 0; i < ARRAY_LEN(bad); i++)
		check_err(bad[i].want, dev_cmd(m, bad[i].cmd, bad[i].iova, bad[i].npages, bad[i].flags,
					       NULL), bad[i].what);
	vm_check(reg32(m, LDTEST_REG_PINNED) == pinned0,
	      "pins after the failed commands: expected %u, got %u", pinned0,
	      reg32(m, LDTEST_REG_PINNED));

	check_err(EINVAL, mdev_access(m, 0, 2, &v32, 4), "4-byte read at region offset 2 (unaligned)");
	check_err(EINVAL, mdev_access(m, 0, 0, small, 2), "2-byte read");
	check_err(EINVAL, mdev_access(m, 0, LDTEST_REGION_SIZE, &v32, 4), "read at the region's end");
	check_err(EINVAL, mdev_access(m, 0, LDTEST_REGION_SIZE - 4, &v64, 8),
		  "8-byte read crossing the region's end");
	check_err(EINVAL, mdev_access(m, 0, 1ull << 40, &v32, 4), "read in region 1 (none)");
	check_err(EINVAL, mdev_write32(m, LDTEST_REG_STATUS, 0), "write to the read-only STATUS");
	check_err(EINVAL, mdev_write64(m, LDTEST_REG_CMD, LDTEST_CMD_WRITE),
		  "8-byte write at CMD (only IOVA and PATTERN take 8 bytes)");
	vm_check(reg32(m, LDTEST_REG_MAGIC) == LDTEST_MAGIC,
	      "MAGIC after all that: expected %#x, got %#x", LDTEST_MAGIC, reg32(m, LDTEST_REG_MAGIC));
}

int main(int argc, char **argv)
{
	const char *part = "abc";
	bool no_report = false;
	struct mdev_dev m;
	uint8_t *a;
	uint32_t magic;
	int rc;

	vm_check_init("vm_mdev", false);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--part") && i + 1 < argc) {
			part = argv[++i];
		} else if (!strcmp(argv[i], "--no-report")) {
			no_report = true;
		} else {
			fprintf(stderr, "usage: vm_mdev [--part a|b|c|abc] [--no-report]\n");
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (getrandom(&pattern, sizeof(pattern), 0) != (ssize_t)sizeof(pattern))
		pattern = 0x6c64746573740001ull ^ (uint64_t)getpid();

	rc = mdev_dev_open(&m, LDTEST_MDEV_TYPE_NAME);
	if (rc) {
		printf("vm_mdev: FAIL cannot set up an ldtest mdev: %s\n", errname(rc));
		return 1;
	}
	magic = reg32(&m, LDTEST_REG_MAGIC);
	printf("vm_mdev: mdev %s (type %s) in IOMMU group %d, %u region(s), region 0 at %#" PRIx64
	       " (%" PRIu64 " bytes), magic %#x version %u, pattern %#" PRIx64 "\n",
	       m.uuid, m.type_dir, m.group_id, m.num_regions, m.region_offset, m.region_size, magic,
	       reg32(&m, LDTEST_REG_VERSION), pattern);
	if (!vm_check(magic == LDTEST_MAGIC && m.region_size >= LDTEST_REGION_SIZE,
		   "device identity: expected magic %#x and region 0 >= %u bytes", LDTEST_MAGIC,
		   LDTEST_REGION_SIZE))
		goto out;

	a = map_buffer(m.container, IOVA_A, PAGES_A);
	if (!a)
		goto out;
	if (strchr(part, 'a'))
		part_a(&m, a);
	if (strchr(part, 'b')) {
		if (no_report)
			part_b_no_report(&m);
		else
			part_b(&m);
	}
	if (strchr(part, 'c'))
		part_c(&m);
	add_result("pins_at_close=%u ", reg32(&m, LDTEST_REG_PINNED));
	add_result("pages_written=%" PRIu64, reg64(&m, LDTEST_REG_PAGES_WRITTEN));
	/* Closing the device with pins held: close_device must drop them
	 * before the container goes, or type1 would leak them. */
out:
	rc = mdev_dev_close(&m);
	vm_check(rc == 0, "close the device (pins held) and remove the mdev: %s", errname(rc));
	printf("vm_mdev: RESULT %s failures=%d\n", result, failures);
	return failures ? 1 : 0;
}
