/* vm_devlog.c - the VFIO device DMA logging adapter (hv-adapters/vfio_devlog.c)
 * and type1's pinned scope through the type1 adapter, proven in the VM tier
 * with ldtest, libdirty's TEST DMA device (tests/vm/mdev/ldtest.c; the
 * module must be loaded). Guest side of t_vm_devlog.sh.
 *
 * The guest plays the VMM: it opens an ldtest mdev in a type1 container of
 * its own (guest/mdev-dev.c), DMA-maps buffers of its memory at IOVAs and
 * registers them under made-up guest-physical addresses (IOVA != GPA: a
 * decoy region sits where the IOVAs would land as GPAs), runs libdirty's
 * view, and drives the device's writes through ldtest's registers.
 *
 *   1 exact    the device's log through the merged view: exactly the pages
 *              ldtest wrote since the last report, page by page, at their
 *              GPAs (mapping edges, KMAP, dma_rw-only, kept pins); then
 *              empty (read and clear), and empty while pins are held.
 *   2 align    a 64 KiB hint and 2 MiB range alignment: ldtest answers
 *              4 KiB, one range covers all, a later mapping inside it is
 *              logged at once (no re-arm); a driver answering 8 KiB (played
 *              by the ioctl hook) makes the source realign and restart.
 *   3 ranges   ldtest limited to 2 ranges (log_max_ranges): START says
 *              E2BIG, the source joins the nearest mappings; exact reports.
 *   4 unmap    a mapping's last bits reported after the kernel unmap, at
 *              the old GPA; the IOVA mapped again to another GPA.
 *   5 window   a mapping outside the logged ranges forces a re-arm; the
 *              ioctl hook plays a sender that claims everything just before
 *              STOP and makes ldtest write a page before STOP, after STOP,
 *              and before START (old and new mappings): every one of them
 *              is in the view after the sync (0 lost), none in the device's
 *              log; then precise again.
 *   6 manual   REARM_MANUAL: the new mapping is marked whole every sync
 *              until dirty_vfio_devlog_rearm().
 *   7 errors   refused configs and registrations; a STOP behind the
 *              source's back, a REPORT failing EOPNOTSUPP (as on 6.12), a
 *              bit past the window, a START the device refuses: every
 *              mapped page marked, the error returned with a message, and
 *              precise again after the re-arm.
 *   8 type1    type1's pinned scope through the type1 adapter (only ldtest
 *              in the container): exactly the pinned or written pages,
 *              page by page through the merged view; unmap with bitmap.
 *   9 table    the same device writes seen by type1 (pinned scope), by the
 *              DMA log, and by the merged view with the guest protocol
 *              covering type1.
 *  10 noreport (--no-report, Debian 6.12): START works, every REPORT fails
 *              EOPNOTSUPP, and every sync leaves every mapped page marked.
 *
 * Every check prints "vm_devlog: ok   ..." or "vm_devlog: FAIL ... expected
 * vs actual"; the last line is "vm_devlog: RESULT ... failures=N". Exit 0
 * when nothing failed.
 *   --part N[,N...]   run these parts (default: 1-9, or 8,10 with --no-report)
 *   --no-report       the kernel's VFIO core cannot REPORT (6.12)
 */
#include "mdev-dev.h"
#include "vfio-edu.h"
#include "vm-check.h"
#include "vm-pset.h"
#include "vm-time.h"
#include "../mdev/ldtest-regs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <linux/vfio.h>

#include <libdirty.h>
#include <libdirty/guest.h>
#include <libdirty/vfio.h>

#define P ((uint64_t)4096)
#define FILL 0xa5a5a5a5a5a5a5a5ull
/* Guest RAM as the view sees it, and a decoy where the IOVAs would land. */
#define GPA_RAM 0x40000000ull
#define RAM_LEN (128ull << 20)
#define GPA_DECOY 0x10000000ull
#define DECOY_LEN (64ull << 20)

static struct mdev_dev m;
static uint64_t pattern;

/* A setup step that must work: on failure say what and where, then leave. */
#define TRY(call) do { \
		int rc_ = (call); \
		if (rc_ < 0) { \
			fail("%s:%d %s = %d (%s): %s", __func__, __LINE__, #call, rc_, \
			     strerror(-rc_), dirty_last_error()); \
			goto out; \
		} \
	} while (0)

/* A call that must fail with want, its message naming needle. */
static void check_err(const char *what, int want, int got, const char *needle)
{
	const char *msg = dirty_last_error();

	if (got == want && (!needle || strstr(msg, needle)))
		ok("%s: %d (%s): %s", what, got, strerror(-got), msg);
	else
		fail("%s: expected %d (%s)%s%s, got %d: %s", what, want, strerror(-want),
		     needle ? " saying " : "", needle ? needle : "", got, msg);
}

/* The view's pages vs want, page by page (vm-pset.h); *gotp keeps them. */
static uint64_t expect(struct dirty_view *v, const char *what, const struct dirty_range *want,
		       size_t nwant, struct pset *gotp)
{
	return pset_expect(v, what, want, nwant, gotp, 6);
}

/* ---- buffers and the device -------------------------------------------------- */

struct buf {
	const char *name;
	uint64_t iova, gpa, pages;
	uint8_t *mem;
	bool kmapped;
};

/* mmap, fill with FILL, VFIO_IOMMU_MAP_DMA at b->iova. */
static int buf_map(struct buf *b)
{
	size_t size = (size_t)(b->pages * P);
	int rc;

	b->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b->mem == MAP_FAILED) {
		b->mem = NULL;
		return -ENOMEM;
	}
	memset(b->mem, 0xa5, size);
	rc = vfio_type1_map_dma(m.container, b->mem, b->iova, size);
	if (rc) {
		munmap(b->mem, size);
		b->mem = NULL;
		return rc;
	}
	b->kmapped = true;
	return 0;
}

/* The kernel unmap (if still mapped) and the memory. */
static void buf_free(struct buf *b)
{
	if (b->kmapped)
		vfio_type1_unmap_dma(m.container, b->iova, b->pages * P);
	b->kmapped = false;
	if (b->mem)
		munmap(b->mem, (size_t)(b->pages * P));
	b->mem = NULL;
}

/* GPA range of pages [page, page + n) of b. */
static struct dirty_range R(const struct buf *b, uint64_t page, uint64_t n)
{
	return (struct dirty_range){ b->gpa + page * P, n * P };
}

static struct dirty_range ALL(const struct buf *b)
{
	return R(b, 0, b->pages);
}

static uint32_t reg32(uint32_t reg)
{
	uint32_t v = 0xdeadbeef;

	if (mdev_read32(&m, reg, &v))
		fail("read of ldtest register %#x failed", reg);
	return v;
}

