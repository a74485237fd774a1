/* vm_guestlib.c - the guest library in a real Linux guest, guest side (run
 * by t_vm_guestlib.sh; the host side is tests/vm/host/gp_host.c).
 *
 * The host created a guest-protocol region (dirty_gp_create at a /dev/shm
 * path) and QEMU exposes that file as the ivshmem-plain BAR 2. This
 * program is a userspace DMA driver of QEMU's edu device, bound to
 * vfio-pci in a type1 container, that reports its DMA through the guest
 * library exactly as a driver should:
 *
 *   - it finds the ivshmem device by its PCI ids (1af4:1110) in sysfs and
 *     opens its resource2 with dirty_guest_open_path (the BAR, a power of
 *     two, is larger than the protocol region: the library must accept it);
 *   - its buffers are DMA-mapped with VFIO_IOMMU_MAP_DMA, and their
 *     guest-physical pieces come from dirty_guest_pieces();
 *   - it reports with the vectored calls dirty_guest_map_v,
 *     dirty_guest_sync_for_cpu_v and dirty_guest_unmap_v over those pieces,
 *     mapping only the bytes edu touches, so the pages the host must see are
 *     exactly the pages the device accessed;
 *   - of the FROM_DEVICE ranges edu writes, the first two are synced for
 *     the CPU while mapped (as a driver completes ring entries) and the
 *     other two only unmapped, so the host sees each call's own dirty
 *     bits: a wrong direction in either call loses pages it can name.
 *
 * The host checks what it sees at each step. Host and guest step each
 * other through a TEST-ONLY mailbox in the BAR's last 4 KiB, past the
 * protocol region (mbox-guestlib.h; nobody else uses those bytes; it is no
 * part of the protocol). Each side publishes its step number with a release
 * store after the data of that step, and waits (with a timeout) for the
 * other's.
 * Steps, with what the host checks when the guest reaches them:
 *
 *   1 OPENED       region opened (guest state RUNNING), agent NOT started:
 *                  dirty_view_start() waits, dirty_gp_acked() is 0
 *   2 AGENT        dirty_guest_agent_start ran: start returns, acked, TRUSTED;
 *                  the host drains the first pass (the whole range)
 *   3 TO_MAPPED    a 2-page TO_DEVICE buffer mapped: exactly its pages pinned
 *   4 TO_DONE      edu read it (RAM -> device), unmapped: nothing dirty, no pin
 *   5 FROM_MAPPED  6 pages of a FROM_DEVICE buffer mapped: exactly those
 *                  pinned; a sync finds nothing dirty
 *   6 FROM_SYNCED  edu wrote them (device -> RAM); sync_for_cpu_v of the 3
 *                  pages of the first two ranges (bytes checked): all 6
 *                  still pinned, a sync finds exactly 3 pages dirty, which
 *                  the host's claim keeps back (policy DEFER: still pinned)
 *   7 FROM_DONE    unmap_v of all (every byte of the buffer checked): a sync
 *                  + drain gives exactly the 6 pages (3 from the unmap's
 *                  dirty bits alone, 3 carried since step 6), no pin
 *   8 CLOSED       dirty_guest_close: guest state STOPPED, no leak, no conflict
 *
 * Every line is "vm_guestlib: ..." on the console; the last is "vm_guestlib:
 * RESULT ...". Exit 0 when the guest's own part went through.
 */
#include "vfio-edu.h"
#include "mbox-guestlib.h"
#include "vm-check.h"
#include "vm-time.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <libdirty.h>
#include <libdirty/guest.h>
#include <libdirty/proto.h>

#define P ((uint64_t)4096)

/* How long the guest waits for the host to check one step. */
#define HOST_WAIT_MS 30000

/* ---- the DMA plan --------------------------------------------------------- */

#define TO_IOVA 0x00100000ull	/* both below edu's 1 << 28 DMA mask */
#define FROM_IOVA 0x00200000ull
#define TO_BUF_PAGES 2u
#define FROM_BUF_PAGES 16u

