/* SPDX-License-Identifier: MIT */
/*
 * hbm.c - the hierarchical atomic bitmap (see hbm.h for the layout and
 * the ordering argument). Owns the bitmap words; knows nothing of
 * regions, sources or addresses.
 *
 * The race this file is built around: a marker sets a level-0 bit and
 * then walks up, setting each summary bit it finds clear; a claimer walks
 * down, exchanging words with zero. Because the marker writes bottom-up
 * and the claimer reads top-down in one total order, a bit set below is
 * always reachable from the top or already inside a claimer's exchange.
 * A summary bit found pointing at a zero word is cleared and the word
 * below re-read; a marker that raced in between is seen by that re-read
 * and the bit put back, or sees the cleared bit itself and sets it.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "hbm.h"

#define LD(p) atomic_load(p)
#define OR(p, v) atomic_fetch_or((p), (v))
#define AND(p, v) atomic_fetch_and((p), (v))
#define XCHG(p, v) atomic_exchange((p), (v))

static inline uint64_t bit(uint64_t i)
{
	return 1ull << (i & 63);
}

int hbm_init(struct hbm *h, uint64_t npages)
{
	size_t off[HBM_MAX_LEVELS + 1], total = 0;
	unsigned int k;

	memset(h, 0, sizeof(*h));
	if (npages == 0)
		return -EINVAL;
	h->npages = npages;
	h->nwords[0] = (npages + 63) / 64;
	for (k = 1;; k++) {
		if (k >= HBM_MAX_LEVELS)
			return -E2BIG;
		h->nwords[k] = (h->nwords[k - 1] + 63) / 64;
		if (k >= 2 && h->nwords[k] == 1)
			break;
	}
	h->nlevels = k + 1;
	h->nchunks = h->nwords[1];
	for (k = 0; k < h->nlevels; k++) {
		off[k] = total;
		/* A cache line per level start keeps levels from sharing lines. */
		total += (h->nwords[k] * 8 + 63) & ~(size_t)63;
	}
	off[h->nlevels] = total;
	total += (h->nwords[2] * 8 + 63) & ~(size_t)63;
	/* MAP_NORESERVE: a terabyte region costs nothing until it is dirtied. */
	h->mem = mmap(NULL, total, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (h->mem == MAP_FAILED) {
		h->mem = NULL;
		return -ENOMEM;
	}
	h->mem_len = total;
	for (k = 0; k < h->nlevels; k++)
		h->lv[k] = (_Atomic uint64_t *)((char *)h->mem + off[k]);
	h->full = (_Atomic uint64_t *)((char *)h->mem + off[h->nlevels]);
	return 0;
}

void hbm_destroy(struct hbm *h)
{
	if (h->mem)
		munmap(h->mem, h->mem_len);
	memset(h, 0, sizeof(*h));
}

/* Set bit i of level k and every summary bit above it. */
static void propagate(struct hbm *h, unsigned int k, uint64_t i)
{
	for (; k < h->nlevels; k++, i >>= 6) {
		_Atomic uint64_t *p = &h->lv[k][i >> 6];

		/* A load first: hot summary words stay shared, not bounced. */
		if (!(LD(p) & bit(i)))
			OR(p, bit(i));
	}
}

/* Is anything below bit i of level k (k >= 2)? */
static bool below_nonzero(struct hbm *h, unsigned int k, uint64_t i)
{
	if (k == 2)
		return LD(&h->lv[1][i]) != 0 || (LD(&h->full[i >> 6]) & bit(i));
	return LD(&h->lv[k - 1][i]) != 0;
}

/* Bit i of level k pointed at nothing: clear it, and above while empty. */
void hbm_lazy_clear(struct hbm *h, unsigned int k, uint64_t i)
{
	for (; k < h->nlevels; k++, i >>= 6) {
		_Atomic uint64_t *p = &h->lv[k][i >> 6];
		uint64_t old = AND(p, ~bit(i));

		if (below_nonzero(h, k, i)) {
			/* A marker raced with us and may have seen the bit set. */
			OR(p, bit(i));
			return;
		}
		if (old & ~bit(i))
			return;
	}
}