/* One ldtest command; returns -STATUS (0 or -errno); *done = DONE. */
static int dev_cmd(uint32_t cmd, uint64_t iova, uint32_t npages, uint32_t flags, uint32_t *done)
{
	int rc;

	if ((rc = mdev_write64(&m, LDTEST_REG_IOVA, iova)) ||
	    (rc = mdev_write32(&m, LDTEST_REG_NPAGES, npages)) ||
	    (rc = mdev_write32(&m, LDTEST_REG_FLAGS, flags)) ||
	    (rc = mdev_write64(&m, LDTEST_REG_PATTERN, pattern)) ||
	    (rc = mdev_write32(&m, LDTEST_REG_CMD, cmd)))
		return rc;
	if (done)
		*done = reg32(LDTEST_REG_DONE);
	return -(int)reg32(LDTEST_REG_STATUS);
}

/* ldtest writes (or pins: NO_DATA) pages [page, page + n) of b; must work. */
static bool dev_write(const struct buf *b, uint64_t page, uint32_t n, uint32_t flags)
{
	uint32_t done = 0, want = (flags & LDTEST_F_NO_DATA) ? 0 : n;
	int rc = dev_cmd(LDTEST_CMD_WRITE, b->iova + page * P, n, flags, &done);

	if (rc || done != want) {
		fail("ldtest WRITE %s[%" PRIu64 "..+%u] flags %#x: expected status 0 and %u written, got %d (%s) and %u",
		     b->name, page, n, flags, want, rc, strerror(-rc), done);
		return false;
	}
	return true;
}

static void dev_unpin_all(void)
{
	dev_cmd(LDTEST_CMD_UNPIN_ALL, 0, 1, 0, NULL);
}

/* Does page `page` of b hold ldtest's stamp (every word pattern ^ page IOVA)? */
static bool stamped(const struct buf *b, uint64_t page)
{
	uint64_t want = LDTEST_STAMP(pattern, b->iova + page * P);

	for (size_t k = 0; k < P / 8; k++) {
		uint64_t v;

		memcpy(&v, b->mem + page * P + k * 8, 8);
		if (v != want)
			return false;
	}
	return true;
}

