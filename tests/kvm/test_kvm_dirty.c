/* SPDX-License-Identifier: MIT */
/*
 * test_kvm_dirty.c - the KVM adapter (hv-adapters/kvm.c) against real KVM,
 * in every dirty-logging mode this KVM offers (bitmap, clear-log, ring):
 *
 *  - tracks_guest_writes (the KVM selftests' invariant, per mode): the
 *    first round is all of RAM; then each iteration the guest stamps random
 *    pages in 2-3 WRITE_PAGES commands while the host harvests at random
 *    moments (between commands, and from a second thread while the vCPU
 *    runs), then final. Every page reported in the iteration (but the
 *    payload's own command block and stack) was written in it, every page
 *    holding the iteration's stamp was reported in it, and a destination
 *    copy built only from claimed pages equals guest RAM.
 *  - merge_finds_dma (per mode): RX buffers pinned through the guest
 *    protocol are written by a host "device" through a second mapping of
 *    guest RAM (invisible to KVM, like DMA). The same workload twice: a copy
 *    driven by the KVM adapter alone loses pages; the merged view (KVM +
 *    guest protocol) loses none, page by page after final.
 *  - memslot_hotplug (per mode): a memslot added while tracking is all
 *    dirty on the next drain; guest writes into it are reported; removing it
 *    harvests its last writes, and the other slot keeps working.
 *  - ring_full_and_reaper (ring mode): the VMM's ring-full callback calls
 *    dirty_kvm_ring_full(), which harvests into the view (from the vCPU
 *    thread and from another thread while the vCPU runs), and the reaper
 *    thread harvests with no explicit sync. No real overflow is provoked.
 *  - errors_mark_everything (per mode): a slot KVM does not have, a VM fd
 *    that went bad and (clear-log) a failed clear: the call fails and every
 *    page of every registered slot is dirty.
 *
 * Modes whose capability is missing are skipped (the rest still run); the
 * binary exits 77 only if /dev/kvm itself is unusable. KVM_DIRTY_SEED=n
 * replays a run; DIRTY_TEST_SCALE scales the work.
 *
 * Ring mode, order: the adapter resets the rings (KVM_RESET_DIRTY_RINGS)
 * before it marks the harvested pages, as api.rst requires before the
 * pages are read. Not checkable here: this PVM-based KVM logs every
 * emulated store, so no write is lost on it whatever the order.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
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

#define PAGE 4096ull
#define RAM_SIZE (16ull << 20)
#define RAM_PAGES (RAM_SIZE / PAGE)
#define TEST_LOW_PFN (PAYLOAD_LOW_END / PAGE)	/* guest-stamped pages start here */
#define HOT_SLOT 3u
#define HOT_GPA (64ull << 20)			/* the hot-added slot: above RAM */
#define HOT_SIZE (1ull << 20)
#define BOGUS_SLOT 5u				/* registered with the adapter, not KVM */
#define BOGUS_GPA (96ull << 20)
#define BOGUS_SIZE (512ull << 10)
#define GP_SLOT 1u
#define REGION_GPA 0x40000000ull		/* the protocol region in guest memory */
#define RING_MAX (1u << 20)			/* never a small ring: see vmm.h */
#define TIMEOUT_MS 20000

/* ---- modes -------------------------------------------------------------- */

static struct dirty_kvm_caps caps;
static uint32_t ring_bytes;
static uint64_t seed;

static const char *bitmap_unsupported(void)
{
	return NULL;	/* KVM_GET_DIRTY_LOG is baseline KVM */
}

static const char *clear_unsupported(void)
{
	return caps.manual_protect2 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE ? NULL :
		"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is not offered";
}

static const char *ring_unsupported(void)
{
	if (!caps.ring && !caps.ring_acq_rel)
		return "KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) is not offered";
	if (ring_bytes < (64u << 10))
		return "the largest dirty ring KVM offers is under 64 KiB (small rings lose entries here)";
	return NULL;
}

static const struct mode {
	const char *name;
	enum dirty_kvm_mode mode;
	const char *(*unsupported)(void);	/* NULL: usable; else why not */
} modes[] = {
	{ "bitmap", DIRTY_KVM_BITMAP, bitmap_unsupported },
	{ "clear-log", DIRTY_KVM_CLEAR_LOG, clear_unsupported },
	{ "ring", DIRTY_KVM_RING, ring_unsupported },
};
#define NMODES ((int)(sizeof(modes) / sizeof(modes[0])))

static bool mode_usable(int mi, const char *test)
{
	const char *why = modes[mi].unsupported();

	if (why) {
		printf("SKIP %s [%s]: %s\n", test, modes[mi].name, why);
		fflush(stdout);
	}
	return !why;
}

/* n scaled by DIRTY_TEST_SCALE, kept within [min, max]. */
static unsigned int scaled(unsigned int n, unsigned int min, unsigned int max)
{
	unsigned int v = (unsigned int)(n * test_scale());

	return v < min ? min : v > max ? max : v;
}

