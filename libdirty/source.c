/* SPDX-License-Identifier: MIT */
/*
 * source.c - the source registry: attach/detach, start/stop, and the sync
 * and final rounds, including the rule that an error is never "clean".
 * The list and each source's statistics are guarded by view->lock; the
 * callbacks mark through the lock-free view paths.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Bytes of a version-1 table: everything up to and including destroy. */
#define OPS_V1_SIZE (offsetof(struct dirty_source_ops, destroy) + \
		     sizeof(((struct dirty_source_ops *)0)->destroy))

/* The error rule: what a source cannot vouch for is dirty. */
static void mark_source_all(struct dirty_source *src)
{
	for (size_t i = 0; i < src->nranges; i++)
		dirty_source_mark(src, src->ranges[i].gpa, src->ranges[i].len);
}

DIRTY_API int dirty_source_attach(struct dirty_view *view,
				  const struct dirty_source_ops *ops,
				  void *priv, const struct dirty_range *ranges,
				  size_t nranges, struct dirty_source **out)
{
	struct dirty_source *s, **tail;

	if (!ops || ops->version < 1 || ops->version > DIRTY_SOURCE_OPS_VERSION)
		return __dirty_err(-EINVAL, "source ops version %u, this libdirty speaks 1 to %u",
				   ops ? ops->version : 0, DIRTY_SOURCE_OPS_VERSION);
	if (ops->precision != DIRTY_PRECISE && ops->precision != DIRTY_COARSE)
		return __dirty_err(-EINVAL, "source '%s': precision must be DIRTY_PRECISE or DIRTY_COARSE",
				   ops->name ? ops->name : "?");
	if (nranges && !ranges)
		return __dirty_err(-EINVAL, "source '%s': NULL ranges",
				   ops->name ? ops->name : "?");
	s = calloc(1, sizeof(*s));
	if (!s)
		return __dirty_err(-ENOMEM, "source_attach: out of memory");
	s->ranges = calloc(nranges ? nranges : 1, sizeof(*ranges));
	if (!s->ranges) {
		free(s);
		return __dirty_err(-ENOMEM, "source_attach: out of memory");
	}
	if (nranges)
		memcpy(s->ranges, ranges, nranges * sizeof(*ranges));
	s->nranges = nranges;
	s->view = view;
	/* A version-1 table is shorter: read only what it has. */
	memcpy(&s->ops, ops, ops->version == 1 ? OPS_V1_SIZE : sizeof(*ops));
	s->user_ops = ops;
	s->priv = priv;
	pthread_mutex_lock(&view->lock);
	for (tail = &view->sources; *tail; tail = &(*tail)->next)
		;
	*tail = s;
	if (s->ops.prepare_read) {
		atomic_init(&s->hook_next,
			    atomic_load_explicit(&view->hooks, memory_order_relaxed));
		/* Release: a claimer that reaches s sees it built. */
		atomic_store_explicit(&view->hooks, s, memory_order_release);
	}
	pthread_mutex_unlock(&view->lock);
	*out = s;
	return 0;
}

DIRTY_API void dirty_source_detach(struct dirty_source *src)
{
	struct dirty_view *view;
	struct dirty_source **pp;

	if (!src)
		return;
	view = src->view;
	pthread_mutex_lock(&view->lock);
	for (pp = &view->sources; *pp; pp = &(*pp)->next) {
		if (*pp == src) {
			*pp = src->next;
			break;
		}
	}
	if (src->ops.prepare_read) {
		_Atomic(struct dirty_source *) *hp = &view->hooks;

		while (atomic_load_explicit(hp, memory_order_relaxed) != src)
			hp = &atomic_load_explicit(hp, memory_order_relaxed)->hook_next;
		/* Unlinked; a claimer standing on src still walks on from it. */
		atomic_store_explicit(hp, atomic_load_explicit(&src->hook_next,
				      memory_order_relaxed), memory_order_release);
		/* No claimer is inside its hook once this returns. */
		__dirty_rcu_synchronize();
	}
	__dirty_cover_forget(src);
	if (src->started && src->ops.stop)
		src->ops.stop(src);
	pthread_mutex_unlock(&view->lock);
	if (src->ops.destroy)
		src->ops.destroy(src);
	/* No mark of src runs any more: the caller is detaching it. */
	free(atomic_load_explicit(&src->cover, memory_order_relaxed));
	free(src->ranges);
	free(src);
}

bool __dirty_source_has_ops(const struct dirty_source *src,
			    const struct dirty_source_ops *ops)
{
	return src->user_ops == ops;
}

const char *__dirty_source_name(const struct dirty_source *src)
{
	return src->ops.name ? src->ops.name : "?";
}

DIRTY_API void *dirty_source_priv(const struct dirty_source *src)
{
	return src->priv;
}

DIRTY_API struct dirty_view *dirty_source_view(const struct dirty_source *src)
{
	return src->view;
}