static void set_max_ranges(unsigned n)
{
	char v[16];
	int fd = open("/sys/module/ldtest/parameters/log_max_ranges", O_WRONLY | O_CLOEXEC);

	snprintf(v, sizeof(v), "%u", n);
	if (fd < 0 || write(fd, v, strlen(v)) != (ssize_t)strlen(v))
		fail("cannot set ldtest's log_max_ranges to %u: %s", n, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static struct dirty_vfio_devlog_stats dl_stats(struct dirty_vfio_devlog *d)
{
	struct dirty_vfio_devlog_stats st;

	memset(&st, 0, sizeof(st));
	dirty_vfio_devlog_stats(d, &st);
	return st;
}

static int new_view(struct dirty_view **v)
{
	int rc = dirty_view_new(v);

	if (!rc)
		rc = dirty_view_add_region(*v, GPA_RAM, RAM_LEN, 0, 0);
	if (!rc)
		rc = dirty_view_add_region(*v, GPA_DECOY, DECOY_LEN, 0, 0);
	return rc;
}

/* ---- the ioctl hook: what happens between two of the source's ioctls ------ */

enum hook_mode {
	HOOK_PASS = 0,
	HOOK_WINDOW,		/* part 5: act around STOP and START */
	HOOK_FAIL_REPORT,	/* REPORT fails with hook.err, the device not asked */
	HOOK_STRAY,		/* REPORT gets a bit past its window */
	HOOK_BIG_PAGE,		/* START answers 8 KiB, as a coarser device would */
};

struct hook_state {
	enum hook_mode mode;
	int err;
	struct dirty_view *v;		/* HOOK_WINDOW: the view a sender drains */
	const struct buf *a, *b, *c, *d;
	uint64_t drained;		/* pages the "sender" claimed just before STOP */
	unsigned stops, starts, writes;
};
static struct hook_state hook;

static int hook_ioctl(void *ctx, int fd, unsigned long req, void *arg)
{
	struct vfio_device_feature *f = arg;
	uint32_t feat;
	bool probe;
	int rc;

	(void)ctx;
	if (req != VFIO_DEVICE_FEATURE || hook.mode == HOOK_PASS)
		return ioctl(fd, req, arg) < 0 ? -errno : 0;
	feat = f->flags & VFIO_DEVICE_FEATURE_MASK;
	probe = f->flags & VFIO_DEVICE_FEATURE_PROBE;
	if (!probe && hook.mode == HOOK_WINDOW && feat == VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP) {
		struct pset s = { 0 };

		/* A sender thread claims and sends whatever is marked now. */
		pset_drain(hook.v, &s);
		hook.drained += s.n;
		pset_free(&s);
		/* Logged by the old log, which STOP is about to drop. */
		hook.writes += dev_write(hook.a, 40, 1, 0);
		rc = ioctl(fd, req, arg) < 0 ? -errno : 0;
		hook.stops++;
		/* Logged nowhere: no log exists until START. */
		hook.writes += dev_write(hook.c, 3, 1, 0);
		return rc;
	}
	if (!probe && hook.mode == HOOK_WINDOW && feat == VFIO_DEVICE_FEATURE_DMA_LOGGING_START) {
		/* The new mapping and an old one, right before START. */
		hook.writes += dev_write(hook.d, 5, 1, 0);
		hook.writes += dev_write(hook.b, 7, 1, 0);
		rc = ioctl(fd, req, arg) < 0 ? -errno : 0;
		hook.starts++;
		return rc;
	}
	if (!probe && hook.mode == HOOK_FAIL_REPORT && feat == VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT)
		return hook.err;
	rc = ioctl(fd, req, arg) < 0 ? -errno : 0;
	if (!rc && !probe && hook.mode == HOOK_STRAY && feat == VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT) {
		struct vfio_device_feature_dma_logging_report rep;
		uint64_t nbits;

		memcpy(&rep, f->data, sizeof(rep));
		nbits = rep.length / rep.page_size;
		if (nbits % 64)
			((uint64_t *)(uintptr_t)rep.bitmap)[nbits / 64] |= 1ull << (nbits % 64);
	}
	if (!rc && !probe && hook.mode == HOOK_BIG_PAGE && feat == VFIO_DEVICE_FEATURE_DMA_LOGGING_START) {
		struct vfio_device_feature_dma_logging_control ctl;

		/* ldtest logs 4 KiB and REPORT converts: a device that chose 8 KiB. */
		memcpy(&ctl, f->data, sizeof(ctl));
		ctl.page_size = 2 * P;
		memcpy(f->data, &ctl, sizeof(ctl));
		hook.starts++;
	}
	return rc;
}

/* ---- the usual layout ------------------------------------------------------------ */

/* A and B IOVA-adjacent (one range), reversed in GPA; C apart. */
static struct buf A = { "A", 0x10000000, GPA_RAM + 0x800000, 64, NULL, false };
static struct buf B = { "B", 0x10040000, GPA_RAM + 0x000000, 16, NULL, false };
static struct buf C = { "C", 0x10200000, GPA_RAM + 0x1000000, 32, NULL, false };

static int map_abc(void)
{
	int rc = buf_map(&A);

	if (!rc)
		rc = buf_map(&B);
	if (!rc)
		rc = buf_map(&C);
	return rc;
}

static void free_abc(void)
{
	dev_unpin_all();
	buf_free(&A);
	buf_free(&B);
	buf_free(&C);
}

static int add_abc(struct dirty_vfio_devlog *d)
{
	int rc = dirty_vfio_devlog_add_mapping(d, A.iova, A.gpa, A.pages * P);

	if (!rc)
		rc = dirty_vfio_devlog_add_mapping(d, B.iova, B.gpa, B.pages * P);
	if (!rc)
		rc = dirty_vfio_devlog_add_mapping(d, C.iova, C.gpa, C.pages * P);
	return rc;
}

/* ---- 1: exact ------------------------------------------------------------------- */

static void part_exact(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_vfio_devlog_stats s0, s1;
	struct dirty_view *v = NULL;
	struct dirty_view_stats vs;
	uint64_t gpa = 0;

	printf("vm_devlog: ---- 1 exact: A %#" PRIx64 "->%#" PRIx64 " (64p), B %#" PRIx64 "->%#" PRIx64 " (16p), C %#" PRIx64 "->%#" PRIx64 " (32p)\n",
	       A.iova, A.gpa, B.iova, B.gpa, C.iova, C.gpa);
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_probe(m.device));
	ok("1 dirty_vfio_devlog_probe: ldtest logs its DMA");
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "1 start: the first round holds every mapped page, at its GPA", all, 3, NULL);
	s0 = dl_stats(d);
	CHECK_EQ("1 ranges logged (A+B adjacent: one; C: one)", 2, s0.ranges);
	CHECK_EQ("1 ... as ldtest sees them (LOG_RANGES)", 2, reg32(LDTEST_REG_LOG_RANGES));
	CHECK_EQ("1 page size the driver chose", P, s0.page_size);
	TRY(dirty_vfio_devlog_translate(d, B.iova + 5 * P, &gpa));
	CHECK_EQ("1 translate(B + 5 pages) = B's GPA + 5 pages", B.gpa + 5 * P, gpa);

	TRY(dirty_view_sync(v));
	expect(v, "1 idle sync", NULL, 0, NULL);

	/* Edges of the adjacent pair, every way ldtest writes, a pin without data. */
	if (!dev_write(&A, 0, 1, 0) || !dev_write(&A, 63, 1, 0) || !dev_write(&B, 0, 1, 0) ||
	    !dev_write(&B, 15, 1, 0) || !dev_write(&B, 5, 1, LDTEST_F_KMAP) ||
	    !dev_write(&C, 7, 1, LDTEST_F_NO_PIN) || !dev_write(&C, 10, 3, 0) ||
	    !dev_write(&A, 20, 1, LDTEST_F_NO_DATA) || !dev_write(&A, 30, 1, LDTEST_F_KEEP_PINNED))
		goto out;
	{
		const struct dirty_range w[] = {
			R(&A, 0, 1), R(&A, 63, 1), R(&B, 0, 1), R(&B, 15, 1), R(&B, 5, 1),
			R(&C, 7, 1), R(&C, 10, 3), R(&A, 30, 1),
		};

		s0 = dl_stats(d);
		TRY(dirty_view_sync(v));
		s1 = dl_stats(d);
		if (expect(v, "1 sync: exactly the pages ldtest wrote (not A[20]: pinned, never written)",
			   w, sizeof(w) / sizeof(w[0]), NULL) == 10)
			add_result("devlog_exact=10/112 ");
		CHECK_EQ("1 ... bits REPORT set", 10, s1.pages_reported - s0.pages_reported);
		CHECK_EQ("1 ... REPORT calls (one window per range)", 2, s1.reports - s0.reports);
		if (stamped(&A, 63) && stamped(&B, 0) && stamped(&C, 12) && !stamped(&A, 20))
			ok("1 ... the buffers hold ldtest's stamps where it wrote, FILL in A[20]");
		else
			fail("1 ... buffer contents do not match the writes");
	}
	TRY(dirty_view_sync(v));
	expect(v, "1 sync again: nothing (REPORT reads and clears)", NULL, 0, NULL);
	TRY(dirty_view_sync(v));
	expect(v, "1 idle sync with A[30] still pinned: nothing (the log has writes, not pins)",
	       NULL, 0, NULL);
	CHECK_EQ("1 pages left in ldtest's log", 0, reg32(LDTEST_REG_LOG_DIRTY));
	TRY(dirty_view_stats(v, &vs));
	CHECK_EQ("1 marks that fell outside every region", 0, vs.pages_outside);
	TRY(dirty_view_stop(v));
	CHECK_EQ("1 after the view's stop, ldtest logs nothing (LOG_RANGES)", 0,
		 reg32(LDTEST_REG_LOG_RANGES));
out:
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	free_abc();
}

/* ---- 2: hint, alignment, a driver page size above the hint --------------------- */

