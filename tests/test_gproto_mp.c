/* SPDX-License-Identifier: MIT */
/*
 * test_gproto_mp.c - the guest bitmap protocol end to end with concurrent
 * guests: a migration copies "guest RAM" (a memfd) to a destination buffer
 * while guests map, DMA-write and unmap buffers in it, then stops them and
 * checks the destination page by page (DESIGN.md section 3, the invariant:
 * every DMA write completed before device stop reaches the destination).
 *
 *   host    view + region + protocol region (memfd) over the same range;
 *           start tracking, wait for the guests' acknowledgement, one full
 *           pass, then pre-copy rounds (sync, claim, copy; with the DEFER
 *           policy the claim itself keeps back the pages the guest holds
 *           pinned, and the source carries them); then the guests stop
 *           (device and vCPUs), final, drain, compare.
 *   guests  forked processes (each its own handle and its own pages) or
 *           threads sharing ONE handle; each keeps a ring of in-flight
 *           buffers: map FROM_DEVICE / BIDIRECTIONAL / TO_DEVICE, the
 *           "device" writes a fresh stamp into every word of the pages
 *           through the RAM mapping (invisible to any CPU-side tracking,
 *           like DMA), sometimes sync_for_cpu + more device writes, unmap;
 *           a received buffer is sometimes forwarded (the same pages
 *           mapped TO_DEVICE, which dirties nothing: only the carry-over
 *           can send them under DEFER). At the end each guest forwards a
 *           few buffers while the host runs two full rounds, and leaves
 *           its ring mapped with device writes after the last sync: those
 *           pages reach the destination only through the final pinned set.
 *   checker a host thread: guests publish "I hold page p mapped" after map
 *           returns and withdraw it before unmap (count + change sequence
 *           in one word); a count > 0 that did not change around a
 *           dirty_gp_pinned() read of 0 is a pin cleared while mapped.
 *
 * Negative controls run the same workload with the feature removed (no
 * protocol source; sync instead of final; pinned pages skipped without
 * the carry-over: the SEND policy's claims with the test dropping every
 * pinned page, as a library without carry-over would) and must see mismatches, so the positive cases are not
 * vacuous; checker_catches_early_unpin shows the checker reports a pin
 * bit cleared behind a held mapping. Under ThreadSanitizer only the thread variants run (fork is
 * unreliable there); guest RAM is mapped twice (device writes through one
 * mapping, the host reads through the other) exactly as DMA and the host
 * see it, so the tool checks the library's own synchronisation.
 *
 * DIRTY_TEST_SCALE shrinks the work; DIRTY_TEST_SEED replays a run.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <urcu/urcu-bp.h>

#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "testutil.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

#define BASE 0x100000000ull	/* guest-physical base of guest RAM */
#define PS 4096ull
#define WORDS (PS / 8)
#define MAXG 4			/* guests per run */
#define MAXSLOTS 512		/* buffer slots per guest */
#define ROUNDS 100		/* host rounds a run aims for */
#define RING 8			/* in-flight buffers per guest */
#define SLOT_PAGES 4		/* largest buffer */
#define TAIL 4			/* forwarded buffers held over two host rounds */
#define SHOWN 8			/* mismatches printed */
#define OVERLAP_PAGES 24	/* shared pool of the overlap case */
#define HOLD_ONE (1ull << 32)	/* holder word: change sequence above, count below */

/* ---- small helpers ------------------------------------------------------ */

static uint64_t base_seed;


static void sleep_us(long us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };

	nanosleep(&ts, NULL);
}

/* Word i of page p as the device writes it with this stamp. */
static inline uint64_t pattern(uint64_t stamp, uint64_t p, uint64_t i)
{
	if (i == 0)
		return stamp;
	if (i == 1)
		return p;
	return stamp ^ (p << 24) ^ (i * 0x9e3779b97f4a7c15ull);
}

/* ---- one run: shared state -------------------------------------------- */

enum host_mode {
	HOST_PROTO,		/* the feature: harvest, defer, final */
	HOST_NO_PROTO,		/* negative: the protocol never reaches the view */
	HOST_SYNC_NOT_FINAL,	/* negative: the last round is a sync (no pinned set) */
	HOST_DROP_PINNED,	/* negative: pinned pages skipped, not carried */
};

static const char *const host_mode_name[] = {
	"protocol", "no-protocol", "sync-not-final", "drop-pinned",
};

struct params {
	const char *name;
	bool procs;		/* forked processes; else threads sharing one handle */
	int nguests;
	unsigned int policy;	/* DIRTY_GP_PINNED_* */
	enum host_mode host;
	bool overlap;		/* threads map the same small pool of pages */
	bool late_track;	/* threads: tracking raised while the guests run */
};

/* Written by one guest, read by the host once the guest is gone. */
struct gstats {
	_Atomic uint64_t iters, maps, unmaps, syncs, page_writes, forwards,
		tail_forwards, left_pages, left_written, errors;
	char msg[200];
};