static uint64_t rnd(uint64_t *s)
{
	/* xorshift64*: reproducible from the seed printed at start. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/* ---- the rig: VM, RAM, view, adapter, destination copy -------------------- */

/* Guest memory the test tracks: claims land in tag[], copies in dest. */
struct mem {
	bool active;
	uint64_t gpa, npages;
	uint8_t *hva;		/* NULL: no memory behind it (the bogus slot) */
	uint8_t *dest;		/* the destination copy */
	uint32_t *tag;		/* per page: r->tag when last claimed */
	struct kvm_vm_mem backing;
};

struct rig {
	const struct mode *m;
	enum dirty_kvm_mode mode;
	struct kvm_vm *vm;
	struct kvm_vm_mem ram;
	uint8_t *alias;		/* second mapping of RAM: "DMA" writes here */
	struct kvm_vm_vcpu *vcpu;
	int afd;		/* the adapter's VM fd (a dup, so errors can be injected) */
	struct dirty_view *view;
	struct dirty_kvm *kvm;
	struct mem mem[2];	/* [0]: RAM; [1]: hot-added or bogus slot */
	uint32_t tag;		/* what drains record; set before threads start */
	uint64_t rng;
	_Atomic int running;	/* the vCPU thread is inside a command */
	_Atomic unsigned int ring_full_calls, ring_full_direct;
	_Atomic uint64_t claimed;
	pthread_mutex_t fail_lock;
	_Atomic int failed;
	char fail[768];
};

#define OK(call) ck_assert_msg((call) == 0, "%s: %s", #call, kvm_vm_last_error())
#define DOK(call) do { int rc_ = (call); \
	ck_assert_msg(rc_ == 0, "%s = %d: %s", #call, rc_, dirty_last_error()); } while (0)

/* Record the first failure seen on any thread (ck_assert only on the main one). */
__attribute__((format(printf, 2, 3)))
static void rig_fail(struct rig *r, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&r->fail_lock);
	if (!atomic_load(&r->failed)) {
		va_start(ap, fmt);
		vsnprintf(r->fail, sizeof(r->fail), fmt, ap);
		va_end(ap);
		atomic_store(&r->failed, 1);
	}
	pthread_mutex_unlock(&r->fail_lock);
}

#define RIG_OK(r) ck_assert_msg(!atomic_load(&(r)->failed), "[%s] %s", (r)->m->name, (r)->fail)

/* Pages the payload writes on its own (vCPU 0): its command block and stack. */
static bool payload_own(uint64_t pfn)
{
	return pfn == PAYLOAD_CMD_GPA(0) / PAGE || pfn == PAYLOAD_STACK_GPA(0) / PAGE;
}

/*
 * Pages the host writes behind KVM's back while tracking (command blocks,
 * the list area): no dirty log sees them, so the destination copy may
 * differ there by design.
 */
static bool host_written(uint64_t gpa)
{
	return (gpa >= PAYLOAD_CMD_GPA(0) && gpa < PAYLOAD_STACK_GPA(0)) ||
	       (gpa >= PAYLOAD_LIST_GPA && gpa < PAYLOAD_LIST_GPA + PAYLOAD_LIST_SIZE);
}

/* The VMM's KVM_EXIT_DIRTY_RING_FULL handler: the adapter harvests and resets. */
static int vmm_ring_full(struct kvm_vm_vcpu *v, void *arg)
{
	struct rig *r = arg;
	int e;

	(void)v;
	atomic_fetch_add(&r->ring_full_calls, 1);
	e = dirty_kvm_ring_full(r->kvm);
	if (e)
		rig_fail(r, "dirty_kvm_ring_full = %d: %s", e, dirty_last_error());
	return e;
}

static void mem_init(struct mem *m, uint64_t gpa, uint64_t size, uint8_t *hva)
{
	m->gpa = gpa;
	m->npages = size / PAGE;
	m->hva = hva;
	m->tag = calloc(m->npages, sizeof(*m->tag));
	ck_assert_ptr_nonnull(m->tag);
	if (hva) {
		m->dest = malloc(size);
		ck_assert_ptr_nonnull(m->dest);
	}
	m->active = true;
}

static void mem_fini(struct mem *m)
{
	free(m->tag);
	free(m->dest);
	if (m->backing.hva)
		kvm_vm_mem_destroy(&m->backing);
	memset(m, 0, sizeof(*m));
}

/*
 * A VM whose dirty mode the adapter enabled (dirty_kvm_enable, before any
 * memslot or vCPU; the VMM's own options stay off so the two cannot
 * disagree), one dirty-logged slot of RAM at GPA 0, the payload, one vCPU,
 * a view over RAM and the adapter with the slot (and, ring mode, the vCPU).
 */
static void rig_up(struct rig *r, int mi, uint64_t salt)
{
	struct kvm_vm_slot s = { .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .gpa = 0,
				 .size = RAM_SIZE };
	struct dirty_kvm_config cfg = { 0 };

	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->fail_lock, NULL);
	r->m = &modes[mi];
	r->mode = modes[mi].mode;
	r->afd = -1;
	/* splitmix64 of (seed, test, mode): close seeds give unrelated streams. */
	r->rng = seed + salt * 0x9e3779b97f4a7c15ull + (uint64_t)(mi + 1) * 0xbf58476d1ce4e5b9ull;
	r->rng = splitmix64(&r->rng);
	if (!r->rng)
		r->rng = 1;
	OK(kvm_vm_create(NULL, &r->vm));
	DOK(dirty_kvm_enable(r->vm->vm_fd, r->mode, r->mode == DIRTY_KVM_RING ? ring_bytes : 0));
	OK(kvm_vm_mem_create(&r->ram, RAM_SIZE, "kvm-dirty-ram"));
	r->alias = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, r->ram.fd, 0);
	ck_assert_ptr_ne(r->alias, MAP_FAILED);
	s.hva = r->ram.hva;
	s.fd = r->ram.fd;
	OK(kvm_vm_add_slot(r->vm, &s));
	OK(kvm_vm_load_payload(r->vm));
	OK(kvm_vm_vcpu_add(r->vm, &r->vcpu));

	DOK(dirty_view_new(&r->view));
	DOK(dirty_view_add_region(r->view, 0, RAM_SIZE, PAGE, 0));
	r->afd = fcntl(r->vm->vm_fd, F_DUPFD_CLOEXEC, 0);
	ck_assert_int_ge(r->afd, 0);
	cfg.vm_fd = r->afd;
	cfg.mode = r->mode;
	cfg.ring_bytes = r->mode == DIRTY_KVM_RING ? ring_bytes : 0;
	DOK(dirty_kvm_create(r->view, &cfg, &r->kvm));
	DOK(dirty_kvm_add_slot(r->kvm, 0, 0, RAM_SIZE));
	if (r->mode == DIRTY_KVM_RING) {
		int idx = dirty_kvm_add_vcpu(r->kvm, r->vcpu->fd);

		ck_assert_msg(idx == 0, "dirty_kvm_add_vcpu = %d: %s", idx, dirty_last_error());
		r->vm->ring_full = vmm_ring_full;
		r->vm->ring_full_arg = r;
	} else {
		/* Only ring mode reads vCPU rings. */
		ck_assert_int_eq(dirty_kvm_add_vcpu(r->kvm, r->vcpu->fd), -EINVAL);
	}
	mem_init(&r->mem[0], 0, RAM_SIZE, r->ram.hva);
}

static void rig_down(struct rig *r)
{
	dirty_view_free(r->view);	/* destroys the adapter (and any gp) */
	kvm_vm_destroy(r->vm);
	if (r->afd >= 0)
		close(r->afd);
	munmap(r->alias, RAM_SIZE);
	kvm_vm_mem_destroy(&r->ram);
	mem_fini(&r->mem[0]);
	mem_fini(&r->mem[1]);
	pthread_mutex_destroy(&r->fail_lock);
}

static void take_page(struct rig *r, uint64_t gpa)
{
	for (int k = 0; k < 2; k++) {
		struct mem *m = &r->mem[k];
		uint64_t p;

		if (!m->active || gpa < m->gpa || gpa >= m->gpa + m->npages * PAGE)
			continue;
		p = (gpa - m->gpa) / PAGE;
		m->tag[p] = r->tag;
		if (m->hva && !(k == 0 && host_written(gpa)))
			memcpy(m->dest + p * PAGE, m->hva + p * PAGE, PAGE);
		return;
	}
	rig_fail(r, "claimed page %#llx lies in no tracked memory", (unsigned long long)gpa);
}

/*
 * Claim everything dirty and copy it to the destination, as a migration
 * sender does. Clear-log re-protects each batch inside the claim (the
 * source's prepare_read), so the sender does nothing more. Any thread;
 * failures go to rig_fail.
 */
static uint64_t drain(struct rig *r)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t pages = 0;
	ssize_t n;
	int e;

	e = dirty_claim_new(r->view, &cl);
	if (e) {
		rig_fail(r, "dirty_claim_new = %d: %s", e, dirty_last_error());
		return 0;
	}
	while ((n = dirty_claim_next(cl, runs, 64)) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += PAGE) {
				take_page(r, a);
				pages++;
			}
		}
	}
	if (n < 0)
		rig_fail(r, "dirty_claim_next = %zd: %s", n, dirty_last_error());
	dirty_claim_free(cl);
	atomic_fetch_add(&r->claimed, pages);
	return pages;
}

static void sync_drain(struct rig *r, const char *what)
{
	int e = dirty_view_sync(r->view);

	ck_assert_msg(e == 0, "[%s] %s: dirty_view_sync = %d: %s", r->m->name, what, e,
		      dirty_last_error());
	drain(r);
	RIG_OK(r);
}

static void final_drain(struct rig *r, const char *what)
{
	int e = dirty_view_final(r->view);

	ck_assert_msg(e == 0, "[%s] %s: dirty_view_final = %d: %s", r->m->name, what, e,
		      dirty_last_error());
	drain(r);
	RIG_OK(r);
}

/* Start tracking and take the first round: every page of mem[0], once. */
/* The first pass after start: every page of RAM is handed out. */
static void first_drain(struct rig *r)
{
	uint64_t n;

	r->tag = 1;
	n = drain(r);
	RIG_OK(r);
	for (uint64_t p = 0; p < r->mem[0].npages; p++)
		ck_assert_msg(r->mem[0].tag[p] == 1, "[%s] first round: page %#llx not reported (all of RAM must be)",
			      r->m->name, (unsigned long long)p);
	ck_assert_msg(n == RAM_PAGES, "[%s] first round: %llu pages claimed, want all %llu of RAM",
		      r->m->name, (unsigned long long)n, (unsigned long long)RAM_PAGES);
}

static void first_round(struct rig *r)
{
	DOK(dirty_view_start(r->view));
	first_drain(r);
}

/*
 * The claims of phase `tag` in mem k are exactly: every page with must[p],
 * plus only pages with may[p] or the payload's own pages (mem 0).
 */