static void part_align(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device, .page_size = 64 << 10,
						.range_align = 2 << 20 };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct buf E = { "E", 0x10300000, GPA_RAM + 0x1800000, 8, NULL, false };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_vfio_devlog_stats s;
	struct dirty_view *v = NULL;

	printf("vm_devlog: ---- 2 align: a 64 KiB hint, 2 MiB range alignment\n");
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "2 start", all, 3, NULL);
	s = dl_stats(d);
	CHECK_EQ("2 ranges: A, B, C rounded to 2 MiB and joined", 1, s.ranges);
	CHECK_EQ("2 page size ldtest chose for a 64 KiB hint", P, s.page_size);
	/* A mapping inside the logged range: logged at once, no re-arm. */
	TRY(buf_map(&E));
	TRY(dirty_vfio_devlog_add_mapping(d, E.iova, E.gpa, E.pages * P));
	CHECK_EQ("2 E (inside the 2 MiB range) unlogged", 0, dl_stats(d).unlogged);
	if (!dev_write(&E, 3, 1, 0) || !dev_write(&A, 2, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&E, 3, 1), R(&A, 2, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "2 sync: exactly E[3] and A[2], no re-arm cover", w, 2, NULL);
	}
	CHECK_EQ("2 re-arms", 0, dl_stats(d).rearms);
	dirty_vfio_devlog_destroy(d);
	d = NULL;
	dirty_view_free(v);
	v = NULL;

	/* A driver that answers 8 KiB to a 4 KiB hint (the hook plays it). */
	hook = (struct hook_state){ .mode = HOOK_BIG_PAGE };
	cfg = (struct dirty_vfio_devlog_config){ .device_fd = m.device, .ioctl = hook_ioctl };
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "2 start with an 8 KiB device", all, 3, NULL);
	s = dl_stats(d);
	CHECK_EQ("2 ... page size in force", 2 * P, s.page_size);
	CHECK_EQ("2 ... STARTs (the second with ranges aligned to 8 KiB)", 2, s.starts);
	CHECK_EQ("2 ... STOPs", 1, s.stops);
	if (!dev_write(&A, 1, 1, 0) || !dev_write(&B, 4, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&A, 0, 2), R(&B, 4, 2) };

		TRY(dirty_view_sync(v));
		expect(v, "2 sync at 8 KiB: A[1] and B[4] as their 8 KiB pages", w, 2, NULL);
	}
out:
	hook.mode = HOOK_PASS;
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	buf_free(&E);
	free_abc();
}

/* ---- 3: the device's range limit ---------------------------------------------- */

static void part_ranges(void)
{
	/* Gaps after each: 112 KiB, ~880 KiB, 16 KiB, ~7 MiB. */
	struct buf F[5] = {
		{ "F0", 0x12000000, GPA_RAM + 0x2400000, 4, NULL, false },
		{ "F1", 0x12020000, GPA_RAM + 0x2100000, 4, NULL, false },
		{ "F2", 0x12100000, GPA_RAM + 0x2300000, 4, NULL, false },
		{ "F3", 0x12108000, GPA_RAM + 0x2000000, 4, NULL, false },
		{ "F4", 0x12800000, GPA_RAM + 0x2200000, 4, NULL, false },
	};
	struct dirty_range all[5], w[5];
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_vfio_devlog_stats s;
	struct dirty_view *v = NULL;

	printf("vm_devlog: ---- 3 ranges: 5 mappings, ldtest takes 2 ranges\n");
	for (int i = 0; i < 5; i++) {
		TRY(buf_map(&F[i]));
		all[i] = ALL(&F[i]);
		w[i] = R(&F[i], (uint64_t)(i % 4), 1);
	}
	for (int round = 0; round < 2; round++) {
		struct dirty_vfio_devlog_config cfg = { .device_fd = m.device,
							.max_ranges = round ? 1 : 0 };

		set_max_ranges(round ? 256 : 2);
		TRY(new_view(&v));
		TRY(dirty_vfio_devlog_create(v, &cfg, &d));
		for (int i = 0; i < 5; i++)
			TRY(dirty_vfio_devlog_add_mapping(d, F[i].iova, F[i].gpa, F[i].pages * P));
		TRY(dirty_view_start(v));
		expect(v, round ? "3 start, max_ranges = 1" : "3 start, ldtest limited to 2 ranges",
		       all, 5, NULL);
		s = dl_stats(d);
		if (!round) {
			CHECK_EQ("3 ranges logged after E2BIG", 2, s.ranges);
			CHECK_EQ("3 ... as ldtest sees them", 2, reg32(LDTEST_REG_LOG_RANGES));
			CHECK_EQ("3 ... the limit learned", 2, s.max_ranges);
			CHECK_EQ("3 ... STARTs (5 ranges refused, 2 taken)", 2, s.starts);
		} else {
			CHECK_EQ("3 ranges logged with max_ranges = 1", 1, s.ranges);
			CHECK_EQ("3 ... STARTs", 1, s.starts);
		}
		for (int i = 0; i < 5; i++)
			if (!dev_write(&F[i], (uint64_t)(i % 4), 1, 0))
				goto out;
		TRY(dirty_view_sync(v));
		expect(v, round ? "3 sync: one write per mapping, exact (one range)" :
		       "3 sync: one write per mapping, exact (joined ranges)", w, 5, NULL);
		if (!round)
			add_result("ranges_joined=5->2 ");
		dirty_vfio_devlog_destroy(d);
		d = NULL;
		dirty_view_free(v);
		v = NULL;
	}
out:
	set_max_ranges(256);
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	for (int i = 0; i < 5; i++)
		buf_free(&F[i]);
}

/* ---- 4: unmap ------------------------------------------------------------------- */

static void part_unmap(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct buf B2 = { "B'", B.iova, GPA_RAM + 0x3000000, 16, NULL, false };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_view *v = NULL;
	uint64_t gpa = 0;

	printf("vm_devlog: ---- 4 unmap: B's last bits after the kernel unmap, then its IOVA reused\n");
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "4 start", all, 3, NULL);
	if (!dev_write(&B, 2, 1, 0) || !dev_write(&B, 9, 1, 0) || !dev_write(&A, 63, 1, 0))
		goto out;
	check_err("4 unmapped() of half of B", -EINVAL,
		  dirty_vfio_devlog_unmapped(d, B.iova, 8 * P), "split");
	TRY(vfio_type1_unmap_dma(m.container, B.iova, B.pages * P));
	B.kmapped = false;
	TRY(dirty_vfio_devlog_unmapped(d, B.iova, B.pages * P));
	{
		const struct dirty_range w[] = { R(&B, 2, 1), R(&B, 9, 1) };

		expect(v, "4 unmapped(B) after the kernel unmap: exactly B[2], B[9] at B's GPA", w, 2, NULL);
	}
	check_err("4 translate(B) after it", -ENOENT, dirty_vfio_devlog_translate(d, B.iova, &gpa),
		  "no registered");
	/* The same IOVAs, other guest memory. */
	TRY(buf_map(&B2));
	TRY(dirty_vfio_devlog_add_mapping(d, B2.iova, B2.gpa, B2.pages * P));
	CHECK_EQ("4 B' (inside the logged range) unlogged", 0, dl_stats(d).unlogged);
	if (!dev_write(&B2, 9, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&A, 63, 1), R(&B2, 9, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "4 sync: A[63] and B'[9] at B's new GPA, nothing at the old one", w, 2, NULL);
	}
out:
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	buf_free(&B2);
	free_abc();
}

/* ---- 5: the re-arm window -------------------------------------------------------- */