/* MAP_SHARED | MAP_ANONYMOUS: shared with forked guests. */
struct ctl {
	_Atomic uint64_t round;	/* pre-copy rounds completed */
	_Atomic int ready;	/* guests that opened and polled */
	_Atomic int done;	/* guests that finished (about to stop) */
	_Atomic int abort;
	struct gstats gs[MAXG];
	_Atomic uint64_t holder[];	/* per page: seq << 32 | mappings held */
};

struct run;

struct ent {
	uint64_t page;		/* first page index */
	uint32_t n;
	enum dirty_dma_dir dir;
	int slot;		/* -1 in the overlap pool */
	bool active;
};

struct guest {
	struct run *r;
	struct gstats *st;
	struct dirty_guest *g;
	int id;
	uint64_t seed, seq;
	bool busy[MAXSLOTS];
	struct ent ring[RING];
	pthread_t thread;
};

struct run {
	struct params p;
	uint64_t npages, size;
	int ram_fd;
	uint8_t *ram_host;	/* the host reads guest RAM here */
	uint8_t *ram_dev;	/* the device writes guest RAM here */
	uint8_t *dst;		/* the destination */
	struct dirty_view *v;	/* migration view */
	struct dirty_view *decoy;	/* HOST_NO_PROTO: the gp lives here */
	struct dirty_gp *gp;
	struct ctl *ctl;
	size_t ctl_size;
	struct dirty_guest *g;	/* threads: the one shared handle */
	/* Guest page layout (non-overlap): guest k's slots. */
	uint64_t slot_base[MAXG][MAXSLOTS];
	int nslots;
	uint64_t iters;
	uint64_t per_round;	/* a guest runs at most this far ahead of the host */
	/* Host results. */
	uint64_t rounds, first_pass, copied, deferred, dropped, final_pages;
	double t_ack;
	uint64_t mismatches, written_pages;
	double t_total;
	/* Guests: processes, or threads sharing g. */
	struct guest gu[MAXG];
	pid_t pids[MAXG];
	int status[MAXG];
	bool exited[MAXG];
	int nforked, nthreads;
	/* Checker. */
	bool checker_running;
	pthread_t checker;
	atomic_bool checker_stop;
	_Atomic uint64_t checks, violations, viol_page, viol_holder;
};

/* ---- the guest side ------------------------------------------------------ */

static void gfail(struct guest *gu, const char *what, int err)
{
	if (atomic_fetch_add(&gu->st->errors, 1) == 0)
		snprintf(gu->st->msg, sizeof(gu->st->msg), "guest %d: %s: %d (%s)",
			 gu->id, what, err, dirty_guest_last_error());
}

static uint64_t gpa_of(uint64_t p)
{
	return BASE + p * PS;
}

/* The device writes a new stamp into every word of the buffer. */
static void device_write(struct guest *gu, const struct ent *e)
{
	uint64_t stamp = ((uint64_t)(gu->id + 1) << 48) | ++gu->seq;

	for (uint64_t p = e->page; p < e->page + e->n; p++) {
		uint64_t *w = (uint64_t *)(gu->r->ram_dev + p * PS);

		/* Relaxed atomics: in the overlap case two devices share pages. */
		for (uint64_t i = 0; i < WORDS; i++)
			__atomic_store_n(&w[i], pattern(stamp, p, i), __ATOMIC_RELAXED);
	}
	atomic_fetch_add_explicit(&gu->st->page_writes, e->n, memory_order_relaxed);
}

static void publish(struct guest *gu, const struct ent *e, bool hold)
{
	for (uint64_t p = e->page; p < e->page + e->n; p++)
		atomic_fetch_add(&gu->r->ctl->holder[p], hold ? HOLD_ONE + 1 : HOLD_ONE - 1);
}

static bool gmap(struct guest *gu, struct ent *e)
{
	int err = dirty_guest_map(gu->g, gpa_of(e->page), e->n * PS, e->dir);

	if (err) {
		gfail(gu, "map", err);
		return false;
	}
	atomic_fetch_add_explicit(&gu->st->maps, 1, memory_order_relaxed);
	publish(gu, e, true);	/* after map returned */
	e->active = true;
	return true;
}

static void gunmap(struct guest *gu, struct ent *e)
{
	int err;

	publish(gu, e, false);	/* before unmap starts */
	err = dirty_guest_unmap(gu->g, gpa_of(e->page), e->n * PS, e->dir);
	if (err)
		gfail(gu, "unmap", err);
	atomic_fetch_add_explicit(&gu->st->unmaps, 1, memory_order_relaxed);
	e->active = false;
}

static void gsync(struct guest *gu, struct ent *e)
{
	int err = dirty_guest_sync_for_cpu(gu->g, gpa_of(e->page), e->n * PS, e->dir);

	if (err)
		gfail(gu, "sync_for_cpu", err);
	atomic_fetch_add_explicit(&gu->st->syncs, 1, memory_order_relaxed);
}

static int pick_slot(struct guest *gu)
{
	int s = (int)test_below(&gu->seed, (uint64_t)gu->r->nslots);

	while (gu->busy[s])
		s = (s + 1) % gu->r->nslots;
	gu->busy[s] = true;
	return s;
}

