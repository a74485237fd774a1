/* SPDX-License-Identifier: MIT */
/*
 * test_view_stress.c - the merged view under concurrency: marker threads
 * (single pages, byte ranges, batches, foreign bitmaps, whole chunks)
 * against claimer threads with their own cursors, while a scratch region
 * is added and removed, plus dirty_claim_release() mid-chunk.
 *
 * Cases (CK_RUN_CASE=<name> runs one):
 *   exactly_once       every page marked once while claimers drain is
 *                      claimed exactly once; also rounds marking only the
 *                      later groups, and rounds of overlapping marks
 *                      (claimed once per drain);
 *   stamps             markers write a stamp into a page, then mark it;
 *                      after a drain every page's last stamp reached the
 *                      destination, claims <= marks, unmarked = unclaimed;
 *   churn_stamps,      the same two while a scratch region next to A is
 *   churn_exactly_once added and removed; its runs must lie inside it;
 *   release            dirty_claim_release() mid sparse / full chunk gives
 *                      back exactly what was not returned;
 *   write_then_mark    the contents written before a mark reach the claimer
 *                      even when the page's bit was already set.
 * Runs must be whole pages inside one region throughout.
 *
 * DIRTY_TEST_SCALE shrinks the work (0.2 under TSAN); DIRTY_TEST_SEED
 * replays the random choices (the seed is printed; thread timing is not
 * replayed).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libdirty.h"
#include "hbm.h"
#include "testutil.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define CHUNK ((uint64_t)HBM_CHUNK_PAGES)	/* 4096 pages */
#define GROUP (64 * CHUNK)			/* 262144 pages */

#define MAX_THREADS 4
#define NSTAMP 3		/* stamp marker threads */
#define BAD_SHOWN 8

/* ---- small helpers ------------------------------------------------------ */

static uint64_t base_seed;


/* Worker threads cannot use ck_assert: they record, the main thread asserts. */
static atomic_uint async_failures;
static char async_msg[512];
static pthread_mutex_t async_lock = PTHREAD_MUTEX_INITIALIZER;

static void async_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void async_fail(const char *fmt, ...)
{
	va_list ap;

	if (atomic_fetch_add(&async_failures, 1) != 0)
		return;
	pthread_mutex_lock(&async_lock);
	va_start(ap, fmt);
	vsnprintf(async_msg, sizeof(async_msg), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&async_lock);
}

static void async_reset(void)
{
	atomic_store(&async_failures, 0);
	async_msg[0] = 0;
}

static void assert_no_async(void)
{
	unsigned int n = atomic_load(&async_failures);

	pthread_mutex_lock(&async_lock);
	ck_assert_msg(n == 0, "%u failure(s) in worker threads, first: %s", n,
		      async_msg);
	pthread_mutex_unlock(&async_lock);
}

/*
 * Raise *p to v (destination stamps: claimers race on them). Counters and
 * destination stamps are relaxed: only the joining main thread reads them,
 * and ThreadSanitizer then builds no clock per counter.
 */
static void store_max(_Atomic uint64_t *p, uint64_t v, memory_order mo)
{
	uint64_t o = atomic_load_explicit(p, memory_order_relaxed);

	while (o < v && !atomic_compare_exchange_weak_explicit(p, &o, v, mo,
							       memory_order_relaxed))
		;
}

#define RLX_LOAD(p) atomic_load_explicit((p), memory_order_relaxed)
#define RLX_INC(p) atomic_fetch_add_explicit((p), 1, memory_order_relaxed)

/* ---- the world: two stable regions with a gap, optional scratch -------- */

struct rgn {
	uint64_t gpa, psize, npages;
	uint64_t first;		/* global index of the region's page 0 */
};

/* Scratch geometries, all starting right where region A ends. */
static const struct {
	uint64_t psize, npages;
} scratch_geo[] = {
	{ 4096, 1 },
	{ 4096, 4096 + 17 },
	{ 4096, 3 * 4096 },
	{ 65536, 4096 + 5 },
	{ 65536, 1 },
};
#define NSCRATCH (sizeof(scratch_geo) / sizeof(scratch_geo[0]))

enum mode { MODE_ONCE, MODE_STAMP };

struct world {
	struct dirty_view *v;
	struct rgn r[2];
	uint64_t total;
	enum mode mode;
	bool scratch;
	uint64_t s_gpa, s_maxlen;
	/* Per page (global index). */
	_Atomic uint32_t *claims, *marks;
	uint32_t *expect;	/* MODE_ONCE: claims due so far (main thread) */
	/*
	 * MODE_STAMP "page contents": one stamp per marker thread and page,
	 * so each marker's stores to its own array only ever increase and
	 * need no read-modify-write (which on x86 would also be a fence).
	 */
	_Atomic uint64_t *src[MAX_THREADS], *dst[MAX_THREADS];
	_Atomic uint64_t clock;
	atomic_bool drain, stop, scratch_stop;
	_Atomic uint64_t runs, calls, empty_calls, pages_claimed;
	_Atomic uint64_t scratch_runs, scratch_pages, scratch_cycles,
		scratch_marks;
};

/*
 * Region A: 4 KiB pages, two groups and some (one and some when scaled
 * below 0.5), a short last chunk
 * (80 pages: A's end stays 64 KiB aligned for the scratch region).
 * Region B: 2 MiB pages far above, one full chunk and a short one.
 */
static uint64_t region_a_pages(void)
{
	return test_scale() >= 0.5 ? 2 * GROUP + 5 * CHUNK + 80
				   : GROUP + 3 * CHUNK + 80;
}

static void world_init(struct world *w, enum mode mode, bool scratch)
{
	uint64_t i;

	memset(w, 0, sizeof(*w));
	w->mode = mode;
	w->scratch = scratch;
	w->r[0] = (struct rgn){ 1 * GIB, 4096, region_a_pages(), 0 };
	w->r[1] = (struct rgn){ 64 * GIB, 2 * MIB, CHUNK + 1000,
				w->r[0].npages };
	w->total = w->r[0].npages + w->r[1].npages;
	w->s_gpa = w->r[0].gpa + w->r[0].npages * w->r[0].psize;
	for (i = 0; i < NSCRATCH; i++)
		if (scratch_geo[i].psize * scratch_geo[i].npages > w->s_maxlen)
			w->s_maxlen = scratch_geo[i].psize * scratch_geo[i].npages;
	ck_assert_int_eq(w->s_gpa % 65536, 0);
	ck_assert(w->s_gpa + w->s_maxlen < w->r[1].gpa);

	ck_assert_int_eq(dirty_view_new(&w->v), 0);
	for (i = 0; i < 2; i++)
		ck_assert_msg(dirty_view_add_region(w->v, w->r[i].gpa,
						    w->r[i].npages * w->r[i].psize,
						    w->r[i].psize, 0) == 0,
			      "add region %" PRIu64 ": %s", i, dirty_last_error());
	w->claims = calloc(w->total, sizeof(*w->claims));
	w->marks = calloc(w->total, sizeof(*w->marks));
	w->expect = calloc(w->total, sizeof(*w->expect));
	ck_assert(w->claims && w->marks && w->expect);
	for (i = 0; mode == MODE_STAMP && i < NSTAMP; i++) {
		w->src[i] = calloc(w->total, sizeof(*w->src[i]));
		w->dst[i] = calloc(w->total, sizeof(*w->dst[i]));
		ck_assert(w->src[i] && w->dst[i]);
	}
	async_reset();
}

static void world_free(struct world *w)
{
	dirty_view_free(w->v);
	free(w->claims);
	free(w->marks);
	for (int i = 0; i < NSTAMP; i++) {
		free(w->src[i]);
		free(w->dst[i]);
	}
	free(w->expect);
}

static const struct rgn *rgn_of(const struct world *w, uint64_t idx)
{
	return idx >= w->r[1].first ? &w->r[1] : &w->r[0];
}

static uint64_t gpa_of(const struct world *w, uint64_t idx)
{
	const struct rgn *r = rgn_of(w, idx);

	return r->gpa + (idx - r->first) * r->psize;
}

