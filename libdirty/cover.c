/* SPDX-License-Identifier: MIT */
/*
 * cover.c - the cover policy (dirty_source_cover in libdirty.h): while a
 * healthy precise source stands in for a coarse one, the coarse source's
 * marks inside the precise source's ranges are dropped. Owns the coarse
 * source's copy of those ranges and the per-round decision; the marking
 * itself is the view's.
 *
 * Why dropping is safe: the precise source is judged at the start of each
 * round and of the final round. A guest that failed silently between two
 * judgements is caught by the next one, and the guest protocol never
 * counts as healthy again without first marking its whole range dirty (a
 * new first pass), nor passes a final round unhealthy without its
 * fallback; so no DMA write in an unjudged window is left unsent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_PIECES 16

/*
 * [gpa, gpa + len) minus the covered ranges, into pieces (sorted ranges
 * need not be: subtraction works in any order). Returns the number of
 * pieces, or -1 if they would not fit (then nothing is dropped).
 */
static int uncovered(struct dirty_source *src, uint64_t gpa, uint64_t len,
		     struct dirty_range *out)
{
	/* Acquire pairs with dirty_source_cover's release: the set is built. */
	const struct cover_set *cs_set = atomic_load_explicit(&src->cover, memory_order_acquire);
	int n = 1;

	out[0].gpa = gpa;
	out[0].len = len;
	for (size_t i = 0; cs_set && i < cs_set->n; i++) {
		uint64_t cs = cs_set->r[i].gpa, ce = cs + cs_set->r[i].len;

		for (int k = 0; k < n; k++) {
			uint64_t s = out[k].gpa, e = s + out[k].len;

			if (ce <= s || cs >= e)
				continue;
			if (cs > s && ce < e) {		/* split in two */
				if (n == MAX_PIECES)
					return -1;
				out[n].gpa = ce;
				out[n++].len = e - ce;
				out[k].len = cs - s;
			} else if (cs > s) {		/* keep the head */
				out[k].len = cs - s;
			} else if (ce < e) {		/* keep the tail */
				out[k].gpa = ce;
				out[k].len = e - ce;
			} else {			/* all covered */
				out[k--] = out[--n];
			}
		}
	}
	return n;
}

uint64_t __dirty_cover_mark(struct dirty_source *src, const struct region_table *t,
			    uint64_t gpa, uint64_t len)
{
	struct dirty_range piece[MAX_PIECES];
	uint64_t kept = 0, marked = 0;
	int n = uncovered(src, gpa, len, piece);

	if (n < 0)
		return __dirty_mark_in(src->view, t, gpa, len);
	for (int k = 0; k < n; k++) {
		kept += piece[k].len;
		marked += __dirty_mark_in(src->view, t, piece[k].gpa, piece[k].len);
	}
	atomic_fetch_add_explicit(&src->covered_pages,
				  (len - kept + DIRTY_MIN_PAGE_SIZE - 1) / DIRTY_MIN_PAGE_SIZE,
				  memory_order_relaxed);
	return marked;
}

/* Bit i of a little-endian foreign bitmap. */
static bool bit_at(const uint8_t *bm, uint64_t i)
{
	return bm[i / 8] >> (i % 8) & 1;
}

uint64_t __dirty_cover_merge(struct dirty_source *src, const struct region_table *t,
			     uint64_t gpa, uint64_t page_size, const void *bitmap,
			     uint64_t nbits)
{
	struct dirty_range piece[MAX_PIECES];
	unsigned int shift = (unsigned int)__builtin_ctzll(page_size);
	uint64_t marked = 0, dropped = 0;
	int n = uncovered(src, gpa, nbits << shift, piece);

	if (n == 1 && piece[0].gpa == gpa && piece[0].len == nbits << shift)
		return __dirty_merge_in(src->view, t, gpa, page_size, bitmap, nbits);
	/* Rare (a coarse range reaching past the cover): bit by bit. */
	for (uint64_t i = 0; i < nbits; i++) {
		uint64_t a = gpa + (i << shift);
		bool keep = n < 0;

		if (!bit_at(bitmap, i))
			continue;
		for (int k = 0; k < n && !keep; k++)
			keep = a + page_size > piece[k].gpa && a < piece[k].gpa + piece[k].len;
		if (keep)
			marked += __dirty_mark_in(src->view, t, a, page_size);
		else
			dropped += page_size / DIRTY_MIN_PAGE_SIZE;
	}
	atomic_fetch_add_explicit(&src->covered_pages, dropped, memory_order_relaxed);
	return marked;
}

/* Round start (view->lock held): judge every coverer once. */
void __dirty_cover_round(struct dirty_view *view)
{
	for (struct dirty_source *s = view->sources; s; s = s->next) {
		struct dirty_source *c = s->coverer;

		if (c)
			atomic_store_explicit(&s->covered, c->started && c->ops.healthy(c) == 1,
					      memory_order_relaxed);
	}
}

/* src leaves the view (view->lock held): whatever it covered counts again. */
void __dirty_cover_forget(struct dirty_source *src)
{
	for (struct dirty_source *s = src->view->sources; s; s = s->next)
		if (s->coverer == src) {
			atomic_store_explicit(&s->covered, false, memory_order_relaxed);
			s->coverer = NULL;
		}
}

DIRTY_API int dirty_source_cover(struct dirty_source *precise, struct dirty_source *coarse)
{
	struct dirty_view *view;
	struct cover_set *set, *old;

	if (!precise || !coarse || precise->view != coarse->view)
		return __dirty_err(-EINVAL, "dirty_source_cover: both sources must be attached to one view");
	if (precise->ops.precision != DIRTY_PRECISE || !precise->ops.healthy)
		return __dirty_err(-EINVAL, "dirty_source_cover: '%s' must be a PRECISE source with a healthy callback",
				   precise->ops.name ? precise->ops.name : "?");
	if (coarse->ops.precision != DIRTY_COARSE)
		return __dirty_err(-EINVAL, "dirty_source_cover: '%s' is not a COARSE source",
				   coarse->ops.name ? coarse->ops.name : "?");
	set = malloc(sizeof(*set) + precise->nranges * sizeof(set->r[0]));
	if (!set)
		return __dirty_err(-ENOMEM, "dirty_source_cover: out of memory");
	set->n = precise->nranges;
	memcpy(set->r, precise->ranges, precise->nranges * sizeof(set->r[0]));
	view = precise->view;
	pthread_mutex_lock(&view->lock);
	if (coarse->coverer) {
		pthread_mutex_unlock(&view->lock);
		free(set);
		return __dirty_err(-EBUSY, "dirty_source_cover: '%s' is already covered",
				   coarse->ops.name ? coarse->ops.name : "?");
	}
	old = atomic_exchange_explicit(&coarse->cover, set, memory_order_release);
	coarse->coverer = precise;
	/* A mark that still reads the old set (a previous coverer's) is done after this. */
	if (old)
		__dirty_rcu_synchronize();
	pthread_mutex_unlock(&view->lock);
	free(old);
	return 0;
}
