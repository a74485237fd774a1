/* SPDX-License-Identifier: MIT */
/*
 * mark.c - marking pages dirty: ranges into the regions they touch,
 * lock-free from any thread (inside an RCU read section), and pages that
 * fall in no region counted so they show in the statistics.
 */
#include <errno.h>

#include "internal.h"

static const struct region_table *table_get(struct dirty_view *view)
{
	/* Acquire pairs with table_replace()'s release. */
	return atomic_load_explicit(&view->table, memory_order_acquire);
}

void __dirty_count_outside(struct dirty_view *view, uint64_t bytes)
{
	if (bytes)
		atomic_fetch_add_explicit(&view->pages_outside,
					  (bytes + DIRTY_MIN_PAGE_SIZE - 1) / DIRTY_MIN_PAGE_SIZE,
					  memory_order_relaxed);
}

uint64_t __dirty_mark_in(struct dirty_view *view, const struct region_table *t,
			 uint64_t gpa, uint64_t len)
{
	uint64_t end = gpa + len, total = 0;
	size_t i;

	if (len == 0)
		return 0;
	if (end < gpa)
		end = UINT64_MAX;
	for (i = __dirty_table_lower(t, gpa); i < t->n && gpa < end; i++) {
		struct region *r = t->r[i];
		uint64_t s, e, first, last;

		if (r->gpa >= end)
			break;
		if (r->gpa > gpa)
			__dirty_count_outside(view, r->gpa - gpa);
		s = gpa > r->gpa ? gpa : r->gpa;
		e = end < r->gpa + r->len ? end : r->gpa + r->len;
		/* Round outward: a partly written page is a dirty page. */
		first = (s - r->gpa) >> r->page_shift;
		last = (e - r->gpa + r->page_size - 1) >> r->page_shift;
		hbm_mark(&r->bm, first, last - first);
		atomic_fetch_add_explicit(&r->marked, last - first,
					  memory_order_relaxed);
		total += last - first;
		gpa = r->gpa + r->len;
	}
	if (gpa < end)
		__dirty_count_outside(view, end - gpa);
	return total;
}

DIRTY_API int dirty_view_mark(struct dirty_view *view, uint64_t gpa,
			      uint64_t len)
{
	__dirty_rcu_lock();
	__dirty_mark_in(view, table_get(view), gpa, len);
	__dirty_rcu_unlock();
	return 0;
}

/*
 * A batch of ranges in one pass: each region's pages go into word masks
 * (hbm_batch) before any atomic operation, so a level-0 word takes one
 * RMW per visit however many runs of the batch land in it, and summary
 * words one load per visit. The region of the previous range is tried
 * first: runs from one source are almost always in one region.
 */
struct mark_batch {
	struct dirty_view *view;
	const struct region_table *t;
	struct region *r;	/* the region b batches for, or NULL */
	uint64_t pages;		/* pages of r given to b, for its statistics */
	struct hbm_batch b;
};

static void batch_region(struct mark_batch *mb, struct region *r)
{
	if (mb->r == r)
		return;
	if (mb->r) {
		hbm_batch_flush(&mb->r->bm, &mb->b);
		atomic_fetch_add_explicit(&mb->r->marked, mb->pages, memory_order_relaxed);
	}
	mb->r = r;
	mb->pages = 0;
	hbm_batch_init(&mb->b);
}

/* Pages [s, e) of region r (bytes, inside it), rounded outward. */
static uint64_t batch_bytes(struct mark_batch *mb, struct region *r, uint64_t s, uint64_t e)
{
	uint64_t first = (s - r->gpa) >> r->page_shift;
	uint64_t last = (e - r->gpa + r->page_size - 1) >> r->page_shift;
	uint64_t n;

	batch_region(mb, r);
	n = hbm_batch_add(&r->bm, &mb->b, first, last - first);
	mb->pages += n;
	return n;
}

/* One range, possibly across regions and gaps (the slow path). */
static uint64_t batch_range(struct mark_batch *mb, uint64_t gpa, uint64_t end)
{
	const struct region_table *t = mb->t;
	uint64_t total = 0;

	for (size_t i = __dirty_table_lower(t, gpa); i < t->n && gpa < end; i++) {
		struct region *r = t->r[i];
		uint64_t e = end < r->gpa + r->len ? end : r->gpa + r->len;

		if (r->gpa >= end)
			break;
		if (r->gpa > gpa) {
			__dirty_count_outside(mb->view, r->gpa - gpa);
			gpa = r->gpa;
		}
		total += batch_bytes(mb, r, gpa, e);
		gpa = r->gpa + r->len;
	}
	if (gpa < end)
		__dirty_count_outside(mb->view, end - gpa);
	return total;
}

/* How many ranges ahead the batch prefetches its bitmap words. */
#define PREFETCH_AHEAD 8

uint64_t __dirty_mark_ranges_in(struct dirty_view *view, const struct region_table *t,
				const struct dirty_range *ranges, size_t n)
{
	struct mark_batch mb;	/* not zeroed whole: b is set up with its region */
	uint64_t total = 0;

	mb.view = view;
	mb.t = t;
	mb.r = NULL;
	mb.pages = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t gpa = ranges[i].gpa, end = gpa + ranges[i].len;
		struct region *r = mb.r;

		if (!ranges[i].len)
			continue;
		if (end < gpa)
			end = UINT64_MAX;
		if (r && i + PREFETCH_AHEAD < n) {
			uint64_t a = ranges[i + PREFETCH_AHEAD].gpa;

			if (a - r->gpa < r->len)
				hbm_prefetch(&r->bm, (a - r->gpa) >> r->page_shift);
		}
		if (r && gpa >= r->gpa && end <= r->gpa + r->len)
			total += batch_bytes(&mb, r, gpa, end);
		else
			total += batch_range(&mb, gpa, end);
	}
	batch_region(&mb, NULL);
	return total;
}

DIRTY_API int dirty_view_mark_ranges(struct dirty_view *view,
				     const struct dirty_range *ranges, size_t n)
{
	if (n && !ranges)
		return __dirty_err(-EINVAL, "mark_ranges: NULL ranges");
	__dirty_rcu_lock();
	__dirty_mark_ranges_in(view, table_get(view), ranges, n);
	__dirty_rcu_unlock();
	return 0;
}

DIRTY_API int dirty_view_mark_all(struct dirty_view *view)
{
	const struct region_table *t;

	__dirty_rcu_lock();
	t = table_get(view);
	for (size_t i = 0; i < t->n; i++) {
		hbm_mark(&t->r[i]->bm, 0, t->r[i]->npages);
		atomic_fetch_add_explicit(&t->r[i]->marked, t->r[i]->npages,
					  memory_order_relaxed);
	}
	__dirty_rcu_unlock();
	return 0;
}