/* edu reads TO_BUF [2048, +4095): pages 0 and 1, into its buffer at 0. */
#define TO_OFF 2048u
#define TO_COUNT EDU_DMA_MAX

/*
 * edu writes its buffer's first `count` bytes (what it read from TO_BUF at
 * TO_OFF) at these offsets of the 16-page FROM buffer: pages 1-2 (across a
 * boundary), 5 (its first bytes), 8-9 (a few bytes either side of a
 * boundary), 15 (its last byte). The other ten pages keep their sentinel:
 * edu never touches them, and they are not mapped for the protocol. The
 * first SYNCED_DMAS ranges are synced for the CPU while mapped, the rest
 * only unmapped: FROM_PAGES pages (SYNCED_PAGES synced) and TO_PAGES, the
 * plan mbox-guestlib.h shares with gp_host.c.
 */
static const struct {
	uint32_t off, count;
} from_plan[] = {
	{ 1 * 4096 + 2048, 4095 },
	{ 5 * 4096, 64 },
	{ 8 * 4096 + 4000, 200 },
	{ 16 * 4096 - 1, 1 },
};
#define FROM_DMAS (sizeof(from_plan) / sizeof(from_plan[0]))
#define SYNCED_DMAS 2u
#define SENTINEL 0xee

/* Pieces: each planned range is at most two pages, so two pieces. */
#define MAX_PIECES (2 * FROM_DMAS + 2)

static struct vfio_edu edu;
static volatile struct gl_mbox *mb;
/*
 * Give up: say why on the console and in the mailbox (so the host prints
 * it with its own view), then exit 1. Only the guest writes guest_msg.
 */
__attribute__((format(printf, 1, 2), noreturn))
static void die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("vm_guestlib: FAIL %s\n", msg);
	printf("vm_guestlib: RESULT failed\n");
	fflush(stdout);
	if (mb)
		vm_mbox_give_up(mb->h.guest_msg, &mb->h.guest_failed, msg);
	exit(1);
}

/* A library call that must work: the library's message on failure. */
#define LIB(call) do { \
		long long rc_ = (long long)(call); \
		if (rc_ < 0) \
			die("%s = %lld (%s): %s%s", #call, rc_, strerror((int)-rc_), \
			    dirty_guest_last_error(), dirty_last_error()); \
	} while (0)
/* A helper call (vfio-edu.c prints its own reason to stderr). */
#define TRY(call) do { \
		int rc_ = (call); \
		if (rc_ < 0) \
			die("%s = %d (%s)", #call, rc_, strerror(-rc_)); \
	} while (0)