/* Check one claimed run and count it. Called from claimer threads. */
static void account_run(struct world *w, const struct dirty_run *run)
{
	uint64_t end = run->gpa + run->len;

	atomic_fetch_add_explicit(&w->runs, 1, memory_order_relaxed);
	if (run->len == 0 || end < run->gpa) {
		async_fail("claimed run [%#" PRIx64 ", +%#" PRIx64 ") is empty or wraps",
			   run->gpa, run->len);
		return;
	}
	for (int i = 0; i < 2; i++) {
		const struct rgn *r = &w->r[i];
		uint64_t rend = r->gpa + r->npages * r->psize, first, n;

		if (run->gpa < r->gpa || run->gpa >= rend)
			continue;
		if (end > rend || (run->gpa | run->len) & (r->psize - 1)) {
			async_fail("claimed run [%#" PRIx64 ", +%#" PRIx64 ") is not whole pages "
				   "inside region [%#" PRIx64 ", %#" PRIx64 ") (page size %#" PRIx64 ")",
				   run->gpa, run->len, r->gpa, rend, r->psize);
			return;
		}
		first = r->first + (run->gpa - r->gpa) / r->psize;
		n = run->len / r->psize;
		atomic_fetch_add_explicit(&w->pages_claimed, n, memory_order_relaxed);
		for (uint64_t p = first; p < first + n; p++) {
			RLX_INC(&w->claims[p]);
			/* Read "page contents" after the claim: the copy a migration sends. */
			if (w->mode == MODE_STAMP)
				for (int k = 0; k < NSTAMP; k++)
					store_max(&w->dst[k][p],
						  RLX_LOAD(&w->src[k][p]),
						  memory_order_relaxed);
		}
		return;
	}
	if (w->scratch && run->gpa >= w->s_gpa &&
	    end <= w->s_gpa + w->s_maxlen && !((run->gpa | run->len) & 4095)) {
		atomic_fetch_add_explicit(&w->scratch_runs, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&w->scratch_pages, run->len / 4096,
					  memory_order_relaxed);
		return;
	}
	async_fail("claimed run [%#" PRIx64 ", +%#" PRIx64 ") lies in no region that existed",
		   run->gpa, run->len);
}

/* ---- claimers ------------------------------------------------------------ */

struct claimer {
	struct world *w;
	uint64_t seed;
	uint64_t pages;
};

static void *claimer_main(void *arg)
{
	static const size_t maxes[] = { 1, 2, 7, 64 };
	struct claimer *c = arg;
	struct world *w = c->w;
	struct dirty_claim *cl;
	struct dirty_run runs[64];

	if (dirty_claim_new(w->v, &cl)) {
		async_fail("dirty_claim_new: %s", dirty_last_error());
		return NULL;
	}
	for (;;) {
		bool draining = atomic_load(&w->drain);
		size_t max = maxes[test_below(&c->seed, 4)];
		ssize_t n;

		if (atomic_load(&w->stop))
			break;
		n = dirty_claim_next(cl, runs, max);
		atomic_fetch_add_explicit(&w->calls, 1, memory_order_relaxed);
		if (n < 0 || (size_t)n > max) {
			async_fail("dirty_claim_next(max %zu) returned %zd", max, n);
			break;
		}
		for (ssize_t i = 0; i < n; i++) {
			account_run(w, &runs[i]);
			c->pages += runs[i].len;
		}
		if (n == 0) {
			atomic_fetch_add_explicit(&w->empty_calls, 1,
						  memory_order_relaxed);
			/* Markers done (and the scratch thread stopped): empty is final. */
			if (draining)
				break;
			sched_yield();
		}
	}
	/* Stopped mid-drain: gives back whatever the cursor still holds. */
	dirty_claim_free(cl);
	return NULL;
}

/* One thread drains the view to empty with a fresh cursor. */
static void drain_here(struct world *w)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	ssize_t n;

	ck_assert_int_eq(dirty_claim_new(w->v, &cl), 0);
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < n; i++)
			account_run(w, &runs[i]);
	ck_assert_int_eq(n, 0);
	dirty_claim_free(cl);
}

/* After the final drain nothing is dirty and nothing more is claimed. */
static void assert_empty(struct world *w)
{
	struct dirty_claim *cl;
	struct dirty_run run;
	uint64_t pages = 1, bytes = 1;
	ssize_t n;

	ck_assert_int_eq(dirty_view_count(w->v, &pages, &bytes), 0);
	ck_assert_msg(pages == 0 && bytes == 0,
		      "after the drain the view still counts %" PRIu64 " dirty pages",
		      pages);
	ck_assert_int_eq(dirty_claim_new(w->v, &cl), 0);
	n = dirty_claim_next(cl, &run, 1);
	ck_assert_msg(n == 0, "after the drain a fresh cursor still claimed "
		      "[%#" PRIx64 ", +%#" PRIx64 ")", n > 0 ? run.gpa : 0,
		      n > 0 ? run.len : 0);
	dirty_claim_free(cl);
}

/* ---- the scratch region thread ------------------------------------------ */

struct churner {
	struct world *w;
	uint64_t seed;
};

static void *churn_main(void *arg)
{
	struct churner *ch = arg;
	struct world *w = ch->w;

	while (!atomic_load(&w->scratch_stop)) {
		unsigned int g = (unsigned int)test_below(&ch->seed, NSCRATCH);
		unsigned int flags = test_below(&ch->seed, 2) ? DIRTY_REGION_DIRTY : 0;
		uint64_t pages;
		int err;

		err = dirty_view_add_region(w->v, w->s_gpa,
					    scratch_geo[g].psize * scratch_geo[g].npages,
					    scratch_geo[g].psize, flags);
		if (err) {
			async_fail("add scratch region: %d %s", err, dirty_last_error());
			break;
		}
		/* Overlapping regions are refused even while others mark and claim. */
		err = dirty_view_add_region(w->v, w->s_gpa - 4096, 8192, 4096, 0);
		if (err != -EEXIST) {
			async_fail("overlapping add returned %d, want -EEXIST", err);
			break;
		}
		if (test_below(&ch->seed, 2))
			usleep((useconds_t)test_below(&ch->seed, 300));
		dirty_view_count(w->v, &pages, NULL);
		err = dirty_view_remove_region(w->v, w->s_gpa);
		if (err) {
			async_fail("remove scratch region: %d %s", err, dirty_last_error());
			break;
		}
		atomic_fetch_add_explicit(&w->scratch_cycles, 1, memory_order_relaxed);
		if (test_below(&ch->seed, 2))
			usleep((useconds_t)test_below(&ch->seed, 100));
	}
	return NULL;
}

/* Mark something inside the scratch range (present or not). */
static void mark_scratch(struct world *w, uint64_t *seed)
{
	uint64_t maxpg = w->s_maxlen / 4096, p = test_below(seed, maxpg);
	uint64_t n = 1 + test_below(seed, 64);
	uint8_t bm[64];

	atomic_fetch_add_explicit(&w->scratch_marks, 1, memory_order_relaxed);
	switch (test_below(seed, 4)) {
	case 0:		/* whole chunks of the 4 KiB geometries: full path */
		dirty_view_mark(w->v, w->s_gpa, (1 + test_below(seed, 3)) * CHUNK * 4096);
		break;
	case 1:
		for (unsigned int i = 0; i < sizeof(bm); i++)
			bm[i] = (uint8_t)test_rnd(seed);
		dirty_view_merge_bitmap(w->v, w->s_gpa + p * 4096, 4096, bm,
					8 * sizeof(bm));
		break;
	default:
		dirty_view_mark(w->v, w->s_gpa + p * 4096, n * 4096);
		break;
	}
}

/* ---- exactly once: disjoint segments marked by several threads ---------- */

enum method { M_SINGLE, M_RANGE, M_BATCH, M_BITMAP, M_FULL, M_NMETHODS };

struct seg {
	uint64_t first;		/* global page index */
	uint32_t n;
	uint8_t method;
};

