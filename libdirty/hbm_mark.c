/* SPDX-License-Identifier: MIT */
/*
 * hbm_mark.c - marking the hierarchical bitmap: batches (page bits
 * gathered into word masks, summaries written when the batch moves on),
 * single marks as one-range batches, foreign chunks of words. The order
 * of hbm.h holds for every write here: level 0 (or full) always with an
 * RMW, each summary word after everything it summarises.
 */
#include <string.h>

#include "hbm_mark.h"
#include "hbm_ops.h"

static void flush_level(struct hbm *h, struct hbm_batch *b, unsigned int k);

/* Queue bits of summary word w at level k >= 2, writing out another first. */
static void pend(struct hbm *h, struct hbm_batch *b, unsigned int k, uint64_t w,
		 uint64_t bits)
{
	if (k >= h->nlevels)
		return;
	if (b->smask[k] && b->sword[k] != w)
		flush_level(h, b, k);
	b->sword[k] = w;
	b->smask[k] |= bits;
}

/*
 * Write level k's pending bits, then queue their word's bit one level up:
 * bottom-up, as propagate() does, only later. A load that finds every bit
 * set skips the RMW (summaries only); it is made after the writes below,
 * so a claimer's lazy clear that raced with it is seen or sees ours.
 */
static void flush_level(struct hbm *h, struct hbm_batch *b, unsigned int k)
{
	uint64_t m = b->smask[k], w = b->sword[k];
	_Atomic uint64_t *p = &h->lv[k][w];

	b->smask[k] = 0;
	if ((LD(p) & m) != m)
		OR(p, m);
	pend(h, b, k + 1, w >> 6, bit(w));
}

/* Level 0 and 1 of the pending chunk; its level-2 bit is queued. */
static void flush_chunk(struct hbm *h, struct hbm_batch *b)
{
	uint64_t c = b->chunk, wm = b->wmask;
	_Atomic uint64_t *l0, *l1;

	if (c == HBM_NONE)
		return;
	l0 = &h->lv[0][c * HBM_CHUNK_WORDS];
	l1 = &h->lv[1][c];
	/*
	 * Always the RMW, even when the bits look set: it is the release
	 * the claimer's exchange acquires, so the page contents written
	 * before this mark are what it then reads. A load that finds the
	 * bit set publishes nothing, and the claimer could take the old bit
	 * and read the old contents.
	 */
	for (uint64_t m = wm; m; m &= m - 1) {
		unsigned int j = (unsigned int)__builtin_ctzll(m);

		OR(&l0[j], b->words[j]);
	}
	if ((LD(l1) & wm) != wm)
		OR(l1, wm);
	b->chunk = HBM_NONE;
	b->wmask = 0;
	pend(h, b, 2, c >> 6, bit(c));
}

/* Chunks [c, c + n) full: O(n / 64) atomics, level 0 untouched. */
static void batch_full(struct hbm *h, struct hbm_batch *b, uint64_t c, uint64_t n)
{
	while (n) {
		uint64_t g = c >> 6, s = c & 63;
		uint64_t cnt = n < 64 - s ? n : 64 - s;
		uint64_t m = (cnt == 64 ? ~0ull : ((1ull << cnt) - 1)) << s;

		OR(&h->full[g], m);	/* always: the release, as in flush_chunk() */
		pend(h, b, 2, g, m);
		c += cnt;
		n -= cnt;
	}
}

void hbm_batch_init(struct hbm_batch *b)
{
	b->chunk = HBM_NONE;
	b->wmask = 0;
	memset(b->smask, 0, sizeof(b->smask));
}

void hbm_batch_flush(struct hbm *h, struct hbm_batch *b)
{
	flush_chunk(h, b);
	for (unsigned int k = 2; k < h->nlevels; k++)
		if (b->smask[k])
			flush_level(h, b, k);
}