static void choose_buffer(struct guest *gu, struct ent *e)
{
	uint64_t x = test_below(&gu->seed, 10);

	e->n = 1 + (uint32_t)test_below(&gu->seed, SLOT_PAGES);
	e->dir = x < 6 ? DIRTY_FROM_DEVICE : x < 8 ? DIRTY_BIDIRECTIONAL : DIRTY_TO_DEVICE;
	if (gu->r->p.overlap) {
		e->slot = -1;
		e->page = gu->r->slot_base[0][0] + test_below(&gu->seed, OVERLAP_PAGES - e->n + 1);
	} else {
		e->slot = pick_slot(gu);
		e->page = gu->r->slot_base[gu->id][e->slot] +
			  test_below(&gu->seed, SLOT_PAGES - e->n + 1);
	}
}

static void post(struct guest *gu, struct ent *e)
{
	choose_buffer(gu, e);
	if (!gmap(gu, e)) {
		if (e->slot >= 0)
			gu->busy[e->slot] = false;
		return;
	}
	if (e->dir & DIRTY_FROM_DEVICE)
		device_write(gu, e);
}

static void complete(struct guest *gu, struct ent *e)
{
	bool rx = e->dir & DIRTY_FROM_DEVICE;

	if (rx && test_below(&gu->seed, 3) == 0) {
		gsync(gu, e);
		if (test_below(&gu->seed, 2)) {
			/* Back to the device, which writes again before the unmap. */
			dirty_guest_sync_for_device(gu->g, gpa_of(e->page), e->n * PS, e->dir);
			device_write(gu, e);
		}
	}
	gunmap(gu, e);
	if (rx && !gu->r->p.overlap && test_below(&gu->seed, 4) == 0) {
		/* Forward what was received: TO_DEVICE dirties nothing. */
		e->dir = DIRTY_TO_DEVICE;
		if (gmap(gu, e)) {
			atomic_fetch_add_explicit(&gu->st->forwards, 1, memory_order_relaxed);
			return;
		}
	}
	if (e->slot >= 0)
		gu->busy[e->slot] = false;
}

/*
 * Receive into a buffer, then hold it mapped TO_DEVICE while the host runs
 * two complete rounds: its dirty bit is harvested while the page is pinned,
 * so under DEFER only the carry-over sends it after the TO_DEVICE unmap.
 */
static void tail_forward(struct guest *gu)
{
	struct ent e;
	uint64_t r0;
	double t0 = test_now_s();

	e.slot = pick_slot(gu);
	e.n = 1 + (uint32_t)test_below(&gu->seed, SLOT_PAGES);
	e.page = gu->r->slot_base[gu->id][e.slot];
	e.dir = DIRTY_FROM_DEVICE;
	if (!gmap(gu, &e))
		return;
	device_write(gu, &e);
	gunmap(gu, &e);
	e.dir = DIRTY_TO_DEVICE;
	if (!gmap(gu, &e))
		return;
	r0 = atomic_load(&gu->r->ctl->round);
	while (atomic_load(&gu->r->ctl->round) < r0 + 2 && !atomic_load(&gu->r->ctl->abort)) {
		if (test_now_s() - t0 > 60) {
			gfail(gu, "host rounds stalled during the tail", -ETIMEDOUT);
			break;
		}
		sleep_us(50);
	}
	gunmap(gu, &e);
	gu->busy[e.slot] = false;
	atomic_fetch_add_explicit(&gu->st->tail_forwards, 1, memory_order_relaxed);
}

static void guest_body(struct guest *gu)
{
	struct run *r = gu->r;

	for (uint64_t it = 0; it < r->iters && !atomic_load(&r->ctl->abort); it++) {
		struct ent *e = &gu->ring[it % RING];
		struct ent *o;
		double t0 = 0;

		/*
		 * Pace: at most per_round iterations per host round, so every
		 * round overlaps guest activity (a migration that converges).
		 */
		while (it >= (atomic_load(&r->ctl->round) + 1) * r->per_round &&
		       !atomic_load(&r->ctl->abort)) {
			if (!t0)
				t0 = test_now_s();
			if (test_now_s() - t0 > 120) {
				gfail(gu, "host rounds stalled", -ETIMEDOUT);
				atomic_store(&r->ctl->abort, 1);
				break;
			}
			/* An agent keeps polling while its guest waits: the host may be
			 * waiting for an acknowledgement before its first round. */
			if (r->p.procs)
				dirty_guest_poll(gu->g);
			sleep_us(20);
		}
		if (e->active)
			complete(gu, e);
		if (!e->active)
			post(gu, e);
		/* The device also fills another in-flight buffer, out of order. */
		o = &gu->ring[test_below(&gu->seed, RING)];
		if (o->active && (o->dir & DIRTY_FROM_DEVICE))
			device_write(gu, o);
		if (r->p.procs && it % 256 == 0)
			dirty_guest_poll(gu->g);	/* heartbeat */
		atomic_fetch_add_explicit(&gu->st->iters, 1, memory_order_relaxed);
	}
	if (!r->p.overlap)
		for (int i = 0; i < TAIL && !atomic_load(&r->ctl->abort); i++)
			tail_forward(gu);
	/*
	 * Stop with the ring mapped: half the receive buffers get a sync and
	 * then more device writes, all have writes after their last sync.
	 */
	for (int i = 0; i < RING; i++) {
		struct ent *e = &gu->ring[i];

		if (!e->active)
			continue;
		atomic_fetch_add_explicit(&gu->st->left_pages, e->n, memory_order_relaxed);
		if (!(e->dir & DIRTY_FROM_DEVICE))
			continue;
		if (test_below(&gu->seed, 2))
			gsync(gu, e);
		device_write(gu, e);
		atomic_fetch_add_explicit(&gu->st->left_written, e->n, memory_order_relaxed);
	}
	atomic_fetch_add(&r->ctl->done, 1);
}