struct marker {
	struct world *w;
	uint64_t seed;
	struct seg *segs;	/* shared array */
	uint64_t *order;	/* this marker's segment indices */
	size_t norder;
	uint64_t ops;		/* MODE_STAMP: operations to do */
	uint8_t *buf;		/* foreign bitmap scratch space */
	size_t buflen;
	uint64_t calls;
	int id;			/* MODE_STAMP: which stamp array is ours */
};

/* Mark pages [start, start + k) of page size ps with a byte range that
 * touches exactly those pages (rounding outward is the library's job). */
static void mark_pages_loose(struct dirty_view *v, uint64_t start, uint64_t k,
			     uint64_t ps, uint64_t *seed)
{
	uint64_t a = test_below(seed, 4) ? 0 : test_below(seed, ps);
	uint64_t e;

	if (k == 1)
		e = start + a + 1 + test_below(seed, ps - a);
	else
		e = start + (k - 1) * ps + 1 + (test_below(seed, 4) ? ps - 1 : test_below(seed, ps));
	dirty_view_mark(v, start + a, e - (start + a));
}

/* Mark the pages of [first, first + n) whose bit in set[] is clear, batched. */
static void mark_clear_bits(struct marker *m, uint64_t first, uint64_t n,
			    const uint8_t *set, unsigned int per)
{
	struct world *w = m->w;
	const struct rgn *r = rgn_of(w, first);
	struct dirty_range rg[16];
	size_t k = 0;
	uint64_t i = 0, nbits = n / per;

	while (i < nbits) {
		uint64_t j;

		if (set[i / 8] & (1u << (i % 8))) {
			i++;
			continue;
		}
		for (j = i; j < nbits && !(set[j / 8] & (1u << (j % 8))); j++)
			;
		rg[k].gpa = gpa_of(w, first) + i * per * r->psize;
		rg[k].len = (j - i) * per * r->psize;
		if (++k == 16) {
			dirty_view_mark_ranges(w->v, rg, k);
			m->calls++;
			k = 0;
		}
		i = j;
	}
	if (k) {
		dirty_view_mark_ranges(w->v, rg, k);
		m->calls++;
	}
}

static void mark_seg(struct marker *m, const struct seg *s)
{
	struct world *w = m->w;
	const struct rgn *r = rgn_of(w, s->first);
	uint64_t ps = r->psize, g0 = gpa_of(w, s->first), n = s->n, i;
	uint64_t local = s->first - r->first;
	uint64_t *seed = &m->seed;

	switch (s->method) {
	case M_SINGLE:
		for (i = 0; i < n; i++) {
			uint64_t off = test_below(seed, ps);

			dirty_view_mark(w->v, g0 + i * ps + off, 1 + test_below(seed, ps - off));
			m->calls++;
		}
		break;
	case M_RANGE:
		for (i = 0; i < n;) {
			uint64_t k = 1 + test_below(seed, n - i < 700 ? n - i : 700);

			if (test_below(seed, 4) == 0)
				k = n - i;
			mark_pages_loose(w->v, g0 + i * ps, k, ps, seed);
			m->calls++;
			i += k;
		}
		break;
	case M_BATCH: {
		struct dirty_range rg[8];
		size_t k = 0;

		for (i = 0; i < n;) {
			uint64_t len = 1 + test_below(seed, 5);

			if (len > n - i)
				len = n - i;
			rg[k].gpa = g0 + i * ps;
			rg[k].len = len * ps;
			i += len;
			if (++k == 8 || i == n) {
				dirty_view_mark_ranges(w->v, rg, k);
				m->calls++;
				k = 0;
			}
		}
		break;
	}
	case M_BITMAP: {
		unsigned int dens = (unsigned int)test_below(seed, 4);	/* 0: sparse .. 3: all */
		uint64_t nbits, fps;
		unsigned int per = 1;

		if (ps == 4096 && !(local & 1) && !(n & 1) && test_below(seed, 2)) {
			/* 8 KiB foreign pages expand to two region pages each. */
			per = 2;
			fps = 8192;
			nbits = n / 2;
		} else {
			fps = ps;
			nbits = n;
		}
		memset(m->buf, 0, (nbits + 7) / 8);
		for (i = 0; i < nbits; i++) {
			uint64_t x = test_below(seed, 8);

			if (dens == 3 || (dens == 0 && x == 0) ||
			    (dens == 1 && x < 4) || (dens == 2 && x < 7))
				m->buf[i / 8] |= (uint8_t)(1u << (i % 8));
		}
		if (ps == 2 * MIB && test_below(seed, 2)) {
			/* 4 KiB foreign pages fold: one random 4 KiB bit per page. */
			uint64_t fbits = n * 512;

			if (4096 + fbits / 8 + 8 > m->buflen) {
				async_fail("marker bitmap buffer too small for %" PRIu64 " bits", fbits);
				return;
			}
			memset(m->buf + 4096, 0, (fbits + 7) / 8);
			for (i = 0; i < n; i++)
				if (m->buf[i / 8] & (1u << (i % 8))) {
					uint64_t b = i * 512 + test_below(seed, 512);

					m->buf[4096 + b / 8] |= (uint8_t)(1u << (b % 8));
				}
			dirty_view_merge_bitmap(w->v, g0, 4096, m->buf + 4096, fbits);
		} else {
			dirty_view_merge_bitmap(w->v, g0, fps, m->buf, nbits);
		}
		m->calls++;
		mark_clear_bits(m, s->first, n, m->buf, per);
		break;
	}
	case M_FULL:
		switch (test_below(seed, 3)) {
		case 0:
			dirty_view_mark(w->v, g0, n * ps);
			break;
		case 1: {	/* a 100% dirty foreign bitmap takes the full path too */
			memset(m->buf, 0xff, (n + 7) / 8);
			dirty_view_merge_bitmap(w->v, g0, ps, m->buf, n);
			break;
		}
		default: {
			struct dirty_range rg = { g0, n * ps };

			dirty_view_mark_ranges(w->v, &rg, 1);
			break;
		}
		}
		m->calls++;
		break;
	}
}

/* Extra marks over random spots (round 2): duplicates of marked pages. */
static void mark_dup(struct marker *m)
{
	struct world *w = m->w;
	uint64_t *seed = &m->seed;
	const struct rgn *r = &w->r[test_below(seed, 4) ? 0 : 1];
	uint64_t p = test_below(seed, r->npages), n;

	switch (test_below(seed, 3)) {
	case 0:		/* a whole chunk, over pages already in level 0 */
		p -= p % CHUNK;
		n = r->npages - p < CHUNK ? r->npages - p : CHUNK;
		break;
	case 1:
		n = 1;
		break;
	default:
		n = 1 + test_below(seed, 300);
		if (n > r->npages - p)
			n = r->npages - p;
		break;
	}
	dirty_view_mark(w->v, r->gpa + p * r->psize, n * r->psize);
	m->calls++;
}

static bool dup_marks;

static void *once_marker_main(void *arg)
{
	struct marker *m = arg;

	for (size_t i = 0; i < m->norder; i++) {
		mark_seg(m, &m->segs[m->order[i]]);
		if (m->w->scratch && test_below(&m->seed, 3) == 0)
			mark_scratch(m->w, &m->seed);
		if (dup_marks && test_below(&m->seed, 3) == 0)
			mark_dup(m);
	}
	return NULL;
}

