/* SPDX-License-Identifier: MIT */
/*
 * merge.c - foreign little-endian bitmaps (KVM, VFIO, the guest protocol)
 * ORed into the view: word-wise at the same page size and any alignment,
 * expanded or folded at another page size.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* ---- foreign bitmaps ---------------------------------------------------- */

/* Bits [64q, 64q + 64) of a foreign bitmap of nbits bits (zero outside). */
static uint64_t foreign_word(const uint8_t *bm, uint64_t nbits, int64_t q)
{
	uint64_t v = 0, nbytes = (nbits + 7) / 8, b;

	if (q < 0 || (uint64_t)q * 64 >= nbits)
		return 0;
	b = (uint64_t)q * 8;
	if (b + 8 <= nbytes) {
		memcpy(&v, bm + b, 8);
		v = le64toh(v);
	} else {
		for (uint64_t k = 0; b + k < nbytes; k++)
			v |= (uint64_t)bm[b + k] << (8 * k);
	}
	if (nbits - (uint64_t)q * 64 < 64)
		v &= (1ull << (nbits - (uint64_t)q * 64)) - 1;
	return v;
}

/* 64 foreign bits starting at bit pos (which may be negative). */
static uint64_t foreign_bits(const uint8_t *bm, uint64_t nbits, int64_t pos)
{
	int64_t q = pos >= 0 ? pos / 64 : -((-pos + 63) / 64);
	unsigned int s = (unsigned int)(pos - q * 64);
	uint64_t lo = foreign_word(bm, nbits, q);

	if (!s)
		return lo;
	return (lo >> s) | (foreign_word(bm, nbits, q + 1) << (64 - s));
}

/*
 * Chunk-aligned, whole-chunk source words of chunk c, or NULL when the
 * fast path does not apply (the source is not word aligned with the
 * chunk, or does not cover all of it).
 */
static const uint8_t *chunk_src(const uint8_t *bm, uint64_t nbits, int64_t fbit)
{
	if (fbit < 0 || fbit & 63 || (uint64_t)fbit + HBM_CHUNK_PAGES > nbits)
		return NULL;
	return bm + (uint64_t)fbit / 8;
}

/* Two words at a time with the baseline SIMD every x86-64 (and arm64) has. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));

/*
 * 0: all 64 words clear, 2: all set, 1: some; *blocks gets one bit per
 * 8-word block holding a set bit. A sparse bitmap is mostly empty
 * chunks, and this scan, at memory bandwidth, is all they cost.
 */
static int chunk_kind(const uint8_t *src, unsigned int *blocks)
{
	v2u64 all = { ~0ull, ~0ull };
	unsigned int bl = 0;

	for (unsigned int b = 0; b < 8; b++) {
		v2u64 any = { 0, 0 }, v;

		for (unsigned int k = 0; k < 4; k++) {
			memcpy(&v, src + b * 64 + k * 16, 16);
			any |= v;
			all &= v;
		}
		bl |= (unsigned int)((any[0] | any[1]) != 0) << b;
	}
	*blocks = bl;
	return (all[0] & all[1]) == ~0ull ? 2 : bl ? 1 : 0;
}

/* A chunk's source, scanned ahead of its merge. */
struct scan {
	const uint8_t *src;	/* NULL: not the fast path */
	int kind;		/* chunk_kind() */
	unsigned int blocks;
};

/* Chunks scanned ahead: their view lines are fetched while earlier ones merge. */
#define MERGE_AHEAD 8

static void scan_chunk(struct region *r, const uint8_t *bm, uint64_t nbits, int64_t off,
		       uint64_t p0, uint64_t p1, uint64_t c, struct scan *s)
{
	uint64_t base = c * HBM_CHUNK_PAGES, npg = hbm_chunk_pages(&r->bm, c);

	s->src = NULL;
	/* The common case: a whole chunk, word aligned with the source. */
	if (npg == HBM_CHUNK_PAGES && base >= p0 && base + npg <= p1)
		s->src = chunk_src(bm, nbits, (int64_t)base - off);
	if (!s->src)
		return;
	s->kind = chunk_kind(s->src, &s->blocks);
	/* A sparse bitmap's chunks lie far apart in the view: fetch early. */
	if (s->kind == 1)
		hbm_prefetch_lines(&r->bm, c, s->blocks);
}