static void guest_init(struct guest *gu, struct run *r, int id)
{
	memset(gu, 0, sizeof(*gu));
	gu->r = r;
	gu->id = id;
	gu->st = &r->ctl->gs[id];
	gu->seed = base_seed ^ (0x51ed2701ull * (uint64_t)(id + 1)) ^ (uint64_t)r->p.host << 40;
}

static void *guest_thread(void *arg)
{
	guest_body(arg);
	return NULL;
}

/* A forked guest: its own handle on the inherited region fd. Never returns. */
static void guest_process(struct run *r, int id)
{
	struct guest gu;
	int err;

	guest_init(&gu, r, id);
	err = dirty_guest_open_fd(dirty_gp_fd(r->gp), &gu.g);
	if (err) {
		gfail(&gu, "open", err);
		_exit(2);
	}
	dirty_guest_poll(gu.g);
	atomic_fetch_add(&r->ctl->ready, 1);
	guest_body(&gu);
	/* vCPUs and device stop: nothing is closed, mappings stay pinned. */
	_exit(atomic_load(&gu.st->errors) ? 3 : 0);
}

/* ---- the checker: pin bits versus published mappings --------------------- */

static void *checker_main(void *arg)
{
	struct run *r = arg;

	while (!atomic_load(&r->checker_stop)) {
		for (uint64_t p = 0; p < r->npages; p++) {
			uint64_t a = atomic_load(&r->ctl->holder[p]), b;
			int pin;

			if (!(uint32_t)a)
				continue;
			pin = dirty_gp_pinned(r->gp, gpa_of(p));
			b = atomic_load(&r->ctl->holder[p]);
			if (a != b)
				continue;	/* changed meanwhile: no verdict */
			atomic_fetch_add_explicit(&r->checks, 1, memory_order_relaxed);
			if (pin != 1 && atomic_fetch_add(&r->violations, 1) == 0) {
				atomic_store(&r->viol_page, p);
				atomic_store(&r->viol_holder, a);
			}
		}
		sched_yield();
	}
	return NULL;
}

static void checker_start(struct run *r)
{
	atomic_store(&r->checker_stop, false);
	ck_assert_int_eq(pthread_create(&r->checker, NULL, checker_main, r), 0);
	r->checker_running = true;
}

static void checker_stop(struct run *r)
{
	if (!r->checker_running)
		return;
	atomic_store(&r->checker_stop, true);
	pthread_join(r->checker, NULL);
	r->checker_running = false;
}

/* ---- the host side ------------------------------------------------------- */

/* The run in progress, for the fixture that cleans up after a failed case. */
static struct run *cur_run;

static struct run *run_setup(const struct params *p)
{
	struct dirty_gp_config cfg = { 0 };
	struct run *r = calloc(1, sizeof(*r));
	uint64_t slice;

	ck_assert_ptr_nonnull(r);
	cur_run = r;
	r->p = *p;
	r->npages = test_scaled(16384, 1024) + 37;	/* a short last bitmap word */
	r->size = r->npages * PS;
	r->iters = test_scaled(p->procs ? 45000 : 30000, 1000);
	r->per_round = r->iters / ROUNDS;