/* Cut every stable page into segments, each with a marking method. */
static struct seg *make_segments(struct world *w, uint64_t *seed, size_t *nsegs,
				 size_t *nfull)
{
	size_t cap = 1024, n = 0;
	struct seg *s = malloc(cap * sizeof(*s));

	ck_assert_ptr_nonnull(s);
	*nfull = 0;
	for (int ri = 0; ri < 2; ri++) {
		const struct rgn *r = &w->r[ri];
		uint64_t pos = 0;

		while (pos < r->npages) {
			uint64_t x = test_below(seed, 100), len;
			uint8_t meth;

			if (pos % CHUNK == 0 && x < 35) {
				len = (1 + test_below(seed, 3)) * CHUNK;	/* 1-3 whole chunks */
				meth = M_FULL;
				(*nfull)++;
			} else if (test_below(seed, 300) == 0) {
				len = CHUNK + test_below(seed, 3 * CHUNK);	/* partial + full + partial */
				meth = M_RANGE;
			} else {
				uint64_t to_chunk = CHUNK - pos % CHUNK;

				len = 1 + test_below(seed, x & 1 ? 40 : 300);
				meth = (uint8_t)test_below(seed, M_FULL);
				/* Often stop at the chunk edge, so whole chunks can follow. */
				if (len > to_chunk && test_below(seed, 3))
					len = to_chunk;
			}
			if (len > r->npages - pos)
				len = r->npages - pos;
			if (n == cap) {
				cap *= 2;
				s = realloc(s, cap * sizeof(*s));
				ck_assert_ptr_nonnull(s);
			}
			s[n++] = (struct seg){ r->first + pos, (uint32_t)len, meth };
			pos += len;
		}
	}
	*nsegs = n;
	return s;
}

struct once_stats {
	size_t segs, full;
	uint64_t pages;
	double secs;
};

/*
 * One round: markers mark every stable page via the segments (concurrently
 * with the claimers unless claim_after), then the claimers drain to empty.
 */
/*
 * from_group > 0: only region A's groups from from_group on (and region B
 * if with_b) are marked, so the claimers' fresh cursors must get past
 * clean groups through the summary levels above level 2.
 */
static struct once_stats once_round(struct world *w, int nmark, int nclaim,
				    bool claim_after, uint64_t from_group,
				    bool with_b, uint64_t seed)
{
	pthread_t mt[MAX_THREADS], ct[MAX_THREADS], cht;
	struct marker mk[MAX_THREADS];
	struct claimer cm[MAX_THREADS];
	struct churner ch = { w, seed ^ 0xc4u };
	struct once_stats st = { 0 };
	uint64_t *perm;
	struct seg *segs;
	double t0 = test_now_s();

	size_t nall;

	segs = make_segments(w, &seed, &nall, &st.full);
	perm = malloc(nall * sizeof(*perm));
	ck_assert_ptr_nonnull(perm);
	st.full = 0;
	for (size_t i = 0; i < nall; i++) {
		const struct seg *sg = &segs[i];
		bool in_b = sg->first >= w->r[1].first;

		if (from_group && (in_b ? !with_b : sg->first / GROUP < from_group))
			continue;
		perm[st.segs++] = i;
		st.full += sg->method == M_FULL;
		st.pages += sg->n;
		for (uint64_t p = sg->first; p < sg->first + sg->n; p++)
			w->expect[p]++;
	}
	for (size_t i = st.segs; i > 1; i--) {
		size_t j = (size_t)test_below(&seed, i);
		uint64_t t = perm[i - 1];

		perm[i - 1] = perm[j];
		perm[j] = t;
	}
	atomic_store(&w->drain, false);
	atomic_store(&w->stop, false);
	atomic_store(&w->scratch_stop, false);
	for (int i = 0; i < nmark; i++) {
		size_t share = (st.segs + (size_t)nmark - 1) / (size_t)nmark;
		size_t lo = (size_t)i * share, hi = lo + share;

		if (hi > st.segs)
			hi = st.segs;
		if (lo > hi)
			lo = hi;
		mk[i] = (struct marker){ .w = w, .seed = seed + 101u * (uint64_t)(i + 1),
					 .segs = segs, .order = perm + lo,
					 .norder = hi - lo, .buflen = 4096 + 300 * 512 / 8 + 64 };
		mk[i].buf = calloc(1, mk[i].buflen);
		ck_assert_ptr_nonnull(mk[i].buf);
	}
	for (int i = 0; i < nclaim; i++)
		cm[i] = (struct claimer){ w, seed + 7919u * (uint64_t)(i + 1), 0 };

	if (w->scratch)
		ck_assert_int_eq(pthread_create(&cht, NULL, churn_main, &ch), 0);
	if (!claim_after)
		for (int i = 0; i < nclaim; i++)
			ck_assert_int_eq(pthread_create(&ct[i], NULL, claimer_main, &cm[i]), 0);
	for (int i = 0; i < nmark; i++)
		ck_assert_int_eq(pthread_create(&mt[i], NULL, once_marker_main, &mk[i]), 0);
	for (int i = 0; i < nmark; i++)
		pthread_join(mt[i], NULL);
	if (w->scratch) {
		atomic_store(&w->scratch_stop, true);
		pthread_join(cht, NULL);
	}
	/* Markers done and no region changes any more: an empty claim is final. */
	atomic_store(&w->drain, true);
	if (claim_after)
		for (int i = 0; i < nclaim; i++)
			ck_assert_int_eq(pthread_create(&ct[i], NULL, claimer_main, &cm[i]), 0);
	for (int i = 0; i < nclaim; i++)
		pthread_join(ct[i], NULL);
	st.secs = test_now_s() - t0;
	for (int i = 0; i < nmark; i++)
		free(mk[i].buf);
	free(perm);
	free(segs);
	return st;
}

/* Every stable page was claimed exactly as often as it was due. */
static void assert_claimed_as_expected(struct world *w, const char *what)
{
	uint64_t bad = 0, first_bad = UINT64_MAX;

	for (uint64_t p = 0; p < w->total; p++) {
		uint32_t c = RLX_LOAD(&w->claims[p]);

		if (c != w->expect[p]) {
			if (bad < BAD_SHOWN)
				printf("  %s: page %" PRIu64 " (gpa %#" PRIx64 "): claimed %u times, expected %u\n",
				       what, p, gpa_of(w, p), c, w->expect[p]);
			if (first_bad == UINT64_MAX)
				first_bad = p;
			bad++;
		}
	}
	if (bad)
		ck_abort_msg("%s: page %" PRIu64 " (gpa %#" PRIx64 ") claimed %u times in all, "
			     "expected %u; %" PRIu64 " of %" PRIu64 " pages wrong", what,
			     first_bad, gpa_of(w, first_bad), atomic_load(&w->claims[first_bad]),
			     w->expect[first_bad], bad, w->total);
}

/* The region statistics agree with the test's own counts. */
static void assert_region_stats(struct world *w, bool marked_exact)
{
	for (int i = 0; i < 2; i++) {
		const struct rgn *r = &w->r[i];
		struct dirty_region_stats rs;
		uint64_t due = 0;

		for (uint64_t p = r->first; p < r->first + r->npages; p++)
			due += w->expect[p];
		ck_assert_int_eq(dirty_view_region_stats(w->v, r->gpa, &rs), 0);
		ck_assert_msg(rs.pages_claimed == due,
			      "region %d: stats say %" PRIu64 " pages claimed, expected %" PRIu64,
			      i, rs.pages_claimed, due);
		if (marked_exact)
			ck_assert_msg(rs.pages_marked == due,
				      "region %d: stats say %" PRIu64 " pages marked, expected %" PRIu64,
				      i, rs.pages_marked, due);
		else
			ck_assert_msg(rs.pages_marked >= due,
				      "region %d: stats say %" PRIu64 " pages marked, expected >= %" PRIu64,
				      i, rs.pages_marked, due);
	}
}

/*
 * Rounds of three kinds, the claim counters accumulating:
 *  - concurrent: every stable page marked exactly once (disjoint segments
 *    shuffled over the markers) while the claimers drain; then the
 *    claimers drain to empty. Each page must be claimed once.
 *  - partial: the same, but only region A's later groups (and maybe B)
 *    are marked: cursors must find them past clean groups.
 *  - overlapping: every page marked at least once, many twice (single
 *    pages under whole-chunk marks and the reverse), all before the
 *    claimers start: a page marked any number of times between two drains
 *    is claimed once (a full-chunk claim consumes the page bits under it).
 */
