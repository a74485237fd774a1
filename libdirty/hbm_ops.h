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

#endif /* LIBDIRTY_HBM_OPS_H */