static void part_window(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device, .ioctl = hook_ioctl };
	struct buf D = { "D", 0x13000000, GPA_RAM + 0x2800000, 16, NULL, false };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_vfio_devlog_stats s0, s1;
	struct dirty_view *v = NULL;
	struct pset got = { 0 };

	printf("vm_devlog: ---- 5 window: D %#" PRIx64 "->%#" PRIx64 " outside the logged ranges forces a re-arm\n",
	       D.iova, D.gpa);
	hook = (struct hook_state){ .mode = HOOK_PASS };
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "5 start", all, 3, NULL);
	TRY(buf_map(&D));
	TRY(dirty_vfio_devlog_add_mapping(d, D.iova, D.gpa, D.pages * P));
	CHECK_EQ("5 D unlogged until the re-arm", 1, dl_stats(d).unlogged);

	hook = (struct hook_state){ .mode = HOOK_WINDOW, .v = v, .a = &A, .b = &B, .c = &C, .d = &D };
	s0 = dl_stats(d);
	TRY(dirty_view_sync(v));
	s1 = dl_stats(d);
	hook.mode = HOOK_PASS;
	CHECK_EQ("5 the hook saw the re-arm's STOP", 1, hook.stops);
	CHECK_EQ("5 ... and its START", 1, hook.starts);
	CHECK_EQ("5 ... and ldtest wrote A[40] before STOP, C[3] after it, D[5] and B[7] before START",
		 4, hook.writes);
	CHECK_EQ("5 pages the sender claimed just before STOP (none may be marked yet)", 0,
		 hook.drained);
	CHECK_EQ("5 pages of the window in ldtest's log after START (the log has none of them)", 0,
		 reg32(LDTEST_REG_LOG_DIRTY));
	{
		const struct dirty_range cover[] = { ALL(&A), ALL(&B), ALL(&C), ALL(&D) };
		const uint64_t win[] = { A.gpa + 40 * P, C.gpa + 3 * P, D.gpa + 5 * P, B.gpa + 7 * P };
		unsigned lost = 0;

		expect(v, "5 sync with the re-arm: every mapped page (the window's cover)", cover, 4, &got);
		for (size_t i = 0; i < 4; i++)
			lost += !pset_has(&got, win[i]);
		CHECK_EQ("5 pages written inside the window missing from the view", 0, lost);
		if (!lost)
			add_result("window_written=4 window_lost=0 ");
		if (stamped(&A, 40) && stamped(&C, 3) && stamped(&D, 5) && stamped(&B, 7))
			ok("5 ... and the four pages hold ldtest's stamps");
		else
			fail("5 ... a window page does not hold ldtest's stamp");
	}
	CHECK_EQ("5 re-arms", 1, s1.rearms - s0.rearms);
	CHECK_EQ("5 pages marked by the window's cover", 128, s1.window_pages - s0.window_pages);
	CHECK_EQ("5 ranges after the re-arm (A+B, C, D)", 3, s1.ranges);
	CHECK_EQ("5 unlogged after the re-arm", 0, s1.unlogged);

	/* Precise again, D included. */
	if (!dev_write(&D, 6, 1, 0) || !dev_write(&A, 41, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&D, 6, 1), R(&A, 41, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "5 next sync: exactly D[6] and A[41]", w, 2, NULL);
	}
out:
	hook.mode = HOOK_PASS;
	pset_free(&got);
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	buf_free(&D);
	free_abc();
}

/* ---- 6: REARM_MANUAL ---------------------------------------------------------- */

static void part_manual(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device,
						.rearm = DIRTY_VFIO_DEVLOG_REARM_MANUAL };
	struct buf D = { "D", 0x13000000, GPA_RAM + 0x2800000, 16, NULL, false };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_view *v = NULL;

	printf("vm_devlog: ---- 6 manual: D outside the ranges, coarse until dirty_vfio_devlog_rearm()\n");
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "6 start", all, 3, NULL);
	TRY(buf_map(&D));
	TRY(dirty_vfio_devlog_add_mapping(d, D.iova, D.gpa, D.pages * P));
	if (!dev_write(&A, 1, 1, 0) || !dev_write(&D, 2, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&A, 1, 1), ALL(&D) };

		TRY(dirty_view_sync(v));
		expect(v, "6 sync: A[1] exact, D whole (not logged yet)", w, 2, NULL);
		TRY(dirty_view_sync(v));
		expect(v, "6 idle sync: D whole again (every sync until the re-arm)", &w[1], 1, NULL);
	}
	CHECK_EQ("6 re-arms so far", 0, dl_stats(d).rearms);
	TRY(dirty_vfio_devlog_rearm(d));
	{
		const struct dirty_range cover[] = { ALL(&A), ALL(&B), ALL(&C), ALL(&D) };

		expect(v, "6 dirty_vfio_devlog_rearm(): every mapped page (the window's cover)", cover, 4,
		       NULL);
	}
	if (!dev_write(&D, 3, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&D, 3, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "6 sync: exactly D[3]", w, 1, NULL);
	}
out:
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	buf_free(&D);
	free_abc();
}

/* ---- 7: errors ------------------------------------------------------------------- */