static void run_exactly_once(bool scratch)
{
	struct world w;
	struct once_stats st;
	uint64_t seed = base_seed ^ (scratch ? 0x5c7a7c4u : 0x0ce);
	uint64_t rounds = test_scaled(scratch ? 40 : 100, 4), overlap = 0, partial = 0;
	uint64_t ngroups, pages = 0;
	size_t segs = 0, full = 0;
	double secs = 0;
	const char *name = scratch ? "churn+once" : "exactly-once";
	char what[128];

	world_init(&w, MODE_ONCE, scratch);
	ngroups = (w.r[0].npages + GROUP - 1) / GROUP;
	for (uint64_t i = 0; i < rounds; i++) {
		bool ov = !scratch && i % 4 == 2, part = i % 4 == 3;
		uint64_t rs = seed + i * 0x1000193u, from = 0;

		if (part)
			from = 1 + test_below(&rs, ngroups - 1);
		dup_marks = ov;
		st = once_round(&w, 3, 3, ov, from, test_below(&rs, 2), rs);
		dup_marks = false;
		overlap += ov;
		partial += part;
		segs += st.segs;
		full += st.full;
		pages += st.pages;
		secs += st.secs;
		assert_no_async();
		snprintf(what, sizeof(what), "%s round %" PRIu64 " (%s)", name, i + 1,
			 ov ? "overlapping marks, drained after" :
			 part ? "later groups only, marked while claimed" :
			 "marked while claimed");
		assert_claimed_as_expected(&w, what);
		assert_empty(&w);
	}
	printf("%s: %" PRIu64 " rounds (%" PRIu64 " overlapping, %" PRIu64 " partial) over "
	       "%" PRIu64 " pages (A %" PRIu64 " x 4K in %" PRIu64 " groups, B %" PRIu64
	       " x 2M): %" PRIu64 " page marks in %zu segments (%zu full-chunk), 3 markers, "
	       "3 claimers: %" PRIu64 " runs, %" PRIu64 " claim calls (%" PRIu64 " empty), %.2fs\n",
	       name, rounds, overlap, partial, w.total, w.r[0].npages, ngroups,
	       w.r[1].npages, pages, segs, full, atomic_load(&w.runs),
	       atomic_load(&w.calls), atomic_load(&w.empty_calls), secs);
	if (scratch)
		printf("%s: scratch region added/removed %" PRIu64 " times, %" PRIu64
		       " scratch marks, %" PRIu64 " scratch pages in %" PRIu64 " runs claimed\n",
		       name, atomic_load(&w.scratch_cycles), atomic_load(&w.scratch_marks),
		       atomic_load(&w.scratch_pages), atomic_load(&w.scratch_runs));
	ck_assert_msg(atomic_load(&w.pages_claimed) == pages,
		      "%" PRIu64 " stable pages claimed, expected %" PRIu64,
		      atomic_load(&w.pages_claimed), pages);
	assert_region_stats(&w, overlap == 0);
	if (scratch)
		ck_assert_msg(atomic_load(&w.scratch_cycles) > 0,
			      "the scratch region was never added and removed");
	world_free(&w);
}

START_TEST(test_exactly_once)
{
	run_exactly_once(false);
}
END_TEST

START_TEST(test_churn_exactly_once)
{
	run_exactly_once(true);
}
END_TEST

/* ---- sequence stamps ----------------------------------------------------- */

/*
 * Write stamp s into marker id's "contents" of pages [first, first + n)
 * (global), as a VMM writes guest memory before it marks: a plain release
 * store, and nothing else between it and the mark. The library promises
 * that marking releases what was written before it to the claimer.
 */
static void stamp_pages(struct world *w, int id, uint64_t first, uint64_t n,
			uint64_t s)
{
	for (uint64_t p = first; p < first + n; p++)
		atomic_store_explicit(&w->src[id][p], s, memory_order_release);
}

/* Count one mark on each page, after the mark call (an RMW is a fence). */
static void count_marks(struct world *w, uint64_t first, uint64_t n)
{
	for (uint64_t p = first; p < first + n; p++)
		RLX_INC(&w->marks[p]);
}

static uint64_t next_stamp(struct world *w)
{
	return atomic_fetch_add(&w->clock, 1) + 1;
}

/* A page index, biased towards hot spots: chunk and group edges, region ends. */
static uint64_t pick_page(struct world *w, uint64_t *seed, const struct rgn **rp)
{
	const struct rgn *r = &w->r[test_below(seed, 5) ? 0 : 1];
	uint64_t p;

	switch (test_below(seed, 6)) {
	case 0:		/* the first chunks */
		p = test_below(seed, 2 * CHUNK);
		break;
	case 1:		/* around the first group boundary (or B's chunk edge) */
		p = (r->npages > GROUP ? GROUP : CHUNK) - 2048 + test_below(seed, 4096);
		break;
	case 2:		/* the short last chunk */
		p = r->npages - 1 - test_below(seed, 2 * CHUNK);
		break;
	default:
		p = test_below(seed, r->npages);
		break;
	}
	if (p >= r->npages)
		p = r->npages - 1;
	*rp = r;
	return p;
}

static void stamp_op(struct marker *m)
{
	struct world *w = m->w;
	uint64_t *seed = &m->seed;
	const struct rgn *r;
	uint64_t p = pick_page(w, seed, &r), s, n, x = test_below(seed, 100);
	int id = m->id;

	if (w->scratch && x < 15) {
		if (x < 3) {
			/* From A's tail into the scratch region (present or not). */
			const struct rgn *a = &w->r[0];

			n = 1 + test_below(seed, 64);
			s = next_stamp(w);
			stamp_pages(w, id, a->first + a->npages - n, n, s);
			dirty_view_mark(w->v, w->s_gpa - n * 4096,
					(n + 1 + test_below(seed, 5000)) * 4096);
			count_marks(w, a->first + a->npages - n, n);
		} else {
			mark_scratch(w, seed);
		}
		m->calls++;
		return;
	}
	x = test_below(seed, 100);
	if (x < 45) {		/* one page, any byte range inside it */
		uint64_t off = test_below(seed, r->psize);

		s = next_stamp(w);
		stamp_pages(w, id, r->first + p, 1, s);
		dirty_view_mark(w->v, r->gpa + p * r->psize + off,
				1 + test_below(seed, r->psize - off));
		count_marks(w, r->first + p, 1);
	} else if (x < 70) {	/* a range; sometimes whole chunks */
		if (test_below(seed, 8) == 0) {
			p -= p % CHUNK;
			n = test_below(seed, 3) == 0 ? 2 * CHUNK : CHUNK;
		} else {
			n = 1 + test_below(seed, 600);
		}
		if (n > r->npages - p)
			n = r->npages - p;
		s = next_stamp(w);
		stamp_pages(w, id, r->first + p, n, s);
		mark_pages_loose(w->v, r->gpa + p * r->psize, n, r->psize, seed);
		count_marks(w, r->first + p, n);
	} else if (x < 85) {	/* a foreign bitmap of the region's page size */
		uint64_t nbits = 1 + test_below(seed, 512);

		if (nbits > r->npages - p)
			nbits = r->npages - p;
		memset(m->buf, 0, (nbits + 7) / 8);
		for (uint64_t i = 0; i < nbits; i++)
			if (test_below(seed, 3) == 0)
				m->buf[i / 8] |= (uint8_t)(1u << (i % 8));
		s = next_stamp(w);
		for (uint64_t i = 0; i < nbits; i++)
			if (m->buf[i / 8] & (1u << (i % 8)))
				stamp_pages(w, id, r->first + p + i, 1, s);
		dirty_view_merge_bitmap(w->v, r->gpa + p * r->psize, r->psize,
					m->buf, nbits);
		for (uint64_t i = 0; i < nbits; i++)
			if (m->buf[i / 8] & (1u << (i % 8)))
				count_marks(w, r->first + p + i, 1);
	} else {		/* a batch of scattered pages */
		struct dirty_range rg[8];
		uint64_t pg[8];
		size_t k = 1 + test_below(seed, 8);

		for (size_t i = 0; i < k; i++) {
			uint64_t q = pick_page(w, seed, &r);

			pg[i] = r->first + q;
			rg[i].gpa = r->gpa + q * r->psize;
			rg[i].len = r->psize;
		}
		s = next_stamp(w);
		for (size_t i = 0; i < k; i++)
			stamp_pages(w, id, pg[i], 1, s);
		dirty_view_mark_ranges(w->v, rg, k);
		for (size_t i = 0; i < k; i++)
			count_marks(w, pg[i], 1);
	}
	m->calls++;
}

