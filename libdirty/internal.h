/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the core's own files (libdirty/) share: the RCU
 * wrappers, the view, region and source layout, and the core's internal
 * calls. The rest of the library sees core.h only. Nothing here is
 * installed.
 */
#ifndef LIBDIRTY_INTERNAL_H
#define LIBDIRTY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <urcu/urcu-bp.h>

#include "core.h"
#include "hbm_mark.h"

/*
 * RCU. urcu-bp registers threads on first use, so callers of a library
 * need no setup. ThreadSanitizer cannot see the ordering urcu gets from
 * membarrier, so under TSAN every read-side unlock releases and every
 * grace period acquires one counter: that is exactly the happens-before
 * an RCU grace period guarantees, made visible to the tool.
 */
#if defined(__SANITIZE_THREAD__)
#define DIRTY_TSAN 1
#endif

static inline void __dirty_rcu_lock(void)
{
	urcu_bp_read_lock();
}
void __dirty_rcu_unlock(void);
/* Wait for a grace period; must not be called inside a read section. */
void __dirty_rcu_synchronize(void);
/* First thing in a call_rcu callback: the grace period, seen by TSAN. */
void __dirty_rcu_acquire(void);

/*
 * A region. Geometry is immutable after publication; the bitmap and the
 * counters are the only mutable parts and are atomics.
 */
struct region {
	uint64_t id;		/* unique for the view's lifetime */
	uint64_t gpa, len, page_size, npages;
	unsigned int page_shift;
	struct hbm bm;
	_Atomic uint64_t marked;	/* relaxed: statistics only */
	_Atomic uint64_t claimed;	/* relaxed: statistics only */
	/* Written under view->lock by dirty_view_sync(). */
	uint64_t rate_prev_marked;
	double rate;
};

/* Immutable once published; replaced whole by add/remove (RCU). */
struct region_table {
	size_t n;
	struct region *r[];	/* sorted by gpa, non-overlapping */
};

struct cover_set {
	size_t n;
	struct dirty_range r[];
};

struct dirty_source {
	struct dirty_view *view;
	/* The caller's table, widened to this version (missing fields NULL). */
	struct dirty_source_ops ops;
	const struct dirty_source_ops *user_ops;	/* identity, as attached */
	_Atomic(struct dirty_source *) hook_next;	/* view->hooks list */
	struct dirty_source *coverer;	/* dirty_source_cover; under view->lock */
	/*
	 * The coverer's ranges, published (release) under view->lock and read
	 * (acquire) by this source's marks inside a read section; a
	 * replaced set is freed after a grace period.
	 */
	_Atomic(struct cover_set *) cover;
	/*
	 * Set at each round start from the coverer's health. Relaxed: it only
	 * selects which of this source's marks count, and a mark racing with
	 * a flip may go either way; both are safe (cover.c).
	 */
	_Atomic bool covered;
	_Atomic uint64_t covered_pages;	/* relaxed: statistics only */
	void *priv;
	struct dirty_range *ranges;
	size_t nranges;
	bool started;
	struct dirty_source *next;	/* view->sources, under view->lock */
	_Atomic uint64_t marked;	/* relaxed: statistics only */
	/* Under view->lock. */
	uint64_t syncs, errors, last_sync_pages, prev_marked;
	int last_error;
	double rate;
	double last_sync_time;
};

struct dirty_view {
	/* Readers: acquire load inside an RCU read section. */
	_Atomic(struct region_table *) table;
	/*
	 * Sources with a prepare_read hook, an RCU list: claimers follow it
	 * with acquire loads inside a read section; attach and detach relink
	 * it with release stores under lock, and detach waits for a grace
	 * period before the source is freed.
	 */
	_Atomic(struct dirty_source *) hooks;
	/* Serialises table updates, the source list and syncs. */
	pthread_mutex_t lock;
	struct dirty_source *sources;
	uint64_t next_region_id;
	uint64_t syncs;
	double last_sync_time;
	_Atomic uint64_t pages_outside;	/* relaxed: statistics only */
	/* Cursors created so far; relaxed: it only spreads their start points. */
	_Atomic uint64_t cursors;
};

static inline bool __dirty_is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* table.c. Publish a new table (with view->lock) and free the old one. */
void __dirty_table_replace(struct dirty_view *view, struct region_table *nt);
/* Region containing gpa in t, or NULL. */
struct region *__dirty_table_find(const struct region_table *t, uint64_t gpa);
/* Index of the first region whose end is above gpa (t->n if none). */
size_t __dirty_table_lower(const struct region_table *t, uint64_t gpa);
/* Region by id (NULL if removed). Call inside an RCU read section. */
struct region *__dirty_table_by_id(const struct region_table *t, uint64_t id);

/* mark.c. Count bytes marked in no region, for the view's statistics. */
void __dirty_count_outside(struct dirty_view *view, uint64_t bytes);
/*
 * Mark [gpa, gpa + len), or merge a foreign bitmap, in table t: the caller
 * is inside an RCU read section and read t there (no lock is involved).
 * Returns pages marked.
 */
uint64_t __dirty_mark_in(struct dirty_view *view, const struct region_table *t,
			 uint64_t gpa, uint64_t len);
/*
 * Mark a batch of ranges, each page's bits gathered into word masks
 * before any atomic operation (mark.c); the same pages as
 * __dirty_mark_in() on each range, in one pass.
 */
uint64_t __dirty_mark_ranges_in(struct dirty_view *view, const struct region_table *t,
				const struct dirty_range *ranges, size_t n);
uint64_t __dirty_merge_in(struct dirty_view *view, const struct region_table *t,
			  uint64_t gpa, uint64_t page_size, const void *bitmap,
			  uint64_t nbits);

/* 0, or -EINVAL with a message when a foreign bitmap's arguments are bad. */
int __dirty_merge_check(uint64_t gpa, uint64_t page_size,
			const void *bitmap, uint64_t nbits);
/* Validate, then merge under a read section; *marked gets the page count. */
int __dirty_merge_checked(struct dirty_view *view, uint64_t gpa,
			  uint64_t page_size, const void *bitmap,
			  uint64_t nbits, uint64_t *marked);

/* cover.c: a covered source's marks, inside a read section; pages marked. */
uint64_t __dirty_cover_mark(struct dirty_source *src, const struct region_table *t,
			    uint64_t gpa, uint64_t len);
uint64_t __dirty_cover_merge(struct dirty_source *src, const struct region_table *t,
			     uint64_t gpa, uint64_t page_size, const void *bitmap,
			     uint64_t nbits);
/* With view->lock: judge every coverer (round start); forget a leaving one. */
void __dirty_cover_round(struct dirty_view *view);
void __dirty_cover_forget(struct dirty_source *src);

/*
 * Run every prepare_read hook on runs[0 .. *n) (inside a read section);
 * on error the runs are marked dirty again and the error is returned.
 */
int __dirty_prepare_read(struct dirty_view *view, struct dirty_run *runs,
			 size_t *n, size_t max);

#endif /* LIBDIRTY_INTERNAL_H */
