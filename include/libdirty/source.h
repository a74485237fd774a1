/* SPDX-License-Identifier: MIT */
/*
 * libdirty/source.h - sources: what feeds the view (KVM, VFIO, the guest protocol,
 * ...), one versioned ops table each; start, sync and final rounds; the
 * error rule; the cover policy.
 */
#ifndef LIBDIRTY_SOURCE_H
#define LIBDIRTY_SOURCE_H

#include <libdirty/view.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sources ----------------------------------------------------------- */

enum dirty_precision {
	/* Reports exactly the pages written (KVM, iommufd, guest protocol). */
	DIRTY_PRECISE = 1,
	/* Reports pages that may have been written (VFIO type1). */
	DIRTY_COARSE = 2,
};

#define DIRTY_SOURCE_OPS_VERSION 2

/*
 * What every tracking mechanism fills in. version comes first so the
 * table can grow; a callback left NULL means "nothing to do". Callbacks
 * report pages with dirty_source_mark*() and return 0 or -errno. A failed
 * sync or final never reads as "clean": the view marks every page of the
 * source's ranges dirty and returns the error.
 *
 * Version 1 tables (up to destroy) keep working: the fields after it read
 * as NULL. Every step correctness needs around a read is a callback here
 * that the library invokes itself, so no caller can forget one.
 */
struct dirty_source_ops {
	uint32_t version;	/* DIRTY_SOURCE_OPS_VERSION (1 or 2) */
	uint32_t precision;	/* enum dirty_precision */
	const char *name;
	int (*start)(struct dirty_source *src);	/* begin logging */
	int (*stop)(struct dirty_source *src);	/* end logging */
	int (*sync)(struct dirty_source *src);	/* OR new dirty bits in */
	int (*final)(struct dirty_source *src);	/* after VM and devices stop */
	void (*destroy)(struct dirty_source *src);	/* free priv */
	/* ---- version 2 ---- */
	/*
	 * Called by dirty_claim_next() on every batch of runs it claimed,
	 * before it returns them, so before anyone reads those pages: the
	 * source re-arms its log for them (KVM clear-log re-protects) and may
	 * keep pages back (it then owns them and marks them again later),
	 * rewriting runs[0 .. *n) in place with at most max runs. Called
	 * concurrently from every claiming thread. An error fails the claim:
	 * the batch is marked dirty again and the source's ranges too.
	 */
	int (*prepare_read)(struct dirty_source *src, struct dirty_run *runs,
			    size_t *n, size_t max);
	/*
	 * 1 once the source may be read for a first full pass, 0 not yet,
	 * -errno when it will not be (it then falls back on its own, e.g.
	 * marking its range dirty at final). dirty_view_start() waits on it.
	 */
	int (*ready)(struct dirty_source *src);
	/*
	 * Bytes the source holds back for the final round (pages it will
	 * mark only then), so the downtime estimate counts them.
	 */
	uint64_t (*held_bytes)(struct dirty_source *src);
	/*
	 * 1 while the source's reports can be trusted to be complete (a
	 * guest that acknowledged tracking, intact region, live agent), 0
	 * while not. Only a PRECISE source with this callback can cover a
	 * COARSE one (dirty_source_cover).
	 */
	int (*healthy)(struct dirty_source *src);
};

/*
 * Attach a source covering the given ranges (copied). The ranges are what
 * an error marks dirty, so they must cover every page the source can see.
 */
int dirty_source_attach(struct dirty_view *view,
			const struct dirty_source_ops *ops, void *priv,
			const struct dirty_range *ranges, size_t nranges,
			struct dirty_source **out);
/* Stops the source if started, calls destroy, frees it. */
void dirty_source_detach(struct dirty_source *src);
void *dirty_source_priv(const struct dirty_source *src);
struct dirty_view *dirty_source_view(const struct dirty_source *src);

/* For use inside callbacks: mark on behalf of src (counted per source). */
int dirty_source_mark(struct dirty_source *src, uint64_t gpa, uint64_t len);
/* A batch under one RCU read section (ring entries, scan results). */
int dirty_source_mark_ranges(struct dirty_source *src,
			     const struct dirty_range *ranges, size_t n);
int dirty_source_merge_bitmap(struct dirty_source *src, uint64_t gpa,
			      uint64_t page_size, const void *bitmap,
			      uint64_t nbits);

/*
 * The cover policy: a PRECISE source that knows exactly which pages a
 * device wrote (the guest protocol) stands in for a COARSE source of the
 * same DMA ("potentially dirty": VFIO type1 reports every mapped page).
 * At the start of every sync and of the final round the view asks the
 * precise source whether it is healthy; while it is, whatever the coarse
 * source marks inside the precise source's ranges is dropped (counted as
 * pages_covered); while it is not, and whenever that is so at final, the
 * coarse bits count. The coarse source still runs every sync, so its own
 * log stays armed. Without this call every source is ORed in.
 * Errors: -EINVAL unless precise is PRECISE with a healthy callback and
 * coarse is COARSE, both in one view; -EBUSY if coarse is already covered.
 */
int dirty_source_cover(struct dirty_source *precise, struct dirty_source *coarse);

/*
 * Start every attached source, then wait until each is ready for a first
 * full pass (a guest acknowledged tracking) or says it will not be; the
 * wait is bounded by the sources' own timeouts. On a start error the
 * sources already started are stopped again.
 */
int dirty_view_start(struct dirty_view *view);
int dirty_view_stop(struct dirty_view *view);
/*
 * Sync every source. Returns 0, or the first error; a source that failed
 * had all its ranges marked dirty and is left running for the next round.
 */
int dirty_view_sync(struct dirty_view *view);
/* Like sync, using each source's final callback (falls back to sync). */
int dirty_view_final(struct dirty_view *view);

struct dirty_source_stats {
	uint64_t syncs;
	uint64_t errors;	/* failed syncs: all its pages were marked */
	uint64_t pages_marked;	/* total */
	uint64_t pages_covered;	/* dropped: a healthy precise source stood in */
	uint64_t last_sync_pages;	/* marked by the last sync */
	double dirty_rate;	/* pages per second over the last sync interval */
	int last_error;		/* -errno of the last failed sync, or 0 */
};

int dirty_source_stats(struct dirty_source *src, struct dirty_source_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_SOURCE_H */