static void *stamp_marker_main(void *arg)
{
	struct marker *m = arg;

	for (uint64_t i = 0; i < m->ops; i++)
		stamp_op(m);
	return NULL;
}

struct stamp_totals {
	uint64_t marks, claims, pages;
};

/*
 * After a drain to empty, per page: the destination holds the source's
 * last stamp, claims <= marks, and a page never marked was never claimed.
 */
static void check_stamps(struct world *w, const char *what, struct stamp_totals *t)
{
	uint64_t bad = 0, first_bad = UINT64_MAX;
	int first_id = 0;

	memset(t, 0, sizeof(*t));
	for (uint64_t p = 0; p < w->total; p++) {
		uint32_t mc = RLX_LOAD(&w->marks[p]), cc = RLX_LOAD(&w->claims[p]);
		const char *why = NULL;
		int id = 0;

		t->marks += mc;
		t->claims += cc;
		t->pages += mc != 0;
		for (; id < NSTAMP && !why; id++) {
			uint64_t sv = RLX_LOAD(&w->src[id][p]), dv = RLX_LOAD(&w->dst[id][p]);

			if (mc == 0 && (cc || sv || dv))
				why = "never marked but stamped or claimed";
			else if (dv != sv)
				why = "destination stamp differs from source (a write was lost)";
		}
		id--;
		if (!why && cc > mc)
			why = "claimed more often than marked";
		if (why) {
			if (bad < BAD_SHOWN)
				printf("  %s: page %" PRIu64 " (gpa %#" PRIx64 "): %s: marks %u claims %u, "
				       "marker %d's stamp: source %" PRIu64 " destination %" PRIu64 "\n",
				       what, p, gpa_of(w, p), why, mc, cc, id,
				       RLX_LOAD(&w->src[id][p]), RLX_LOAD(&w->dst[id][p]));
			if (first_bad == UINT64_MAX) {
				first_bad = p;
				first_id = id;
			}
			bad++;
		}
	}
	if (bad) {
		uint64_t p = first_bad;

		ck_abort_msg("%s: page %" PRIu64 " (gpa %#" PRIx64 "): marks %u claims %u, "
			     "marker %d's stamp %" PRIu64 " (expected at the destination) vs "
			     "destination %" PRIu64 "; %" PRIu64 " pages wrong", what, p,
			     gpa_of(w, p), RLX_LOAD(&w->marks[p]), RLX_LOAD(&w->claims[p]),
			     first_id, RLX_LOAD(&w->src[first_id][p]),
			     RLX_LOAD(&w->dst[first_id][p]), bad);
	}
	ck_assert_msg(t->claims <= t->marks, "%s: %" PRIu64 " claims for %" PRIu64 " marks",
		      what, t->claims, t->marks);
}

/*
 * Phases of: markers stamp-then-mark while claimers drain (and, with
 * scratch, the scratch region comes and goes); markers finish, claimers
 * stop wherever they are (freeing a cursor releases what it held), one
 * thread drains to empty, and every page is checked.
 */
static void run_stamps(bool scratch)
{
	const int nmark = NSTAMP, nclaim = 3;
	const char *name = scratch ? "churn+stamps" : "stamps";
	pthread_t mt[MAX_THREADS], ct[MAX_THREADS], cht;
	struct marker mk[MAX_THREADS];
	struct claimer cm[MAX_THREADS];
	struct world w;
	struct churner ch;
	struct stamp_totals tot;
	uint64_t seed = base_seed ^ (scratch ? 0x57a3f5u : 0x57a3u);
	uint64_t phases = 4, ops = test_scaled(50000, 1000), late = 0;
	char what[96];
	double t0 = test_now_s();

	world_init(&w, MODE_STAMP, scratch);
	for (uint64_t ph = 0; ph < phases; ph++) {
		ch = (struct churner){ &w, seed ^ (0xc4u + ph) };
		for (int i = 0; i < nmark; i++) {
			mk[i] = (struct marker){ .w = &w, .ops = ops, .buflen = 128, .id = i,
						 .seed = seed + 31u * (uint64_t)(i + 1) + (ph << 32) };
			mk[i].buf = calloc(1, mk[i].buflen);
			ck_assert_ptr_nonnull(mk[i].buf);
		}
		for (int i = 0; i < nclaim; i++)
			cm[i] = (struct claimer){ &w, seed + 7u * (uint64_t)(i + 1) + (ph << 32), 0 };
		atomic_store(&w.stop, false);
		atomic_store(&w.scratch_stop, false);
		if (scratch)
			ck_assert_int_eq(pthread_create(&cht, NULL, churn_main, &ch), 0);
		for (int i = 0; i < nclaim; i++)
			ck_assert_int_eq(pthread_create(&ct[i], NULL, claimer_main, &cm[i]), 0);
		for (int i = 0; i < nmark; i++)
			ck_assert_int_eq(pthread_create(&mt[i], NULL, stamp_marker_main, &mk[i]), 0);
		for (int i = 0; i < nmark; i++)
			pthread_join(mt[i], NULL);
		/* Claimers stop wherever they are; freeing the cursor releases. */
		atomic_store(&w.stop, true);
		for (int i = 0; i < nclaim; i++)
			pthread_join(ct[i], NULL);
		if (scratch) {
			atomic_store(&w.scratch_stop, true);
			pthread_join(cht, NULL);
		}
		for (int i = 0; i < nmark; i++)
			free(mk[i].buf);
		/* The last round: one thread drains what is left. */
		drain_here(&w);
		assert_no_async();
		snprintf(what, sizeof(what), "%s phase %" PRIu64, name, ph + 1);
		check_stamps(&w, what, &tot);
		assert_empty(&w);
	}
	printf("%s: %" PRIu64 " phases x %d markers x %" PRIu64 " ops, %d claimers: %" PRIu64
	       " marks on %" PRIu64 " pages, %" PRIu64 " page claims in %" PRIu64 " runs, %"
	       PRIu64 " claim calls (%" PRIu64 " empty), %.2fs\n", name, phases, nmark, ops,
	       nclaim, tot.marks, tot.pages, tot.claims, atomic_load(&w.runs),
	       atomic_load(&w.calls), atomic_load(&w.empty_calls), test_now_s() - t0);
	if (scratch) {
		printf("%s: scratch region added/removed %" PRIu64 " times, %" PRIu64
		       " scratch marks, %" PRIu64 " scratch pages in %" PRIu64 " runs claimed\n",
		       name, atomic_load(&w.scratch_cycles), atomic_load(&w.scratch_marks),
		       atomic_load(&w.scratch_pages), atomic_load(&w.scratch_runs));
		ck_assert_msg(atomic_load(&w.scratch_cycles) > 0,
			      "the scratch region was never added and removed");
	}

	/*
	 * Epilogue: with everything clean, stamp and mark only past A's first
	 * group (and in B); a fresh cursor reaches them only through the
	 * summary levels above level 2.
	 */
	for (uint64_t i = 0; i < 64; i++) {
		const struct rgn *r = &w.r[i % 4 ? 0 : 1];
		uint64_t lo = r == &w.r[0] ? GROUP : 0, p = lo + test_below(&seed, r->npages - lo);
		uint64_t n = 1 + test_below(&seed, 8), st = next_stamp(&w);

		if (n > r->npages - p)
			n = r->npages - p;
		stamp_pages(&w, 0, r->first + p, n, st);
		dirty_view_mark(w.v, r->gpa + p * r->psize, n * r->psize);
		count_marks(&w, r->first + p, n);
		late += n;
	}
	drain_here(&w);
	assert_no_async();
	snprintf(what, sizeof(what), "%s epilogue (%" PRIu64 " pages past group 0)", name, late);
	check_stamps(&w, what, &tot);
	assert_empty(&w);
	world_free(&w);
}

