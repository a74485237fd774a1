/* SPDX-License-Identifier: MIT */
/*
 * hbm_mark.h - marking the hierarchical bitmap (hbm.h): single marks,
 * batches that turn runs into per-word masks before any atomic, ORing a
 * chunk's words. The ordering every mark keeps is hbm.h's.
 */
#ifndef LIBDIRTY_HBM_MARK_H
#define LIBDIRTY_HBM_MARK_H

#include "hbm.h"

/*
 * A batch of marks: page bits gathered per chunk into word masks and
 * summary bits per summary word, written when the batch moves on (to
 * another chunk, another summary word) or is flushed. Each level-0 word
 * gets one RMW per chunk visit however many pages of it the batch
 * marks; each summary word one load (and an RMW only if bits are
 * missing) per visit. The order of hbm.h is kept: a word is written only
 * after everything it summarises, so a flushed batch is exactly a
 * sequence of single marks. Nothing is visible before a flush.
 * words[j] is meaningful only for j in wmask.
 */
struct hbm_batch {
	uint64_t chunk;		/* HBM_NONE: no page bits pending */
	uint64_t wmask;
	uint64_t words[HBM_CHUNK_WORDS];
	uint64_t sword[HBM_MAX_LEVELS];	/* level k >= 2: pending word */
	uint64_t smask[HBM_MAX_LEVELS];	/* and its pending bits (0: none) */
};

/* Mark pages [first, first + count). */
void hbm_mark(struct hbm *h, uint64_t first, uint64_t count);

/*
 * Batched marking: init, add page ranges (any order; sorted ones batch
 * best), flush. hbm_batch_add() returns the pages it took (clipped to the
 * bitmap). hbm_batch_or_chunk() adds bits words[j] (j in wmask, bits past
 * npages clear) to chunk c. Marks become visible, and release the page
 * contents written before them, at hbm_batch_flush() at the latest.
 */
void hbm_batch_init(struct hbm_batch *b);
uint64_t hbm_batch_add_slow(struct hbm *h, struct hbm_batch *b, uint64_t first,
			    uint64_t count);

/* The common case inline: a run inside one word of the pending chunk. */
static inline uint64_t hbm_batch_add(struct hbm *h, struct hbm_batch *b,
				     uint64_t first, uint64_t count)
{
	unsigned int s = (unsigned int)(first & 63), j;

	if (first / HBM_CHUNK_PAGES != b->chunk || count > 64 - s || !count ||
	    first >= h->npages || count > h->npages - first)
		return hbm_batch_add_slow(h, b, first, count);
	j = (unsigned int)(first / 64 % HBM_CHUNK_WORDS);
	if (b->wmask & (1ull << j)) {
		b->words[j] |= (~0ull >> (64 - count)) << s;
	} else {
		b->words[j] = (~0ull >> (64 - count)) << s;
		b->wmask |= 1ull << j;
	}
	return count;
}
void hbm_batch_or_chunk(struct hbm *h, struct hbm_batch *b, uint64_t c,
			const uint64_t *words, uint64_t wmask);
void hbm_batch_flush(struct hbm *h, struct hbm_batch *b);

/*
 * Start fetching the level-0, 1 and 2 words of page p for writing: a
 * batch walking memory far larger than the caches lets the misses of the
 * next runs overlap the atomics of this one. A hint only. Always inlined:
 * as a function of its own GCC finds it free of side effects and drops
 * the call.
 */
__attribute__((always_inline))
static inline void hbm_prefetch(const struct hbm *h, uint64_t p)
{
	if (p < h->npages) {
		__builtin_prefetch((const void *)&h->lv[0][p >> 6], 1, 3);
		__builtin_prefetch((const void *)&h->lv[1][p >> 12], 1, 3);
		__builtin_prefetch((const void *)&h->lv[2][p >> 18], 1, 3);
	}
}
/* Prefetch chunk c's level-0 lines `lines` names (bit i: words 8i..8i+7) and its summaries. */
__attribute__((always_inline))
static inline void hbm_prefetch_lines(const struct hbm *h, uint64_t c, unsigned int lines)
{
	for (; lines; lines &= lines - 1)
		__builtin_prefetch((const void *)&h->lv[0][c * HBM_CHUNK_WORDS +
			8 * (unsigned int)__builtin_ctz(lines)], 1, 3);
	__builtin_prefetch((const void *)&h->lv[1][c], 1, 3);
	__builtin_prefetch((const void *)&h->lv[2][c >> 6], 1, 3);
}

/*
 * OR bits into chunk c: words[j] goes to level-0 word 64c + j, for
 * j < nwords. Bits past npages must be clear. Returns the bits given.
 */
uint64_t hbm_or_chunk(struct hbm *h, uint64_t c, const uint64_t *words,
		  unsigned int nwords);

/*
 * Set bits of words[j] for every j in wmask: with the POPCNT instruction
 * when the CPU has it (chosen at run time: the build targets the x86-64
 * baseline, where a merge of a dense bitmap would spend more time
 * counting than marking), else hbm_popcount().
 */
uint64_t hbm_popcount_words(const uint64_t *words, uint64_t wmask);

#endif /* LIBDIRTY_HBM_MARK_H */