/* Publish step s (after its data), then wait for the host to check it. */
static void step(enum gl_step s, const char *what)
{
	double start = now_ms();
	char msg[VM_MBOX_MSG];

	vm_mbox_publish(&mb->h.guest_step, s);
	say("step %d %s: waiting for the host", (int)s, what);
	switch (vm_mbox_wait_host(&mb->h, s, HOST_WAIT_MS, msg)) {
	case 0:
		break;
	case -ECANCELED:
		die("the host gave up at step %d: %s", (int)s, msg);
	default:
		die("step %d %s: the host did not answer within %d ms (host step %u)",
		    (int)s, what, HOST_WAIT_MS, vm_mbox_load(&mb->h.host_step));
	}
	say("step %d %s: host checked it (%.1f ms)", (int)s, what, now_ms() - start);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The pages the pieces touch, sorted, repeats dropped, into pages[max];
 * returns how many (more than max: the caller fails).
 */
static size_t pages_of(const struct dirty_dma_piece *pc, size_t n, uint64_t *pages, size_t max)
{
	uint64_t tmp[2 * MAX_PIECES * 2];
	size_t k = 0, out = 0;

	for (size_t i = 0; i < n; i++)
		for (uint64_t a = pc[i].gpa & ~(P - 1); a < pc[i].gpa + pc[i].len; a += P) {
			if (k == sizeof(tmp) / sizeof(tmp[0]))
				return SIZE_MAX;
			tmp[k++] = a;
		}
	qsort(tmp, k, sizeof(tmp[0]), cmp_u64);
	for (size_t i = 0; i < k; i++) {
		if (i && tmp[i] == tmp[i - 1])
			continue;
		if (out < max)
			pages[out] = tmp[i];
		out++;
	}
	return out;
}

/* Append the guest-physical pieces of [va, va + len) to pc[*n .. max). */
static void add_pieces(const void *va, size_t len, struct dirty_dma_piece *pc, size_t *n,
		       size_t max, const char *what)
{
	ssize_t got = dirty_guest_pieces(va, len, pc + *n, max - *n);
	uint64_t sum = 0;

	if (got < 0)
		die("dirty_guest_pieces(%s, %zu bytes) = %zd: %s", what, len, got, dirty_guest_last_error());
	if ((size_t)got > max - *n)
		die("%s: %zd pieces, room for %zu", what, got, max - *n);
	for (ssize_t i = 0; i < got; i++)
		sum += pc[*n + (size_t)i].len;
	if (sum != len)
		die("%s: pieces add up to %" PRIu64 " bytes, not %zu", what, sum, len);
	for (ssize_t i = 0; i < got; i++)
		say("  %s piece %zd: GPA %#" PRIx64 " +%" PRIu64, what, i, pc[*n + (size_t)i].gpa,
		    pc[*n + (size_t)i].len);
	*n += (size_t)got;
}

static uint8_t pattern(size_t i)
{
	/* Never SENTINEL-only: a byte edu did not write shows. */
	return (uint8_t)(i * 37u + 11u + (i >> 7));
}

/*
 * Check FROM buffer bytes [0, upto): the first `dmas` planned ranges hold
 * what edu copied (the TO pattern from TO_OFF on), the rest the sentinel.
 */
static void check_from(const uint8_t *buf, size_t upto_dmas, const char *when)
{
	for (size_t off = 0; off < FROM_BUF_PAGES * P; off++) {
		int want = SENTINEL;
		bool later = false;

		for (size_t i = 0; i < FROM_DMAS; i++)
			if (off >= from_plan[i].off && off - from_plan[i].off < from_plan[i].count) {
				if (i < upto_dmas)
					want = pattern(TO_OFF + (off - from_plan[i].off));
				else
					later = true;
			}
		/* Bytes of ranges the CPU may not look at yet are skipped. */
		if (later)
			continue;
		if (buf[off] != want)
			die("%s: FROM buffer byte %#zx (page %zu) is %#x, expected %#x", when, off,
			    off / P, buf[off], (unsigned)want);
	}
}

static uint8_t *alloc_pages(unsigned pages, uint8_t fill)
{
	void *p = mmap(NULL, pages * P, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED)
		die("mmap of %u pages: %s", pages, strerror(errno));
	memset(p, fill, pages * P);
	return p;
}

/* Find the ivshmem device, map BAR 2 for the mailbox, check it. */
static void map_mailbox(char *bdf, size_t bdflen, size_t *bar_len)
{
	volatile void *bar;
	volatile struct gl_mbox *m;

	TRY(vm_pci_find(IVSHMEM_VENDOR, IVSHMEM_DEVICE, 0, bdf, bdflen));
	/* Also enables the BAR's memory decoding, before the library maps it. */
	TRY(vm_pci_map_bar(bdf, 2, &bar, bar_len));
	if (*bar_len < 2 * VM_MBOX_SIZE)
		die("ivshmem %s BAR 2 is %zu bytes: no room for the test mailbox", bdf, *bar_len);
	m = (volatile struct gl_mbox *)((volatile uint8_t *)bar + *bar_len - VM_MBOX_SIZE);
	if (m->h.magic != GL_MBOX_MAGIC)
		die("ivshmem %s: no test mailbox at BAR offset %#zx (magic %#" PRIx64 "); was the host program started?",
		    bdf, *bar_len - VM_MBOX_SIZE, (uint64_t)m->h.magic);
	mb = m;
	mb->h.bar_size = *bar_len;
}

int main(void)
{
	struct dirty_dma_piece to_pc[MAX_PIECES], from_pc[MAX_PIECES];
	size_t nto = 0, nfrom = 0, nsync_pc = 0, bar_len = 0;
	uint64_t to_pages[GL_MBOX_MAX_PAGES], from_pages[GL_MBOX_MAX_PAGES], sync_pages[GL_MBOX_MAX_PAGES];
	struct dirty_proto_layout lay;
	struct dirty_guest_info info;
	struct dirty_guest *g = NULL;
	char bdf[32], path[96];
	struct utsname u;
	uint8_t *to_buf, *from_buf;
	size_t n;

	vm_check_init("vm_guestlib", true);
	setvbuf(stdout, NULL, _IOLBF, 0);
	uname(&u);
	map_mailbox(bdf, sizeof(bdf), &bar_len);
	say("kernel %s; ivshmem %s: BAR 2 %zu bytes, test mailbox at %#zx", u.release, bdf,
	    bar_len, bar_len - VM_MBOX_SIZE);

	/* edu through VFIO, its two buffers DMA-mapped before any report. */
	TRY(vfio_edu_open(&edu));
	to_buf = alloc_pages(TO_BUF_PAGES, 0);
	for (size_t i = 0; i < TO_BUF_PAGES * P; i++)
		to_buf[i] = pattern(i);
	from_buf = alloc_pages(FROM_BUF_PAGES, SENTINEL);
	TRY(vfio_type1_map_dma(edu.container, to_buf, TO_IOVA, TO_BUF_PAGES * P));
	TRY(vfio_type1_map_dma(edu.container, from_buf, FROM_IOVA, FROM_BUF_PAGES * P));
	say("edu %s on vfio-pci (group %d); TO buffer %u pages at IOVA %#llx, FROM buffer %u pages at IOVA %#llx",
	    edu.bdf, edu.group_id, TO_BUF_PAGES, TO_IOVA, FROM_BUF_PAGES, FROM_IOVA);

	/* Guest-physical pieces of exactly the bytes edu will touch. */
	add_pieces(to_buf + TO_OFF, TO_COUNT, to_pc, &nto, MAX_PIECES, "TO");
	for (size_t i = 0; i < FROM_DMAS; i++) {
		add_pieces(from_buf + from_plan[i].off, from_plan[i].count, from_pc, &nfrom,
			   MAX_PIECES, i < SYNCED_DMAS ? "FROM (synced)" : "FROM");
		/* The synced ranges come first: from_pc[0 .. nsync_pc). */
		if (i + 1 == SYNCED_DMAS)
			nsync_pc = nfrom;
	}
	n = pages_of(to_pc, nto, to_pages, GL_MBOX_MAX_PAGES);
	if (n != TO_PAGES)
		die("the TO pieces touch %zu pages, the plan says %u", n, TO_PAGES);
	n = pages_of(from_pc, nfrom, from_pages, GL_MBOX_MAX_PAGES);
	if (n != FROM_PAGES)
		die("the FROM pieces touch %zu pages, the plan says %u", n, FROM_PAGES);
	n = pages_of(from_pc, nsync_pc, sync_pages, GL_MBOX_MAX_PAGES);
	if (n != SYNCED_PAGES)
		die("the synced FROM pieces touch %zu pages, the plan says %u", n, SYNCED_PAGES);

	/* ---- 1: open; the agent stays off until the host has looked ---- */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/resource2", bdf);
	LIB(dirty_guest_open_path(path, &g));
	LIB(dirty_guest_info(g, &info));
	if (dirty_proto_layout(info.npages, &lay) || lay.region_size > bar_len - VM_MBOX_SIZE)
		die("the protocol region (%" PRIu64 " pages) overlaps the test mailbox", info.npages);
	say("opened %s: %" PRIu64 " pages of %" PRIu64 " bytes from GPA %#" PRIx64
	    ", protocol v%u.%u, region %" PRIu64 " bytes in a %zu-byte BAR, tracking %d",
	    path, info.npages, info.page_size, info.gpa_base, info.host_major, info.host_minor,
	    lay.region_size, bar_len, info.tracking);
	step(STEP_OPENED, "region open, agent not started");

	/* ---- 2: the agent acknowledges the host's generation ---- */
	LIB(dirty_guest_agent_start(g, 10));
	step(STEP_AGENT, "agent started");
	LIB(dirty_guest_info(g, &info));
	if (!info.tracking)
		die("the host's tracking flag is off after the handshake");

	/* ---- 3, 4: TO_DEVICE: pinned while mapped, never dirty ---- */
	for (size_t i = 0; i < TO_PAGES; i++)
		mb->to[i] = to_pages[i];
	mb->nto = TO_PAGES;
	LIB(dirty_guest_map_v(g, to_pc, nto, DIRTY_TO_DEVICE));
	step(STEP_TO_MAPPED, "TO_DEVICE mapped");
	TRY(edu_dma(&edu, false, TO_IOVA + TO_OFF, 0, TO_COUNT));
	LIB(dirty_guest_unmap_v(g, to_pc, nto, DIRTY_TO_DEVICE));
	say("edu read %u bytes RAM -> device from IOVA %#llx", TO_COUNT, TO_IOVA + TO_OFF);
	step(STEP_TO_DONE, "TO_DEVICE read by edu and unmapped");

	/* ---- 5, 6, 7: FROM_DEVICE: pinned, written, synced, unmapped ---- */
	for (size_t i = 0; i < FROM_PAGES; i++)
		mb->from[i] = from_pages[i];
	mb->nfrom = FROM_PAGES;
	LIB(dirty_guest_map_v(g, from_pc, nfrom, DIRTY_FROM_DEVICE));
	step(STEP_FROM_MAPPED, "FROM_DEVICE mapped");
	for (size_t i = 0; i < FROM_DMAS; i++)
		TRY(edu_dma(&edu, true, FROM_IOVA + from_plan[i].off, 0, from_plan[i].count));
	/*
	 * The first ranges are handed to the CPU while the mapping stays: it
	 * may look at them now. edu wrote what it had read from the TO
	 * buffer, so the TO read happened too.
	 */
	LIB(dirty_guest_sync_for_cpu_v(g, from_pc, nsync_pc, DIRTY_FROM_DEVICE));
	check_from(from_buf, SYNCED_DMAS, "after sync_for_cpu_v");
	for (size_t i = 0; i < SYNCED_PAGES; i++)
		mb->synced[i] = sync_pages[i];
	mb->nsynced = SYNCED_PAGES;
	say("edu wrote %zu ranges device -> RAM; the %u synced ranges checked", FROM_DMAS, SYNCED_DMAS);
	step(STEP_FROM_SYNCED, "FROM_DEVICE written by edu, 2 of 4 ranges synced for the CPU");
	LIB(dirty_guest_unmap_v(g, from_pc, nfrom, DIRTY_FROM_DEVICE));
	/* Unmapped: every byte is the CPU's, and edu wrote nothing else. */
	check_from(from_buf, FROM_DMAS, "after unmap_v");
	LIB(dirty_guest_info(g, &info));
	if (info.pinned_pages)
		die("%" PRIu64 " pages still pinned after every unmap", info.pinned_pages);
	say("all %" PRIu64 " bytes of the FROM buffer checked", FROM_BUF_PAGES * P);
	step(STEP_FROM_DONE, "FROM_DEVICE unmapped");

	/* ---- 8: close ---- */
	dirty_guest_close(g);
	g = NULL;
	step(STEP_CLOSED, "region closed");

	TRY(vfio_type1_unmap_dma(edu.container, FROM_IOVA, FROM_BUF_PAGES * P));
	TRY(vfio_type1_unmap_dma(edu.container, TO_IOVA, TO_BUF_PAGES * P));
	vfio_edu_close(&edu);
	say("done in %.1f ms", vm_elapsed_ms());
	printf("vm_guestlib: RESULT ok kernel=%s to_pieces=%zu from_pieces=%zu synced_pieces=%zu to_pages=%u from_pages=%u synced_pages=%u\n",
	       u.release, nto, nfrom, nsync_pc, TO_PAGES, FROM_PAGES, SYNCED_PAGES);
	return 0;
}