/* Same page size: word-level OR of region pages [p0, p1), one batch. */
static uint64_t merge_same(struct region *r, const uint8_t *bm, uint64_t nbits,
			   int64_t off, uint64_t p0, uint64_t p1)
{
	uint64_t words[HBM_CHUNK_WORDS], total = 0;
	uint64_t c, c0 = p0 / HBM_CHUNK_PAGES, c1 = (p1 - 1) / HBM_CHUNK_PAGES, next = c0;
	struct scan ring[MERGE_AHEAD];
	struct hbm_batch b;

	hbm_batch_init(&b);
	for (c = c0; c <= c1; c++) {
		uint64_t base = c * HBM_CHUNK_PAGES, npg = hbm_chunk_pages(&r->bm, c);
		unsigned int j, nw = (unsigned int)((npg + 63) / 64);
		const struct scan *sc = &ring[c % MERGE_AHEAD];
		const uint8_t *src;
		uint64_t n = 0, wmask = 0;

		for (; next <= c1 && next < c + MERGE_AHEAD; next++)
			scan_chunk(r, bm, nbits, off, p0, p1, next, &ring[next % MERGE_AHEAD]);
		src = sc->src;
		if (src) {
			unsigned int blocks = sc->blocks;
			int kind = sc->kind;

			if (kind == 0)
				continue;
			if (kind == 2) {
				hbm_batch_add(&r->bm, &b, base, npg);	/* one "full" bit */
				total += npg;
				continue;
			}
			for (; blocks; blocks &= blocks - 1) {
				unsigned int j0 = 8 * (unsigned int)__builtin_ctz(blocks);

				for (j = j0; j < j0 + 8; j++) {
					memcpy(&words[j], src + j * 8, 8);
					words[j] = le64toh(words[j]);
					wmask |= (uint64_t)(words[j] != 0) << j;
				}
			}
		} else {
			for (j = 0; j < nw; j++) {
				uint64_t pg = base + (uint64_t)j * 64, m = ~0ull;

				if (pg + 64 <= p0 || pg >= p1) {
					m = 0;
				} else {
					if (pg < p0)
						m &= ~0ull << (p0 - pg);
					if (pg + 64 > p1)
						m &= (1ull << (p1 - pg)) - 1;
				}
				words[j] = m ? foreign_bits(bm, nbits, (int64_t)pg - off) & m : 0;
				wmask |= (uint64_t)(words[j] != 0) << j;
			}
		}
		n = hbm_popcount_words(words, wmask);
		if (n == npg)
			hbm_batch_add(&r->bm, &b, base, npg);
		else
			hbm_batch_or_chunk(&r->bm, &b, c, words, wmask);
		total += n;
	}
	hbm_batch_flush(&r->bm, &b);
	return total;
}

/* Other page size: expand or fold each run of set bits. */
static uint64_t merge_runs(struct region *r, const uint8_t *bm, uint64_t nbits,
			   uint64_t gpa, unsigned int fshift, uint64_t b0,
			   uint64_t b1)
{
	uint64_t total = 0, q;

	for (q = b0 / 64; q * 64 < b1; q++) {
		uint64_t v = foreign_word(bm, nbits, (int64_t)q);

		if (q * 64 < b0)
			v &= ~0ull << (b0 - q * 64);
		if (b1 - q * 64 < 64)
			v &= (1ull << (b1 - q * 64)) - 1;
		while (v) {
			unsigned int s = (unsigned int)__builtin_ctzll(v);
			uint64_t rest = ~(v >> s), n, first, last, a, e;

			n = rest ? (uint64_t)__builtin_ctzll(rest) : 64 - s;
			a = gpa + ((q * 64 + s) << fshift);
			e = a + (n << fshift);
			/* A large foreign page may stick out of the region. */
			if (a < r->gpa)
				a = r->gpa;
			if (e > r->gpa + r->len)
				e = r->gpa + r->len;
			first = (a - r->gpa) >> r->page_shift;
			last = (e - r->gpa + r->page_size - 1) >> r->page_shift;
			hbm_mark(&r->bm, first, last - first);
			total += last - first;
			v &= n + s >= 64 ? 0 : ~0ull << (s + n);
		}
	}
	return total;
}