static void expect_claimed(struct rig *r, int k, const uint8_t *must, const uint8_t *may,
			   const char *what)
{
	const struct mem *m = &r->mem[k];

	for (uint64_t p = 0; p < m->npages; p++) {
		bool got = m->tag[p] == r->tag;
		bool need = must && must[p];
		bool ok = need || (may && may[p]) || (k == 0 && payload_own(p));

		ck_assert_msg(!need || got, "[%s] %s: page %#llx (gpa %#llx) expected dirty, not reported",
			      r->m->name, what, (unsigned long long)p,
			      (unsigned long long)(m->gpa + p * PAGE));
		ck_assert_msg(!got || ok, "[%s] %s: page %#llx (gpa %#llx) reported dirty, expected clean",
			      r->m->name, what, (unsigned long long)p,
			      (unsigned long long)(m->gpa + p * PAGE));
	}
}

/* The destination copy equals guest memory (but where the host writes itself). */
static void expect_copy(struct rig *r, int k, const char *what)
{
	const struct mem *m = &r->mem[k];

	for (uint64_t p = 0; p < m->npages; p++) {
		const uint64_t *src = (const uint64_t *)(m->hva + p * PAGE);
		const uint64_t *dst = (const uint64_t *)(m->dest + p * PAGE);

		if (k == 0 && host_written(p * PAGE))
			continue;
		if (!memcmp(src, dst, PAGE))
			continue;
		for (unsigned int w = 0; w < PAGE / 8; w++)
			ck_assert_msg(src[w] == dst[w],
				      "[%s] %s: destination page %#llx word %u holds %#llx, guest memory %#llx",
				      r->m->name, what, (unsigned long long)(m->gpa / PAGE + p), w,
				      (unsigned long long)dst[w], (unsigned long long)src[w]);
	}
}

/* Index of the first 64-bit word where two pages differ (PAGE / 8 if none). */
static unsigned int first_diff(const uint8_t *a, const uint8_t *b)
{
	const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
	unsigned int w = 0;

	while (w < PAGE / 8 && x[w] == y[w])
		w++;
	return w;
}

/* n distinct random pfns (absolute) from mem k, starting at `low` within it; marks them in set. */
static void pick(struct rig *r, int k, uint64_t low, uint64_t *pfns, uint32_t n, uint8_t *set)
{
	const struct mem *m = &r->mem[k];
	uint32_t i = 0;

	ck_assert_uint_le(n, m->npages - low);
	while (i < n) {
		uint64_t p = low + rnd(&r->rng) % (m->npages - low);

		if (set[p])
			continue;
		set[p] = 1;
		pfns[i++] = m->gpa / PAGE + p;
	}
}

static void write_pages(struct rig *r, const uint64_t *pfns, uint32_t n, uint32_t words,
			uint64_t stamp)
{
	int rc = kvm_vm_write_pages(r->vcpu, pfns, n, words, stamp, TIMEOUT_MS);

	ck_assert_msg(rc == 0, "[%s] WRITE_PAGES of %u pages: %s", r->m->name, n, kvm_vm_last_error());
	ck_assert_uint_eq(r->vcpu->cmd->done_count, n);
}

/* ---- a harvester on a second thread, while the vCPU runs --------------------- */

struct harvester {
	struct rig *r;
	pthread_t th;
	unsigned int nsync;
	unsigned int delay_us[2];
	unsigned int done, during;	/* harvests; those entirely inside a command */
};

static void *harvester_main(void *arg)
{
	struct harvester *h = arg;
	struct rig *r = h->r;

	for (unsigned int k = 0; k < h->nsync; k++) {
		int before, after, e;

		usleep(h->delay_us[k]);
		before = atomic_load(&r->running);
		e = dirty_view_sync(r->view);
		after = atomic_load(&r->running);
		if (e)
			rig_fail(r, "dirty_view_sync from the second thread = %d: %s", e, dirty_last_error());
		drain(r);
		h->done++;
		if (before && after)
			h->during++;
	}
	/* None overlapped the command yet: harvest again while it still runs. */
	while (!h->during && atomic_load(&r->running)) {
		int before = atomic_load(&r->running), e = dirty_view_sync(r->view);

		if (e)
			rig_fail(r, "dirty_view_sync from the second thread = %d: %s", e, dirty_last_error());
		drain(r);
		h->done++;
		if (before && atomic_load(&r->running))
			h->during++;
		usleep(100);
	}
	return NULL;
}

/* ---- 1. the selftests' invariant, per mode ----------------------------------- */

START_TEST(tracks_guest_writes)
{
	const int mi = _i;
	unsigned int iters = scaled(16, 3, 100), per_iter = scaled(300, 24, 700);
	uint64_t written = 0, reported = 0, writes_total = 0;
	unsigned int harvests_between = 0, harvests_thread = 0, harvests_during = 0, finals = 0;
	double est_us = 3000, t0, ms;
	uint64_t *pfns, *cmdlist;
	uint8_t *set;
	struct rig r;

	if (!mode_usable(mi, "tracks_guest_writes"))
		return;
	rig_up(&r, mi, 1);
	pfns = calloc(per_iter, sizeof(*pfns));
	cmdlist = calloc(per_iter * 2, sizeof(*cmdlist));
	set = calloc(RAM_PAGES, 1);
	ck_assert(pfns && cmdlist && set);
	t0 = now_ms();
	first_round(&r);

	/*
	 * The iterations the scale asks for, then more (up to 50) until one
	 * harvest has run entirely inside a command: on a loaded machine, or
	 * under a sanitizer, a short command can end before the second
	 * thread's sync does, and the test must not pass without that case.
	 */
	for (unsigned int it = 1; it <= iters || (!harvests_during && it <= iters + 50); it++) {
		uint64_t stamp = (uint64_t)(mi + 1) << 56 | (uint64_t)it << 40 |
			(rnd(&r.rng) & 0xffffffffull);
		uint32_t words = 1 + (uint32_t)(rnd(&r.rng) % 4);
		unsigned int ncmd = 2 + (unsigned int)(rnd(&r.rng) % 2), cut[4];
		uint64_t rep_it = 0;

		r.tag = it + 1;
		memset(set, 0, RAM_PAGES);
		pick(&r, 0, TEST_LOW_PFN, pfns, per_iter, set);
		/* Random cut points: commands of uneven size, none empty. */
		cut[0] = 0;
		cut[ncmd] = per_iter;
		for (unsigned int c = 1; c < ncmd; c++)
			cut[c] = (per_iter * c) / ncmd + (unsigned int)(rnd(&r.rng) % (per_iter / (2 * ncmd) + 1));
		for (unsigned int c = 0; c < ncmd; c++) {
			uint32_t n = cut[c + 1] - cut[c];
			struct harvester h = { .r = &r };
			/* Always on an iteration's first command, else 2 in 3. */
			bool threaded = c == 0 || rnd(&r.rng) % 3 != 0;
			double c0;

			memcpy(cmdlist, pfns + cut[c], n * sizeof(*pfns));
			/* The last command stamps some pages of the first again. */
			if (c == ncmd - 1) {
				uint32_t extra = (cut[1] - cut[0]) / 8;

				memcpy(cmdlist + n, pfns, extra * sizeof(*pfns));
				n += extra;
			}
			atomic_store(&r.running, 1);
			if (threaded) {
				h.nsync = 1 + (unsigned int)(rnd(&r.rng) % 2);
				for (unsigned int k = 0; k < h.nsync; k++)
					h.delay_us[k] = (unsigned int)(rnd(&r.rng) % (uint64_t)(est_us / h.nsync + 1));
				ck_assert_int_eq(pthread_create(&h.th, NULL, harvester_main, &h), 0);
			}
			c0 = now_ms();
			write_pages(&r, cmdlist, n, words, stamp);
			est_us = (now_ms() - c0) * 1e3;
			atomic_store(&r.running, 0);
			writes_total += n;
			if (threaded) {
				pthread_join(h.th, NULL);
				harvests_thread += h.done;
				harvests_during += h.during;
			}
			RIG_OK(&r);
			if (rnd(&r.rng) % 2) {
				sync_drain(&r, "between commands");
				harvests_between++;
			}
		}
		final_drain(&r, "after the vCPU stopped");
		finals++;

		for (uint64_t p = 0; p < RAM_PAGES; p++) {
			const uint64_t w0 = *(const uint64_t *)(r.mem[0].hva + p * PAGE);
			bool rep = r.mem[0].tag[p] == r.tag, wr = set[p];

			if (wr)
				ck_assert_msg(w0 == stamp, "[%s] iteration %u: page %#llx was stamped %#llx but holds %#llx",
					      r.m->name, it, (unsigned long long)p,
					      (unsigned long long)stamp, (unsigned long long)w0);
			if (rep && !payload_own(p))
				ck_assert_msg(wr || w0 == stamp,
					      "[%s] iteration %u: page %#llx reported dirty but not written in this iteration (holds %#llx, stamp %#llx)",
					      r.m->name, it, (unsigned long long)p,
					      (unsigned long long)w0, (unsigned long long)stamp);
			if (w0 == stamp || wr)
				ck_assert_msg(rep, "[%s] iteration %u: page %#llx holds this iteration's stamp %#llx but was not reported (holds %#llx)",
					      r.m->name, it, (unsigned long long)p,
					      (unsigned long long)stamp, (unsigned long long)w0);
			rep_it += rep && !payload_own(p);
		}
		expect_copy(&r, 0, "after final");
		written += per_iter;
		reported += rep_it;
	}
	ms = now_ms() - t0;
	ck_assert_msg(harvests_during > 0, "[%s] no harvest ran entirely while the vCPU was running (%u tried)",
		      r.m->name, harvests_thread);
	printf("tracks_guest_writes [%s]: %u iterations, %llu pages written (%llu page writes), %llu reported, "
	       "harvests: %u from a 2nd thread (%u while the vCPU ran), %u between commands, %u final; "
	       "%llu pages claimed in all; %.0f ms\n",
	       r.m->name, finals, (unsigned long long)written, (unsigned long long)writes_total,
	       (unsigned long long)reported, harvests_thread, harvests_during, harvests_between,
	       finals, (unsigned long long)atomic_load(&r.claimed), ms);
	fflush(stdout);
	free(pfns);
	free(cmdlist);
	free(set);
	rig_down(&r);
}
END_TEST

