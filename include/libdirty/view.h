/* SPDX-License-Identifier: MIT */
/*
 * libdirty/view.h - the merged dirty view: guest-physical regions, each a hierarchical
 * atomic bitmap; marking from any thread, lock-free; claiming runs of dirty
 * pages out, each marked page once per mark; statistics.
 */
#ifndef LIBDIRTY_VIEW_H
#define LIBDIRTY_VIEW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Conventions: functions return 0 (or a count) on success and -errno on
 * failure; errno is left alone. dirty_last_error() gives the calling
 * thread's message for the last failure, worded for a user.
 */

/* Smallest page size a region may use; every page size is a power of two. */
#define DIRTY_MIN_PAGE_SIZE 4096u

struct dirty_view;
struct dirty_source;
struct dirty_claim;

/* A guest-physical byte range. */
struct dirty_range {
	uint64_t gpa;
	uint64_t len;
};

/* A run of contiguous dirty pages handed to a claimer (bytes, page aligned). */
struct dirty_run {
	uint64_t gpa;
	uint64_t len;
};

/* Message for the calling thread's most recent failed call ("" if none). */
const char *dirty_last_error(void);

/* ---- view and regions ------------------------------------------------- */

int dirty_view_new(struct dirty_view **out);
/* Detaches and destroys remaining sources, frees every region. */
void dirty_view_free(struct dirty_view *view);

/* The region starts with every page dirty (a memslot added mid-migration). */
#define DIRTY_REGION_DIRTY 0x1u

/*
 * Add [gpa, gpa + len) tracked at page_size (0 means 4 KiB). gpa and len
 * must be multiples of page_size; regions may not overlap (-EEXIST).
 */
int dirty_view_add_region(struct dirty_view *view, uint64_t gpa, uint64_t len,
			  uint64_t page_size, unsigned int flags);
/*
 * Remove the region that starts at gpa. Waits for an RCU grace period, so
 * it must not be called from inside a libdirty callback that marks or
 * claims. Dirty bits of the region are dropped with it.
 */
int dirty_view_remove_region(struct dirty_view *view, uint64_t gpa);

/* ---- marking (any thread, lock-free) ---------------------------------- */

/*
 * Mark every page that [gpa, gpa + len) touches. Pages outside all regions
 * are counted in the view stats and otherwise ignored.
 */
int dirty_view_mark(struct dirty_view *view, uint64_t gpa, uint64_t len);
/* Mark a batch of ranges under one RCU read section. */
int dirty_view_mark_ranges(struct dirty_view *view,
			   const struct dirty_range *ranges, size_t n);
/* Mark every page of every region (first round, fallback after an error). */
int dirty_view_mark_all(struct dirty_view *view);
/*
 * OR a foreign little-endian bitmap into the view: bit i stands for
 * [gpa + i * page_size, gpa + (i + 1) * page_size). Bits larger than the
 * region's pages expand to every page they cover; smaller ones fold into
 * the page that contains them. Bytes are read as in memory: bit i is bit
 * (i % 8) of byte i / 8, which is what KVM, VFIO and the guest protocol
 * produce on every architecture.
 */
int dirty_view_merge_bitmap(struct dirty_view *view, uint64_t gpa,
			    uint64_t page_size, const void *bitmap,
			    uint64_t nbits);

/* Number of dirty pages right now, and their bytes; O(dirty), no claiming. */
int dirty_view_count(struct dirty_view *view, uint64_t *pages,
		     uint64_t *bytes);
/* Bytes the sources hold back for the final round (see held_bytes). */
uint64_t dirty_view_held_bytes(struct dirty_view *view);

/* ---- claiming (any number of threads, each with its own cursor) ------- */

int dirty_claim_new(struct dirty_view *view, struct dirty_claim **out);
/*
 * Claim up to max runs of dirty pages. Each marked page is handed to
 * exactly one claimer per mark; a page marked again after its claim is
 * claimed again. Returns the number of runs (0: nothing is dirty now).
 * Runs never cross a region boundary. Every source's prepare_read has run
 * on the runs returned: they may be read at once. On -errno (a source
 * could not prepare them) nothing is handed out and nothing is lost.
 */
ssize_t dirty_claim_next(struct dirty_claim *cl, struct dirty_run *runs,
			 size_t max);
/*
 * Give back what the cursor claimed but has not yet returned, marking it
 * dirty again: call it when a migration is cancelled.
 */
void dirty_claim_release(struct dirty_claim *cl);
/* Releases first, so nothing the cursor held is lost. */
void dirty_claim_free(struct dirty_claim *cl);

/* ---- statistics -------------------------------------------------------- */

struct dirty_region_stats {
	uint64_t gpa, len, page_size;
	uint64_t pages_marked;	/* pages reported dirty, repeats included */
	uint64_t pages_claimed;	/* pages handed to claimers */
	double dirty_rate;	/* pages marked per second, last sync interval */
};

struct dirty_view_stats {
	uint64_t regions;
	uint64_t pages;		/* pages in all regions */
	uint64_t pages_outside;	/* marked pages that fell in no region */
	uint64_t syncs;
};

int dirty_view_stats(struct dirty_view *view, struct dirty_view_stats *st);
/* Stats of the region that contains gpa (-ENOENT if none). */
int dirty_view_region_stats(struct dirty_view *view, uint64_t gpa,
			    struct dirty_region_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_VIEW_H */
