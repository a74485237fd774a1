/* SPDX-License-Identifier: MIT */
/*
 * view.c - the view and its regions: create and free, add and remove a
 * region (through the RCU table, table.c), count what is dirty, and the
 * statistics readers. Marking is mark.c's, foreign bitmaps merge.c's,
 * claiming claim.c's, sources source.c's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

DIRTY_API int dirty_view_new(struct dirty_view **out)
{
	struct dirty_view *v = calloc(1, sizeof(*v));
	struct region_table *t = calloc(1, sizeof(*t));

	if (!v || !t) {
		free(v);
		free(t);
		return __dirty_err(-ENOMEM, "dirty_view_new: out of memory");
	}
	pthread_mutex_init(&v->lock, NULL);
	atomic_init(&v->table, t);
	v->next_region_id = 1;
	*out = v;
	return 0;
}

static void region_free(struct region *r)
{
	hbm_destroy(&r->bm);
	free(r);
}

DIRTY_API void dirty_view_free(struct dirty_view *view)
{
	struct region_table *t;

	if (!view)
		return;
	while (view->sources)
		dirty_source_detach(view->sources);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	for (size_t i = 0; i < t->n; i++)
		region_free(t->r[i]);
	free(t);
	pthread_mutex_destroy(&view->lock);
	free(view);
}

DIRTY_API int dirty_view_add_region(struct dirty_view *view, uint64_t gpa,
				    uint64_t len, uint64_t page_size,
				    unsigned int flags)
{
	struct region_table *t, *nt;
	struct region *r;
	size_t i;
	int err;

	if (page_size == 0)
		page_size = DIRTY_MIN_PAGE_SIZE;
	if (!__dirty_is_pow2(page_size) || page_size < DIRTY_MIN_PAGE_SIZE)
		return __dirty_err(-EINVAL, "region page size %#llx must be a power of two >= 4 KiB",
				   (unsigned long long)page_size);
	if (len == 0 || (gpa | len) & (page_size - 1))
		return __dirty_err(-EINVAL, "region [%#llx, +%#llx) must be non-empty and aligned to its page size %#llx",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)page_size);
	if (gpa + len < gpa)
		return __dirty_err(-EINVAL, "region [%#llx, +%#llx) wraps the address space",
				   (unsigned long long)gpa, (unsigned long long)len);
	if (flags & ~DIRTY_REGION_DIRTY)
		return __dirty_err(-EINVAL, "unknown region flags %#x", flags);

	r = calloc(1, sizeof(*r));
	if (!r)
		return __dirty_err(-ENOMEM, "add_region: out of memory");
	r->gpa = gpa;
	r->len = len;
	r->page_size = page_size;
	r->page_shift = (unsigned int)__builtin_ctzll(page_size);
	r->npages = len >> r->page_shift;
	err = hbm_init(&r->bm, r->npages);
	if (err) {
		free(r);
		return __dirty_err(err, "add_region: cannot allocate the bitmap for %llu pages",
				   (unsigned long long)(len >> __builtin_ctzll(page_size)));
	}
	if (flags & DIRTY_REGION_DIRTY)
		hbm_mark(&r->bm, 0, r->npages);

	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	i = __dirty_table_lower(t, gpa);
	if (i < t->n && t->r[i]->gpa < gpa + len) {
		pthread_mutex_unlock(&view->lock);
		region_free(r);
		return __dirty_err(-EEXIST, "region [%#llx, +%#llx) overlaps [%#llx, +%#llx)",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)t->r[i]->gpa,
				   (unsigned long long)t->r[i]->len);
	}
	nt = malloc(sizeof(*nt) + (t->n + 1) * sizeof(nt->r[0]));
	if (!nt) {
		pthread_mutex_unlock(&view->lock);
		region_free(r);
		return __dirty_err(-ENOMEM, "add_region: out of memory");
	}
	r->id = view->next_region_id++;
	nt->n = t->n + 1;
	memcpy(nt->r, t->r, i * sizeof(nt->r[0]));
	nt->r[i] = r;
	memcpy(nt->r + i + 1, t->r + i, (t->n - i) * sizeof(nt->r[0]));
	__dirty_table_replace(view, nt);
	pthread_mutex_unlock(&view->lock);
	return 0;
}

DIRTY_API int dirty_view_remove_region(struct dirty_view *view, uint64_t gpa)
{
	struct region_table *t, *nt;
	struct region *r;
	size_t i;

	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	i = __dirty_table_lower(t, gpa);
	if (i >= t->n || t->r[i]->gpa != gpa) {
		pthread_mutex_unlock(&view->lock);
		return __dirty_err(-ENOENT, "no region starts at %#llx",
				   (unsigned long long)gpa);
	}
	r = t->r[i];
	nt = malloc(sizeof(*nt) + (t->n - 1) * sizeof(nt->r[0]));
	if (!nt) {
		pthread_mutex_unlock(&view->lock);
		return __dirty_err(-ENOMEM, "remove_region: out of memory");
	}
	nt->n = t->n - 1;
	memcpy(nt->r, t->r, i * sizeof(nt->r[0]));
	memcpy(nt->r + i, t->r + i + 1, (t->n - i - 1) * sizeof(nt->r[0]));
	__dirty_table_replace(view, nt);	/* after this no reader holds r */
	pthread_mutex_unlock(&view->lock);
	region_free(r);
	return 0;
}

DIRTY_API int dirty_view_count(struct dirty_view *view, uint64_t *pages,
			       uint64_t *bytes)
{
	const struct region_table *t;
	uint64_t p = 0, b = 0;

	__dirty_rcu_lock();
	t = atomic_load_explicit(&view->table, memory_order_acquire);
	for (size_t i = 0; i < t->n; i++) {
		uint64_t n = hbm_count(&t->r[i]->bm);

		p += n;
		b += n << t->r[i]->page_shift;
	}
	__dirty_rcu_unlock();
	if (pages)
		*pages = p;
	if (bytes)
		*bytes = b;
	return 0;
}

DIRTY_API int dirty_view_stats(struct dirty_view *view,
			       struct dirty_view_stats *st)
{
	const struct region_table *t;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	st->regions = t->n;
	for (size_t i = 0; i < t->n; i++)
		st->pages += t->r[i]->npages;
	st->syncs = view->syncs;
	pthread_mutex_unlock(&view->lock);
	st->pages_outside = atomic_load_explicit(&view->pages_outside,
						 memory_order_relaxed);
	return 0;
}

DIRTY_API int dirty_view_region_stats(struct dirty_view *view, uint64_t gpa,
				      struct dirty_region_stats *st)
{
	struct region *r;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&view->lock);
	r = __dirty_table_find(atomic_load_explicit(&view->table,
						    memory_order_relaxed), gpa);
	if (r) {
		st->gpa = r->gpa;
		st->len = r->len;
		st->page_size = r->page_size;
		st->pages_marked = atomic_load_explicit(&r->marked,
							memory_order_relaxed);
		st->pages_claimed = atomic_load_explicit(&r->claimed,
							 memory_order_relaxed);
		st->dirty_rate = r->rate;
	}
	pthread_mutex_unlock(&view->lock);
	if (!r)
		return __dirty_err(-ENOENT, "no region contains %#llx",
				   (unsigned long long)gpa);
	return 0;
}