/* ---- 2. merge: KVM alone loses DMA writes; KVM + guest protocol does not -------- */

struct device {
	struct rig *r;
	pthread_t th;
	const struct payload_range *bufs;
	unsigned int n;
	uint64_t pattern;
	uint8_t *dma;		/* per RAM page: the device wrote it */
};

/* A device writing its RX buffers through the second mapping: KVM never sees it. */
static void *device_main(void *arg)
{
	struct device *d = arg;

	for (unsigned int i = 0; i < d->n; i++) {
		const struct payload_range *b = &d->bufs[i];

		for (uint64_t a = b->gpa; a < b->gpa + b->len; a += 8)
			*(volatile uint64_t *)(d->r->alias + a) = d->pattern ^ a;
		for (uint64_t a = b->gpa & ~(PAGE - 1); a < b->gpa + b->len; a += PAGE)
			d->dma[a / PAGE] = 1;
		usleep(40);
	}
	return NULL;
}

static void device_run(struct device *d, struct rig *r, const struct payload_range *bufs,
		       unsigned int n, uint64_t pattern, uint8_t *dma)
{
	*d = (struct device){ .r = r, .bufs = bufs, .n = n, .pattern = pattern, .dma = dma };
	ck_assert_int_eq(pthread_create(&d->th, NULL, device_main, d), 0);
}

