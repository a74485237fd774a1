/* SPDX-License-Identifier: MIT */
/*
 * hbm.c - the hierarchical atomic bitmap (see hbm.h for the layout and
 * the ordering argument): its memory, the claim side (finding, taking
 * and claiming groups and chunks, lazy clears) and counting. Marking is
 * hbm_mark.c's, a claimer's prefetching hbm_ahead.c's. Owns the bitmap
 * words; knows nothing of regions, sources or addresses.
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

#include "hbm_ops.h"

/*
 * Anonymous memory reserved, not committed: a terabyte region costs
 * nothing until it is dirtied. align > page size: the start is aligned to
 * it and the range may use transparent huge pages.
 */
static void *reserve(size_t len, size_t align)
{
	size_t over = align > 4096 ? align : 0;
	char *p = mmap(NULL, len + over, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t a;

	if (p == MAP_FAILED)
		return NULL;
	if (!over)
		return p;
	a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	if ((uintptr_t)p + over > a)
		munmap((char *)a + len, (uintptr_t)p + over - a);
	/* Advice only: without THP the summaries still work, on small pages. */
	madvise((void *)a, len, MADV_HUGEPAGE);
	return (void *)a;
}

#define HUGE_PAGE (2u << 20)

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
	/*
	 * Level 0 on small pages: a sparse dirty set touches one page of it
	 * per dirty page, so its footprint follows the dirty set. The rest
	 * (1/64 of level 0, every dirty page passes through it) on huge
	 * pages once it spans one: at terabyte sizes each summary access
	 * would otherwise miss the TLB.
	 */
	for (k = 1; k < h->nlevels; k++) {
		off[k] = total;
		/* A cache line per level start keeps levels from sharing lines. */
		total += (h->nwords[k] * 8 + 63) & ~(size_t)63;
	}
	off[h->nlevels] = total;
	total += (h->nwords[2] * 8 + 63) & ~(size_t)63;
	h->mem_len = (h->nwords[0] * 8 + 4095) & ~(size_t)4095;
	h->sum_len = total;
	h->mem = reserve(h->mem_len, 4096);
	h->sum_mem = reserve(h->sum_len, total >= HUGE_PAGE ? HUGE_PAGE : 4096);
	if (!h->mem || !h->sum_mem) {
		hbm_destroy(h);
		return -ENOMEM;
	}
	h->lv[0] = (_Atomic uint64_t *)h->mem;
	for (k = 1; k < h->nlevels; k++)
		h->lv[k] = (_Atomic uint64_t *)((char *)h->sum_mem + off[k]);
	h->full = (_Atomic uint64_t *)((char *)h->sum_mem + off[h->nlevels]);
	return 0;
}

void hbm_destroy(struct hbm *h)
{
	if (h->mem)
		munmap(h->mem, h->mem_len);
	if (h->sum_mem)
		munmap(h->sum_mem, h->sum_len);
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

void hbm_lazy_clear_mask(struct hbm *h, unsigned int k, uint64_t w, uint64_t mask)
{
	for (; k < h->nlevels && mask; k++) {
		_Atomic uint64_t *p = &h->lv[k][w];
		uint64_t old = AND(p, ~mask), back = 0;

		/* A marker raced with us and may have seen its bit set. */
		for (uint64_t m = mask; m; m &= m - 1)
			if (below_nonzero(h, k, (w << 6) + (uint64_t)__builtin_ctzll(m)))
				back |= m & -m;
		if (back) {
			OR(p, back);
			return;
		}
		if (old & ~mask)
			return;
		mask = bit(w);
		w >>= 6;
	}
}

/*
 * Smallest set bit >= from at level k, using the levels above to skip
 * empty words. A claimer (repair) clears the summary bits it finds stale
 * on the way down; hbm_ahead.c's prefetcher only looks (it owns nothing,
 * so it may not clear).
 */
uint64_t hbm_find_from(struct hbm *h, unsigned int k, uint64_t from, bool repair)
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
		nw = hbm_find_from(h, k + 1, wi + 1, repair);
		if (nw == HBM_NONE)
			return HBM_NONE;
		v = LD(&h->lv[k][nw]);
		if (v)
			return (nw << 6) + (uint64_t)__builtin_ctzll(v);
		if (repair)
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
	return hbm_find_from(h, 3, from + 1, true);
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

void hbm_take_group_deferred(struct hbm *h, uint64_t g, uint64_t *chunks,
			     uint64_t *full)
{
	*chunks = hbm_take_chunks(h, g);
	*full = hbm_take_full(h, g, *chunks);
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