/* Pages [p, e) of the pending chunk (p < e, both inside it). */
static void add_bits(struct hbm_batch *b, uint64_t p, uint64_t e)
{
	unsigned int lo = (unsigned int)(p >> 6), hi = (unsigned int)((e - 1) >> 6);

	for (unsigned int j = lo; j <= hi; j++) {
		unsigned int s = j == lo ? (unsigned int)(p & 63) : 0;
		unsigned int t = j == hi ? (unsigned int)((e - 1) & 63) : 63;
		uint64_t bits = (~0ull >> (63 - t)) & (~0ull << s);

		b->words[j] = (b->wmask & bit(j)) ? b->words[j] | bits : bits;
		b->wmask |= bit(j);
	}
}

uint64_t hbm_batch_add_slow(struct hbm *h, struct hbm_batch *b, uint64_t first,
			    uint64_t count)
{
	uint64_t end;

	if (first >= h->npages || count == 0)
		return 0;
	if (count > h->npages - first)
		count = h->npages - first;
	end = first + count;
	while (first < end) {
		uint64_t c = first / HBM_CHUNK_PAGES, base = c * HBM_CHUNK_PAGES;
		uint64_t cend = base + hbm_chunk_pages(h, c);

		if (first == base && end >= cend) {
			/* Whole chunks, the short last one included if covered. */
			uint64_t n = end / HBM_CHUNK_PAGES - c;

			if (end == h->npages && h->npages % HBM_CHUNK_PAGES)
				n++;
			if (b->chunk >= c && b->chunk < c + n)
				flush_chunk(h, b);
			batch_full(h, b, c, n);
			first = (c + n) * HBM_CHUNK_PAGES < end ? (c + n) * HBM_CHUNK_PAGES : end;
			continue;
		}
		if (b->chunk != c) {
			flush_chunk(h, b);
			b->chunk = c;
		}
		add_bits(b, first - base, (end < cend ? end : cend) - base);
		first = end < cend ? end : cend;
	}
	return count;
}

void hbm_batch_or_chunk(struct hbm *h, struct hbm_batch *b, uint64_t c,
			const uint64_t *words, uint64_t wmask)
{
	if (!wmask)
		return;
	if (b->chunk != c) {
		flush_chunk(h, b);
		b->chunk = c;
	}
	for (uint64_t m = wmask; m; m &= m - 1) {
		unsigned int j = (unsigned int)__builtin_ctzll(m);

		b->words[j] = (b->wmask & bit(j)) ? b->words[j] | words[j] : words[j];
	}
	b->wmask |= wmask;
}

#if defined(__x86_64__)
__attribute__((target("popcnt")))
static uint64_t popcount_words_hw(const uint64_t *words, uint64_t wmask)
{
	uint64_t n = 0;

	for (; wmask; wmask &= wmask - 1)
		n += (uint64_t)__builtin_popcountll(words[__builtin_ctzll(wmask)]);
	return n;
}
#endif

uint64_t hbm_popcount_words(const uint64_t *words, uint64_t wmask)
{
	uint64_t n = 0;

#if defined(__x86_64__)
	if (__builtin_cpu_supports("popcnt"))
		return popcount_words_hw(words, wmask);
#endif
	for (; wmask; wmask &= wmask - 1)
		n += hbm_popcount(words[__builtin_ctzll(wmask)]);
	return n;
}

uint64_t hbm_or_chunk(struct hbm *h, uint64_t c, const uint64_t *words,
		      unsigned int nwords)
{
	struct hbm_batch b;
	uint64_t wmask = 0, n;

	for (unsigned int j = 0; j < nwords; j++)
		wmask |= (uint64_t)(words[j] != 0) << j;
	n = hbm_popcount_words(words, wmask);
	hbm_batch_init(&b);
	hbm_batch_or_chunk(h, &b, c, words, wmask);
	hbm_batch_flush(h, &b);
	return n;
}

void hbm_mark(struct hbm *h, uint64_t first, uint64_t count)
{
	struct hbm_batch b;

	hbm_batch_init(&b);
	hbm_batch_add_slow(h, &b, first, count);
	hbm_batch_flush(h, &b);
}