	r->ram_fd = memfd_create("guest-ram", MFD_CLOEXEC);
	ck_assert_int_ge(r->ram_fd, 0);
	ck_assert_int_eq(ftruncate(r->ram_fd, (off_t)r->size), 0);
	r->ram_host = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, r->ram_fd, 0);
	ck_assert_ptr_ne(r->ram_host, MAP_FAILED);
	if (p->procs) {
		r->ram_dev = r->ram_host;	/* another process's mapping */
	} else {
		/* A second mapping: device writes and host reads never alias. */
		r->ram_dev = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, r->ram_fd, 0);
		ck_assert_ptr_ne(r->ram_dev, MAP_FAILED);
	}
	r->dst = malloc(r->size);
	ck_assert_ptr_nonnull(r->dst);
	r->ctl_size = sizeof(struct ctl) + r->npages * sizeof(r->ctl->holder[0]);
	r->ctl = mmap(NULL, r->ctl_size, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(r->ctl, MAP_FAILED);

	/* Each guest's slots spread over its own slice, at odd offsets. */
	ck_assert_int_le(p->nguests, MAXG);
	slice = r->npages / (uint64_t)p->nguests;
	r->nslots = (int)(slice / (2 * SLOT_PAGES) < MAXSLOTS ? slice / (2 * SLOT_PAGES) : MAXSLOTS);
	ck_assert_int_ge(r->nslots, RING + TAIL + 8);
	ck_assert_uint_ge(slice / (uint64_t)r->nslots, SLOT_PAGES);
	for (int k = 0; k < p->nguests; k++) {
		uint64_t s = base_seed ^ (uint64_t)k;
		uint64_t stride = slice / (uint64_t)r->nslots;

		for (int i = 0; i < r->nslots; i++)
			r->slot_base[k][i] = (uint64_t)k * slice + (uint64_t)i * stride +
					     test_below(&s, stride - SLOT_PAGES + 1);
	}
	if (p->overlap)	/* one pool straddling a bitmap word boundary */
		r->slot_base[0][0] = 64 * 3 - OVERLAP_PAGES / 2;

	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, BASE, r->size, PS, 0), 0);
	cfg.gpa = BASE;
	cfg.len = r->size;
	/* The drop control skips pinned pages itself: claims must hand them out. */
	cfg.pinned = p->host == HOST_DROP_PINNED ? DIRTY_GP_PINNED_SEND : p->policy;
	/* An unhealthy guest must fail the run, never pass it by resending all. */
	cfg.fallback = DIRTY_GP_FALLBACK_ABORT;
	cfg.ack_timeout_ms = 60000;
	if (p->host == HOST_NO_PROTO) {
		ck_assert_int_eq(dirty_view_new(&r->decoy), 0);
		ck_assert_int_eq(dirty_gp_create(r->decoy, &cfg, &r->gp), 0);
	} else {
		ck_assert_msg(dirty_gp_create(r->v, &cfg, &r->gp) == 0, "%s", dirty_last_error());
	}
	return r;
}

static void run_teardown(struct run *r)
{
	checker_stop(r);
	if (r->g)
		dirty_guest_close(r->g);
	dirty_view_free(r->v);	/* frees the gp too */
	if (r->decoy)
		dirty_view_free(r->decoy);
	munmap(r->ctl, r->ctl_size);
	free(r->dst);
	if (r->ram_dev != r->ram_host)
		munmap(r->ram_dev, r->size);
	munmap(r->ram_host, r->size);
	close(r->ram_fd);
	free(r);
	cur_run = NULL;
}

/*
 * Checked teardown: after a failed assertion (CK_NOFORK longjmps out of
 * the case) stop the guests, the checker and free the run, so the next
 * case starts clean and no forked guest outlives the binary.
 */
static void cleanup_failed_run(void)
{
	struct run *r = cur_run;

	if (!r)
		return;
	atomic_store(&r->ctl->abort, 1);
	for (int k = 0; k < r->nforked; k++)
		if (!r->exited[k]) {
			kill(r->pids[k], SIGKILL);
			waitpid(r->pids[k], NULL, 0);
		}
	for (int k = 0; k < r->nthreads; k++)
		pthread_join(r->gu[k].thread, NULL);
	run_teardown(r);
}

static int start_tracking(struct run *r)
{
	return dirty_view_start(r->decoy ? r->decoy : r->v);
}

/*
 * Drain the view: copy each claimed page (this is sending). Under DEFER
 * the claim never hands out a page the guest holds pinned; the drop-pinned
 * control forgets such pages before final instead.
 */
static uint64_t drain(struct run *r, bool final)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t n = 0;
	ssize_t k;
	bool drop = !final && r->p.host == HOST_DROP_PINNED;

	ck_assert_int_eq(dirty_claim_new(r->v, &cl), 0);
	while ((k = dirty_claim_next(cl, runs, 64)) > 0) {
		for (ssize_t i = 0; i < k; i++) {
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += PS) {
				uint64_t off = a - BASE;

				ck_assert_uint_lt(off, r->size);
				if (drop && dirty_gp_pinned(r->gp, a) == 1) {
					r->dropped++;
					continue;
				}
				memcpy(r->dst + off, r->ram_host + off, PS);
				n++;
			}
		}
	}
	ck_assert_int_eq(k, 0);
	dirty_claim_free(cl);
	return n;
}

/* Compare guest RAM with the destination, page by page. */
static void compare(struct run *r)
{
	unsigned int shown = 0;

	r->mismatches = 0;
	r->written_pages = 0;
	for (uint64_t p = 0; p < r->npages; p++) {
		const uint64_t *s = (const uint64_t *)(r->ram_host + p * PS);
		const uint64_t *d = (const uint64_t *)(r->dst + p * PS);

		if (s[0])
			r->written_pages++;
		if (!memcmp(s, d, PS))
			continue;
		if (r->mismatches++ < (r->p.host == HOST_PROTO ? SHOWN : 2)) {
			printf("  %s: %s page %" PRIu64 " (gpa %#" PRIx64 "): expected stamp %#" PRIx64
			       " (guest %" PRIu64 " seq %" PRIu64 "), got %#" PRIx64 "%s\n",
			       r->p.name, r->p.host == HOST_PROTO ? "MISMATCH" : "lost (control)",
			       p, gpa_of(p), s[0], (uint64_t)(s[0] >> 48), (uint64_t)(s[0] & ((1ull << 48) - 1)),
			       d[0], ++shown == SHOWN ? " ..." : "");
		}
	}
}

