/* SPDX-License-Identifier: MIT */
/*
 * claim.c - claim cursors: how migration threads drain the view.
 *
 * A cursor takes one level-2 word ("group": 64 chunks, 256 Ki pages) at a
 * time with an exchange, so concurrent claimers split the view by group
 * and never both receive a page for one mark; a call hands out at most
 * about CALL_PAGES pages, so a dense view is split too. What it
 * took is private until returned as runs; dirty_claim_release() marks the
 * rest dirty again. Sources' prepare_read hooks run on every batch before it is
 * returned. Between calls the cursor keeps the region's id and geometry,
 * never a pointer, since the region may be removed meanwhile (its pages
 * then need no sending and the private bits are dropped).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "hbm_ahead.h"

struct dirty_claim {
	struct dirty_view *view;
	uint64_t region_id;	/* 0: none yet */
	uint64_t region_gpa;
	unsigned int page_shift;
	uint64_t group;		/* next group to search in the region */
	uint32_t spread;	/* where in a region this cursor starts, of 2^32 */
	bool wrapped;		/* searched from the start point to the end already */
	/* Taken from group `taken`, not yet claimed chunk by chunk. */
	uint64_t taken, chunks, full;
	/*
	 * What is being handed out: page bits words[j] for each j in wmask
	 * of chunk `chunk` (what remains), or, when chunk_full, the
	 * chunk_pages pages from chunk `chunk` on (a block of consecutive
	 * full chunks, handed out as one run).
	 */
	bool have_chunk, chunk_full;
	uint64_t chunk, chunk_pages, wmask;
	uint64_t words[HBM_CHUNK_WORDS];
	struct hbm_ahead ahead;	/* prefetching hints for the region's next groups */
	/* Level-3 bits of groups taken and not yet lazily cleared (word lazy_w). */
	uint64_t lazy_w, lazy_mask;
};

DIRTY_API int dirty_claim_new(struct dirty_view *view, struct dirty_claim **out)
{
	struct dirty_claim *cl = calloc(1, sizeof(*cl));

	if (!cl)
		return __dirty_err(-ENOMEM, "dirty_claim_new: out of memory");
	cl->view = view;
	{
		/*
		 * Cursor k starts at fraction vdc(k) of each region (the bits
		 * of k reversed: 0, 1/2, 1/4, 3/4, ...), so concurrent
		 * claimers take groups far apart: adjacent groups share the
		 * cache lines of their level-2 and full words, and two
		 * claimers exchanging them in turn bounce those lines at
		 * every group. The first cursor starts at 0.
		 */
		uint32_t k = (uint32_t)atomic_fetch_add_explicit(&view->cursors, 1,
								  memory_order_relaxed), v = 0;

		for (int i = 0; i < 32; i++, k >>= 1)
			v = v << 1 | (k & 1);
		cl->spread = v;
	}
	*out = cl;
	return 0;
}

static void drop_private(struct dirty_claim *cl)
{
	cl->have_chunk = false;
	cl->chunks = cl->full = cl->lazy_mask = 0;
}

/* Clear the level-3 bits of the groups taken since the last call, at once. */
static void lazy_flush(struct dirty_claim *cl, struct region *r)
{
	if (cl->lazy_mask && r && r->bm.nlevels > 3)
		hbm_lazy_clear_mask(&r->bm, 3, cl->lazy_w, cl->lazy_mask);
	cl->lazy_mask = 0;
}

static void use_region(struct dirty_claim *cl, const struct region *r)
{
	cl->region_id = r->id;
	cl->region_gpa = r->gpa;
	cl->page_shift = r->page_shift;
	cl->group = (uint64_t)(((unsigned __int128)cl->spread * r->bm.nwords[2]) >> 32);
	cl->wrapped = cl->group == 0;
	cl->ahead.n = 0;
}

/*
 * Pages one call hands out before it stops taking groups: 8 groups (8 GiB
 * of 4 KiB pages). Big enough that a claim's shared-line traffic (the
 * summary words, the statistics) is paid once per 8 full groups, small
 * enough that a dense view splits among claimers.
 */
#define CALL_PAGES (8 * 64 * (uint64_t)HBM_CHUNK_PAGES)