uint64_t hbm_or_chunk(struct hbm *h, uint64_t c, const uint64_t *words,
		      unsigned int nwords)
{
	_Atomic uint64_t *l0 = &h->lv[0][c * HBM_CHUNK_WORDS];
	_Atomic uint64_t *l1 = &h->lv[1][c];
	uint64_t sum = 0, n = 0;
	unsigned int j;

	for (j = 0; j < nwords; j++) {
		uint64_t v = words[j];

		if (!v)
			continue;
		/*
		 * Always the RMW, even when the bits look set: it is the
		 * release the claimer's exchange acquires, so the page
		 * contents written before this mark are what it then reads.
		 * A load that finds the bit set publishes nothing, and the
		 * claimer could take the old bit and read the old contents.
		 */
		OR(&l0[j], v);
		sum |= bit(j);
		n += hbm_popcount(v);
	}
	if (!sum)
		return 0;
	if ((LD(l1) & sum) != sum)
		OR(l1, sum);
	propagate(h, 2, c);
	return n;
}

/* Mark chunks [c, c + n) full: O(n / 64) atomics. */
static void mark_full(struct hbm *h, uint64_t c, uint64_t n)
{
	while (n) {
		uint64_t g = c >> 6, s = c & 63;
		uint64_t cnt = n < 64 - s ? n : 64 - s;
		uint64_t m = (cnt == 64 ? ~0ull : ((1ull << cnt) - 1)) << s;

		OR(&h->full[g], m);	/* always: the release, as in hbm_or_chunk() */
		if ((LD(&h->lv[2][g]) & m) != m)
			OR(&h->lv[2][g], m);
		propagate(h, 3, g);
		c += cnt;
		n -= cnt;
	}
}

/* OR bits into level-0 word w: the common single-page mark. */
static void or_word(struct hbm *h, uint64_t w, uint64_t bits)
{
	_Atomic uint64_t *l1 = &h->lv[1][w >> 6];

	OR(&h->lv[0][w], bits);	/* always: the release, as in hbm_or_chunk() */
	if (!(LD(l1) & bit(w)))
		OR(l1, bit(w));
	propagate(h, 2, w >> 6);
}

/* Pages [first, first + count) all inside chunk c. */
static void mark_in_chunk(struct hbm *h, uint64_t c, uint64_t first,
			  uint64_t count)
{
	uint64_t words[HBM_CHUNK_WORDS];
	uint64_t p = first - c * HBM_CHUNK_PAGES, end = p + count;
	unsigned int lo = (unsigned int)(p >> 6);
	unsigned int hi = (unsigned int)((end - 1) >> 6) + 1;

	if (hi - lo == 1) {
		or_word(h, c * HBM_CHUNK_WORDS + lo,
			(count == 64 ? ~0ull : ((1ull << count) - 1)) << (p & 63));
		return;
	}
	memset(words, 0, hi * sizeof(words[0]));

	while (p < end) {
		uint64_t s = p & 63, n = end - p < 64 - s ? end - p : 64 - s;

		words[p >> 6] |= (n == 64 ? ~0ull : ((1ull << n) - 1)) << s;
		p += n;
	}
	hbm_or_chunk(h, c, words, hi);
}

void hbm_mark(struct hbm *h, uint64_t first, uint64_t count)
{
	uint64_t end;

	if (first >= h->npages || count == 0)
		return;
	if (count > h->npages - first)
		count = h->npages - first;
	end = first + count;
	while (first < end) {
		uint64_t c = first / HBM_CHUNK_PAGES;
		uint64_t cend = c * HBM_CHUNK_PAGES + hbm_chunk_pages(h, c);

		if (first == c * HBM_CHUNK_PAGES && end >= cend) {
			uint64_t n = 1;

			while (c + n < h->nchunks &&
			       (c + n) * HBM_CHUNK_PAGES + hbm_chunk_pages(h, c + n) <= end)
				n++;
			mark_full(h, c, n);
			first = c * HBM_CHUNK_PAGES + (n - 1) * HBM_CHUNK_PAGES +
				hbm_chunk_pages(h, c + n - 1);
			continue;
		}
		mark_in_chunk(h, c, first, (end < cend ? end : cend) - first);
		first = end < cend ? end : cend;
	}
}

/*
 * Smallest set bit >= from at level k, using the levels above to skip
 * empty words and clearing summary bits found stale on the way down.
 */
