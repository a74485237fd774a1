/* vm_smoke.c - the VM tier's smoke test, guest side (run by t_vm_smoke.sh).
 *
 * 1. edu through vfio-pci: DMA-map a buffer of --pages pages, start type1
 *    dirty tracking, query it, let edu copy a pattern page RAM -> device ->
 *    another page (device -> RAM), check the bytes arrived, query again and
 *    print how many pages type1 calls dirty (it cannot see DMA, so it calls
 *    every mapped page dirty). The DMA'd page must be among them.
 * 2. With --shm: find the ivshmem device, mmap BAR 2 through sysfs, check the
 *    host's pattern (first line and last 64 bytes) and write a reply line at
 *    offset 4096 for the host to check after the guest exits.
 *
 * Prints "vm_smoke: RESULT key=value..." and exits 0, or 1 on any failure.
 */
#include "vfio-edu.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>

#define PAGE 4096u
#define IOVA_BASE 0x100000ull
#define SHM_MAGIC "LIBDIRTY-VM-SMOKE"
#define SHM_REPLY_OFF 4096u
#define SHM_TAIL_LEN 64u

static unsigned popcount_bits(const uint64_t *bits, size_t nbits)
{
	unsigned n = 0;

	for (size_t i = 0; i < nbits; i++)
		n += (bits[i / 64] >> (i % 64)) & 1;
	return n;
}

static uint8_t pattern_byte(size_t i)
{
	return (uint8_t)(i * 131u + 7u + (i >> 8));
}

struct dma_result {
	unsigned pages, dirty_before, dirty_after;
	bool dma_ok, dma_page_dirty;
};

static int run_edu(unsigned pages, struct dma_result *r)
{
	struct vfio_edu e;
	uint64_t pgsize = 0, size = (uint64_t)pages * PAGE;
	size_t bitmap_bytes = ((size_t)pages + 63) / 64 * 8;
	unsigned src_page = 0, dst_page = pages / 2;
	uint64_t *bitmap = NULL;
	uint8_t *buf;
	bool mapped = false, tracking = false;
	int rc;

	memset(r, 0, sizeof(*r));
	r->pages = pages;
	rc = vfio_edu_open(&e);
	if (rc)
		return rc;
	printf("vm_smoke: edu %s in IOMMU group %d bound to vfio-pci, BAR 0 %zu KiB\n",
	       e.bdf, e.group_id, e.bar0_size / 1024);

	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bitmap = calloc(1, bitmap_bytes);
	if (buf == MAP_FAILED || !bitmap) {
		fprintf(stderr, "vm_smoke: out of memory\n");
		rc = -ENOMEM;
		goto out;
	}
	memset(buf, 0, size);
	for (size_t i = 0; i < PAGE; i++)
		buf[src_page * PAGE + i] = pattern_byte(i);

	rc = vfio_type1_map_dma(e.container, buf, IOVA_BASE, size);
	if (rc)
		goto out;
	mapped = true;
	rc = vfio_type1_dirty_pgsize(e.container, &pgsize);
	if (rc)
		goto out;
	if (pgsize != PAGE) {
		fprintf(stderr, "vm_smoke: type1 dirty page size is %" PRIu64 ", not %u\n", pgsize, PAGE);
		rc = -EINVAL;
		goto out;
	}
	printf("vm_smoke: %u pages DMA-mapped at IOVA %#llx, type1 dirty page size %" PRIu64 "\n",
	       pages, (unsigned long long)IOVA_BASE, pgsize);

	rc = vfio_type1_dirty_start(e.container);
	if (rc)
		goto out;
	tracking = true;
	rc = vfio_type1_dirty_get(e.container, IOVA_BASE, size, pgsize, bitmap, bitmap_bytes);
	if (rc)
		goto out;
	r->dirty_before = popcount_bits(bitmap, pages);

	/* Pattern page -> edu's buffer -> the destination page (4095 bytes). */
	rc = edu_dma(&e, false, IOVA_BASE + src_page * PAGE, 0, EDU_DMA_MAX);
	if (rc)
		goto out;
	rc = edu_dma(&e, true, IOVA_BASE + dst_page * PAGE, 0, EDU_DMA_MAX);
	if (rc)
		goto out;

	r->dma_ok = true;
	for (size_t i = 0; i < EDU_DMA_MAX; i++) {
		if (buf[dst_page * PAGE + i] != pattern_byte(i)) {
			fprintf(stderr, "vm_smoke: DMA'd page %u byte %zu is %#x, want %#x\n",
				dst_page, i, buf[dst_page * PAGE + i], pattern_byte(i));
			r->dma_ok = false;
			break;
		}
	}
	if (buf[dst_page * PAGE + EDU_DMA_MAX] != 0) {
		fprintf(stderr, "vm_smoke: byte %u of page %u changed; the DMA wrote too much\n",
			EDU_DMA_MAX, dst_page);
		r->dma_ok = false;
	}
	for (unsigned p = 1; p < pages && r->dma_ok; p++) {
		if (p == dst_page)
			continue;
		for (size_t i = 0; i < PAGE; i++) {
			if (buf[p * PAGE + i]) {
				fprintf(stderr, "vm_smoke: page %u byte %zu changed; the DMA went astray\n", p, i);
				r->dma_ok = false;
				break;
			}
		}
	}
	if (r->dma_ok)
		printf("vm_smoke: edu DMA of %u bytes into page %u arrived intact\n", EDU_DMA_MAX, dst_page);

	rc = vfio_type1_dirty_get(e.container, IOVA_BASE, size, pgsize, bitmap, bitmap_bytes);
	if (rc)
		goto out;
	r->dirty_after = popcount_bits(bitmap, pages);
	r->dma_page_dirty = (bitmap[dst_page / 64] >> (dst_page % 64)) & 1;
	printf("vm_smoke: type1 dirty pages: %u/%u before the DMA, %u/%u after; the DMA'd page %s\n",
	       r->dirty_before, pages, r->dirty_after, pages,
	       r->dma_page_dirty ? "is among them" : "is NOT reported dirty");
out:
	if (tracking && vfio_type1_dirty_stop(e.container) && !rc)
		rc = -EIO;
	if (mapped && vfio_type1_unmap_dma(e.container, IOVA_BASE, size) && !rc)
		rc = -EIO;
	if (buf != MAP_FAILED)
		munmap(buf, size);
	free(bitmap);
	vfio_edu_close(&e);
	return rc;
}