uint64_t __dirty_merge_in(struct dirty_view *view, const struct region_table *t,
			  uint64_t gpa, uint64_t page_size, const void *bitmap,
			  uint64_t nbits)
{
	unsigned int fshift = (unsigned int)__builtin_ctzll(page_size);
	uint64_t end = gpa + (nbits << fshift), total = 0, covered = 0;

	for (size_t i = __dirty_table_lower(t, gpa); i < t->n; i++) {
		struct region *r = t->r[i];
		uint64_t s, e, n;

		if (r->gpa >= end)
			break;
		s = gpa > r->gpa ? gpa : r->gpa;
		e = end < r->gpa + r->len ? end : r->gpa + r->len;
		covered += e - s;
		if (page_size == r->page_size) {
			int64_t off = (int64_t)((gpa >> fshift) - (r->gpa >> fshift));

			n = merge_same(r, bitmap, nbits, off,
				       (s - r->gpa) >> fshift,
				       (e - r->gpa) >> fshift);
		} else {
			n = merge_runs(r, bitmap, nbits, gpa, fshift,
				       (s - gpa) >> fshift,
				       (e - gpa + page_size - 1) >> fshift);
		}
		atomic_fetch_add_explicit(&r->marked, n, memory_order_relaxed);
		total += n;
	}
	/* Bits in no region are not tracked; count them so it shows. */
	if (covered < end - gpa) {
		uint64_t outside = 0;

		for (uint64_t q = 0; q * 64 < nbits; q++) {
			uint64_t v = foreign_word(bitmap, nbits, (int64_t)q);

			while (v) {
				uint64_t a = gpa + ((q * 64 +
					(uint64_t)__builtin_ctzll(v)) << fshift);

				if (!__dirty_table_find(t, a))
					outside++;
				v &= v - 1;
			}
		}
		__dirty_count_outside(view, outside << fshift);
	}
	return total;
}

int __dirty_merge_check(uint64_t gpa, uint64_t page_size,
			const void *bitmap, uint64_t nbits)
{
	if (!__dirty_is_pow2(page_size) || page_size < DIRTY_MIN_PAGE_SIZE)
		return __dirty_err(-EINVAL, "bitmap page size %#llx must be a power of two >= 4 KiB",
				   (unsigned long long)page_size);
	if (gpa & (page_size - 1))
		return __dirty_err(-EINVAL, "bitmap base %#llx is not aligned to its page size %#llx",
				   (unsigned long long)gpa, (unsigned long long)page_size);
	if (nbits && !bitmap)
		return __dirty_err(-EINVAL, "NULL bitmap with %llu bits",
				   (unsigned long long)nbits);
	if (nbits > (UINT64_MAX - gpa) >> __builtin_ctzll(page_size))
		return __dirty_err(-EINVAL, "bitmap of %llu pages at %#llx wraps the address space",
				   (unsigned long long)nbits, (unsigned long long)gpa);
	return 0;
}

int __dirty_merge_checked(struct dirty_view *view, uint64_t gpa,
			  uint64_t page_size, const void *bitmap,
			  uint64_t nbits, uint64_t *marked)
{
	int err = __dirty_merge_check(gpa, page_size, bitmap, nbits);

	if (err)
		return err;
	__dirty_rcu_lock();
	*marked = __dirty_merge_in(view, atomic_load_explicit(&view->table, memory_order_acquire), gpa, page_size,
				       bitmap, nbits);
	__dirty_rcu_unlock();
	return 0;
}

DIRTY_API int dirty_view_merge_bitmap(struct dirty_view *view, uint64_t gpa,
				      uint64_t page_size, const void *bitmap,
				      uint64_t nbits)
{
	uint64_t marked;

	return __dirty_merge_checked(view, gpa, page_size, bitmap, nbits,
				     &marked);
}

