/* SPDX-License-Identifier: MIT */
/*
 * hbm_ahead.c - prefetching for claimers of a sparse bitmap far larger
 * than the caches (hbm.h, hbm_ahead()). Loads and prefetches only: it
 * owns, sets and clears nothing, so nothing here can lose or repeat a
 * page; at worst it fetches a line for nothing.
 */
#include <string.h>

#include "hbm_ahead.h"
#include "hbm_ops.h"

/*
 * Groups with more chunks than this get their level-1 lines fetched
 * whole and their level 0 chunk by chunk (hbm_prefetch_chunk() from the
 * claimer): one group then holds enough misses to overlap.
 */
#define AHEAD_MAX_CHUNKS 16

void hbm_prefetch_chunk(struct hbm *h, uint64_t c)
{
	uint64_t w = LD(&h->lv[1][c]);

	/* One prefetch per 64-byte line of the chunk's level 0. */
	for (unsigned int line = 0; line < 8; line++)
		if (w >> (line * 8) & 0xff)
			__builtin_prefetch((const void *)&h->lv[0][c * HBM_CHUNK_WORDS +
				line * 8], 1, 3);
}

/*
 * Three stages, each a load of a line the stage before prefetched, so no
 * load in here waits for memory (a load still in flight would hold up the
 * claimer's next exchange, which waits for every older load):
 *   found (HBM_AHEAD ahead): from level 3, fetch its level-2 and full word;
 *   level 2 read (AHEAD_L1 ahead): fetch the level-1 words of its chunks;
 *   level 1 read (AHEAD_L0 ahead): fetch the level-0 lines they name.
 */
#define AHEAD_L1 8
#define AHEAD_L0 4

void hbm_ahead(struct hbm *h, struct hbm_ahead *a, uint64_t g)
{
	unsigned int i = 0;

	if (h->nlevels <= 3)
		return;	/* one group: nothing ahead */
	while (i < a->n && a->g[i] <= g)
		i++;
	memmove(a->g, a->g + i, (a->n - i) * sizeof(a->g[0]));
	memmove(a->bits, a->bits + i, (a->n - i) * sizeof(a->bits[0]));
	memmove(a->stage, a->stage + i, (a->n - i) * sizeof(a->stage[0]));
	a->n -= i;
	while (a->n < HBM_AHEAD) {
		uint64_t p = hbm_find_from(h, 3, (a->n ? a->g[a->n - 1] : g) + 1, false);

		if (p == HBM_NONE)
			break;
		a->g[a->n] = p;
		a->stage[a->n++] = 0;
		__builtin_prefetch((const void *)&h->lv[2][p], 1, 3);
		__builtin_prefetch((const void *)&h->full[p], 1, 3);
	}
	for (i = 0; i < a->n && i < AHEAD_L1; i++) {
		uint64_t p = a->g[i], bits;

		if (a->stage[i] == 0) {
			a->stage[i] = 1;
			bits = a->bits[i] = LD(&h->lv[2][p]);
			if (hbm_popcount(bits) <= AHEAD_MAX_CHUNKS)
				for (; bits; bits &= bits - 1)
					__builtin_prefetch((const void *)&h->lv[1][(p << 6) +
						(uint64_t)__builtin_ctzll(bits)], 1, 3);
			else
				for (unsigned int line = 0; line < 8; line++)
					__builtin_prefetch((const void *)&h->lv[1][(p << 6) + line * 8],
							   1, 3);
		}
		if (i < AHEAD_L0 && a->stage[i] == 1) {
			a->stage[i] = 2;
			bits = a->bits[i];
			if (hbm_popcount(bits) <= AHEAD_MAX_CHUNKS)
				for (; bits; bits &= bits - 1)
					hbm_prefetch_chunk(h, (p << 6) + (uint64_t)__builtin_ctzll(bits));
		}
	}
}

