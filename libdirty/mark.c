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

DIRTY_API int dirty_view_mark_ranges(struct dirty_view *view,
				     const struct dirty_range *ranges, size_t n)
{
	const struct region_table *t;

	if (n && !ranges)
		return __dirty_err(-EINVAL, "mark_ranges: NULL ranges");
	__dirty_rcu_lock();
	t = table_get(view);
	for (size_t i = 0; i < n; i++)
		__dirty_mark_in(view, t, ranges[i].gpa, ranges[i].len);
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

