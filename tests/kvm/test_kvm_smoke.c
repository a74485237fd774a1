/* SPDX-License-Identifier: MIT */
/*
 * test_kvm_smoke.c - the test VMM and the 32-bit payload against real KVM:
 *
 *  - write_pages_dirty_log: the guest stamps ~50 random pages per round;
 *    after each round KVM_GET_DIRTY_LOG (plain ioctls, bitmap mode) must
 *    list exactly those pages plus the payload's own command block and
 *    stack, and every stamp must be in memory (read through both host
 *    mappings). A host write through the second mapping, as DMA writes,
 *    must not show up: that blindness is why libdirty exists.
 *  - proto_end_to_end: the payload runs the guest side of the bitmap
 *    protocol on a libdirty host region mapped into guest memory; pages
 *    "DMA"-written behind KVM's back reach the view through it.
 *  - manual_protect_and_ring_options: the VMM's create options work: with
 *    manual protect GET no longer re-protects and CLEAR does; the dirty
 *    ring, mapped from the vCPU fd the VMM shows, holds exactly the
 *    written pages (KVM_SMOKE_SMALL_RING=1 adds a ring too small for one
 *    command, which loses entries on this PVM-based KVM).
 *  - failures_are_reported: bad commands, unmapped memory (KVM_EXIT_MMIO)
 *    and a command that outlives its timeout fail with clear messages.
 *
 * Skips (77) when /dev/kvm is unusable; parts needing a capability run
 * only when it is offered. Prints the dirty-logging capability values so
 * logs show what this KVM offers. KVM_SMOKE_SEED=n replays a run.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "libdirty.h"
#include "libdirty/proto.h"
#include "testutil.h"
#include "vmm.h"

#define RAM_SIZE (8u << 20)
#define RAM_PAGES (RAM_SIZE / 4096u)
#define TEST_LOW_PFN (PAYLOAD_LOW_END / 4096u)	/* pages the tests may stamp start here */
#define ROUNDS 12
#define PAGES_PER_ROUND 50
#define REGION_GPA 0x40000000ull	/* the protocol region: above RAM, below 4 GiB */
#define TIMEOUT_MS 5000

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from the seed printed at start. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* A VM with one memfd-backed, dirty-logged slot of RAM at GPA 0, running the payload. */
struct rig {
	struct kvm_vm *vm;
	struct kvm_vm_mem ram;
	uint8_t *alias;		/* a second mapping of RAM: "DMA" writes here */
	struct kvm_vm_vcpu *vcpu;
	uint64_t bitmap[RAM_PAGES / 64];
};

#define OK(call) ck_assert_msg((call) == 0, "%s: %s", #call, kvm_vm_last_error())

static void rig_up_opts(struct rig *r, const struct kvm_vm_opts *opts)
{
	struct kvm_vm_slot s = { .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .gpa = 0,
				 .size = RAM_SIZE };

	memset(r, 0, sizeof(*r));
	OK(kvm_vm_create(opts, &r->vm));
	OK(kvm_vm_mem_create(&r->ram, RAM_SIZE, "kvm-smoke-ram"));
	r->alias = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, r->ram.fd, 0);
	ck_assert_ptr_ne(r->alias, MAP_FAILED);
	s.hva = r->ram.hva;
	s.fd = r->ram.fd;
	OK(kvm_vm_add_slot(r->vm, &s));
	OK(kvm_vm_load_payload(r->vm));
	OK(kvm_vm_vcpu_add(r->vm, &r->vcpu));
}

static void rig_up(struct rig *r)
{
	rig_up_opts(r, NULL);
}

static void rig_down(struct rig *r)
{
	kvm_vm_destroy(r->vm);
	munmap(r->alias, RAM_SIZE);
	kvm_vm_mem_destroy(&r->ram);
}

/* KVM_GET_DIRTY_LOG of slot 0 into r->bitmap (reads and re-protects). */
static void get_log(struct rig *r)
{
	struct kvm_dirty_log log = { .slot = 0, .dirty_bitmap = r->bitmap };

	memset(r->bitmap, 0, sizeof(r->bitmap));
	ck_assert_msg(ioctl(r->vm->vm_fd, KVM_GET_DIRTY_LOG, &log) == 0,
		      "KVM_GET_DIRTY_LOG: %s", strerror(errno));
}

static int logged(const struct rig *r, uint64_t pfn)
{
	return (r->bitmap[pfn / 64] >> (pfn % 64)) & 1;
}

