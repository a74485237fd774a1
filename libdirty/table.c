/* SPDX-License-Identifier: MIT */
/*
 * table.c - the view's region table: lookups (readers inside an RCU read
 * section) and its replacement (writers under view->lock, old table freed
 * after a grace period). Regions themselves are view.c's.
 */
#include <stdlib.h>

#include "internal.h"

size_t __dirty_table_lower(const struct region_table *t, uint64_t gpa)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct region *r = t->r[mid];

		if (r->gpa + r->len <= gpa)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct region *__dirty_table_find(const struct region_table *t, uint64_t gpa)
{
	size_t i = __dirty_table_lower(t, gpa);

	if (i < t->n && t->r[i]->gpa <= gpa)
		return t->r[i];
	return NULL;
}

struct region *__dirty_table_by_id(const struct region_table *t, uint64_t id)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->r[i]->id == id)
			return t->r[i];
	return NULL;
}

/* Publish nt and wait until no reader can still see the old table. */
void __dirty_table_replace(struct dirty_view *view, struct region_table *nt)
{
	struct region_table *old =
		atomic_load_explicit(&view->table, memory_order_relaxed);

	/* Release: a reader that loads nt sees the regions fully built. */
	atomic_store_explicit(&view->table, nt, memory_order_release);
	__dirty_rcu_synchronize();
	free(old);
}

uint64_t __dirty_page_size_at(struct dirty_view *view, uint64_t gpa)
{
	const struct region *r;
	uint64_t ps;

	__dirty_rcu_lock();
	r = __dirty_table_find(atomic_load_explicit(&view->table, memory_order_acquire), gpa);
	ps = r ? r->page_size : 0;
	__dirty_rcu_unlock();
	return ps;
}