static void part_errors(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device, .ioctl = hook_ioctl };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_devlog *d = NULL, *d2 = NULL;
	struct dirty_view *v = NULL, *v2 = NULL;
	int rc;

	printf("vm_devlog: ---- 7 errors\n");
	hook = (struct hook_state){ .mode = HOOK_PASS };
	TRY(map_abc());
	TRY(new_view(&v));
	{
		struct dirty_vfio_devlog_config bad = cfg;

		bad.page_size = 3 * P;
		check_err("7 create with a 12 KiB page size", -EINVAL,
			  dirty_vfio_devlog_create(v, &bad, &d2), "power of two");
		bad = cfg;
		bad.page_size = 64 << 10;
		bad.range_align = P;
		check_err("7 create with range_align below the page size", -EINVAL,
			  dirty_vfio_devlog_create(v, &bad, &d2), "range_align");
		bad = cfg;
		bad.rearm = 7;
		check_err("7 create with rearm policy 7", -EINVAL,
			  dirty_vfio_devlog_create(v, &bad, &d2), "policy");
		bad = cfg;
		bad.device_fd = m.container;
		bad.ioctl = NULL;
		check_err("7 create on the container fd (not a device)", -EINVAL,
			  dirty_vfio_devlog_create(v, &bad, &d2), "is it a VFIO device fd");
		check_err("7 dirty_vfio_devlog_probe of the container fd", -EINVAL,
			  dirty_vfio_devlog_probe(m.container), "cannot log its DMA");
	}
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	check_err("7 sync before start", -EINVAL, dirty_view_sync(v), "not started");
	check_err("7 unaligned registration", -EINVAL,
		  dirty_vfio_devlog_add_mapping(d, A.iova + 8, A.gpa, P), "aligned");
	check_err("7 registration wrapping past 2^64", -EINVAL,
		  dirty_vfio_devlog_add_mapping(d, 0xfffffffffffff000ull, A.gpa, 2 * P), "wraps");
	TRY(add_abc(d));
	check_err("7 overlapping registration", -EEXIST,
		  dirty_vfio_devlog_add_mapping(d, A.iova + P, A.gpa, P), "overlaps");
	TRY(dirty_view_start(v));
	expect(v, "7 start", all, 3, NULL);

	/* a. Logging stopped behind the source's back. */
	rc = vfio_dma_logging_stop(m.device);
	CHECK_EQ("7a VFIO DMA_LOGGING_STOP behind the source's back", 0, rc);
	if (!dev_write(&A, 3, 1, 0))
		goto out;
	check_err("7a sync: REPORT fails", -EINVAL, dirty_view_sync(v), "behind this source's back");
	expect(v, "7a ... every mapped page marked", all, 3, NULL);
	TRY(dirty_view_sync(v));
	expect(v, "7a next sync restarts the log: every mapped page (the re-arm's cover)", all, 3, NULL);
	if (!dev_write(&A, 4, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = { R(&A, 4, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "7a then precise again: exactly A[4]", w, 1, NULL);
	}

	/* b. REPORT failing as Debian 6.12's does (the hook answers instead of the kernel). */
	hook.mode = HOOK_FAIL_REPORT;
	hook.err = -EOPNOTSUPP;
	if (!dev_write(&C, 5, 1, 0))
		goto out;
	check_err("7b sync: REPORT fails EOPNOTSUPP", -EOPNOTSUPP, dirty_view_sync(v), "IOMMUFD_DRIVER");
	expect(v, "7b ... every mapped page marked", all, 3, NULL);
	hook.mode = HOOK_PASS;
	TRY(dirty_view_sync(v));
	expect(v, "7b next sync restarts the log: every mapped page", all, 3, NULL);

	/* c. A bit past the window: not believed. */
	hook.mode = HOOK_STRAY;
	check_err("7c sync: a REPORT bit past its window", -EPROTO, dirty_view_sync(v),
		  "no registered mapping holds");
	hook.mode = HOOK_PASS;
	expect(v, "7c ... every mapped page marked", all, 3, NULL);
	TRY(dirty_view_sync(v));
	expect(v, "7c next sync restarts the log", all, 3, NULL);
	TRY(dirty_view_sync(v));
	expect(v, "7c then nothing", NULL, 0, NULL);
	CHECK_EQ("7 errors counted by the source", 4, dl_stats(d).errors);

	/* d. START refused: the device is logging for someone else already. */
	TRY(dirty_view_stop(v));
	{
		struct vfio_device_feature_dma_logging_range r = { A.iova, A.pages * P };
		uint64_t pg = P;
		struct dirty_vfio_devlog_config c2 = { .device_fd = m.device };

		TRY(vfio_dma_logging_start(m.device, &r, 1, &pg));
		TRY(new_view(&v2));
		TRY(dirty_vfio_devlog_create(v2, &c2, &d2));
		TRY(add_abc(d2));
		check_err("7d start while the device logs for another user", -EBUSY, dirty_view_start(v2),
			  "failed to start");
		expect(v2, "7d ... every mapped page marked", all, 3, NULL);
		vfio_dma_logging_stop(m.device);
	}
out:
	hook.mode = HOOK_PASS;
	dirty_vfio_devlog_destroy(d2);
	dirty_view_free(v2);
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	free_abc();
}

/* ---- 8: type1's pinned scope through the type1 adapter --------------------------- */

static struct dirty_vfio_type1_stats t1_stats(struct dirty_vfio_type1 *t)
{
	struct dirty_vfio_type1_stats st;

	memset(&st, 0, sizeof(st));
	dirty_vfio_type1_stats(t, &st);
	return st;
}

static void part_type1(void)
{
	struct dirty_vfio_type1_config cfg = { .container_fd = m.container };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_vfio_type1_stats s0, s1;
	struct dirty_view *v = NULL;
	uint64_t unmapped = 0;
	uint32_t done = 0;

	printf("vm_devlog: ---- 8 type1 pinned scope: only ldtest in the container, the type1 adapter\n");
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_type1_create(v, &cfg, &t));
	TRY(dirty_vfio_type1_add_mapping(t, A.iova, A.gpa, A.pages * P));
	TRY(dirty_vfio_type1_add_mapping(t, B.iova, B.gpa, B.pages * P));
	TRY(dirty_vfio_type1_add_mapping(t, C.iova, C.gpa, C.pages * P));
	/* A pin from before START: type1 seeds its bitmaps with pins. */
	if (!dev_write(&A, 3, 1, LDTEST_F_KEEP_PINNED))
		goto out;
	TRY(dirty_view_start(v));
	expect(v, "8 start: every mapped page (the first round)", all, 3, NULL);
	{
		const struct dirty_range w[] = { R(&A, 3, 1) };

		TRY(dirty_view_sync(v));
		expect(v, "8 sync: A[3], pinned since before START", w, 1, NULL);
	}
	if (!dev_write(&A, 0, 1, 0) || !dev_write(&A, 5, 3, 0) ||
	    !dev_write(&A, 20, 1, LDTEST_F_NO_PIN) || !dev_write(&A, 30, 2, LDTEST_F_KEEP_PINNED) ||
	    !dev_write(&A, 40, 1, LDTEST_F_NO_DATA) || !dev_write(&A, 50, 1, LDTEST_F_KMAP) ||
	    !dev_write(&C, 2, 1, 0))
		goto out;
	{
		const struct dirty_range w[] = {
			R(&A, 0, 1), R(&A, 3, 1), R(&A, 5, 3), R(&A, 20, 1), R(&A, 30, 2),
			R(&A, 40, 1), R(&A, 50, 1), R(&C, 2, 1),
		};

		s0 = t1_stats(t);
		TRY(dirty_view_sync(v));
		s1 = t1_stats(t);
		if (expect(v, "8 sync: exactly the pages ldtest pinned or wrote, at their GPAs", w,
			   sizeof(w) / sizeof(w[0]), NULL) == 11)
			add_result("type1_pinned_scope=11/112 ");
		CHECK_EQ("8 ... pages type1 reported", 11, s1.pages_reported - s0.pages_reported);
	}
	{
		const struct dirty_range w[] = { R(&A, 3, 1), R(&A, 30, 2) };

		TRY(dirty_view_sync(v));
		expect(v, "8 idle sync: the pages still pinned (A[3], A[30..31])", w, 2, NULL);
		TRY(dev_cmd(LDTEST_CMD_UNPIN, A.iova + 30 * P, 2, 0, &done));
		TRY(dirty_view_sync(v));
		expect(v, "8 sync after UNPIN of A[30..31]: still them (pinned during the interval)", w, 2,
		       NULL);
		TRY(dirty_view_sync(v));
		expect(v, "8 sync: only A[3]", w, 1, NULL);
	}
	/* The unmap with the dirty bitmap: B written at [2], kept pinned at [9]. */
	if (!dev_write(&B, 2, 1, 0) || !dev_write(&B, 9, 1, LDTEST_F_KEEP_PINNED))
		goto out;
	TRY(dirty_vfio_type1_unmap(t, B.iova, B.pages * P, &unmapped));
	B.kmapped = false;
	CHECK_EQ("8 bytes type1 unmapped", B.pages * P, unmapped);
	{
		const struct dirty_range w[] = { R(&B, 2, 1), R(&B, 9, 1) };

		expect(v, "8 unmap of B with the bitmap: exactly B[2] and B[9] at B's GPA", w, 2, NULL);
	}
	CHECK_EQ("8 pins ldtest holds after B's unmap (A[3]; dma_unmap dropped B[9])", 1,
		 reg32(LDTEST_REG_PINNED));
out:
	dirty_vfio_type1_destroy(t);
	dirty_view_free(v);
	free_abc();
}

