/* SPDX-License-Identifier: MIT */
/*
 * hbm_ops.h - the operations hbm.c, hbm_mark.c and hbm_ahead.c use on
 * bitmap words: all seq_cst (hbm.h says why). Private to those files.
 */
#ifndef LIBDIRTY_HBM_OPS_H
#define LIBDIRTY_HBM_OPS_H

#include "hbm.h"

#define LD(p) atomic_load(p)
#define OR(p, v) atomic_fetch_or((p), (v))
#define AND(p, v) atomic_fetch_and((p), (v))
#define XCHG(p, v) atomic_exchange((p), (v))

static inline uint64_t bit(uint64_t i)
{
	return 1ull << (i & 63);
}

/* hbm.c: the smallest set bit >= from at level k (k >= 1); with repair,
 * summary bits found stale on the way are cleared (claimers only). */
uint64_t hbm_find_from(struct hbm *h, unsigned int k, uint64_t from, bool repair);

#endif /* LIBDIRTY_HBM_OPS_H */
