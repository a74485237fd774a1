/* SPDX-License-Identifier: MIT */
/*
 * claim.c - claim cursors: how migration threads drain the view.
 *
 * A cursor takes one level-2 word ("group": 64 chunks, 256 Ki pages) at a
 * time with an exchange, so concurrent claimers split the view by group
 * and never both receive a page for one mark. What it took is private
 * until returned as runs; dirty_claim_release() marks the rest dirty
 * again. Sources' prepare_read hooks run on every batch before it is
 * returned. Between calls the cursor keeps the region's id and geometry,
 * never a pointer, since the region may be removed meanwhile (its pages
 * then need no sending and the private bits are dropped).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct dirty_claim {
	struct dirty_view *view;
	uint64_t region_id;	/* 0: none yet */
	uint64_t region_gpa;
	unsigned int page_shift;
	uint64_t group;		/* next group to search in the region */
	/* Taken from group `taken`, not yet claimed chunk by chunk. */
	uint64_t taken, chunks, full;
	/*
	 * The chunk being handed out: page bits words[j] for each j in wmask
	 * (what remains), or all chunk_pages pages when chunk_full.
	 */
	bool have_chunk, chunk_full;
	uint64_t chunk, chunk_pages, wmask;
	uint64_t words[HBM_CHUNK_WORDS];
};

DIRTY_API int dirty_claim_new(struct dirty_view *view, struct dirty_claim **out)
{
	struct dirty_claim *cl = calloc(1, sizeof(*cl));

	if (!cl)
		return __dirty_err(-ENOMEM, "dirty_claim_new: out of memory");
	cl->view = view;
	*out = cl;
	return 0;
}

static void drop_private(struct dirty_claim *cl)
{
	cl->have_chunk = false;
	cl->chunks = cl->full = 0;
}

static void use_region(struct dirty_claim *cl, const struct region *r)
{
	cl->region_id = r->id;
	cl->region_gpa = r->gpa;
	cl->page_shift = r->page_shift;
	cl->group = 0;
}

/* Append pages [first, first + n) of the current region; false if full. */
static bool emit(struct dirty_claim *cl, struct dirty_run *runs, size_t *n,
		 size_t max, uint64_t first, uint64_t count)
{
	uint64_t gpa = cl->region_gpa + (first << cl->page_shift);
	uint64_t len = count << cl->page_shift;

	if (*n && runs[*n - 1].gpa + runs[*n - 1].len == gpa) {
		runs[*n - 1].len += len;
		return true;
	}
	if (*n == max)
		return false;
	runs[*n].gpa = gpa;
	runs[*n].len = len;
	(*n)++;
	return true;
}

/* Hand out the current chunk; false when the run array filled first. */
static bool emit_chunk(struct dirty_claim *cl, struct region *r,
		       struct dirty_run *runs, size_t *n, size_t max)
{
	uint64_t base = cl->chunk * HBM_CHUNK_PAGES, out = 0;
	bool room = true;

	if (cl->chunk_full) {
		room = emit(cl, runs, n, max, base, cl->chunk_pages);
		if (room)
			out = cl->chunk_pages;
	}
	/* Only the words the level-1 summary named; emit() joins neighbours. */
	while (room && cl->wmask) {
		unsigned int j = (unsigned int)__builtin_ctzll(cl->wmask);
		uint64_t v = cl->words[j];

		while (v) {
			unsigned int s = (unsigned int)__builtin_ctzll(v);
			uint64_t rest = ~(v >> s);
			uint64_t len = rest ? (uint64_t)__builtin_ctzll(rest) : 64 - s;

			if (!emit(cl, runs, n, max, base + j * 64ull + s, len)) {
				room = false;
				break;
			}
			out += len;
			v = s + len >= 64 ? 0 : v & (~0ull << (s + len));
		}
		cl->words[j] = v;
		if (room)
			cl->wmask &= cl->wmask - 1;
	}
	if (room)
		cl->have_chunk = false;
	if (out)
		atomic_fetch_add_explicit(&r->claimed, out, memory_order_relaxed);
	return room;
}

/* Claim up to max runs from table t (inside a read section). */
static size_t claim_batch(struct dirty_claim *cl, const struct region_table *t,
			  struct dirty_run *runs, size_t max)
{
	struct region *r = NULL;
	size_t n = 0, idle = 0;

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
			if (!emit_chunk(cl, r, runs, &n, max))
				break;
			idle = 0;
			continue;
		}
		if (cl->chunks | cl->full) {
			uint64_t both = cl->chunks | cl->full;
			uint64_t b = both & -both;
			uint64_t c = (cl->taken << 6) + (uint64_t)__builtin_ctzll(b);

			cl->chunks &= ~b;
			cl->chunk_full = (cl->full & b) != 0;
			cl->full &= ~b;
			cl->chunk = c;
			cl->chunk_pages = hbm_claim_chunk(&r->bm, c, cl->chunk_full,
							  cl->words, &cl->wmask);
			cl->have_chunk = cl->chunk_pages != 0;
			continue;
		}
		g = hbm_find_group(&r->bm, cl->group);
		if (g != HBM_NONE) {
			cl->taken = g;
			cl->group = g + 1;
			hbm_take_group(&r->bm, g, &cl->chunks, &cl->full);
			continue;
		}
		/* Region exhausted: move to the next one, wrapping around. */
		if (n)
			break;	/* hand out what we have; resume here next call */
		r = t->r[__dirty_table_lower(t, r->gpa + r->len) % t->n];
		use_region(cl, r);
		idle++;
	}
	return n;
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