START_TEST(test_stamps)
{
	run_stamps(false);
}
END_TEST

START_TEST(test_churn_stamps)
{
	run_stamps(true);
}
END_TEST

/* ---- dirty_claim_release ------------------------------------------------- */

#define REL_GPA (4 * GIB)
#define REL_PAGES (GROUP + 8 * CHUNK)

struct rel {
	struct dirty_view *v;
	uint8_t *marked;	/* per page */
	uint8_t *got;		/* per page: times handed out */
	uint64_t nmarked, ngot;
};

static void rel_mark(struct rel *t, uint64_t p, uint64_t n)
{
	if (dirty_view_mark(t->v, REL_GPA + p * 4096, n * 4096) != 0)
		ck_abort_msg("mark: %s", dirty_last_error());
	for (uint64_t i = p; i < p + n; i++) {
		t->nmarked += !t->marked[i];
		t->marked[i] = 1;
	}
}

static void rel_sparse(struct rel *t, uint64_t c, uint64_t *seed)
{
	for (uint64_t i = 0; i < CHUNK;) {
		uint64_t n = 1 + test_below(seed, 6);

		if (i + n > CHUNK)
			n = CHUNK - i;
		if (test_below(seed, 3) == 0)
			rel_mark(t, c * CHUNK + i, n);
		i += n + 1 + test_below(seed, 8);
	}
}

/* Claim up to calls x max runs; returns pages received. */
static uint64_t rel_claim(struct rel *t, struct dirty_claim *cl, size_t max,
			  uint64_t calls)
{
	struct dirty_run runs[64];
	uint64_t pages = 0;

	for (uint64_t k = 0; k < calls; k++) {
		ssize_t n = dirty_claim_next(cl, runs, max);

		/* Plain ifs in loops: every passing ck_assert costs Check a write(). */
		if (n < 0 || (size_t)n > max)
			ck_abort_msg("claim_next(max %zu) returned %zd", max, n);
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			uint64_t p = (runs[i].gpa - REL_GPA) / 4096, np = runs[i].len / 4096;

			if (runs[i].gpa < REL_GPA || (runs[i].gpa & 4095) ||
			    (runs[i].len & 4095) || np == 0 || p + np > REL_PAGES)
				ck_abort_msg("bad run [%#" PRIx64 ", +%#" PRIx64 ")",
					     runs[i].gpa, runs[i].len);
			for (uint64_t q = p; q < p + np; q++)
				t->got[q]++;
			pages += np;
		}
	}
	t->ngot += pages;
	return pages;
}

/*
 * full_first: the cursor's first chunk is a full one and it holds the next
 * (non-adjacent) full chunk when its run array fills; otherwise it stops
 * inside a sparse chunk. g: which group the chunks are in. how: 0 the
 * same cursor drains after release, 1 a fresh cursor does, 2 another
 * cursor drains everything visible before the release and again after.
 */
static void release_case(bool full_first, uint64_t g, int how, uint64_t *seed)
{
	struct rel t = { 0 };
	struct dirty_claim *a, *b = NULL;
	uint64_t cb = g * 64, calls, held_before, pages, bytes;
	uint64_t got_a, got_b = 0;
	char what[96];

	snprintf(what, sizeof(what), "release %s chunk, group %" PRIu64 ", drain %s",
		 full_first ? "full" : "sparse", g,
		 how == 0 ? "same cursor" : how == 1 ? "fresh cursor" : "other cursor first");
	t.marked = calloc(REL_PAGES, 1);
	t.got = calloc(REL_PAGES, 1);
	ck_assert(t.marked && t.got);
	ck_assert_int_eq(dirty_view_new(&t.v), 0);
	ck_assert_int_eq(dirty_view_add_region(t.v, REL_GPA, REL_PAGES * 4096, 4096, 0), 0);

	/* Layout from chunk cb: [sparse|none] full [sparse|none] full full . sparse */
	if (!full_first)
		rel_sparse(&t, cb, seed);
	rel_mark(&t, (cb + 1) * CHUNK, CHUNK);		/* full path */
	if (!full_first)
		rel_sparse(&t, cb + 2, seed);
	rel_mark(&t, (cb + 3) * CHUNK, 2 * CHUNK);	/* two full chunks */
	rel_sparse(&t, cb + 6, seed);

	ck_assert_int_eq(dirty_claim_new(t.v, &a), 0);
	if (full_first) {
		/* One run: chunk cb+1 whole; chunk cb+3 is then held, unreturned. */
		calls = 1;
	} else {
		/* Stop part-way through the sparse chunk cb. */
		uint64_t runs0 = 0;

		for (uint64_t i = 0; i < CHUNK; i++)
			runs0 += t.marked[cb * CHUNK + i] &&
				 (i == 0 || !t.marked[cb * CHUNK + i - 1]);
		ck_assert_uint_gt(runs0, 2);
		calls = 1 + test_below(seed, runs0 - 2);
	}
	got_a = rel_claim(&t, a, 1, calls);
	ck_assert_uint_gt(got_a, 0);
	if (full_first)
		ck_assert_msg(got_a == CHUNK && t.got[(cb + 1) * CHUNK],
			      "%s: first claim got %" PRIu64 " pages, expected chunk %" PRIu64,
			      what, got_a, cb + 1);

	/*
	 * Marks in the other group after the cursor moved on: they must come
	 * out too, and a's cursor found group g first.
	 */
	rel_sparse(&t, g ? 5 : 64 + 7, seed);
	if (how == 2) {
		/* What a holds is private: b must not see it. */
		ck_assert_int_eq(dirty_claim_new(t.v, &b), 0);
		got_b = rel_claim(&t, b, 64, UINT64_MAX);
	}
	ck_assert_int_eq(dirty_view_count(t.v, &held_before, NULL), 0);
	dirty_claim_release(a);
	dirty_claim_release(a);		/* nothing left: a no-op */
	ck_assert_int_eq(dirty_view_count(t.v, &pages, &bytes), 0);
	ck_assert_msg(held_before < pages, "%s: release gave nothing back "
		      "(%" PRIu64 " dirty before, %" PRIu64 " after)", what, held_before, pages);
	ck_assert_msg(pages == t.nmarked - got_a - got_b,
		      "%s: after release %" PRIu64 " pages dirty, expected %" PRIu64
		      " (marked %" PRIu64 ", returned %" PRIu64 " + %" PRIu64 ")",
		      what, pages, t.nmarked - got_a - got_b, t.nmarked, got_a, got_b);
	ck_assert_uint_eq(bytes, pages * 4096);

	/* The rest must come out exactly once: the complement of what was returned. */
	if (how == 0) {
		rel_claim(&t, a, 64, UINT64_MAX);
	} else if (how == 1) {
		ck_assert_int_eq(dirty_claim_new(t.v, &b), 0);
		rel_claim(&t, b, 64, UINT64_MAX);
	} else {
		rel_claim(&t, b, 64, UINT64_MAX);
	}
	for (uint64_t p = 0; p < REL_PAGES; p++)
		if (t.got[p] != t.marked[p])
			ck_abort_msg("%s: page %" PRIu64 " (chunk %" PRIu64 "): handed out %u times, "
			      "expected %u (first claim %" PRIu64 " pages in %" PRIu64 " calls)",
			      what, p, p / CHUNK, t.got[p], t.marked[p], got_a, calls);
	ck_assert_uint_eq(t.ngot, t.nmarked);
	ck_assert_int_eq(dirty_view_count(t.v, &pages, NULL), 0);
	ck_assert_uint_eq(pages, 0);

	dirty_claim_free(a);
	dirty_claim_free(b);
	dirty_view_free(t.v);
	free(t.marked);
	free(t.got);
}

START_TEST(test_release)
{
	uint64_t seed = base_seed ^ 0x4e1ea5eu;
	uint64_t reps = test_scaled(20, 3), cases = 0;

	for (uint64_t r = 0; r < reps; r++)
		for (int full = 0; full < 2; full++)
			for (uint64_t g = 0; g < 2; g++)
				for (int how = 0; how < 3; how++) {
					release_case(full, g, how, &seed);
					cases++;
				}
	printf("release: %" PRIu64 " cases (sparse and full chunks, both groups, "
	       "three drain orders) each returned exactly the complement\n", cases);
}
END_TEST