static pid_t fork_guest(struct run *r, int id)
{
	pid_t pid;

	/* liburcu-bp's registry and call_rcu worker across fork without exec. */
	urcu_bp_call_rcu_before_fork();
	urcu_bp_before_fork();
	pid = fork();
	if (pid == 0) {
		urcu_bp_after_fork_child();
		urcu_bp_call_rcu_after_fork_child();
		guest_process(r, id);
	}
	urcu_bp_after_fork_parent();
	urcu_bp_call_rcu_after_fork_parent();
	return pid;
}

static struct run *run_case(const struct params *p)
{
	struct run *r;
	int reaped = 0, acked;
	double t0 = test_now_s(), deadline = t0 + 300;
	struct dirty_gp_health h;

	r = run_setup(p);
	if (p->procs) {
		/*
		 * Tracking is on before the guests exist, so every client sees
		 * it (one process's acknowledgement covers only its own
		 * threads); the view's start then waits for an acknowledgement.
		 */
		ck_assert_int_eq(dirty_gp_track(r->gp, 1), 0);
		for (int k = 0; k < p->nguests; k++) {
			r->pids[k] = fork_guest(r, k);
			ck_assert_int_ge(r->pids[k], 0);
			r->nforked++;
		}
		/* Start waits only for a guest that is there: let one open first. */
		for (int i = 0; i < 30000; i++) {
			ck_assert_int_eq(dirty_gp_health(r->gp, &h), 0);
			if (h.guest_state == DIRTY_PROTO_GUEST_RUNNING)
				break;
			sleep_us(100);
		}
		ck_assert_int_eq(start_tracking(r), 0);
	} else {
		ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(r->gp), &r->g), 0);
		ck_assert_int_eq(dirty_guest_agent_start(r->g, 1), 0);
		if (!p->late_track)
			ck_assert_int_eq(start_tracking(r), 0);
		for (int k = 0; k < p->nguests; k++) {
			guest_init(&r->gu[k], r, k);
			r->gu[k].g = r->g;	/* ONE handle shared by every guest thread */
			ck_assert_int_eq(pthread_create(&r->gu[k].thread, NULL, guest_thread,
							&r->gu[k]), 0);
			r->nthreads++;
		}
		if (p->late_track) {
			/* Raise tracking while the guests map and unmap with it off. */
			while (atomic_load(&r->ctl->gs[0].iters) < r->per_round / 2 &&
			       atomic_load(&r->ctl->done) == 0)
				sleep_us(200);
			ck_assert_int_eq(start_tracking(r), 0);
		}
	}
	checker_start(r);

	/* dirty_view_start() returned only once the guests acknowledged. */
	r->t_ack = test_now_s();
	acked = dirty_gp_acked(r->gp);
	r->t_ack = test_now_s() - r->t_ack;
	ck_assert_msg(acked == 1, "start returned before the guests acknowledged tracking: %d %s",
		      acked, dirty_last_error());
	memcpy(r->dst, r->ram_host, r->size);
	r->first_pass = r->npages;

	/* Pre-copy while the guests run; they stop on their own. */
	for (;;) {
		uint64_t n;
		bool running;

		ck_assert_msg(dirty_view_sync(r->v) == 0, "sync: %s", dirty_last_error());
		n = drain(r, false);
		r->copied += n;
		r->rounds++;
		atomic_store(&r->ctl->round, r->rounds);
		if (p->procs) {
			for (int k = 0; k < p->nguests; k++)
				if (!r->exited[k] &&
				    waitpid(r->pids[k], &r->status[k], WNOHANG) == r->pids[k]) {
					r->exited[k] = true;
					reaped++;
				}
			running = reaped < p->nguests;
		} else {
			running = atomic_load(&r->ctl->done) < p->nguests;
		}
		if (!running)
			break;
		if (test_now_s() > deadline) {
			atomic_store(&r->ctl->abort, 1);
			ck_abort_msg("%s: guests still running after 300 s", p->name);
		}
		if (!n)
			sleep_us(100);
	}
	/* Device and vCPUs stopped: the guests are gone (processes reaped above). */
	if (!p->procs) {
		for (int k = 0; k < p->nguests; k++)
			pthread_join(r->gu[k].thread, NULL);
		r->nthreads = 0;
	}
	for (int k = 0; k < p->nguests; k++) {
		struct gstats *st = &r->ctl->gs[k];

		ck_assert_msg(atomic_load(&st->errors) == 0, "%s: %" PRIu64 " guest error(s): %s",
			      p->name, (uint64_t)atomic_load(&st->errors), st->msg);
		if (p->procs)
			ck_assert_msg(WIFEXITED(r->status[k]) && WEXITSTATUS(r->status[k]) == 0,
				      "%s: guest %d ended with status %#x", p->name, k, r->status[k]);
	}

	/* Final: dirty, pinned and carried pages (or, in that control, a sync). */
	if (p->host == HOST_SYNC_NOT_FINAL)
		ck_assert_int_eq(dirty_view_sync(r->v), 0);
	else
		ck_assert_msg(dirty_view_final(r->v) == 0, "final: %s", dirty_last_error());
	r->final_pages = drain(r, true);
	compare(r);
	/* The pages left mapped stay held: give a starved checker a look at them. */
	for (int i = 0; i < 5000 && atomic_load(&r->checks) == 0; i++)
		sleep_us(1000);
	checker_stop(r);
	r->t_total = test_now_s() - t0;

	ck_assert_int_eq(dirty_gp_health(r->gp, &h), 0);
	r->deferred = h.pages_kept_back;
	{
		uint64_t maps = 0, writes = 0, fwd = 0, tail = 0, left = 0, leftw = 0, syncs = 0;

		for (int k = 0; k < p->nguests; k++) {
			struct gstats *st = &r->ctl->gs[k];

			maps += st->maps;
			writes += st->page_writes;
			fwd += st->forwards;
			tail += st->tail_forwards;
			left += st->left_pages;
			leftw += st->left_written;
			syncs += st->syncs;
		}
		printf("%-22s %s K=%d %-5s %-14s %5" PRIu64 " pages compared, %" PRIu64
		       " written; %" PRIu64 " maps, %" PRIu64 " page writes, %" PRIu64
		       " syncs, %" PRIu64 "+%" PRIu64 " forwards, %" PRIu64 " pages left mapped (%" PRIu64
		       " written after last sync); host: %" PRIu64 " rounds, %" PRIu64
		       " copied, %" PRIu64 " deferred, %" PRIu64 " dropped, %" PRIu64
		       " at final; gp: %" PRIu64 " harvested, %" PRIu64 " pinned sent, %" PRIu64
		       " carried now; checker: %" PRIu64 " checks, %" PRIu64
		       " violations; ack %.1f ms; MISMATCHES %" PRIu64 "; %.2f s\n",
		       p->name, p->procs ? "procs  " : "threads", p->nguests,
		       p->policy == DIRTY_GP_PINNED_DEFER ? "DEFER" : "SEND",
		       host_mode_name[p->host], r->npages, r->written_pages, maps, writes,
		       syncs, fwd, tail, left, leftw, r->rounds, r->copied, r->deferred,
		       r->dropped, r->final_pages, h.pages_harvested, h.pages_pinned_sent,
		       h.pages_carried, (uint64_t)r->checks, (uint64_t)r->violations,
		       r->t_ack * 1000, r->mismatches, r->t_total);
		fflush(stdout);
		/* The workload really did what the cases rely on. */
		ck_assert_uint_gt(writes, 0);
		ck_assert_uint_gt(leftw, 0);
		if (!p->overlap)
			ck_assert_uint_eq(tail, (uint64_t)(TAIL * p->nguests));
	}
	if (p->host != HOST_NO_PROTO) {
		ck_assert_msg(h.healthy, "%s: guest protocol unhealthy: %s", p->name, h.reason);
		ck_assert_uint_eq(h.bad_ranges, 0);
	}
	ck_assert_msg(atomic_load(&r->violations) == 0,
		      "%s: %" PRIu64 " time(s) the host read a pin bit clear while a guest held "
		      "the page mapped; first: page %" PRIu64 " with holder word %#" PRIx64,
		      p->name, (uint64_t)atomic_load(&r->violations),
		      (uint64_t)atomic_load(&r->viol_page), (uint64_t)atomic_load(&r->viol_holder));
	ck_assert_uint_gt(r->checks, 0);
	return r;
}