DIRTY_API int dirty_source_mark(struct dirty_source *src, uint64_t gpa,
				uint64_t len)
{
	struct dirty_view *view = src->view;
	const struct region_table *t;
	uint64_t n;


	__dirty_rcu_lock();
	t = atomic_load_explicit(&view->table, memory_order_acquire);
	n = atomic_load_explicit(&src->covered, memory_order_relaxed) ?
		__dirty_cover_mark(src, t, gpa, len) :
		__dirty_mark_in(view, t, gpa, len);
	__dirty_rcu_unlock();
	atomic_fetch_add_explicit(&src->marked, n, memory_order_relaxed);
	return 0;
}

DIRTY_API int dirty_source_mark_ranges(struct dirty_source *src,
				       const struct dirty_range *ranges, size_t n)
{
	struct dirty_view *view = src->view;
	const struct region_table *t;
	uint64_t total = 0;

	if (n && !ranges)
		return __dirty_err(-EINVAL, "dirty_source_mark_ranges: NULL ranges");
	__dirty_rcu_lock();
	t = atomic_load_explicit(&view->table, memory_order_acquire);
	if (atomic_load_explicit(&src->covered, memory_order_relaxed))
		for (size_t i = 0; i < n; i++)
			total += __dirty_cover_mark(src, t, ranges[i].gpa, ranges[i].len);
	else
		total = __dirty_mark_ranges_in(view, t, ranges, n);	/* batched into word masks */
	__dirty_rcu_unlock();
	atomic_fetch_add_explicit(&src->marked, total, memory_order_relaxed);
	return 0;
}

DIRTY_API int dirty_source_merge_bitmap(struct dirty_source *src, uint64_t gpa,
					uint64_t page_size, const void *bitmap,
					uint64_t nbits)
{
	uint64_t n = 0;
	int err;

	if (!atomic_load_explicit(&src->covered, memory_order_relaxed)) {
		err = __dirty_merge_checked(src->view, gpa, page_size, bitmap, nbits, &n);
	} else if (!(err = __dirty_merge_check(gpa, page_size, bitmap, nbits))) {
		__dirty_rcu_lock();
		n = __dirty_cover_merge(src, atomic_load_explicit(&src->view->table,
				memory_order_acquire), gpa, page_size, bitmap, nbits);
		__dirty_rcu_unlock();
	}
	atomic_fetch_add_explicit(&src->marked, n, memory_order_relaxed);
	return err;
}

/* Sources not ready yet (ready() == 0); 0 when all are, or said they never will be. */
static size_t not_ready(struct dirty_view *view)
{
	size_t n = 0;

	pthread_mutex_lock(&view->lock);
	for (struct dirty_source *s = view->sources; s; s = s->next)
		if (s->started && s->ops.ready && s->ops.ready(s) == 0)
			n++;
	pthread_mutex_unlock(&view->lock);
	return n;
}

/*
 * A source that stays "not yet" past its own timeout is a broken source;
 * this cap keeps start from hanging on it (the source then reads as late,
 * which it must handle as it handles a timeout).
 */
#define READY_CAP_S 60.0

DIRTY_API int dirty_view_start(struct dirty_view *view)
{
	struct dirty_source *s;
	double t0;
	int err = 0;

	pthread_mutex_lock(&view->lock);
	for (s = view->sources; s; s = s->next) {
		if (s->started)
			continue;
		__dirty_err(0, "%s", "");	/* what is there after start is the source's */
		err = s->ops.start ? s->ops.start(s) : 0;
		if (err < 0) {
			const char *name = s->ops.name ? s->ops.name : "?";
			char why[256];

			/* The source's own message says what to do; stopping the others may overwrite it. */
			snprintf(why, sizeof(why), "%s", *dirty_last_error() ? dirty_last_error() : strerror(-err));
			for (struct dirty_source *u = view->sources; u != s; u = u->next) {
				if (u->started && u->ops.stop)
					u->ops.stop(u);
				u->started = false;
			}
			err = __dirty_err(err, "source '%s' failed to start: %s; no source is running",
					  name, why);
			break;
		}
		s->started = true;
		s->last_sync_time = __dirty_now();
	}
	pthread_mutex_unlock(&view->lock);
	if (err < 0)
		return err;
	/* The lock is dropped between polls: syncs and marks go on meanwhile. */
	for (t0 = __dirty_now(); not_ready(view) && __dirty_now() - t0 < READY_CAP_S;)
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	__dirty_err(0, "%s", "");
	return 0;
}

DIRTY_API int dirty_view_stop(struct dirty_view *view)
{
	int first = 0;

	pthread_mutex_lock(&view->lock);
	for (struct dirty_source *s = view->sources; s; s = s->next) {
		int err = s->started && s->ops.stop ? s->ops.stop(s) : 0;

		s->started = false;
		if (err < 0 && !first)
			first = __dirty_err(err, "source '%s' failed to stop (%d)",
					    s->ops.name ? s->ops.name : "?", err);
	}
	pthread_mutex_unlock(&view->lock);
	return first;
}