/* The host wrote "LIBDIRTY-VM-SMOKE host nonce=N\n" at 0 and
 * "LIBDIRTY-VM-SMOKE tail nonce=N\n" in the last 64 bytes; answer at 4096. */
static int run_ivshmem(const struct dma_result *r)
{
	char bdf[32], head[128], tail[SHM_TAIL_LEN + 1], want[128], reply[256], nonce[64];
	volatile char *shm = NULL;
	volatile void *map;
	struct utsname uts;
	size_t len, i;
	int rc;

	rc = vm_pci_find(IVSHMEM_VENDOR, IVSHMEM_DEVICE, 0, bdf, sizeof(bdf));
	if (rc)
		return rc;
	rc = vm_pci_map_bar(bdf, 2, &map, &len);
	if (rc)
		return rc;
	shm = map;
	if (len < 2 * SHM_REPLY_OFF) {
		fprintf(stderr, "vm_smoke: ivshmem BAR 2 of %s is only %zu bytes\n", bdf, len);
		rc = -EINVAL;
		goto out;
	}
	for (i = 0; i < sizeof(head) - 1 && shm[i] != '\n' && shm[i]; i++)
		head[i] = shm[i];
	head[i] = '\0';
	for (i = 0; i < SHM_TAIL_LEN; i++)
		tail[i] = shm[len - SHM_TAIL_LEN + i];
	tail[SHM_TAIL_LEN] = '\0';
	tail[strcspn(tail, "\n")] = '\0';
	if (sscanf(head, SHM_MAGIC " host nonce=%63s", nonce) != 1) {
		fprintf(stderr, "vm_smoke: ivshmem %s starts with '%s', not the host's pattern\n", bdf, head);
		rc = -EINVAL;
		goto out;
	}
	snprintf(want, sizeof(want), SHM_MAGIC " tail nonce=%s", nonce);
	if (strcmp(tail, want)) {
		fprintf(stderr, "vm_smoke: the last 64 bytes of ivshmem %s read '%s', want '%s'\n",
			bdf, tail, want);
		rc = -EINVAL;
		goto out;
	}
	printf("vm_smoke: ivshmem %s: %zu KiB BAR 2, host pattern nonce=%s found at both ends\n",
	       bdf, len / 1024, nonce);
	uname(&uts);
	snprintf(reply, sizeof(reply), SHM_MAGIC " guest nonce=%s kernel=%s dma=%s type1=%u/%u,%u/%u\n",
		 nonce, uts.release, r->dma_ok ? "ok" : "bad", r->dirty_before, r->pages,
		 r->dirty_after, r->pages);
	for (i = 0; i <= strlen(reply); i++)
		shm[SHM_REPLY_OFF + i] = reply[i];
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
out:
	vm_pci_unmap_bar(map, len);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: vm_smoke [--pages N] [--shm]\n"
		   "  --pages N  DMA-map N pages (8..4096, default 64)\n"
		   "  --shm      also check the ivshmem device against the host's pattern\n");
}

int main(int argc, char **argv)
{
	unsigned pages = 64;
	bool shm = false;
	struct dma_result r;
	struct utsname uts;
	int rc, rc_shm = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--shm")) {
			shm = true;
		} else if (!strcmp(argv[i], "--pages") && i + 1 < argc) {
			pages = (unsigned)strtoul(argv[++i], NULL, 0);
			if (pages < 8 || pages > 4096) {
				usage(stderr);
				return 2;
			}
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	rc = run_edu(pages, &r);
	if (shm)
		rc_shm = run_ivshmem(&r);
	uname(&uts);
	printf("vm_smoke: RESULT kernel=%s pages=%u dirty_before=%u dirty_after=%u dma_page_dirty=%d dma=%s ivshmem=%s\n",
	       uts.release, r.pages, r.dirty_before, r.dirty_after, r.dma_page_dirty,
	       rc ? "error" : r.dma_ok ? "ok" : "bad", !shm ? "skipped" : rc_shm ? "error" : "ok");
	/* A precise or a coarse tracker must report the page the device wrote. */
	return rc || rc_shm || !r.dma_ok || !r.dma_page_dirty ? 1 : 0;
}