/* Positive: the destination equals guest RAM, page for page. */
static void expect_exact(const struct params *p)
{
	struct run *r = run_case(p);

	ck_assert_msg(r->mismatches == 0, "%s: %" PRIu64 " of %" PRIu64
		      " pages differ at the destination (first ones printed above)",
		      p->name, r->mismatches, r->npages);
	if (p->policy == DIRTY_GP_PINNED_DEFER)
		ck_assert_uint_gt(r->deferred, 0);	/* the carry-over was exercised */
	run_teardown(r);
}

/* Negative control: with that part of the feature removed, pages are lost. */
static void expect_loss(const struct params *p)
{
	struct run *r = run_case(p);

	ck_assert_msg(r->mismatches > 0, "%s: control saw no lost page: the positive cases "
		      "would not notice this part of the feature missing", p->name);
	run_teardown(r);
}

/* ---- cases ----------------------------------------------------------------- */

#ifndef UNDER_TSAN
START_TEST(procs_send)
{
	expect_exact(&(struct params){ "procs_send", true, 3, DIRTY_GP_PINNED_SEND,
				       HOST_PROTO, false, false });
}
END_TEST

START_TEST(procs_defer)
{
	expect_exact(&(struct params){ "procs_defer", true, 3, DIRTY_GP_PINNED_DEFER,
				       HOST_PROTO, false, false });
}
END_TEST

START_TEST(procs_control_no_protocol)
{
	expect_loss(&(struct params){ "procs_no_protocol", true, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_NO_PROTO, false, false });
}
END_TEST

START_TEST(procs_control_sync_not_final)
{
	expect_loss(&(struct params){ "procs_sync_not_final", true, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_SYNC_NOT_FINAL, false, false });
}
END_TEST