/* Where a batch is filled: kept in locals, never aliased by the runs. */
struct out {
	struct dirty_run *runs;
	size_t n, max;
	uint64_t pages;		/* handed out, for the region's statistics */
};

/*
 * Hand out the current chunk (or full block); false when the run array
 * filled first, with what is left kept in the cursor. The counts live in
 * locals while runs are written (a store through runs could alias them).
 */
static bool emit_chunk(struct dirty_claim *cl, struct out *o)
{
	unsigned int shift = cl->page_shift;
	uint64_t base = cl->region_gpa + ((cl->chunk * HBM_CHUNK_PAGES) << shift);
	uint64_t wmask = cl->wmask, pages = 0;
	struct dirty_run *runs = o->runs;
	size_t n = o->n, max = o->max;
	bool room = true;

	if (cl->chunk_full) {
		wmask = 0;
		if (n && runs[n - 1].gpa + runs[n - 1].len == base)
			runs[n - 1].len += cl->chunk_pages << shift;
		else if (n < max)
			runs[n++] = (struct dirty_run){ base, cl->chunk_pages << shift };
		else
			room = false;
		if (room)
			pages = cl->chunk_pages;
	}
	/* Only the words the level-1 summary named. */
	while (room && wmask) {
		unsigned int j = (unsigned int)__builtin_ctzll(wmask);
		uint64_t v = cl->words[j], wgpa = base + ((uint64_t)j << (6 + shift));

		while (v) {
			unsigned int s = (unsigned int)__builtin_ctzll(v);
			uint64_t rest = ~(v >> s);
			uint64_t len = rest ? (uint64_t)__builtin_ctzll(rest) : 64 - s;
			uint64_t gpa = wgpa + ((uint64_t)s << shift);

			if (n && runs[n - 1].gpa + runs[n - 1].len == gpa) {
				runs[n - 1].len += len << shift;
			} else if (n < max) {
				runs[n].gpa = gpa;
				runs[n++].len = len << shift;
			} else {
				cl->words[j] = v;
				room = false;
				break;
			}
			pages += len;
			/* Adding the lowest set bit carries through its run of ones. */
			v &= v + (v & -v);
		}
		if (room)
			wmask &= wmask - 1;
	}
	cl->wmask = wmask;
	cl->have_chunk = !room;
	o->n = n;
	o->pages += pages;
	return room;
}

/*
 * Claim the next owned chunk: a sparse one into words[], or the block of
 * consecutive full chunks starting there, each with the level-0 bits set
 * under it (one page, one claim).
 */
static void next_chunk(struct dirty_claim *cl, struct region *r)
{
	uint64_t both = cl->chunks | cl->full, b = both & -both;
	uint64_t c = (cl->taken << 6) + (uint64_t)__builtin_ctzll(b);

	cl->chunk = c;
	if (!(cl->full & b)) {
		uint64_t rest = both & ~b & ~cl->full;

		cl->chunks &= ~b;
		/* A dense group: the lines of the chunk two ahead start coming. */
		if (hbm_popcount(rest) > 1) {
			rest &= rest - 1;
			hbm_prefetch_chunk(&r->bm, (cl->taken << 6) +
					   (uint64_t)__builtin_ctzll(rest));
		}
		cl->chunk_full = false;
		cl->chunk_pages = hbm_claim_chunk(&r->bm, c, false, cl->words, &cl->wmask);
		cl->have_chunk = cl->chunk_pages != 0;
		return;
	}
	cl->chunk_full = true;
	cl->chunk_pages = 0;
	cl->wmask = 0;
	do {
		cl->chunks &= ~b;
		cl->full &= ~b;
		cl->chunk_pages += hbm_claim_chunk(&r->bm, c++, true, cl->words, &cl->wmask);
		b <<= 1;
	} while (b && (cl->full & b));
	cl->have_chunk = true;
}

/* Claim up to max runs from table t (inside a read section). */
static size_t claim_batch(struct dirty_claim *cl, const struct region_table *t,
			  struct dirty_run *runs, size_t max)
{
	struct out o = { .runs = runs, .max = max };
	struct region *r = NULL;
	size_t idle = 0;