static int sync_round(struct dirty_view *view, bool final)
{
	const struct region_table *t;
	char first_msg[512] = "";
	double now;
	int first = 0;

	pthread_mutex_lock(&view->lock);
	/* Judged once per round, before any source marks (the final too). */
	__dirty_cover_round(view);
	for (struct dirty_source *s = view->sources; s; s = s->next) {
		int (*fn)(struct dirty_source *) =
			final && s->ops.final ? s->ops.final : s->ops.sync;
		uint64_t before = atomic_load_explicit(&s->marked,
						       memory_order_relaxed);
		int err;

		__dirty_err(0, "%s", "");	/* so the source's own message shows */
		err = fn ? fn(s) : 0;
		if (err > 0)
			err = -EPROTO;	/* a positive return breaks the contract */
		if (err < 0) {
			char why[400];

			snprintf(why, sizeof(why), "%s", *dirty_last_error() ?
				 dirty_last_error() : strerror(-err));
			mark_source_all(s);
			s->errors++;
			s->last_error = err;
			if (!first) {
				first = err;
				snprintf(first_msg, sizeof(first_msg),
					 "source '%s' %s failed (%s); all its pages were marked dirty",
					 s->ops.name ? s->ops.name : "?", final ? "final sync" : "sync", why);
			}
		}
		now = __dirty_now();
		s->syncs++;
		s->last_sync_pages = atomic_load_explicit(&s->marked,
							  memory_order_relaxed) - before;
		s->rate = now > s->last_sync_time ?
			(double)s->last_sync_pages / (now - s->last_sync_time) : 0;
		s->last_sync_time = now;
	}
	/* Region rates over the interval since the previous round. */
	now = __dirty_now();
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	for (size_t i = 0; i < t->n; i++) {
		struct region *r = t->r[i];
		uint64_t m = atomic_load_explicit(&r->marked, memory_order_relaxed);

		r->rate = view->syncs && now > view->last_sync_time ?
			(double)(m - r->rate_prev_marked) / (now - view->last_sync_time) : 0;
		r->rate_prev_marked = m;
	}
	view->last_sync_time = now;
	view->syncs++;
	pthread_mutex_unlock(&view->lock);
	/* Set last: the sources after the failing one cleared the message. */
	return first ? __dirty_err(first, "%s", first_msg) : 0;
}

DIRTY_API int dirty_view_sync(struct dirty_view *view)
{
	return sync_round(view, false);
}

DIRTY_API int dirty_view_final(struct dirty_view *view)
{
	return sync_round(view, true);
}

DIRTY_API uint64_t dirty_view_held_bytes(struct dirty_view *view)
{
	uint64_t bytes = 0;

	pthread_mutex_lock(&view->lock);
	for (struct dirty_source *s = view->sources; s; s = s->next)
		if (s->started && s->ops.held_bytes)
			bytes += s->ops.held_bytes(s);
	pthread_mutex_unlock(&view->lock);
	return bytes;
}

int __dirty_prepare_read(struct dirty_view *view, struct dirty_run *runs,
			 size_t *n, size_t max)
{
	struct dirty_source *s;

	/* Acquire pairs with attach's release: the source is fully built. */
	for (s = atomic_load_explicit(&view->hooks, memory_order_acquire); s && *n;
	     s = atomic_load_explicit(&s->hook_next, memory_order_acquire)) {
		int err;

		__dirty_err(0, "%s", "");	/* so the source's own message shows */
		err = s->ops.prepare_read(s, runs, n, max);
		if (err > 0 || *n > max)
			err = -EPROTO;	/* the contract is broken: trust nothing */
		if (err < 0) {
			char why[400];

			snprintf(why, sizeof(why), "%s", *dirty_last_error() ?
				 dirty_last_error() : strerror(-err));
			if (*n > max)
				*n = max;
			/* The error rule, and the batch back: nothing is lost. */
			mark_source_all(s);
			for (size_t j = 0; j < *n; j++)
				__dirty_mark_in(view, atomic_load_explicit(&view->table,
						    memory_order_acquire), runs[j].gpa, runs[j].len);
			*n = 0;
			return __dirty_err(err, "source '%s' could not prepare claimed pages for reading (%s); they and all its pages were marked dirty",
					   s->ops.name ? s->ops.name : "?", why);
		}
	}
	return 0;
}

DIRTY_API int dirty_source_stats(struct dirty_source *src,
				 struct dirty_source_stats *st)
{
	pthread_mutex_lock(&src->view->lock);
	st->syncs = src->syncs;
	st->errors = src->errors;
	st->pages_marked = atomic_load_explicit(&src->marked, memory_order_relaxed);
	st->pages_covered = atomic_load_explicit(&src->covered_pages, memory_order_relaxed);
	st->last_sync_pages = src->last_sync_pages;
	st->dirty_rate = src->rate;
	st->last_error = src->last_error;
	pthread_mutex_unlock(&src->view->lock);
	return 0;
}