START_TEST(procs_control_drop_pinned)
{
	expect_loss(&(struct params){ "procs_drop_pinned", true, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_DROP_PINNED, false, false });
}
END_TEST
#endif

START_TEST(threads_send)
{
	expect_exact(&(struct params){ "threads_send", false, 3, DIRTY_GP_PINNED_SEND,
				       HOST_PROTO, false, true });
}
END_TEST

START_TEST(threads_defer)
{
	expect_exact(&(struct params){ "threads_defer", false, 3, DIRTY_GP_PINNED_DEFER,
				       HOST_PROTO, false, true });
}
END_TEST

START_TEST(threads_overlap_defer)
{
	expect_exact(&(struct params){ "threads_overlap_defer", false, 2, DIRTY_GP_PINNED_DEFER,
				       HOST_PROTO, true, false });
}
END_TEST

START_TEST(threads_overlap_send)
{
	expect_exact(&(struct params){ "threads_overlap_send", false, 3, DIRTY_GP_PINNED_SEND,
				       HOST_PROTO, true, true });
}
END_TEST

START_TEST(threads_control_no_protocol)
{
	expect_loss(&(struct params){ "threads_no_protocol", false, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_NO_PROTO, false, true });
}
END_TEST

START_TEST(threads_control_sync_not_final)
{
	expect_loss(&(struct params){ "threads_sync_not_final", false, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_SYNC_NOT_FINAL, false, false });
}
END_TEST

START_TEST(threads_control_drop_pinned)
{
	expect_loss(&(struct params){ "threads_drop_pinned", false, 3, DIRTY_GP_PINNED_DEFER,
				      HOST_DROP_PINNED, false, false });
}
END_TEST

/*
 * The checker itself: a pin bit cleared behind a held mapping (what a
 * refcount bug would do) is reported.
 */
START_TEST(checker_catches_early_unpin)
{
	struct run *r;
	struct params p = { "checker_self_test", false, 1, DIRTY_GP_PINNED_DEFER,
			    HOST_PROTO, false, false };
	struct guest gu;
	struct ent e = { .page = 70, .n = 2, .dir = DIRTY_FROM_DEVICE, .slot = -1 };
	uint8_t *region;
	struct dirty_proto_layout l;

	r = run_setup(&p);
	ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(r->gp), &r->g), 0);
	guest_init(&gu, r, 0);
	gu.g = r->g;
	checker_start(r);
	ck_assert(gmap(&gu, &e));
	for (int i = 0; i < 2000 && atomic_load(&r->checks) == 0; i++)
		sleep_us(1000);
	ck_assert_uint_gt(r->checks, 0);
	ck_assert_uint_eq(r->violations, 0);
	/* Clear the pin bit of page 71 as a buggy unmap would. */
	ck_assert_int_eq(dirty_proto_layout(r->npages, &l), 0);
	region = mmap(NULL, l.region_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      dirty_gp_fd(r->gp), 0);
	ck_assert_ptr_ne(region, MAP_FAILED);
	dirty_proto_unpin((uint64_t *)(region + l.pin_off), 71);
	for (int i = 0; i < 2000 && atomic_load(&r->violations) == 0; i++)
		sleep_us(1000);
	checker_stop(r);
	ck_assert_uint_gt(r->violations, 0);
	ck_assert_uint_eq(r->viol_page, 71);
	dirty_proto_pin((uint64_t *)(region + l.pin_off), 71);
	gunmap(&gu, &e);
	munmap(region, l.region_size);
	run_teardown(r);
}
END_TEST

int main(void)
{
	const char *s = getenv("DIRTY_TEST_SEED");
	Suite *suite = suite_create("gproto_mp");
	TCase *tc = tcase_create("migration");

	base_seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	printf("gproto_mp: seed %#" PRIx64 " (DIRTY_TEST_SEED replays the guests' choices), scale %.2f%s\n",
	       base_seed, test_scale(),
#ifdef UNDER_TSAN
	       ", ThreadSanitizer: thread variants only"
#else
	       ""
#endif
	);
	fflush(stdout);
	tcase_set_timeout(tc, 600);
	tcase_add_checked_fixture(tc, NULL, cleanup_failed_run);
	tcase_add_test(tc, checker_catches_early_unpin);
#ifndef UNDER_TSAN
	tcase_add_test(tc, procs_send);
	tcase_add_test(tc, procs_defer);
	tcase_add_test(tc, procs_control_no_protocol);
	tcase_add_test(tc, procs_control_sync_not_final);
	tcase_add_test(tc, procs_control_drop_pinned);
#endif
	tcase_add_test(tc, threads_send);
	tcase_add_test(tc, threads_defer);
	tcase_add_test(tc, threads_overlap_defer);
	tcase_add_test(tc, threads_overlap_send);
	tcase_add_test(tc, threads_control_no_protocol);
	tcase_add_test(tc, threads_control_sync_not_final);
	tcase_add_test(tc, threads_control_drop_pinned);
	suite_add_tcase(suite, tc);
	return test_run_suite(suite);
}