/* ---- 9: the table ------------------------------------------------------------------ */

static void part_table(void)
{
	struct buf T = { "T", 0x11000000, GPA_RAM + 0x4000000, 64, NULL, false };
	const struct dirty_range all = ALL(&T);
	struct dirty_vfio_devlog_config lcfg = { .device_fd = m.device };
	struct dirty_vfio_type1_config tcfg = { .container_fd = m.container };
	struct dirty_gp_config gcfg = { .gpa = T.gpa, .len = T.pages * P,
					.pinned = DIRTY_GP_PINNED_SEND, .heartbeat_timeout_ms = 2000 };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_gp *gp = NULL;
	struct dirty_guest *g = NULL;
	struct dirty_view *vl = NULL, *vm = NULL;
	uint64_t row[2][3] = { { 0 } };	/* [round][type1, devlog view, merged view] */
	struct dirty_vfio_type1_stats s0, s1;

	printf("vm_devlog: ---- 9 table: the same device writes, four ways\n");
	TRY(buf_map(&T));
	/* The DMA log in one view; type1 covered by the guest protocol in another. */
	TRY(new_view(&vl));
	TRY(dirty_vfio_devlog_create(vl, &lcfg, &d));
	TRY(dirty_vfio_devlog_add_mapping(d, T.iova, T.gpa, T.pages * P));
	TRY(new_view(&vm));
	TRY(dirty_vfio_type1_create(vm, &tcfg, &t));
	TRY(dirty_vfio_type1_add_mapping(t, T.iova, T.gpa, T.pages * P));
	TRY(dirty_gp_create(vm, &gcfg, &gp));
	TRY(dirty_guest_open_fd(dirty_gp_fd(gp), &g));
	TRY(dirty_guest_agent_start(g, 10));
	TRY(dirty_source_cover(dirty_gp_source(gp), dirty_vfio_type1_source(t)));
	TRY(dirty_view_start(vl));
	TRY(dirty_view_start(vm));
	TRY(dirty_view_sync(vm));
	expect(vl, "9 start (DMA log view): every page", &all, 1, NULL);
	expect(vm, "9 start + first sync (merged view): every page", &all, 1, NULL);
	TRY(dirty_view_sync(vm));
	expect(vm, "9 idle sync (merged view): type1's pages covered", NULL, 0, NULL);

	/*
	 * Round 1. The guest driver maps RX buffers T[5..7], T[20], T[30] from
	 * the device and a TX buffer T[40] to it; the device writes T[5..7],
	 * T[20] (dma_rw only), T[30] (and keeps it pinned: a ring), and pins
	 * T[40] to read it; the driver unmaps all but the ring.
	 */
	TRY(dirty_guest_map(g, T.gpa + 5 * P, 3 * P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_map(g, T.gpa + 20 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_map(g, T.gpa + 30 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_map(g, T.gpa + 40 * P, P, DIRTY_TO_DEVICE));
	if (!dev_write(&T, 5, 3, 0) || !dev_write(&T, 20, 1, LDTEST_F_NO_PIN) ||
	    !dev_write(&T, 30, 1, LDTEST_F_KEEP_PINNED) || !dev_write(&T, 40, 1, LDTEST_F_NO_DATA))
		goto out;
	TRY(dirty_guest_unmap(g, T.gpa + 5 * P, 3 * P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_unmap(g, T.gpa + 20 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_unmap(g, T.gpa + 40 * P, P, DIRTY_TO_DEVICE));
	{
		const struct dirty_range w[] = { R(&T, 5, 3), R(&T, 20, 1), R(&T, 30, 1) };

		TRY(dirty_view_sync(vl));
		s0 = t1_stats(t);
		TRY(dirty_view_sync(vm));
		s1 = t1_stats(t);
		row[0][0] = s1.pages_reported - s0.pages_reported;
		row[0][1] = expect(vl, "9 round 1, DMA log: exactly the 5 pages written", w, 3, NULL);
		row[0][2] = expect(vm, "9 round 1, merged view: the 4 unmapped RX pages and the pinned ring page",
				   w, 3, NULL);
		CHECK_EQ("9 round 1, type1 reported (written or pinned: + T[40])", 6, row[0][0]);
	}
	/* Round 2: nothing happens; the ring page stays pinned. */
	{
		const struct dirty_range ring = R(&T, 30, 1);

		TRY(dirty_view_sync(vl));
		s0 = t1_stats(t);
		TRY(dirty_view_sync(vm));
		s1 = t1_stats(t);
		row[1][0] = s1.pages_reported - s0.pages_reported;
		row[1][1] = expect(vl, "9 round 2 (idle), DMA log: nothing", NULL, 0, NULL);
		row[1][2] = expect(vm, "9 round 2 (idle), merged view: the pinned ring page (policy SEND)",
				   &ring, 1, NULL);
		CHECK_EQ("9 round 2, type1 reported (the pinned page)", 1, row[1][0]);
	}
	printf("vm_devlog: TABLE %-34s %8s %12s %14s %10s %8s\n", "round (64 mapped pages)", "written",
	       "type1+edu", "type1 pinned", "DMA log", "merged");
	printf("vm_devlog: TABLE %-34s %8u %12s %14" PRIu64 " %10" PRIu64 " %8" PRIu64 "\n",
	       "1: 5 written, 1 pinned to read", 5u, "64 (t_vm_type1)", row[0][0], row[0][1], row[0][2]);
	printf("vm_devlog: TABLE %-34s %8u %12s %14" PRIu64 " %10" PRIu64 " %8" PRIu64 "\n",
	       "2: idle, 1 page kept pinned", 0u, "64 (t_vm_type1)", row[1][0], row[1][1], row[1][2]);
	add_result("table=%" PRIu64 "/%" PRIu64 "/%" PRIu64 ",%" PRIu64 "/%" PRIu64 "/%" PRIu64 " ",
		   row[0][0], row[0][1], row[0][2], row[1][0], row[1][1], row[1][2]);
out:
	dev_unpin_all();
	if (g)
		dirty_guest_unmap(g, T.gpa + 30 * P, P, DIRTY_FROM_DEVICE);
	dirty_vfio_devlog_destroy(d);
	dirty_vfio_type1_destroy(t);
	dirty_guest_close(g);
	dirty_gp_destroy(gp);
	dirty_view_free(vl);
	dirty_view_free(vm);
	buf_free(&T);
}

/* ---- 10: a kernel that cannot REPORT (Debian 6.12) ------------------------------- */

static void part_noreport(void)
{
	struct dirty_vfio_devlog_config cfg = { .device_fd = m.device };
	const struct dirty_range all[] = { ALL(&A), ALL(&B), ALL(&C) };
	struct dirty_vfio_devlog *d = NULL;
	struct dirty_view *v = NULL;
	unsigned eopnotsupp = 0;

	printf("vm_devlog: ---- 10 noreport: START works, REPORT fails EOPNOTSUPP in the VFIO core\n");
	TRY(map_abc());
	TRY(new_view(&v));
	TRY(dirty_vfio_devlog_create(v, &cfg, &d));
	TRY(add_abc(d));
	TRY(dirty_view_start(v));
	expect(v, "10 start", all, 3, NULL);
	CHECK_EQ("10 ranges logged (START reaches ldtest)", 2, reg32(LDTEST_REG_LOG_RANGES));
	for (int i = 0; i < 4; i++) {
		char what[96];
		int rc;

		if (!dev_write(&A, (uint64_t)i, 1, 0))
			goto out;
		rc = dirty_view_sync(v);
		if (rc == -EOPNOTSUPP) {
			eopnotsupp++;
			if (strstr(dirty_last_error(), "IOMMUFD_DRIVER"))
				ok("10 sync %d: EOPNOTSUPP: %s", i, dirty_last_error());
			else
				fail("10 sync %d: EOPNOTSUPP without saying why: %s", i, dirty_last_error());
		} else if (rc) {
			fail("10 sync %d: expected EOPNOTSUPP or 0 (a restart), got %d: %s", i, rc,
			     dirty_last_error());
		}
		snprintf(what, sizeof(what), "10 sync %d (%s): every mapped page marked", i,
			 rc ? "REPORT failed" : "the log restarted");
		expect(v, what, all, 3, NULL);
	}
	CHECK_EQ("10 syncs whose REPORT failed (every other: the next restarts the log)", 2, eopnotsupp);
	/* After the last restart the final REPORT fails too: all marked, the error returned. */
	check_err("10 final", -EOPNOTSUPP, dirty_view_final(v), "IOMMUFD_DRIVER");
	expect(v, "10 final: every mapped page", all, 3, NULL);
	add_result("noreport_syncs_all_marked=4 ");
out:
	dirty_vfio_devlog_destroy(d);
	dirty_view_free(v);
	free_abc();
}

/* ---- main ------------------------------------------------------------------------ */

static void (*const parts[])(void) = {
	NULL, part_exact, part_align, part_ranges, part_unmap, part_window, part_manual,
	part_errors, part_type1, part_table, part_noreport,
};
static const char *const part_names[] = {
	"", "exact", "align", "ranges", "unmap", "window", "manual", "errors", "type1", "table",
	"noreport",
};
#define NPARTS (sizeof(parts) / sizeof(parts[0]))

int main(int argc, char **argv)
{
	bool run[NPARTS] = { false }, no_report = false, chosen = false;
	uint32_t magic;
	int rc;

	vm_check_init("vm_devlog", false);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--no-report")) {
			no_report = true;
		} else if (!strcmp(argv[i], "--part") && i + 1 < argc) {
			char *s = argv[++i], *end;

			for (;;) {
				unsigned long n = strtoul(s, &end, 10);

				if (end == s || n == 0 || n >= NPARTS) {
					fprintf(stderr, "vm_devlog: bad --part '%s'\n", argv[i]);
					return 2;
				}
				run[n] = chosen = true;
				if (*end != ',')
					break;
				s = end + 1;
			}
		} else {
			fprintf(stderr, "usage: vm_devlog [--part N[,N...]] [--no-report]\n");
			return 2;
		}
	}
	if (!chosen) {
		for (size_t n = 1; n < NPARTS; n++)
			run[n] = no_report ? (n == 8 || n == 10) : n != 10;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (getrandom(&pattern, sizeof(pattern), 0) != (ssize_t)sizeof(pattern))
		pattern = 0x6c64746573740002ull ^ (uint64_t)getpid();
	rc = mdev_dev_open(&m, LDTEST_MDEV_TYPE_NAME);
	if (rc) {
		printf("vm_devlog: FAIL cannot set up an ldtest mdev: %s\n", strerror(-rc));
		printf("vm_devlog: RESULT failures=1\n");
		return 1;
	}
	magic = reg32(LDTEST_REG_MAGIC);
	printf("vm_devlog: mdev %s in IOMMU group %d, magic %#x, pattern %#" PRIx64 "\n", m.uuid,
	       m.group_id, magic, pattern);
	if (magic != LDTEST_MAGIC) {
		fail("ldtest magic: expected %#x, got %#x", LDTEST_MAGIC, magic);
	} else {
		for (size_t n = 1; n < NPARTS; n++) {
			double t0;

			if (!run[n])
				continue;
			t0 = now_ms();
			parts[n]();
			printf("vm_devlog: part %zu took %.0f ms (%s)\n", n, now_ms() - t0, part_names[n]);
		}
	}
	add_result("checks=%d ", checks);
	rc = mdev_dev_close(&m);
	if (rc)
		fail("closing the device and removing the mdev: %s", strerror(-rc));
	printf("vm_devlog: RESULT %sfailures=%d\n", result, failures);
	return failures ? 1 : 0;
}