static void proto_cmd(struct rig *r, uint32_t cmd, const struct payload_range *rg, uint32_t n,
		      uint32_t dir)
{
	struct payload_cmd c = { .cmd = cmd, .region_gpa = REGION_GPA, .count = n, .dir = dir };

	if (n)
		OK(kvm_vm_vcpu_write_list(r->vcpu, rg, n * sizeof(*rg), &c.list_gpa));
	ck_assert_msg(kvm_vm_cmd(r->vcpu, &c, TIMEOUT_MS, NULL) == 0, "[%s] protocol command %u: %s",
		      r->m->name, cmd, kvm_vm_last_error());
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

/*
 * dirty_view_start() returns only once a running guest acknowledged
 * tracking, and this guest acknowledges only when its vCPU is told to
 * poll: start on another thread while the vCPU polls, as a live guest's
 * agent would.
 */
static void first_round_polled(struct rig *r, struct dirty_gp *gp)
{
	struct starter st = { .view = r->view };
	pthread_t t;

	ck_assert_int_eq(pthread_create(&t, NULL, starter_main, &st), 0);
	while (!atomic_load(&st.done)) {
		proto_cmd(r, PAYLOAD_CMD_PROTO_POLL, NULL, 0, 0);
		usleep(1000);
	}
	pthread_join(t, NULL);
	ck_assert_msg(st.rc == 0, "[%s] start: %s", r->m->name, dirty_last_error());
	ck_assert_int_eq(dirty_gp_acked(gp), 1);
	first_drain(r);
}

struct merge_result {
	uint64_t lost, dma_pages, cpu_pages, gp_pages, kvm_pages;
	double ms;
};

/*
 * One migration of the same workload (same seed): the guest maps RX buffers
 * (pins), a device writes them through the alias while the guest stamps
 * other pages, the guest syncs them for the CPU, the device writes again,
 * the guest unmaps; the last round's buffers stay mapped (a posted RX ring)
 * and take a last DMA after the last pre-copy sync. With `merged`, the gp
 * source is on the migration's view; without, on a view nobody syncs (the
 * guest runs the same commands against an untracked region).
 */
static void run_merge(int mi, bool merged, struct merge_result *res)
{
	struct dirty_gp_config cfg = { .gpa = 0, .len = RAM_SIZE, .pinned = DIRTY_GP_PINNED_DEFER,
				       .ack_timeout_ms = 10000 };
	unsigned int rounds = scaled(10, 2, 100), nbufs = 8, ncpu = scaled(60, 12, 256);
	struct kvm_vm_slot s = { .slot = GP_SLOT, .gpa = REGION_GPA };
	struct dirty_view *shadow = NULL;
	struct dirty_source_stats st;
	struct dirty_gp_health health;
	struct payload_range bufs[8];
	struct dirty_gp *gp;
	struct device dev;
	uint8_t *role, *pinned, *dma, *cpu;
	uint64_t pfns[256];
	double t0 = now_ms();
	struct rig r;

	rig_up(&r, mi, 2);	/* same salt both runs: the same workload */
	role = calloc(RAM_PAGES, 1);
	pinned = calloc(RAM_PAGES, 1);
	dma = calloc(RAM_PAGES, 1);
	cpu = calloc(RAM_PAGES, 1);
	ck_assert(role && pinned && dma && cpu);
	if (!merged) {
		DOK(dirty_view_new(&shadow));
		DOK(dirty_view_add_region(shadow, 0, RAM_SIZE, PAGE, 0));
	}
	DOK(dirty_gp_create(merged ? r.view : shadow, &cfg, &gp));
	/* The region's fd in guest-physical memory (an ivshmem BAR), not dirty-logged. */
	s.size = (dirty_gp_size(gp) + PAGE - 1) & ~(PAGE - 1);
	s.hva = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, dirty_gp_fd(gp), 0);
	ck_assert_ptr_ne(s.hva, MAP_FAILED);
	s.fd = dirty_gp_fd(gp);
	OK(kvm_vm_add_slot(r.vm, &s));

	proto_cmd(&r, PAYLOAD_CMD_PROTO_OPEN, NULL, 0, 0);
	/* Starts the view: KVM, and the gp when merged (then it waits for the ack). */
	if (merged)
		first_round_polled(&r, gp);
	else
		first_round(&r);

	/* Pages the device may own (1 in 4) and pages the CPU stamps: disjoint. */
	for (uint64_t p = TEST_LOW_PFN; p < RAM_PAGES; p++)
		role[p] = rnd(&r.rng) % 4 == 0 ? 2 : 1;

	for (unsigned int round = 1; round <= rounds; round++) {
		bool last = round == rounds;
		unsigned int nb = 0;
		uint32_t i, half;

		r.tag = round + 1;
		/* RX buffers: a page, two pages, or part of a page. */
		while (nb < nbufs) {
			uint64_t p = TEST_LOW_PFN + rnd(&r.rng) % (RAM_PAGES - TEST_LOW_PFN - 1);
			unsigned int kind = (unsigned int)(rnd(&r.rng) % 3);

			if (role[p] != 2 || pinned[p])
				continue;
			if (kind == 1 && (role[p + 1] != 2 || pinned[p + 1]))
				kind = 0;
			bufs[nb].gpa = p * PAGE + (kind == 2 ? 0x800 : 0);
			bufs[nb].len = kind == 0 ? PAGE : kind == 1 ? 2 * PAGE : 0x100;
			pinned[p] = 1;
			if (kind == 1)
				pinned[p + 1] = 1;
			nb++;
		}
		proto_cmd(&r, PAYLOAD_CMD_PROTO_MAP, bufs, nb, PAYLOAD_DIR_FROM_DEVICE);
		ck_assert_msg(r.vcpu->cmd->result == 0, "[%s] MAP found %llu pins already set",
			      r.m->name, (unsigned long long)r.vcpu->cmd->result);

		/* DMA while the guest stamps other pages; a harvest in between. */
		device_run(&dev, &r, bufs, nb, (uint64_t)round << 48 | 0xd1a0000000ull, dma);
		for (i = 0; i < ncpu; i++) {
			uint64_t p;

			do
				p = TEST_LOW_PFN + rnd(&r.rng) % (RAM_PAGES - TEST_LOW_PFN);
			while (role[p] != 1);
			pfns[i] = p;
			cpu[p] = 1;
		}
		half = ncpu / 2;
		write_pages(&r, pfns, half, 2, (uint64_t)round << 40 | 0xc0);
		sync_drain(&r, "merge: mid-round");
		write_pages(&r, pfns + half, ncpu - half, 2, (uint64_t)round << 40 | 0xc1);
		pthread_join(dev.th, NULL);
		sync_drain(&r, "merge: after DMA, buffers still pinned");

		proto_cmd(&r, PAYLOAD_CMD_PROTO_SYNC_FOR_CPU, bufs, nb, PAYLOAD_DIR_FROM_DEVICE);
		sync_drain(&r, "merge: after sync_for_cpu");
		/* The device writes again before the unmap (or, last round, stays posted). */
		device_run(&dev, &r, bufs, nb, (uint64_t)round << 48 | 0xd2b0000000ull, dma);
		pthread_join(dev.th, NULL);
		if (!last) {
			proto_cmd(&r, PAYLOAD_CMD_PROTO_UNMAP, bufs, nb, PAYLOAD_DIR_FROM_DEVICE);
			for (i = 0; i < nb; i++)
				for (uint64_t a = bufs[i].gpa & ~(PAGE - 1); a < bufs[i].gpa + bufs[i].len; a += PAGE)
					pinned[a / PAGE] = 0;
		}
		sync_drain(&r, "merge: end of round");
		proto_cmd(&r, PAYLOAD_CMD_PROTO_POLL, NULL, 0, 0);
	}
	/* The posted buffers take one more DMA after the last pre-copy sync. */
	device_run(&dev, &r, bufs, nbufs, 0xd3c0000000ull, dma);
	pthread_join(dev.th, NULL);	/* device stopped first, then the vCPU (idle) */
	r.tag = rounds + 2;
	final_drain(&r, "merge: final");

	res->lost = res->dma_pages = res->cpu_pages = 0;
	for (uint64_t p = 0; p < RAM_PAGES; p++) {
		bool differs = !host_written(p * PAGE) &&
			memcmp(r.mem[0].hva + p * PAGE, r.mem[0].dest + p * PAGE, PAGE) != 0;

		res->dma_pages += dma[p];
		res->cpu_pages += cpu[p];
		if (!differs)
			continue;
		res->lost++;
		if (!dma[p]) {
			unsigned int w = first_diff(r.mem[0].dest + p * PAGE, r.mem[0].hva + p * PAGE);

			ck_abort_msg("[%s, %s] destination page %#llx differs but no device wrote it (word %u: %#llx, guest %#llx)",
				     r.m->name, merged ? "merged" : "KVM only", (unsigned long long)p, w,
				     (unsigned long long)((uint64_t *)(r.mem[0].dest + p * PAGE))[w],
				     (unsigned long long)((uint64_t *)(r.mem[0].hva + p * PAGE))[w]);
		}
		if (merged)
			expect_copy(&r, 0, "merged view after final");	/* prints the first difference */
	}
	DOK(dirty_source_stats(dirty_kvm_source(r.kvm), &st));
	res->kvm_pages = st.pages_marked;
	res->gp_pages = 0;
	if (merged) {
		DOK(dirty_source_stats(dirty_gp_source(gp), &st));
		res->gp_pages = st.pages_marked;
		ck_assert_int_eq(dirty_gp_health(gp, &health), 0);
		ck_assert_msg(health.healthy, "[%s] guest protocol unhealthy: %s (a fallback would hide lost pages)",
			      r.m->name, health.reason);
		ck_assert_uint_eq(health.pin_conflicts + health.bad_ranges, 0);
	}
	proto_cmd(&r, PAYLOAD_CMD_PROTO_CLOSE, NULL, 0, 0);
	res->ms = now_ms() - t0;
	rig_down(&r);		/* the VM goes before the region it maps */
	munmap(s.hva, s.size);
	if (shadow)
		dirty_view_free(shadow);
	free(role);
	free(pinned);
	free(dma);
	free(cpu);
}

START_TEST(merge_finds_dma)
{
	const int mi = _i;
	struct merge_result a, b;

	if (!mode_usable(mi, "merge_finds_dma"))
		return;
	run_merge(mi, false, &a);
	run_merge(mi, true, &b);
	ck_assert_uint_eq(a.dma_pages, b.dma_pages);	/* the same workload */
	ck_assert_msg(a.lost > 0, "[%s] a copy driven by the KVM log alone lost no page; the device wrote %llu pages behind KVM's back",
		      modes[mi].name, (unsigned long long)a.dma_pages);
	ck_assert_msg(b.lost == 0, "[%s] the merged view lost %llu pages", modes[mi].name,
		      (unsigned long long)b.lost);
	printf("merge_finds_dma [%s]: %llu CPU-stamped pages, %llu DMA-written pages; KVM only: %llu pages lost "
	       "(%.0f ms); KVM + guest protocol: 0 lost, gp reported %llu pages, KVM %llu (%.0f ms)\n",
	       modes[mi].name, (unsigned long long)b.cpu_pages, (unsigned long long)b.dma_pages,
	       (unsigned long long)a.lost, a.ms, (unsigned long long)b.gp_pages,
	       (unsigned long long)b.kvm_pages, b.ms);
	fflush(stdout);
}
END_TEST

/* ---- 3. a memslot added and removed while tracking ----------------------------- */

static void vmm_delete_slot(struct kvm_vm *vm, uint32_t slot)
{
	struct kvm_userspace_memory_region reg = { .slot = slot, .memory_size = 0 };

	ck_assert_msg(ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &reg) == 0,
		      "KVM_SET_USER_MEMORY_REGION(slot %u, size 0): %s", slot, strerror(errno));
	for (unsigned int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].slot == slot) {
			vm->slots[i] = vm->slots[--vm->nslots];
			break;
		}
}