	if (cl->region_id)
		r = __dirty_table_by_id(t, cl->region_id);
	if (!r) {
		drop_private(cl);
		if (!t->n)
			return 0;
		r = t->r[cl->region_id ? __dirty_table_lower(t, cl->region_gpa) % t->n : 0];
		use_region(cl, r);
	}
	/*
	 * Visit regions from the cursor on; give up after every region was
	 * searched once (the first one twice: from the cursor, then from 0)
	 * with nothing found.
	 */
	while (idle <= t->n) {
		uint64_t g;

		if (cl->have_chunk) {
			if (!emit_chunk(cl, &o))
				break;
			idle = 0;
			continue;
		}
		if (cl->chunks | cl->full) {
			next_chunk(cl, r);
			continue;
		}
		/*
		 * CALL_PAGES per call at most: full chunks join into one run,
		 * and without a bound the first claimer of a dense view would
		 * take all of it while the others idle.
		 */
		if (o.n && o.pages >= CALL_PAGES)
			break;
		g = hbm_find_group(&r->bm, cl->group);
		if (g == HBM_NONE && !cl->wrapped) {
			/* Start point to end searched: now the groups before it. */
			cl->wrapped = true;
			cl->group = 0;
			cl->ahead.n = 0;
			continue;
		}
		if (g != HBM_NONE) {
			cl->taken = g;
			cl->group = g + 1;
			hbm_ahead(&r->bm, &cl->ahead, g);
			if (cl->lazy_mask && cl->lazy_w != g >> 6)
				lazy_flush(cl, r);
			hbm_take_group_deferred(&r->bm, g, &cl->chunks, &cl->full);
			cl->lazy_w = g >> 6;
			cl->lazy_mask |= 1ull << (g & 63);
			continue;
		}
		/* Region exhausted: move to the next one, wrapping around. */
		if (o.n)
			break;	/* hand out what we have; resume here next call */
		lazy_flush(cl, r);
		r = t->r[__dirty_table_lower(t, r->gpa + r->len) % t->n];
		use_region(cl, r);
		idle++;
	}
	lazy_flush(cl, r);
	/* Statistics once per batch: a shared counter bounces between claimers. */
	if (o.pages)
		atomic_fetch_add_explicit(&r->claimed, o.pages, memory_order_relaxed);
	return o.n;
}

DIRTY_API ssize_t dirty_claim_next(struct dirty_claim *cl,
				   struct dirty_run *runs, size_t max)
{
	const struct region_table *t;
	size_t n;
	int err = 0;

	if (!max)
		return __dirty_err(-EINVAL, "dirty_claim_next: max is 0");
	__dirty_rcu_lock();
	t = atomic_load_explicit(&cl->view->table, memory_order_acquire);
	/*
	 * Before anyone reads them, every source re-arms its log for the
	 * batch or keeps pages back. A batch kept back whole is not "nothing
	 * dirty": claim on until a batch survives or the view is empty.
	 */
	while ((n = claim_batch(cl, t, runs, max)) &&
	       !(err = __dirty_prepare_read(cl->view, runs, &n, max)) && !n)
		;
	__dirty_rcu_unlock();
	return err ? err : (ssize_t)n;
}

DIRTY_API void dirty_claim_release(struct dirty_claim *cl)
{
	const struct region_table *t;
	struct region *r;

	if (!cl || !cl->region_id)
		return;
	__dirty_rcu_lock();
	t = atomic_load_explicit(&cl->view->table, memory_order_acquire);
	r = __dirty_table_by_id(t, cl->region_id);
	if (r && cl->have_chunk) {
		if (cl->chunk_full) {
			hbm_mark(&r->bm, cl->chunk * HBM_CHUNK_PAGES, cl->chunk_pages);
		} else {
			uint64_t left[HBM_CHUNK_WORDS] = { 0 };

			/* words[] holds exactly what was not handed out yet. */
			for (uint64_t m = cl->wmask; m; m &= m - 1)
				left[__builtin_ctzll(m)] = cl->words[__builtin_ctzll(m)];
			hbm_or_chunk(&r->bm, cl->chunk, left, HBM_CHUNK_WORDS);
		}
	}
	if (r && (cl->chunks | cl->full))
		hbm_return_group(&r->bm, cl->taken, cl->chunks, cl->full);
	__dirty_rcu_unlock();
	drop_private(cl);
}

DIRTY_API void dirty_claim_free(struct dirty_claim *cl)
{
	if (!cl)
		return;
	dirty_claim_release(cl);
	free(cl);
}