/* Pages the payload dirties on its own (payload-abi.h). */
static int payload_own(uint64_t pfn)
{
	return pfn == PAYLOAD_CMD_GPA(0) / 4096 || pfn == PAYLOAD_STACK_GPA(0) / 4096;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* n distinct random test pages, sorted. */
static void pick_pages(uint64_t *pfns, uint32_t n)
{
	uint32_t i = 0, j;

	while (i < n) {
		uint64_t p = TEST_LOW_PFN + rnd() % (RAM_PAGES - TEST_LOW_PFN);

		for (j = 0; j < i && pfns[j] != p; j++)
			;
		if (j == i)
			pfns[i++] = p;
	}
	qsort(pfns, n, sizeof(*pfns), cmp_u64);
}

static int in_list(const uint64_t *pfns, uint32_t n, uint64_t p)
{
	return n && bsearch(&p, pfns, n, sizeof(*pfns), cmp_u64) != NULL;
}

START_TEST(write_pages_dirty_log)
{
	static uint64_t last_stamp[RAM_PAGES];
	uint64_t pfns[PAGES_PER_ROUND], p, t0;
	struct payload_cmd nop = { .cmd = PAYLOAD_CMD_NOP };
	struct timespec a, b;
	struct rig r;
	int round;

	rig_up(&r);
	memset(last_stamp, 0, sizeof(last_stamp));
	/* Round 0: a NOP dirties nothing but the payload's own pages. */
	OK(kvm_vm_cmd(r.vcpu, &nop, TIMEOUT_MS, NULL));
	get_log(&r);
	ck_assert_msg(logged(&r, PAYLOAD_CMD_GPA(0) / 4096), "the command block write was not logged");
	ck_assert_msg(logged(&r, PAYLOAD_STACK_GPA(0) / 4096), "the stack write was not logged");
	for (p = 0; p < RAM_PAGES; p++)
		ck_assert_msg(!logged(&r, p) || payload_own(p),
			      "NOP: page %#llx logged dirty", (unsigned long long)p);

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (round = 1; round <= ROUNDS; round++) {
		uint64_t stamp = (uint64_t)round << 40 | (rnd() & 0xffffffffull);
		uint32_t words = 1 + (uint32_t)round % 4, i, j;
		uint64_t dma_pfn;

		pick_pages(pfns, PAGES_PER_ROUND);
		OK(kvm_vm_write_pages(r.vcpu, pfns, PAGES_PER_ROUND, words, stamp, TIMEOUT_MS));
		ck_assert_uint_eq(r.vcpu->cmd->done_count, PAGES_PER_ROUND);
		/* A device write through the other mapping, unseen by KVM. */
		do
			dma_pfn = TEST_LOW_PFN + rnd() % (RAM_PAGES - TEST_LOW_PFN);
		while (in_list(pfns, PAGES_PER_ROUND, dma_pfn));
		memcpy(r.alias + dma_pfn * 4096 + 2048, &stamp, sizeof(stamp));
		get_log(&r);

		for (i = 0; i < PAGES_PER_ROUND; i++) {
			const uint64_t *w1 = (const uint64_t *)((uint8_t *)r.ram.hva + pfns[i] * 4096);
			const uint64_t *w2 = (const uint64_t *)(r.alias + pfns[i] * 4096);

			ck_assert_msg(logged(&r, pfns[i]), "round %d: written page %#llx not in the dirty log",
				      round, (unsigned long long)pfns[i]);
			for (j = 0; j < words; j++) {
				ck_assert_msg(w1[j] == stamp + j && w2[j] == stamp + j,
					      "round %d: page %#llx word %u holds %#llx/%#llx, want %#llx",
					      round, (unsigned long long)pfns[i], j,
					      (unsigned long long)w1[j], (unsigned long long)w2[j],
					      (unsigned long long)(stamp + j));
			}
			last_stamp[pfns[i]] = stamp;
		}
		for (p = 0; p < RAM_PAGES; p++) {
			ck_assert_msg(!logged(&r, p) || payload_own(p) || in_list(pfns, PAGES_PER_ROUND, p),
				      "round %d: page %#llx logged dirty but the guest did not write it%s",
				      round, (unsigned long long)p,
				      p == dma_pfn ? " (it is the DMA-written page)" : "");
			/* Pages stamped in earlier rounds keep their stamp. */
			if (last_stamp[p] && !in_list(pfns, PAGES_PER_ROUND, p))
				ck_assert_uint_eq(*(uint64_t *)((uint8_t *)r.ram.hva + p * 4096),
						  last_stamp[p]);
		}
		ck_assert_msg(logged(&r, PAYLOAD_CMD_GPA(0) / 4096), "round %d: command block not logged", round);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	t0 = (uint64_t)((b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec));
	printf("write_pages_dirty_log: %d rounds of %d pages in %.1f ms (incl. checks)\n",
	       ROUNDS, PAGES_PER_ROUND, (double)t0 / 1e6);
	rig_down(&r);
}
END_TEST

/* Run one protocol command over a range list. */
static void proto_cmd(struct rig *r, uint32_t cmd, const struct payload_range *rg,
		      uint32_t n, uint32_t dir)
{
	struct payload_cmd c = { .cmd = cmd, .region_gpa = REGION_GPA, .count = n, .dir = dir };

	if (n)
		OK(kvm_vm_vcpu_write_list(r->vcpu, rg, n * sizeof(*rg), &c.list_gpa));
	OK(kvm_vm_cmd(r->vcpu, &c, TIMEOUT_MS, NULL));
}

struct starter {
	struct dirty_view *view;
	_Atomic bool done;
	int rc;
};

static void *starter_main(void *arg)
{
	struct starter *st = arg;

	st->rc = dirty_view_start(st->view);
	atomic_store(&st->done, true);
	return NULL;
}

static int view_has(const uint64_t *got, size_t n, uint64_t gpa)
{
	for (size_t i = 0; i < n; i++)
		if (got[i] == gpa)
			return 1;
	return 0;
}

START_TEST(proto_end_to_end)
{
	/* DMA buffers: page-sized, multi-page, sub-page, straddling a 64-page word. */
	static const struct payload_range rx[] = {
		{ 0x200000, 0x1000 }, { 0x231000, 0x3000 }, { 0x300800, 0x100 },
		{ 0x43f000, 0x2000 }, { 0x7ff000, 0x1000 },
	};
	static const struct payload_range tx[] = { { 0x500000, 0x2000 } };
	const size_t nrx = sizeof(rx) / sizeof(rx[0]);
	struct dirty_gp_config cfg = { .gpa = 0, .len = RAM_SIZE, .pinned = DIRTY_GP_PINNED_DEFER,
				       .ack_timeout_ms = 2000 };
	struct dirty_proto_header *hdr;
	struct dirty_gp_health health;
	struct dirty_view *view;
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	struct dirty_gp *gp;
	struct kvm_vm_slot s = { .slot = 1, .gpa = REGION_GPA };
	struct starter st;
	pthread_t t;
	uint64_t got[64], a;
	size_t ngot = 0, i;
	ssize_t k;
	struct rig r;

	rig_up(&r);
	ck_assert_int_eq(dirty_view_new(&view), 0);
	ck_assert_int_eq(dirty_view_add_region(view, 0, RAM_SIZE, 4096, 0), 0);
	ck_assert_msg(dirty_gp_create(view, &cfg, &gp) == 0, "%s", dirty_last_error());
	st = (struct starter){ .view = view };
	/* The region's fd, mapped into guest-physical memory (an ivshmem BAR, in effect). */
	s.size = (dirty_gp_size(gp) + 4095) & ~4095ull;
	s.hva = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, dirty_gp_fd(gp), 0);
	ck_assert_ptr_ne(s.hva, MAP_FAILED);
	s.fd = dirty_gp_fd(gp);
	OK(kvm_vm_add_slot(r.vm, &s));
	hdr = s.hva;

	proto_cmd(&r, PAYLOAD_CMD_PROTO_OPEN, NULL, 0, 0);
	ck_assert_uint_eq(hdr->guest.state, DIRTY_PROTO_GUEST_RUNNING);
	/*
	 * Tracking handshake: start raises the generation and does not
	 * return before the guest polled and acknowledged it.
	 */
	ck_assert_int_eq(pthread_create(&t, NULL, starter_main, &st), 0);
	while (__atomic_load_n(&hdr->host.track_gen, __ATOMIC_ACQUIRE) == 0)
		usleep(100);
	usleep(20 * 1000);
	ck_assert_int_eq(dirty_gp_acked(gp), 0);
	ck_assert_msg(!atomic_load(&st.done), "dirty_view_start returned before the guest acknowledged");
	proto_cmd(&r, PAYLOAD_CMD_PROTO_POLL, NULL, 0, 0);
	pthread_join(t, NULL);
	ck_assert_int_eq(st.rc, 0);
	ck_assert_int_eq(dirty_gp_acked(gp), 1);
	/* Trust gained marks the protocol's range: the first pass, drained. */
	{
		uint64_t first = 0;

		ck_assert_int_eq(dirty_claim_new(view, &cl), 0);
		while ((k = dirty_claim_next(cl, runs, 64)) > 0)
			for (ssize_t j = 0; j < k; j++)
				first += runs[j].len;
		dirty_claim_free(cl);
		ck_assert_uint_eq(first, RAM_SIZE);
	}

	proto_cmd(&r, PAYLOAD_CMD_PROTO_MAP, rx, (uint32_t)nrx, PAYLOAD_DIR_FROM_DEVICE);
	ck_assert_uint_eq(r.vcpu->cmd->result, 0);	/* no pin was already set */
	proto_cmd(&r, PAYLOAD_CMD_PROTO_MAP, tx, 1, PAYLOAD_DIR_TO_DEVICE);
	for (i = 0; i < nrx; i++)
		for (a = rx[i].gpa & ~4095ull; a < rx[i].gpa + rx[i].len; a += 4096)
			ck_assert_int_eq(dirty_gp_pinned(gp, a), 1);
	get_log(&r);	/* forget the guest's own writes so far */

	/* The device writes the RX buffers through the other mapping. */
	for (i = 0; i < nrx; i++)
		memset(r.alias + rx[i].gpa, 0x5a, rx[i].len);
	get_log(&r);
	for (i = 0; i < nrx; i++)
		ck_assert_msg(!logged(&r, rx[i].gpa / 4096),
			      "KVM logged a page only a device wrote (%#llx)?",
			      (unsigned long long)rx[i].gpa);

	proto_cmd(&r, PAYLOAD_CMD_PROTO_UNMAP, rx, (uint32_t)nrx, PAYLOAD_DIR_FROM_DEVICE);
	proto_cmd(&r, PAYLOAD_CMD_PROTO_UNMAP, tx, 1, PAYLOAD_DIR_TO_DEVICE);
	for (i = 0; i < nrx; i++)
		ck_assert_int_eq(dirty_gp_pinned(gp, rx[i].gpa), 0);
	ck_assert_int_eq(dirty_gp_pinned(gp, tx[0].gpa), 0);

	/* The view hands out exactly the RX pages: through the protocol, not KVM. */
	ck_assert_msg(dirty_view_sync(view) == 0, "%s", dirty_last_error());
	ck_assert_int_eq(dirty_claim_new(view, &cl), 0);
	while ((k = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t j = 0; j < k; j++)
			for (a = runs[j].gpa; a < runs[j].gpa + runs[j].len; a += 4096) {
				ck_assert_uint_lt(ngot, 64);
				got[ngot++] = a;
			}
	dirty_claim_free(cl);
	for (i = 0; i < nrx; i++)
		for (a = rx[i].gpa & ~4095ull; a < rx[i].gpa + rx[i].len; a += 4096)
			ck_assert_msg(view_has(got, ngot, a), "RX page %#llx missing from the view",
				      (unsigned long long)a);
	ck_assert_uint_eq(ngot, 1 + 3 + 1 + 2 + 1);
	ck_assert_msg(!view_has(got, ngot, tx[0].gpa), "a TO_DEVICE page was dirtied");

	proto_cmd(&r, PAYLOAD_CMD_PROTO_CLOSE, NULL, 0, 0);
	ck_assert_uint_eq(hdr->guest.state, DIRTY_PROTO_GUEST_STOPPED);
	ck_assert_int_eq(dirty_gp_health(gp, &health), 0);
	ck_assert_msg(health.healthy, "protocol unhealthy: %s", health.reason);
	ck_assert_uint_eq(health.pin_conflicts + health.pin_leaks + health.bad_ranges, 0);

	rig_down(&r);	/* the VM goes before the region it maps */
	munmap(s.hva, s.size);
	dirty_view_free(view);
}
END_TEST

/* Stamp n fresh random pages; they land in pfns (sorted). */
static void stamp_round(struct rig *r, uint64_t *pfns, uint32_t n)
{
	pick_pages(pfns, n);
	OK(kvm_vm_write_pages(r->vcpu, pfns, n, 1, rnd(), TIMEOUT_MS));
}

/* The logged set is exactly pfns plus (some of) the payload's own pages. */
static void expect_logged(const struct rig *r, const uint64_t *pfns, uint32_t n,
			  const char *what)
{
	for (uint64_t p = 0; p < RAM_PAGES; p++)
		ck_assert_msg(logged(r, p) == (in_list(pfns, n, p) || (payload_own(p) && logged(r, p))),
			      "%s: page %#llx is %slogged", what, (unsigned long long)p,
			      logged(r, p) ? "" : "not ");
}

/* A vCPU's dirty ring as the test harvests it: pages seen, entries, full exits. */
struct ring {
	struct kvm_dirty_gfn *gfns;
	uint32_t nent, fetch;
	int vm_fd;
	uint64_t entries, bad_slot, reset_mismatch;
	unsigned int fulls;
	uint64_t seen[RAM_PAGES / 64];
};

/* Collect (acquire), hand back (release), then KVM_RESET_DIRTY_RINGS. */
static void ring_harvest(struct ring *h)
{
	uint64_t n = 0;
	int rc;

	while (__atomic_load_n(&h->gfns[h->fetch % h->nent].flags, __ATOMIC_ACQUIRE) ==
	       KVM_DIRTY_GFN_F_DIRTY) {
		struct kvm_dirty_gfn *e = &h->gfns[h->fetch % h->nent];

		if (e->slot != 0 || e->offset >= RAM_PAGES)
			h->bad_slot++;
		else
			h->seen[e->offset / 64] |= 1ull << (e->offset % 64);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		h->fetch++;
		n++;
	}
	rc = ioctl(h->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
	if (rc != (int)n)
		h->reset_mismatch++;
	h->entries += n;
}

/* Runs inside kvm_vm_cmd: no ck_assert here (it would jump out of KVM_RUN's loop). */
static int on_ring_full(struct kvm_vm_vcpu *v, void *arg)
{
	struct ring *h = arg;

	(void)v;
	h->fulls++;
	ring_harvest(h);
	return 0;
}

/* One VM with a ring of `bytes`: stamp 50 pages with `words` words each, harvest. */
static void ring_round(uint32_t bytes, uint32_t words)
{
	struct kvm_vm_opts o = { .dirty_ring_bytes = bytes };
	uint64_t pfns[PAGES_PER_ROUND], p;
	struct ring *h = calloc(1, sizeof(*h));
	struct rig r;
	uint32_t i;

	ck_assert_ptr_nonnull(h);
	rig_up_opts(&r, &o);
	ck_assert_uint_eq(r.vm->ring_bytes, bytes);
	ck_assert(r.vm->ring_cap == KVM_CAP_DIRTY_LOG_RING_ACQ_REL ||
		  r.vm->ring_cap == KVM_CAP_DIRTY_LOG_RING);
	h->gfns = mmap(NULL, r.vm->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       r.vcpu->fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
	ck_assert_msg(h->gfns != MAP_FAILED, "mmap dirty ring: %s", strerror(errno));
	h->nent = r.vm->ring_bytes / sizeof(*h->gfns);
	h->vm_fd = r.vm->vm_fd;
	r.vm->ring_full = on_ring_full;
	r.vm->ring_full_arg = h;
	pick_pages(pfns, PAGES_PER_ROUND);
	OK(kvm_vm_write_pages(r.vcpu, pfns, PAGES_PER_ROUND, words, rnd(), TIMEOUT_MS));
	ring_harvest(h);
	ck_assert_uint_eq(h->bad_slot, 0);
	ck_assert_uint_eq(h->reset_mismatch, 0);
	for (i = 0; i < PAGES_PER_ROUND; i++)
		ck_assert_msg(h->seen[pfns[i] / 64] >> (pfns[i] % 64) & 1,
			      "written page %#llx not in the ring", (unsigned long long)pfns[i]);
	for (p = 0; p < RAM_PAGES; p++)
		ck_assert_msg(!(h->seen[p / 64] >> (p % 64) & 1) || payload_own(p) ||
			      in_list(pfns, PAGES_PER_ROUND, p),
			      "ring holds page %#llx the guest did not write", (unsigned long long)p);
	/* Each emulated store pushes an entry here, duplicates included. */
	printf("dirty ring (%s, %u entries): %llu entries, %u DIRTY_RING_FULL exits for %d pages x %u words\n",
	       r.vm->ring_cap == KVM_CAP_DIRTY_LOG_RING_ACQ_REL ? "ACQ_REL" : "plain",
	       h->nent, (unsigned long long)h->entries, h->fulls, PAGES_PER_ROUND, words);
	munmap(h->gfns, r.vm->ring_bytes);
	rig_down(&r);
	free(h);
}

/*
 * The create options: manual protect (GET no longer re-protects; CLEAR
 * does) and the dirty ring, with the vCPU fd and ring size the VMM shows.
 */
START_TEST(manual_protect_and_ring_options)
{
	struct kvm_vm_opts mp = { .manual_protect = true };
	struct kvm_vm_opts wb = { .dirty_ring_bytes = 4096 * sizeof(struct kvm_dirty_gfn),
				  .ring_with_bitmap = true };
	uint64_t pfns[PAGES_PER_ROUND];
	struct kvm_clear_dirty_log clear = { .slot = 0, .first_page = 0, .num_pages = RAM_PAGES };
	struct kvm_vm *vm;
	struct rig r;
	int rc;

	if (kvm_check_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0) {
		rig_up_opts(&r, &mp);
		ck_assert(r.vm->manual_protect);
		stamp_round(&r, pfns, PAGES_PER_ROUND);
		get_log(&r);
		expect_logged(&r, pfns, PAGES_PER_ROUND, "manual protect, first GET");
		/* GET did not clear: the same bits again, with no guest write between. */
		get_log(&r);
		expect_logged(&r, pfns, PAGES_PER_ROUND, "manual protect, second GET");
		clear.dirty_bitmap = r.bitmap;
		ck_assert_msg(ioctl(r.vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) == 0,
			      "KVM_CLEAR_DIRTY_LOG: %s", strerror(errno));
		get_log(&r);
		expect_logged(&r, NULL, 0, "manual protect, after CLEAR");
		stamp_round(&r, pfns, PAGES_PER_ROUND);
		get_log(&r);
		expect_logged(&r, pfns, PAGES_PER_ROUND, "manual protect, after CLEAR and new writes");
		rig_down(&r);
	}

	if (kvm_check_cap(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0 ||
	    kvm_check_cap(KVM_CAP_DIRTY_LOG_RING) > 0) {
		/*
		 * A roomy ring. Every emulated store pushes an entry here and
		 * the soft-full exit comes late, so a ring smaller than one
		 * command's stores overflows (KVM WARNs, entries are lost):
		 * KVM_SMOKE_SMALL_RING=1 runs that case too, to show it.
		 */
		ring_round(4096 * sizeof(struct kvm_dirty_gfn), 1);
		if (getenv("KVM_SMOKE_SMALL_RING"))
			ring_round(4096, 4);
	}

	/* WITH_BITMAP: enabled when offered, else refused by name. */
	rc = kvm_vm_create(&wb, &vm);
	if (kvm_check_cap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP) > 0) {
		ck_assert_msg(rc == 0, "%s", kvm_vm_last_error());
		ck_assert(vm->ring_with_bitmap);
		kvm_vm_destroy(vm);
	} else {
		ck_assert_int_eq(rc, -EOPNOTSUPP);
		ck_assert_ptr_nonnull(strstr(kvm_vm_last_error(), "KVM_CAP_DIRTY_LOG_RING"));
	}
}
END_TEST

START_TEST(failures_are_reported)
{
	struct payload_cmd c = { .cmd = 77 };
	uint64_t pfn;
	int status = 0;
	struct rig r;

	rig_up(&r);
	/* An unknown command: the payload's own status, the vCPU still usable. */
	ck_assert_int_eq(kvm_vm_cmd(r.vcpu, &c, TIMEOUT_MS, &status), -EPROTO);
	ck_assert_int_eq(status, PAYLOAD_E_BADCMD);
	ck_assert_ptr_nonnull(strstr(kvm_vm_last_error(), "unknown command"));
	/* A page above 4 GiB cannot be reached without paging. */
	pfn = 1ull << 20;
	ck_assert_int_eq(kvm_vm_write_pages(r.vcpu, &pfn, 1, 1, 1, TIMEOUT_MS), -EPROTO);
	ck_assert_ptr_nonnull(strstr(kvm_vm_last_error(), "bad argument"));
	/* A region where there is none. */
	c = (struct payload_cmd){ .cmd = PAYLOAD_CMD_PROTO_OPEN, .region_gpa = 0x200000 };
	ck_assert_int_eq(kvm_vm_cmd(r.vcpu, &c, TIMEOUT_MS, &status), -EPROTO);
	ck_assert_int_eq(status, PAYLOAD_E_PROTO);
	/* A command that cannot finish in time: 700 pages of 512 words. */
	{
		static uint64_t many[700];

		for (pfn = 0; pfn < 700; pfn++)
			many[pfn] = TEST_LOW_PFN + pfn;
		ck_assert_int_eq(kvm_vm_write_pages(r.vcpu, many, 700, 512, 1, 100), -ETIMEDOUT);
		ck_assert_ptr_nonnull(strstr(kvm_vm_last_error(), "not done after 100 ms"));
	}
	rig_down(&r);

	/* A write to a hole in guest-physical memory exits as MMIO. */
	rig_up(&r);
	pfn = 0x30000;	/* 768 MiB: no slot */
	ck_assert_int_eq(kvm_vm_write_pages(r.vcpu, &pfn, 1, 1, 1, TIMEOUT_MS), -EFAULT);
	ck_assert_msg(strstr(kvm_vm_last_error(), "KVM_EXIT_MMIO write") &&
		      strstr(kvm_vm_last_error(), "0x30000000"), "%s", kvm_vm_last_error());
	printf("failures_are_reported: e.g. \"%s\"\n", kvm_vm_last_error());
	rig_down(&r);

	/* An exception with no IDT: the guest triple-faults, the VMM says so. */
	rig_up(&r);
	{
		static const uint8_t ud2[] = { 0x0f, 0x0b };
		struct kvm_regs regs;

		memcpy((uint8_t *)r.ram.hva + PAYLOAD_LOW_END, ud2, sizeof(ud2));
		ck_assert_int_eq(ioctl(r.vcpu->fd, KVM_GET_REGS, &regs), 0);
		regs.rip = PAYLOAD_LOW_END;
		ck_assert_int_eq(ioctl(r.vcpu->fd, KVM_SET_REGS, &regs), 0);
		c = (struct payload_cmd){ .cmd = PAYLOAD_CMD_NOP };
		ck_assert_int_eq(kvm_vm_cmd(r.vcpu, &c, TIMEOUT_MS, NULL), -EFAULT);
		ck_assert_msg(strstr(kvm_vm_last_error(), "KVM_EXIT_SHUTDOWN"), "%s", kvm_vm_last_error());
		printf("failures_are_reported: ud2 gives \"%s\"\n", kvm_vm_last_error());
	}
	rig_down(&r);

	/* HALT ends in KVM_EXIT_HLT; running it again is reported, not hung. */
	rig_up(&r);
	c = (struct payload_cmd){ .cmd = PAYLOAD_CMD_HALT };
	OK(kvm_vm_cmd(r.vcpu, &c, TIMEOUT_MS, NULL));
	c.cmd = PAYLOAD_CMD_NOP;
	ck_assert_int_eq(kvm_vm_cmd(r.vcpu, &c, TIMEOUT_MS, NULL), -EPROTO);
	ck_assert_ptr_nonnull(strstr(kvm_vm_last_error(), "halted"));
	rig_down(&r);
}
END_TEST

static void print_caps(void)
{
	printf("KVM caps: MANUAL_DIRTY_LOG_PROTECT2=%d DIRTY_LOG_RING=%d DIRTY_LOG_RING_ACQ_REL=%d DIRTY_LOG_RING_WITH_BITMAP=%d\n",
	       kvm_check_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
	       kvm_check_cap(KVM_CAP_DIRTY_LOG_RING),
	       kvm_check_cap(KVM_CAP_DIRTY_LOG_RING_ACQ_REL),
	       kvm_check_cap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP));
}

int main(void)
{
	Suite *s = suite_create("kvm_smoke");
	TCase *tc = tcase_create("real_kvm");
	const char *seed = getenv("KVM_SMOKE_SEED");

	kvm_require();
	print_caps();
	rng_state = seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL);
	if (!rng_state)
		rng_state = 1;
	printf("KVM_SMOKE_SEED=%llu\n", (unsigned long long)rng_state);
	fflush(stdout);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, write_pages_dirty_log);
	tcase_add_test(tc, proto_end_to_end);
	tcase_add_test(tc, manual_protect_and_ring_options);
	tcase_add_test(tc, failures_are_reported);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