static uint64_t find_from(struct hbm *h, unsigned int k, uint64_t from)
{
	for (;;) {
		uint64_t wi, v, nw;

		if (from >= h->nwords[k - 1])
			return HBM_NONE;
		wi = from >> 6;
		v = LD(&h->lv[k][wi]) & (~0ull << (from & 63));
		if (v)
			return (wi << 6) + (uint64_t)__builtin_ctzll(v);
		if (k + 1 >= h->nlevels) {
			from = (wi + 1) << 6;
			continue;
		}
		nw = find_from(h, k + 1, wi + 1);
		if (nw == HBM_NONE)
			return HBM_NONE;
		v = LD(&h->lv[k][nw]);
		if (v)
			return (nw << 6) + (uint64_t)__builtin_ctzll(v);
		hbm_lazy_clear(h, k + 1, nw);
		from = (nw + 1) << 6;
	}
}

uint64_t hbm_find_group(struct hbm *h, uint64_t from)
{
	if (from >= h->nwords[2])
		return HBM_NONE;
	/* Level 2 only: a full bit alone is owned by a claimer or a marker. */
	if (LD(&h->lv[2][from]))
		return from;
	if (h->nlevels == 3)
		return HBM_NONE;	/* one group only, and it is empty */
	return find_from(h, 3, from + 1);
}

uint64_t hbm_take_chunks(struct hbm *h, uint64_t g)
{
	return LD(&h->lv[2][g]) ? XCHG(&h->lv[2][g], 0) : 0;
}

/*
 * After the level-2 exchange, in the one total order: a marker that set a
 * full bit of these chunks before its level-2 look is seen here; one that
 * sets it later finds the level-2 bit clear and sets it, so the chunk is
 * taken again, full, by a later claim.
 */
uint64_t hbm_take_full(struct hbm *h, uint64_t g, uint64_t chunks)
{
	if (!chunks || !(LD(&h->full[g]) & chunks))
		return 0;
	return AND(&h->full[g], ~chunks) & chunks;
}

void hbm_take_group(struct hbm *h, uint64_t g, uint64_t *chunks,
		    uint64_t *full)
{
	*chunks = hbm_take_chunks(h, g);
	*full = hbm_take_full(h, g, *chunks);
	if (h->nlevels > 3)
		hbm_lazy_clear(h, 3, g);
}

void hbm_return_group(struct hbm *h, uint64_t g, uint64_t chunks,
		      uint64_t full)
{
	if (full)
		OR(&h->full[g], full);
	if (chunks | full) {
		OR(&h->lv[2][g], chunks | full);
		propagate(h, 3, g);
	}
}

uint64_t hbm_claim_chunk(struct hbm *h, uint64_t c, bool full,
			 uint64_t words[HBM_CHUNK_WORDS], uint64_t *wmask)
{
	_Atomic uint64_t *l0 = &h->lv[0][c * HBM_CHUNK_WORDS];
	uint64_t m, got = 0, n = 0;

	m = LD(&h->lv[1][c]) ? XCHG(&h->lv[1][c], 0) : 0;
	while (m) {
		unsigned int j = (unsigned int)__builtin_ctzll(m);
		uint64_t w = LD(&l0[j]) ? XCHG(&l0[j], 0) : 0;

		m &= m - 1;
		/* In a full chunk these pages are part of this one claim. */
		if (!full && w) {
			words[j] = w;
			got |= bit(j);
			n += hbm_popcount(w);
		}
	}
	*wmask = got;
	return full ? hbm_chunk_pages(h, c) : n;
}

uint64_t hbm_count(struct hbm *h)
{
	uint64_t g = 0, n = 0;

	while ((g = hbm_find_group(h, g)) != HBM_NONE) {
		uint64_t chunks = LD(&h->lv[2][g]), full = LD(&h->full[g]);

		chunks |= full;
		while (chunks) {
			uint64_t c = (g << 6) + (uint64_t)__builtin_ctzll(chunks);
			uint64_t m;

			if (full & bit(c)) {
				n += hbm_chunk_pages(h, c);
			} else {
				m = LD(&h->lv[1][c]);
				while (m) {
					unsigned int j = (unsigned int)__builtin_ctzll(m);

					m &= m - 1;
					n += hbm_popcount(
						LD(&h->lv[0][c * HBM_CHUNK_WORDS + j]));
				}
			}
			chunks &= chunks - 1;
		}
		g++;
	}
	return n;
}