START_TEST(memslot_hotplug)
{
	const int mi = _i;
	const uint64_t hot_pages = HOT_SIZE / PAGE;
	unsigned int n0 = scaled(60, 10, 256), n1 = scaled(60, 10, 128);
	struct kvm_vm_slot s = { .slot = HOT_SLOT, .flags = KVM_MEM_LOG_DIRTY_PAGES, .gpa = HOT_GPA,
				 .size = HOT_SIZE };
	uint8_t *set0, *set1, *all1;
	uint64_t pfns0[256], pfns1[128], cnt;
	struct dirty_source_stats st;
	struct rig r;
	double t0;

	if (!mode_usable(mi, "memslot_hotplug"))
		return;
	rig_up(&r, mi, 3);
	t0 = now_ms();
	set0 = calloc(RAM_PAGES, 1);
	set1 = calloc(hot_pages, 1);
	all1 = malloc(hot_pages);
	ck_assert(set0 && set1 && all1);
	memset(all1, 1, hot_pages);
	first_round(&r);

	/* Hot-add: view region, then KVM's slot, then the adapter's (marks it all). */
	OK(kvm_vm_mem_create(&r.mem[1].backing, HOT_SIZE, "kvm-dirty-hot"));
	memset(r.mem[1].backing.hva, 0xee, HOT_SIZE);	/* content the destination lacks */
	DOK(dirty_view_add_region(r.view, HOT_GPA, HOT_SIZE, PAGE, 0));
	s.hva = r.mem[1].backing.hva;
	s.fd = r.mem[1].backing.fd;
	OK(kvm_vm_add_slot(r.vm, &s));
	mem_init(&r.mem[1], HOT_GPA, HOT_SIZE, r.mem[1].backing.hva);
	memset(r.mem[1].dest, 0, HOT_SIZE);
	DOK(dirty_kvm_add_slot(r.kvm, HOT_SLOT, HOT_GPA, HOT_SIZE));
	DOK(dirty_view_count(r.view, &cnt, NULL));
	ck_assert_msg(cnt == hot_pages, "[%s] after the hot-add %llu pages are dirty, want the slot's %llu",
		      r.m->name, (unsigned long long)cnt, (unsigned long long)hot_pages);
	r.tag = 2;
	drain(&r);
	RIG_OK(&r);
	expect_claimed(&r, 1, all1, NULL, "hot-added slot, first drain (its first round)");
	expect_claimed(&r, 0, NULL, NULL, "RAM, first drain after the hot-add");
	expect_copy(&r, 1, "hot-added slot after its first round");

	/* The guest writes both slots: each write is reported, nothing else. */
	r.tag = 3;
	pick(&r, 0, TEST_LOW_PFN, pfns0, n0, set0);
	pick(&r, 1, 0, pfns1, n1, set1);
	write_pages(&r, pfns1, n1 / 2, 3, 0x1111000000ull);
	write_pages(&r, pfns0, n0, 1, 0x2222000000ull);
	write_pages(&r, pfns1 + n1 / 2, n1 - n1 / 2, 3, 0x3333000000ull);
	sync_drain(&r, "both slots written");
	expect_claimed(&r, 0, set0, NULL, "RAM after writes to both slots");
	expect_claimed(&r, 1, set1, NULL, "hot slot after writes to both slots");
	expect_copy(&r, 0, "RAM after writes to both slots");
	expect_copy(&r, 1, "hot slot after writes to both slots");

	/* Last writes to the hot slot, no sync: removing it harvests them. */
	r.tag = 4;
	memset(set1, 0, hot_pages);
	pick(&r, 1, 0, pfns1, n1, set1);
	write_pages(&r, pfns1, n1, 2, 0x4444000000ull);
	DOK(dirty_kvm_remove_slot(r.kvm, HOT_SLOT));
	ck_assert_int_eq(dirty_kvm_remove_slot(r.kvm, HOT_SLOT), -ENOENT);
	drain(&r);
	RIG_OK(&r);
	expect_claimed(&r, 1, set1, NULL, "hot slot's last writes, harvested by remove_slot");
	expect_claimed(&r, 0, NULL, NULL, "RAM while removing the hot slot");
	expect_copy(&r, 1, "hot slot before it goes");
	vmm_delete_slot(r.vm, HOT_SLOT);
	DOK(dirty_view_remove_region(r.view, HOT_GPA));
	r.mem[1].active = false;

	/* The remaining slot goes on as before. */
	for (unsigned int round = 0; round < 3; round++) {
		r.tag = 5 + round;
		memset(set0, 0, RAM_PAGES);
		pick(&r, 0, TEST_LOW_PFN, pfns0, n0, set0);
		write_pages(&r, pfns0, n0 / 2, 1, 0x5555000000ull + round);
		sync_drain(&r, "RAM after the hot slot went (mid)");
		write_pages(&r, pfns0 + n0 / 2, n0 - n0 / 2, 1, 0x5555000000ull + round);
		final_drain(&r, "RAM after the hot slot went");
		expect_claimed(&r, 0, set0, NULL, "RAM after the hot slot went");
		expect_copy(&r, 0, "RAM after the hot slot went");
	}
	DOK(dirty_source_stats(dirty_kvm_source(r.kvm), &st));
	ck_assert_uint_eq(st.errors, 0);
	printf("memslot_hotplug [%s]: %llu-page slot hot-added (all reported), %u + %u pages written into it, "
	       "removed with its last writes harvested; RAM slot tracked on (%llu claims); %.0f ms\n",
	       r.m->name, (unsigned long long)hot_pages, n1, n1, (unsigned long long)atomic_load(&r.claimed),
	       now_ms() - t0);
	fflush(stdout);
	free(set0);
	free(set1);
	free(all1);
	rig_down(&r);
}
END_TEST

/* ---- 4. ring full (the call path, no real overflow) and the reaper ------------ */

/*
 * The vCPU's ring as KVM shows it (mapped read-only here): entries still
 * DIRTY were not harvested; entries RESET were harvested but KVM has not
 * recycled them, i.e. KVM_RESET_DIRTY_RINGS did not run after the harvest.
 */
static void ring_state(const struct kvm_dirty_gfn *g, uint32_t nent, uint64_t *dirty,
		       uint64_t *unreset)
{
	*dirty = *unreset = 0;
	for (uint32_t i = 0; i < nent; i++) {
		uint32_t f = __atomic_load_n(&g[i].flags, __ATOMIC_ACQUIRE);

		*dirty += (f & KVM_DIRTY_GFN_F_DIRTY) != 0;
		*unreset += f == KVM_DIRTY_GFN_F_RESET;
	}
}

struct ring_hammer {
	struct rig *r;
	pthread_t th;
	unsigned int calls;
};

/* Another vCPU's ring-full exit, in effect: harvest every ring while this vCPU runs. */
static void *ring_hammer_main(void *arg)
{
	struct ring_hammer *h = arg;

	while (atomic_load(&h->r->running)) {
		int e = dirty_kvm_ring_full(h->r->kvm);

		if (e)
			rig_fail(h->r, "dirty_kvm_ring_full from another thread = %d: %s", e, dirty_last_error());
		h->calls++;
		usleep(300);
	}
	return NULL;
}