/* ---- write, then mark: the contents reach the claimer --------------------- */

/*
 * hbm.h: "Marking also releases the page contents written before it to the
 * claimer that exchanges the bit." One page, two threads, many rounds. At
 * the start of a round the page's bit is set (an earlier mark, unclaimed).
 * The marker copies a new 4 KiB image into the page (plain stores, as a VMM
 * writes guest memory) and calls dirty_view_mark(); the claimer claims the
 * page and reads it. Afterwards either the claimer read the new image, or
 * the page is dirty again; "old image and clean" loses the write for good.
 *
 * The claimer adapts its delay to land its claim right where the marker's
 * mark runs, and flushes the image from the caches between rounds so the
 * marker's stores linger in its store buffer: both only widen the window.
 */
#define WM_GPA (1ull << 32)
#define WM_WORDS 512u

struct wm {
	struct dirty_view *v;
	_Atomic uint64_t *page;
	_Atomic uint64_t go, done;
	uint64_t rounds;
	double deadline;
	int cpu[2];
	uint64_t fresh, stale_ok, lost, first_lost, ran;
};

static void wm_pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *wm_marker(void *arg)
{
	struct wm *t = arg;

	wm_pin(t->cpu[0]);
	for (uint64_t r = 1; r <= t->rounds; r++) {
		uint64_t g;

		while ((g = atomic_load_explicit(&t->go, memory_order_acquire)) != r)
			if (g == UINT64_MAX)
				return NULL;
		/* Page 64 shares page 0's level-0 cache line: keep it warm here. */
		dirty_view_mark(t->v, WM_GPA + 64 * 4096, 4096);
		for (unsigned int i = 0; i < WM_WORDS; i++)
			atomic_store_explicit(&t->page[i], r, memory_order_release);
		dirty_view_mark(t->v, WM_GPA, 4096);
		atomic_store_explicit(&t->done, r, memory_order_release);
	}
	return NULL;
}

/* Drain everything; was page 0 among it? */
static bool wm_drain(struct dirty_claim *cl)
{
	struct dirty_run runs[8];
	bool page0 = false;
	ssize_t n;

	while ((n = dirty_claim_next(cl, runs, 8)) > 0)
		for (ssize_t i = 0; i < n; i++)
			page0 |= runs[i].gpa == WM_GPA;
	return page0;
}

static void wm_run(struct wm *t)
{
	struct dirty_claim *cl;
	struct dirty_run run;
	pthread_t mt;
	uint64_t d = 0, seed = base_seed ^ 0x3e3u;

	ck_assert_int_eq(dirty_claim_new(t->v, &cl), 0);
	ck_assert_int_eq(pthread_create(&mt, NULL, wm_marker, t), 0);
	wm_pin(t->cpu[1]);
	for (uint64_t r = 1; r <= t->rounds; r++) {
		uint64_t seen;
		ssize_t got;

		if ((r & 255) == 0 && test_now_s() > t->deadline) {
			atomic_store_explicit(&t->go, UINT64_MAX, memory_order_release);
			break;
		}
		atomic_store_explicit(&t->go, r, memory_order_release);
		for (volatile uint64_t i = 0; i < d; i++)
			;
		got = dirty_claim_next(cl, &run, 1);
		seen = atomic_load_explicit(&t->page[WM_WORDS - 1], memory_order_relaxed);
		while (atomic_load_explicit(&t->done, memory_order_acquire) != r)
			;
		t->ran = r;
		if (got != 1 || run.gpa != WM_GPA) {
			atomic_store_explicit(&t->go, UINT64_MAX, memory_order_release);
			pthread_join(mt, NULL);
			ck_abort_msg("write-then-mark round %" PRIu64 ": claim returned %zd, "
				     "first run at %#" PRIx64 ", expected page 0 at %#llx",
				     r, got, got > 0 ? run.gpa : 0, WM_GPA);
		}
		if (seen == r) {
			uint64_t step = 1 + test_below(&seed, 16 + d / 16);

			t->fresh++;		/* marker was ahead: claim earlier */
			d = d > step ? d - step : 0;
		} else if (wm_drain(cl)) {
			t->stale_ok++;		/* claim came first, page dirty again */
			d += 1 + test_below(&seed, 16 + d / 16);
		} else if (t->lost++ == 0) {
			t->first_lost = r;
		}
		wm_drain(cl);
		/* The next image starts cold in every cache; page 0 dirty again. */
		for (unsigned int i = 0; i < WM_WORDS; i++)
			atomic_store_explicit(&t->page[i], r, memory_order_relaxed);
#if defined(__x86_64__) || defined(__i386__)
		for (unsigned int i = 0; i + 8 < WM_WORDS; i += 8)
			__builtin_ia32_clflush((const void *)&t->page[i]);
		__builtin_ia32_mfence();
#endif
		dirty_view_mark(t->v, WM_GPA, 4096);
	}
	pthread_join(mt, NULL);
	dirty_claim_free(cl);
}

START_TEST(test_write_then_mark)
{
	struct wm t = { 0 };
	cpu_set_t set;
	int ncpu = 0;

	t.cpu[0] = t.cpu[1] = -1;
	if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && ncpu < 2; c++)
			if (CPU_ISSET(c, &set))
				t.cpu[ncpu++] = c;
	if (ncpu < 2) {
		printf("write-then-mark: skipped, needs two CPUs to race on\n");
		return;
	}
	t.rounds = test_scaled(50000, 10000);
	t.deadline = test_now_s() + 4;
	t.page = aligned_alloc(4096, WM_WORDS * sizeof(*t.page));
	ck_assert_ptr_nonnull(t.page);
	memset(t.page, 0, WM_WORDS * sizeof(*t.page));
	ck_assert_int_eq(dirty_view_new(&t.v), 0);
	ck_assert_int_eq(dirty_view_add_region(t.v, WM_GPA, 128 * 4096, 4096, 0), 0);
	ck_assert_int_eq(dirty_view_mark(t.v, WM_GPA, 4096), 0);

	wm_run(&t);
	printf("write-then-mark: %" PRIu64 " rounds: claimer read the new image %" PRIu64
	       " times, the old one with the page dirty again %" PRIu64 " times, the old "
	       "one with the page clean %" PRIu64 " times\n", t.ran, t.fresh, t.stale_ok,
	       t.lost);
	dirty_view_free(t.v);
	free(t.page);
	ck_assert_msg(t.lost == 0,
		      "write-then-mark: in %" PRIu64 " of %" PRIu64 " rounds (first: round %"
		      PRIu64 ") the claimer took page 0 (gpa %#llx) and read the image from "
		      "before the marker's write (expected %" PRIu64 ", got %" PRIu64 " in that "
		      "round), yet dirty_view_mark(), called after the write, left the page "
		      "clean: the write would never be sent", t.lost, t.ran, t.first_lost,
		      WM_GPA, t.first_lost, t.first_lost - 1);
}
END_TEST

/* ---- runner -------------------------------------------------------------- */

static void add_case(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

/* One case per test: CK_RUN_CASE=stamps runs just that one. */
static Suite *stress_suite(void)
{
	Suite *s = suite_create("view_stress");

	add_case(s, "exactly_once", test_exactly_once);
	add_case(s, "stamps", test_stamps);
	add_case(s, "churn_stamps", test_churn_stamps);
	add_case(s, "churn_exactly_once", test_churn_exactly_once);
	add_case(s, "release", test_release);
	add_case(s, "write_then_mark", test_write_then_mark);
	return s;
}

int main(void)
{
	const char *s = getenv("DIRTY_TEST_SEED");

	base_seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	printf("view_stress: seed %#" PRIx64 " (DIRTY_TEST_SEED replays it), scale %.2f\n",
	       base_seed, test_scale());
	fflush(stdout);
	return test_run_suite(stress_suite());
}
