/* SPDX-License-Identifier: MIT */
/*
 * hbm_ahead.h - prefetching for claimers of the hierarchical bitmap
 * (hbm.h). Hints only: nothing here owns, sets or clears a bit.
 */
#ifndef LIBDIRTY_HBM_AHEAD_H
#define LIBDIRTY_HBM_AHEAD_H

#include "hbm.h"

/*
 * Prefetching for a claimer walking a sparse bitmap far larger than the
 * caches, where each group costs a chain of misses (level 2, level 1,
 * level 0) that its exchanges cannot overlap. hbm_ahead() is called as
 * group g is taken; it looks up to HBM_AHEAD groups further with plain
 * loads only (a hint: it owns and clears nothing) and prefetches, in
 * stages as they come closer, their level-2, level-1 and level-0 words,
 * so the misses of the next groups overlap the work on this one.
 */
#define HBM_AHEAD 12
struct hbm_ahead {
	uint64_t g[HBM_AHEAD], bits[HBM_AHEAD];
	unsigned int n;		/* entries g[0 .. n), ascending */
	unsigned char stage[HBM_AHEAD];
};
void hbm_ahead(struct hbm *h, struct hbm_ahead *a, uint64_t g);

/* Prefetch the level-0 lines chunk c's level-1 word names (a hint). */
void hbm_prefetch_chunk(struct hbm *h, uint64_t c);

#endif /* LIBDIRTY_HBM_AHEAD_H */