START_TEST(ring_full_and_reaper)
{
	const int mi = 2;
	unsigned int n = scaled(80, 12, 256);
	uint64_t pfns[256], cnt, syncs_before;
	struct dirty_view_stats vst;
	struct dirty_source_stats st;
	struct ring_hammer h;
	const struct kvm_dirty_gfn *ring;
	uint64_t rdirty, runreset;
	uint32_t nent = ring_bytes / sizeof(struct kvm_dirty_gfn);
	uint8_t *set;
	struct rig r;
	double t0, dl;
	int rc;

	ck_assert_int_eq(modes[mi].mode, DIRTY_KVM_RING);
	if (!mode_usable(mi, "ring_full_and_reaper"))
		return;
	rig_up(&r, mi, 4);
	t0 = now_ms();
	set = calloc(RAM_PAGES, 1);
	ck_assert_ptr_nonnull(set);
	ring = mmap(NULL, ring_bytes, PROT_READ, MAP_SHARED, r.vcpu->fd,
		    (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
	ck_assert_msg(ring != MAP_FAILED, "mmap of the vCPU's dirty ring: %s", strerror(errno));
	first_round(&r);
	ck_assert_int_eq(dirty_kvm_reaper_start(r.kvm, 0), 0);	/* and stop: idle round trip */
	dirty_kvm_reaper_stop(r.kvm);

	/* (a) The VMM's ring-full handler, on the vCPU thread between runs. */
	r.tag = 2;
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	write_pages(&r, pfns, n, 2, 0xa0a0000000ull);
	DOK(dirty_view_count(r.view, &cnt, NULL));
	ck_assert_uint_eq(cnt, 0);	/* the entries are still in the ring */
	ring_state(ring, nent, &rdirty, &runreset);
	ck_assert_msg(rdirty >= n, "[ring] the guest wrote %u pages but its ring holds %llu entries",
		      n, (unsigned long long)rdirty);
	atomic_fetch_add(&r.ring_full_direct, 1);
	rc = r.vm->ring_full(r.vcpu, r.vm->ring_full_arg);
	ck_assert_msg(rc == 0, "[ring] the VMM's ring-full handler = %d: %s", rc, r.fail);
	DOK(dirty_view_count(r.view, &cnt, NULL));
	ck_assert_msg(cnt >= n, "[ring] after ring_full only %llu pages in the view, the guest wrote %u",
		      (unsigned long long)cnt, n);
	/* Harvested and handed back: KVM recycled every entry, so KVM_RUN can go on. */
	ring_state(ring, nent, &rdirty, &runreset);
	ck_assert_msg(rdirty == 0 && runreset == 0,
		      "[ring] after ring_full the ring holds %llu unharvested and %llu harvested-but-not-reset entries",
		      (unsigned long long)rdirty, (unsigned long long)runreset);
	drain(&r);
	RIG_OK(&r);
	expect_claimed(&r, 0, set, NULL, "ring_full from the vCPU thread");
	expect_copy(&r, 0, "ring_full from the vCPU thread");
	/* The ring was consumed: a sync finds nothing new. */
	DOK(dirty_view_sync(r.view));
	DOK(dirty_source_stats(dirty_kvm_source(r.kvm), &st));
	ck_assert_msg(st.last_sync_pages == 0, "[ring] the sync after ring_full marked %llu pages again",
		      (unsigned long long)st.last_sync_pages);

	/* (b) Harvests from another thread while the vCPU runs, then ring_full after. */
	r.tag = 3;
	memset(set, 0, RAM_PAGES);
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	h = (struct ring_hammer){ .r = &r };
	atomic_store(&r.running, 1);
	ck_assert_int_eq(pthread_create(&h.th, NULL, ring_hammer_main, &h), 0);
	write_pages(&r, pfns, n / 2, 4, 0xb0b0000000ull);
	write_pages(&r, pfns + n / 2, n - n / 2, 4, 0xb1b1000000ull);
	atomic_store(&r.running, 0);
	pthread_join(h.th, NULL);
	RIG_OK(&r);
	atomic_fetch_add(&r.ring_full_direct, 1);
	ck_assert_int_eq(r.vm->ring_full(r.vcpu, r.vm->ring_full_arg), 0);
	drain(&r);
	RIG_OK(&r);
	expect_claimed(&r, 0, set, NULL, "ring_full from another thread while the vCPU ran");
	expect_copy(&r, 0, "ring_full from another thread while the vCPU ran");

	/* (c) The reaper: the pages reach the view with no explicit sync. */
	r.tag = 4;
	memset(set, 0, RAM_PAGES);
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	DOK(dirty_view_stats(r.view, &vst));
	syncs_before = vst.syncs;
	DOK(dirty_kvm_reaper_start(r.kvm, 500));
	ck_assert_int_eq(dirty_kvm_reaper_start(r.kvm, 500), -EBUSY);
	write_pages(&r, pfns, n / 2, 1, 0xc0c0000000ull);
	drain(&r);		/* a sender claiming while the reaper runs */
	write_pages(&r, pfns + n / 2, n - n / 2, 1, 0xc1c1000000ull);
	/* Wait until the reaper has brought in the rest (written pages + the payload's own). */
	dl = now_ms() + 5000;
	for (;;) {
		uint64_t missing = 0;

		DOK(dirty_view_count(r.view, &cnt, NULL));
		for (unsigned int i = n / 2; i < n; i++)
			missing += r.mem[0].tag[pfns[i]] != r.tag;
		if (cnt >= missing || now_ms() > dl)
			break;
		usleep(200);
	}
	usleep(2000);		/* a few more reaper passes */
	dirty_kvm_reaper_stop(r.kvm);
	dirty_kvm_reaper_stop(r.kvm);	/* idempotent */
	drain(&r);
	RIG_OK(&r);
	DOK(dirty_view_stats(r.view, &vst));
	ck_assert_msg(vst.syncs == syncs_before, "[ring] the view was synced %llu times during the reaper check",
		      (unsigned long long)(vst.syncs - syncs_before));
	expect_claimed(&r, 0, set, NULL, "reaper, no explicit sync");
	ring_state(ring, nent, &rdirty, &runreset);
	ck_assert_msg(rdirty == 0 && runreset == 0,
		      "[ring] after the reaper the ring holds %llu unharvested and %llu harvested-but-not-reset entries",
		      (unsigned long long)rdirty, (unsigned long long)runreset);
	expect_copy(&r, 0, "reaper, no explicit sync");
	/* Nothing left behind: a final finds only what the reaper did not. */
	r.tag = 5;
	final_drain(&r, "after the reaper stopped");
	expect_claimed(&r, 0, NULL, NULL, "final after the reaper");

	printf("ring_full_and_reaper [ring, %u-byte ring]: %u pages per phase; ring-full handler called %u times "
	       "(%u real KVM_EXIT_DIRTY_RING_FULL exits), %u harvests from another thread while the vCPU ran; "
	       "reaper harvested everything with 0 syncs; %.0f ms\n",
	       ring_bytes, n, atomic_load(&r.ring_full_calls),
	       atomic_load(&r.ring_full_calls) - atomic_load(&r.ring_full_direct), h.calls, now_ms() - t0);
	fflush(stdout);
	munmap((void *)ring, ring_bytes);
	free(set);
	rig_down(&r);
}
END_TEST

/* ---- 5. an error never reads as clean ----------------------------------------- */

/* mem[0] and mem[1] are entirely dirty in phase r->tag. */
static void expect_all(struct rig *r, const char *what)
{
	for (int k = 0; k < 2; k++) {
		const struct mem *m = &r->mem[k];

		if (!m->active)
			continue;
		for (uint64_t p = 0; p < m->npages; p++)
			ck_assert_msg(m->tag[p] == r->tag,
				      "[%s] %s: page gpa %#llx of a registered slot was not marked dirty",
				      r->m->name, what, (unsigned long long)(m->gpa + p * PAGE));
	}
}

static void make_fd_bad(struct rig *r, int *saved)
{
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

	ck_assert_int_ge(devnull, 0);
	*saved = fcntl(r->afd, F_DUPFD_CLOEXEC, 0);
	ck_assert_int_ge(*saved, 0);
	ck_assert_int_eq(dup3(devnull, r->afd, O_CLOEXEC), r->afd);	/* ioctls now fail: ENOTTY */
	close(devnull);
}

static void restore_fd(struct rig *r, int saved)
{
	ck_assert_int_eq(dup3(saved, r->afd, O_CLOEXEC), r->afd);
	close(saved);
}

START_TEST(errors_mark_everything)
{
	const int mi = _i;
	unsigned int n = scaled(40, 8, 256);
	uint8_t *set, *set2, *allb;
	uint64_t pfns[256], pfns2[256];
	struct dirty_source_stats st;
	struct rig r;
	int rc, saved;
	double t0;
	const char *msg;

	if (!mode_usable(mi, "errors_mark_everything"))
		return;
	rig_up(&r, mi, 5);
	t0 = now_ms();
	set = calloc(RAM_PAGES, 1);
	set2 = calloc(RAM_PAGES, 1);
	allb = malloc(BOGUS_SIZE / PAGE);
	ck_assert(set && set2 && allb);
	memset(allb, 1, BOGUS_SIZE / PAGE);
	first_round(&r);

	/* (a) A slot KVM does not have: the view covers it, the adapter believes in it. */
	DOK(dirty_view_add_region(r.view, BOGUS_GPA, BOGUS_SIZE, PAGE, 0));
	mem_init(&r.mem[1], BOGUS_GPA, BOGUS_SIZE, NULL);
	DOK(dirty_kvm_add_slot(r.kvm, BOGUS_SLOT, BOGUS_GPA, BOGUS_SIZE));
	r.tag = 2;
	drain(&r);		/* its first round */
	RIG_OK(&r);
	expect_claimed(&r, 1, allb, NULL, "slot added while tracking (KVM lacks it)");
	expect_claimed(&r, 0, NULL, NULL, "RAM while adding the bogus slot");
	r.tag = 3;
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	write_pages(&r, pfns, n, 1, 0xe1e1000000ull);
	rc = dirty_view_sync(r.view);
	msg = dirty_last_error();
	if (r.mode == DIRTY_KVM_RING) {
		/* Rings name real slots only: nothing to fail on, the writes arrive. */
		ck_assert_msg(rc == 0, "[ring] sync with a bogus slot = %d: %s", rc, msg);
		drain(&r);
		RIG_OK(&r);
		expect_claimed(&r, 0, set, NULL, "ring mode with a bogus slot registered");
		printf("errors_mark_everything [ring]: a slot KVM lacks cannot fail a ring harvest (no per-slot ioctl); writes still arrive\n");
	} else {
		ck_assert_msg(rc < 0, "[%s] sync with a slot KVM lacks returned %d", r.m->name, rc);
		ck_assert_msg(strstr(msg, "KVM_GET_DIRTY_LOG") && strstr(msg, "0x5"),
			      "[%s] error message does not name the ioctl and slot: %s", r.m->name, msg);
		printf("errors_mark_everything [%s]: bogus slot: sync = %d \"%s\"\n", r.m->name, rc, msg);
		drain(&r);
		RIG_OK(&r);
		expect_all(&r, "sync with a bogus slot");
		DOK(dirty_source_stats(dirty_kvm_source(r.kvm), &st));
		ck_assert_uint_eq(st.errors, 1);
		ck_assert_int_eq(st.last_error, rc);
		/* Removing it harvests it one last time: that fails too, and marks it. */
		r.tag = 4;
		rc = dirty_kvm_remove_slot(r.kvm, BOGUS_SLOT);
		ck_assert_msg(rc < 0, "[%s] remove_slot of a slot KVM lacks returned %d", r.m->name, rc);
		drain(&r);
		RIG_OK(&r);
		expect_claimed(&r, 1, allb, NULL, "remove_slot of a slot KVM lacks");
	}
	if (r.mode == DIRTY_KVM_RING)
		DOK(dirty_kvm_remove_slot(r.kvm, BOGUS_SLOT));
	DOK(dirty_view_remove_region(r.view, BOGUS_GPA));
	r.mem[1].active = false;
	/* Back to normal: exactly the writes. */
	r.tag = 5;
	memset(set, 0, RAM_PAGES);
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	write_pages(&r, pfns, n, 1, 0xe2e2000000ull);
	sync_drain(&r, "after the bogus slot went");
	expect_claimed(&r, 0, set, NULL, "after the bogus slot went");
	expect_copy(&r, 0, "after the bogus slot went");

	/* (b) The VM fd goes bad: the harvest fails, every page is dirty. */
	r.tag = 6;
	memset(set, 0, RAM_PAGES);
	pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
	write_pages(&r, pfns, n, 1, 0xe3e3000000ull);
	make_fd_bad(&r, &saved);
	rc = dirty_view_sync(r.view);
	msg = dirty_last_error();
	ck_assert_msg(rc < 0, "[%s] sync on a bad VM fd returned %d", r.m->name, rc);
	printf("errors_mark_everything [%s]: bad VM fd: sync = %d \"%s\"\n", r.m->name, rc, msg);
	/* Ring: the reset that failed is retried even with no new entry. */
	rc = dirty_view_final(r.view);
	ck_assert_msg(rc < 0, "[%s] final on a bad VM fd returned %d", r.m->name, rc);
	restore_fd(&r, saved);
	drain(&r);
	RIG_OK(&r);
	expect_all(&r, "sync on a bad VM fd");
	expect_copy(&r, 0, "after the failed sync");
	/* And on again: the new writes (the failed round's may come again). */
	r.tag = 7;
	memset(set2, 0, RAM_PAGES);
	for (unsigned int i = 0; i < n; i++)
		set2[pfns[i] - r.mem[0].gpa / PAGE] = 1;
	memset(set, 0, RAM_PAGES);
	pick(&r, 0, TEST_LOW_PFN, pfns2, n, set);
	write_pages(&r, pfns2, n, 1, 0xe4e4000000ull);
	sync_drain(&r, "after the fd came back");
	expect_claimed(&r, 0, set, set2, "after the fd came back");
	expect_copy(&r, 0, "after the fd came back");

	/*
	 * (c) Clear-log: a re-protect that fails inside a claim fails the
	 * claim, hands nothing out, and leaves every page dirty.
	 */
	if (r.mode == DIRTY_KVM_CLEAR_LOG) {
		struct dirty_claim *cl;
		struct dirty_run run;
		ssize_t got;

		r.tag = 8;
		memset(set, 0, RAM_PAGES);
		pick(&r, 0, TEST_LOW_PFN, pfns, n, set);
		write_pages(&r, pfns, n, 1, 0xe5e5000000ull);
		DOK(dirty_view_sync(r.view));
		DOK(dirty_claim_new(r.view, &cl));
		make_fd_bad(&r, &saved);
		got = dirty_claim_next(cl, &run, 1);
		msg = dirty_last_error();
		restore_fd(&r, saved);
		ck_assert_msg(got < 0 && strstr(msg, "KVM_CLEAR_DIRTY_LOG"),
			      "[clear-log] claim with a bad VM fd = %zd: %s", got, msg);
		printf("errors_mark_everything [clear-log]: bad VM fd: claim = %zd \"%s\"\n", got, msg);
		dirty_claim_free(cl);
		drain(&r);
		RIG_OK(&r);
		expect_all(&r, "clear on a bad VM fd");
		expect_copy(&r, 0, "after the failed clear");
	}
	DOK(dirty_source_stats(dirty_kvm_source(r.kvm), &st));
	printf("errors_mark_everything [%s]: %llu failed syncs, every one marked all pages; %.0f ms\n",
	       r.m->name, (unsigned long long)st.errors, now_ms() - t0);
	fflush(stdout);
	free(set);
	free(set2);
	free(allb);
	rig_down(&r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kvm_dirty");
	TCase *tc = tcase_create("kvm_adapter");
	const char *env = getenv("KVM_DIRTY_SEED");
	int fd, max;

	kvm_require();	/* exit 77 with the exact reason if /dev/kvm is unusable */
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	TEST_REQUIRE(fd >= 0, "/dev/kvm: %s", strerror(errno));
	dirty_kvm_probe(fd, &caps);
	close(fd);
	max = caps.ring_acq_rel ? caps.ring_acq_rel : caps.ring;
	ring_bytes = RING_MAX;
	while (ring_bytes > (uint32_t)max && ring_bytes)
		ring_bytes >>= 1;
	printf("KVM caps: MANUAL_DIRTY_LOG_PROTECT2=%d DIRTY_LOG_RING=%d DIRTY_LOG_RING_ACQ_REL=%d "
	       "DIRTY_LOG_RING_WITH_BITMAP=%d; auto mode: %s; ring size used: %u bytes\n",
	       caps.manual_protect2, caps.ring, caps.ring_acq_rel, caps.ring_with_bitmap,
	       dirty_kvm_mode_name(dirty_kvm_pick_mode(&caps)), ring_bytes);
	seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
	if (!seed)
		seed = 1;
	printf("KVM_DIRTY_SEED=%llu DIRTY_TEST_SCALE=%g\n", (unsigned long long)seed, test_scale());
	fflush(stdout);
	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, tracks_guest_writes, 0, NMODES);
	tcase_add_loop_test(tc, merge_finds_dma, 0, NMODES);
	tcase_add_loop_test(tc, memslot_hotplug, 0, NMODES);
	tcase_add_test(tc, ring_full_and_reaper);
	tcase_add_loop_test(tc, errors_mark_everything, 0, NMODES);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
