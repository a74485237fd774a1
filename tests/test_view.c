/* SPDX-License-Identifier: MIT */
/*
 * test_view.c - single-threaded behaviour of the view: marking at word,
 * chunk, region and page-size edges, foreign bitmaps expanded and folded,
 * region add/remove, claiming, counts and statistics. Every test compares
 * what the view hands out with an independent page set kept by the test.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libdirty.h"
#include "testutil.h"

/* The expected side: one byte per page of a region. */
struct model {
	uint64_t gpa, len, page_size, npages;
	uint8_t *dirty;
};

static void model_init(struct model *m, uint64_t gpa, uint64_t len,
		       uint64_t ps)
{
	m->gpa = gpa;
	m->len = len;
	m->page_size = ps;
	m->npages = len / ps;
	m->dirty = calloc(m->npages, 1);
	ck_assert_ptr_nonnull(m->dirty);
}

/* Every page [gpa, gpa+len) touches, clipped to the region. */
static void model_mark(struct model *m, uint64_t gpa, uint64_t len)
{
	uint64_t s, e;

	if (!len || gpa >= m->gpa + m->len || gpa + len <= m->gpa)
		return;
	s = gpa < m->gpa ? 0 : (gpa - m->gpa) / m->page_size;
	e = gpa + len >= m->gpa + m->len ? m->npages :
		(gpa + len - m->gpa + m->page_size - 1) / m->page_size;
	memset(m->dirty + s, 1, e - s);
}

/*
 * Drain the view with runs of at most `max` and check, page by page, that
 * exactly the model's dirty pages come out, each once; clears the model.
 */
static uint64_t drain_and_compare(struct dirty_view *v, struct model *ms,
				  int nm, size_t max)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t total = 0;
	ssize_t n;

	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	ck_assert_uint_le(max, 64);
	while ((n = dirty_claim_next(cl, runs, max)) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			int hit = 0;

			for (int k = 0; k < nm; k++) {
				struct model *m = &ms[k];
				uint64_t p;

				if (runs[i].gpa < m->gpa || runs[i].gpa >= m->gpa + m->len)
					continue;
				hit = 1;
				ck_assert_msg(runs[i].gpa % m->page_size == 0 &&
					      runs[i].len % m->page_size == 0 &&
					      runs[i].len > 0 &&
					      runs[i].gpa + runs[i].len <= m->gpa + m->len,
					      "run [%#lx,+%#lx) is not pages of region %#lx",
					      runs[i].gpa, runs[i].len, m->gpa);
				for (p = (runs[i].gpa - m->gpa) / m->page_size;
				     p < (runs[i].gpa + runs[i].len - m->gpa) / m->page_size; p++) {
					if (m->dirty[p] != 1)
						ck_abort_msg("page %#lx claimed but %s",
							     m->gpa + p * m->page_size,
							     m->dirty[p] ? "claimed twice" : "never marked");
					m->dirty[p] = 2;
					total++;
				}
			}
			ck_assert_msg(hit, "run at %#lx is in no region", runs[i].gpa);
		}
	}
	ck_assert_int_eq(n, 0);
	for (int k = 0; k < nm; k++) {
		for (uint64_t p = 0; p < ms[k].npages; p++) {
			/* ck_abort only on failure: each ck_assert is a write to Check's log. */
			if (ms[k].dirty[p] == 1)
				ck_abort_msg("page %#lx marked but never claimed",
					     ms[k].gpa + p * ms[k].page_size);
			ms[k].dirty[p] = 0;
		}
	}
	/* Nothing left: a second pass finds nothing. */
	ck_assert_int_eq(dirty_claim_next(cl, runs, max), 0);
	dirty_claim_free(cl);
	return total;
}

static struct dirty_view *view_with(uint64_t gpa, uint64_t len, uint64_t ps)
{
	struct dirty_view *v;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, gpa, len, ps, 0), 0);
	return v;
}

START_TEST(mark_edges)
{
	/* 3 chunks + 100 pages: a short last chunk and a short last word. */
	const uint64_t base = 0x100000000ull, np = 3 * 4096 + 100;
	struct dirty_view *v = view_with(base, np * 4096, 4096);
	struct model m;
	static const uint64_t pages[] = { 0, 1, 62, 63, 64, 65, 127, 128, 4095,
					  4096, 4097, 8191, 8192, np - 37, np - 1 };

	model_init(&m, base, np * 4096, 4096);
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		dirty_view_mark(v, base + pages[i] * 4096, 4096);
		model_mark(&m, base + pages[i] * 4096, 4096);
	}
	ck_assert_uint_eq(drain_and_compare(v, &m, 1, 64), sizeof(pages) / sizeof(pages[0]));

	/* Partial pages round outward; ranges across word and chunk edges. */
	dirty_view_mark(v, base + 63 * 4096 + 17, 2);
	model_mark(&m, base + 63 * 4096 + 17, 2);
	dirty_view_mark(v, base + 4000 * 4096 + 5, 200 * 4096);
	model_mark(&m, base + 4000 * 4096 + 5, 200 * 4096);
	dirty_view_mark(v, base + 4095 * 4096, 4096 * 2);
	model_mark(&m, base + 4095 * 4096, 4096 * 2);
	drain_and_compare(v, &m, 1, 3);

	/* Ranges that stick out of the region on both sides. */
	dirty_view_mark(v, base - 8192, 3 * 4096);
	model_mark(&m, base - 8192, 3 * 4096);
	dirty_view_mark(v, base + np * 4096 - 4096, 1 << 20);
	model_mark(&m, base + np * 4096 - 4096, 1 << 20);
	drain_and_compare(v, &m, 1, 64);

	/* Zero length marks nothing. */
	dirty_view_mark(v, base, 0);
	drain_and_compare(v, &m, 1, 64);
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

START_TEST(full_chunks_and_mark_all)
{
	const uint64_t np = 5 * 4096 + 3;
	struct dirty_view *v = view_with(0, np * 4096, 4096);
	struct model m;
	struct dirty_run runs[4];
	struct dirty_claim *cl;
	uint64_t pages;

	model_init(&m, 0, np * 4096, 4096);
	/* Whole chunks take the "full" path; pages set before it merge in. */
	dirty_view_mark(v, 4096 * 4096 + 5 * 4096, 4096);
	dirty_view_mark(v, 4096 * 4096, 2 * 4096 * 4096);
	model_mark(&m, 4096 * 4096, 2 * 4096 * 4096);
	ck_assert_int_eq(dirty_view_count(v, &pages, NULL), 0);
	ck_assert_uint_eq(pages, 2 * 4096);
	drain_and_compare(v, &m, 1, 64);

	dirty_view_mark_all(v);
	model_mark(&m, 0, np * 4096);
	ck_assert_int_eq(dirty_view_count(v, &pages, NULL), 0);
	ck_assert_uint_eq(pages, np);
	/* A fully dirty region comes out as one run when it fits. */
	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 4), 1);
	ck_assert_uint_eq(runs[0].gpa, 0);
	ck_assert_uint_eq(runs[0].len, np * 4096);
	dirty_claim_free(cl);
	memset(m.dirty, 0, np);
	drain_and_compare(v, &m, 1, 64);
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

/* A foreign bitmap of nbits at gpa with page size fps, filled at random. */
static uint8_t *random_bitmap(uint64_t nbits, unsigned int permille,
			      unsigned int *seed)
{
	uint8_t *bm = calloc((nbits + 7) / 8 + 8, 1);

	ck_assert_ptr_nonnull(bm);
	for (uint64_t i = 0; i < nbits; i++)
		if ((unsigned int)rand_r(seed) % 1000 < permille)
			bm[i / 8] |= (uint8_t)(1u << (i % 8));
	/* Garbage past nbits must be ignored. */
	bm[nbits / 8] |= (uint8_t)(0xffu << (nbits % 8));
	return bm;
}

static void model_merge(struct model *m, uint64_t gpa, uint64_t fps,
			const uint8_t *bm, uint64_t nbits)
{
	for (uint64_t i = 0; i < nbits; i++)
		if (bm[i / 8] & (1u << (i % 8)))
			model_mark(m, gpa + i * fps, fps);
}

START_TEST(merge_same_size_unaligned)
{
	const uint64_t base = 1ull << 30, np = 2 * 4096 + 70;
	struct dirty_view *v = view_with(base, np * 4096, 4096);
	unsigned int seed = 7;
	struct model m;

	model_init(&m, base, np * 4096, 4096);
	/* Offsets that shift the foreign words against ours, including before the region. */
	static const int64_t offs[] = { 0, 1, 63, 64, 65, 4095, 4096, -3, -64, -100 };
	for (size_t k = 0; k < sizeof(offs) / sizeof(offs[0]); k++) {
		uint64_t nbits = 3000 + k * 777;
		uint64_t gpa = base + (uint64_t)(offs[k] * 4096);
		uint8_t *bm = random_bitmap(nbits, 300, &seed);

		ck_assert_int_eq(dirty_view_merge_bitmap(v, gpa, 4096, bm, nbits), 0);
		model_merge(&m, gpa, 4096, bm, nbits);
		drain_and_compare(v, &m, 1, 64);
		free(bm);
	}
	/* An all-ones bitmap covering whole chunks becomes "full" chunks. */
	{
		uint8_t *bm = malloc(np / 8 + 1);

		memset(bm, 0xff, np / 8 + 1);
		ck_assert_int_eq(dirty_view_merge_bitmap(v, base, 4096, bm, np), 0);
		model_mark(&m, base, np * 4096);
		ck_assert_uint_eq(drain_and_compare(v, &m, 1, 2), np);
		free(bm);
	}
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

START_TEST(merge_expand_and_fold)
{
	/*
	 * Region at 64 KiB pages, starting 64 KiB past a 2 MiB boundary so
	 * foreign 2 MiB pages straddle its ends; foreign bitmaps at 4 KiB
	 * (fold) and 2 MiB (expand).
	 */
	const uint64_t base = (3ull << 30) + (64 << 10), len = 512ull << 20, ps = 64 << 10;
	struct dirty_view *v = view_with(base, len, ps);
	unsigned int seed = 11;
	struct model m;

	model_init(&m, base, len, ps);
	{
		/* 4 KiB bits, starting 5 small pages before the region. */
		uint64_t nbits = (len / 4096) / 3, gpa = base - 5 * 4096;
		uint8_t *bm = random_bitmap(nbits, 5, &seed);

		ck_assert_int_eq(dirty_view_merge_bitmap(v, gpa, 4096, bm, nbits), 0);
		model_merge(&m, gpa, 4096, bm, nbits);
		drain_and_compare(v, &m, 1, 64);
		free(bm);
	}
	{
		/* 2 MiB bits sticking out of both ends of the region. */
		uint64_t fps = 2 << 20, gpa = (base & ~(fps - 1)) - 4 * fps, nbits = len / fps + 8;
		uint8_t *bm = random_bitmap(nbits, 400, &seed);

		bm[0] |= 0x30;	/* bits 4 and 5: straddling the region's start */
		bm[(len / fps + 4) / 8] |= (uint8_t)(1u << ((len / fps + 4) % 8));	/* its end */
		ck_assert_int_eq(dirty_view_merge_bitmap(v, gpa, fps, bm, nbits), 0);
		model_merge(&m, gpa, fps, bm, nbits);
		drain_and_compare(v, &m, 1, 64);
		free(bm);
	}
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

START_TEST(merge_rejects_bad_arguments)
{
	struct dirty_view *v = view_with(0, 1 << 20, 4096);
	uint8_t bm[8] = { 0xff };

	ck_assert_int_eq(dirty_view_merge_bitmap(v, 0, 4095, bm, 8), -EINVAL);
	ck_assert_int_eq(dirty_view_merge_bitmap(v, 0, 2048, bm, 8), -EINVAL);
	ck_assert_int_eq(dirty_view_merge_bitmap(v, 4096 * 3, 8192, bm, 8), -EINVAL);
	ck_assert_int_eq(dirty_view_merge_bitmap(v, 0, 4096, NULL, 8), -EINVAL);
	ck_assert_int_eq(dirty_view_merge_bitmap(v, UINT64_MAX & ~4095ull, 4096, bm, 64), -EINVAL);
	ck_assert_msg(strstr(dirty_last_error(), "wraps") != NULL,
		      "message: %s", dirty_last_error());
	dirty_view_free(v);
}
END_TEST

START_TEST(regions_add_remove)
{
	struct dirty_view *v;
	struct model m[3];
	struct dirty_view_stats st;
	struct dirty_region_stats rs;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, 1 << 30, 1 << 26, 0, 0), 0);
	ck_assert_int_eq(dirty_view_add_region(v, 0, 1 << 24, 4096, 0), 0);
	ck_assert_int_eq(dirty_view_add_region(v, 4ull << 30, 1 << 30, 2 << 20,
					       DIRTY_REGION_DIRTY), 0);
	/* Overlap, misalignment, bad page sizes. */
	ck_assert_int_eq(dirty_view_add_region(v, (1 << 30) + (1 << 25), 4096, 0, 0), -EEXIST);
	ck_assert_int_eq(dirty_view_add_region(v, (1 << 30) - 4096, 8192, 0, 0), -EEXIST);
	ck_assert_int_eq(dirty_view_add_region(v, 1 << 29, 4096 * 3, 8192, 0), -EINVAL);
	ck_assert_int_eq(dirty_view_add_region(v, 1 << 29, 4096, 12288, 0), -EINVAL);
	ck_assert_int_eq(dirty_view_add_region(v, 1 << 29, 0, 0, 0), -EINVAL);
	ck_assert_int_eq(dirty_view_add_region(v, 1 << 29, 4096, 0, 0x80), -EINVAL);
	ck_assert_int_eq(dirty_view_remove_region(v, 12345), -ENOENT);

	model_init(&m[0], 0, 1 << 24, 4096);
	model_init(&m[1], 1 << 30, 1 << 26, 4096);
	model_init(&m[2], 4ull << 30, 1 << 30, 2 << 20);
	model_mark(&m[2], 4ull << 30, 1 << 30);	/* added dirty */
	/* A range spanning a hole and two regions. */
	dirty_view_mark(v, (1 << 24) - 8192, (1ull << 30) - (1 << 24) + 3 * 8192);
	model_mark(&m[0], (1 << 24) - 8192, (1ull << 30) - (1 << 24) + 3 * 8192);
	model_mark(&m[1], (1 << 24) - 8192, (1ull << 30) - (1 << 24) + 3 * 8192);
	ck_assert_int_eq(dirty_view_stats(v, &st), 0);
	ck_assert_uint_eq(st.regions, 3);
	ck_assert_uint_eq(st.pages_outside, ((1ull << 30) - (1 << 24)) / 4096);
	drain_and_compare(v, m, 3, 7);

	/* Removing a region drops its bits; the others are untouched. */
	dirty_view_mark(v, 0, 4096);
	dirty_view_mark(v, 1 << 30, 4096);
	model_mark(&m[0], 0, 4096);
	ck_assert_int_eq(dirty_view_remove_region(v, 1 << 30), 0);
	ck_assert_int_eq(dirty_view_region_stats(v, 1 << 30, &rs), -ENOENT);
	drain_and_compare(v, m, 1, 64);
	ck_assert_int_eq(dirty_view_region_stats(v, 0, &rs), 0);
	ck_assert_uint_eq(rs.pages_claimed, 2 + 1);
	dirty_view_free(v);
	for (int k = 0; k < 3; k++)
		free(m[k].dirty);
}
END_TEST

/* Differential test: random operations against the model. */
START_TEST(random_against_model)
{
	const uint64_t b0 = 0, l0 = 300ull << 20, b1 = 1ull << 32, l1 = 64ull << 20;
	struct dirty_view *v;
	struct model m[2];
	unsigned int seed = 1234;
	int rounds = (int)(40 * test_scale()) + 5;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, b0, l0, 4096, 0), 0);
	ck_assert_int_eq(dirty_view_add_region(v, b1, l1, 16384, 0), 0);
	model_init(&m[0], b0, l0, 4096);
	model_init(&m[1], b1, l1, 16384);
	for (int r = 0; r < rounds; r++) {
		int ops = rand_r(&seed) % 50;

		for (int o = 0; o < ops; o++) {
			int which = rand_r(&seed) % 2;
			uint64_t base = which ? b1 : b0, len = which ? l1 : l0;
			uint64_t gpa = base + ((uint64_t)rand_r(&seed) % len) - 8192;
			uint64_t n = (uint64_t)rand_r(&seed) % (rand_r(&seed) % 4 == 0 ? 64 << 20 : 300000);

			if (rand_r(&seed) % 3 == 0) {
				uint64_t fps = 4096ull << (rand_r(&seed) % 10);
				uint64_t nbits = 1 + (uint64_t)rand_r(&seed) % 9000;
				uint8_t *bm = random_bitmap(nbits, (unsigned int)rand_r(&seed) % 1000, &seed);

				gpa &= ~(fps - 1);
				ck_assert_int_eq(dirty_view_merge_bitmap(v, gpa, fps, bm, nbits), 0);
				model_merge(&m[0], gpa, fps, bm, nbits);
				model_merge(&m[1], gpa, fps, bm, nbits);
				free(bm);
			} else {
				dirty_view_mark(v, gpa, n);
				model_mark(&m[0], gpa, n);
				model_mark(&m[1], gpa, n);
			}
		}
		drain_and_compare(v, m, 2, 1 + (size_t)(rand_r(&seed) % 64));
	}
	dirty_view_free(v);
	free(m[0].dirty);
	free(m[1].dirty);
}
END_TEST

/*
 * Batches through dirty_view_mark_ranges() (hbm_batch underneath: runs
 * gathered into word masks, the previous range's region tried first)
 * against the model: three regions, two of them back to back, a hole,
 * two page sizes; ranges unsorted, overlapping, empty, across region
 * edges and the hole, sticking out of the view. Page sets, per-region
 * marked counts and the pages outside must all match.
 */
START_TEST(batches_against_model)
{
	const uint64_t b0 = 0, l0 = 40ull << 20, b1 = l0, l1 = 24ull << 20;
	const uint64_t b2 = 1ull << 30, l2 = 64ull << 20;
	const uint64_t base[3] = { b0, b1, b2 }, len[3] = { l0, l1, l2 };
	const uint64_t ps[3] = { 4096, 16384, 4096 };
	uint64_t seed = 0x62617463ull, marked[3] = { 0 }, outside = 0;
	struct dirty_range rg[300];
	struct dirty_view *v;
	struct model m[3];
	int rounds = (int)(30 * test_scale()) + 4;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	for (int k = 0; k < 3; k++) {
		ck_assert_int_eq(dirty_view_add_region(v, base[k], len[k], ps[k], 0), 0);
		model_init(&m[k], base[k], len[k], ps[k]);
	}
	for (int r = 0; r < rounds; r++) {
		size_t n = (size_t)test_below(&seed, 300);
		uint64_t at = test_below(&seed, b2 + l2);

		for (size_t i = 0; i < n; i++) {
			uint64_t gpa, l;

			switch (test_below(&seed, 5)) {
			case 0:		/* anywhere, maybe across edges, the hole or the end */
				gpa = test_below(&seed, b2 + l2 + (1 << 20));
				l = test_below(&seed, 1ull << (12 + test_below(&seed, 16)));
				break;
			case 1:		/* straddling the edge between regions 0 and 1 */
				gpa = b1 - test_below(&seed, 1 << 16);
				l = test_below(&seed, 1 << 17);
				break;
			default:	/* near the previous range: what batching is for */
				gpa = at;
				l = 1 + test_below(&seed, 4 * 4096);
				break;
			}
			at = (test_below(&seed, 8) ? at + test_below(&seed, 1 << 18) :
			      test_below(&seed, b2 + l2)) % (b2 + l2);
			rg[i].gpa = gpa;
			rg[i].len = l;
			if (!l)
				continue;
			/* What the view counts: pages per region, bytes per gap piece. */
			for (int k = 0; k < 3; k++) {
				uint64_t s0 = gpa > base[k] ? gpa : base[k];
				uint64_t e0 = gpa + l < base[k] + len[k] ? gpa + l : base[k] + len[k];

				if (s0 < e0)
					marked[k] += (e0 - base[k] + ps[k] - 1) / ps[k] - (s0 - base[k]) / ps[k];
				model_mark(&m[k], gpa, l);
			}
			{
				uint64_t e = gpa + l, g = gpa;

				for (int k = 0; k < 3 && g < e; k++) {
					if (base[k] + len[k] <= g)
						continue;
					if (base[k] >= e)
						break;
					if (base[k] > g)
						outside += (base[k] - g + 4095) / 4096;
					g = base[k] + len[k];
				}
				if (g < e)
					outside += (e - g + 4095) / 4096;
			}
		}
		ck_assert_int_eq(dirty_view_mark_ranges(v, rg, n), 0);
		if (test_below(&seed, 3))
			continue;	/* overlapping batches before a drain */
		drain_and_compare(v, m, 3, 1 + (size_t)test_below(&seed, 64));
	}
	drain_and_compare(v, m, 3, 64);
	for (int k = 0; k < 3; k++) {
		struct dirty_region_stats rs;

		ck_assert_int_eq(dirty_view_region_stats(v, base[k], &rs), 0);
		ck_assert_msg(rs.pages_marked == marked[k], "region %d: %lu pages marked, expected %lu",
			      k, rs.pages_marked, marked[k]);
	}
	{
		struct dirty_view_stats st;

		ck_assert_int_eq(dirty_view_stats(v, &st), 0);
		ck_assert_uint_eq(st.pages_outside, outside);
	}
	dirty_view_free(v);
	for (int k = 0; k < 3; k++)
		free(m[k].dirty);
}
END_TEST

/*
 * Foreign bitmaps word aligned with whole chunks take the fast path
 * (a SIMD scan in 8-word blocks, all-clear chunks skipped, all-set ones
 * one "full" bit). Chunks built to trip each shortcut: empty; full;
 * full but for one word (odd or even); one bit in each block position;
 * random. Pages and the marked count must match exactly.
 */
START_TEST(merge_aligned_chunks)
{
	const uint64_t np = 40 * 4096, gpa = 1ull << 32;
	struct dirty_view *v = view_with(gpa, np * 4096, 4096);
	uint64_t *bm = calloc(np / 64, 8), seed = 0x6d657267ull, want = 0;
	struct dirty_region_stats rs;
	struct model m;

	ck_assert_ptr_nonnull(bm);
	model_init(&m, gpa, np * 4096, 4096);
	for (uint64_t c = 0; c < 40; c++) {
		uint64_t *w = bm + c * 64;

		switch (c % 8) {
		case 0:
			break;
		case 1:
			memset(w, 0xff, 512);
			break;
		case 2:		/* all set but one word: no full bit */
		case 3:
			memset(w, 0xff, 512);
			w[test_below(&seed, 32) * 2 + c % 2] = ~(1ull << test_below(&seed, 64));
			break;
		case 4:		/* one bit in block c / 8 % 8 only */
			w[(c / 8 % 8) * 8 + test_below(&seed, 8)] = 1ull << test_below(&seed, 64);
			break;
		case 5:		/* one bit in every block, at word 7 of it */
			for (int b = 0; b < 8; b++)
				w[b * 8 + 7] = 1ull << 63;
			break;
		default:
			for (int j = 0; j < 64; j++)
				w[j] = test_below(&seed, 3) ? 0 : test_rnd(&seed) & test_rnd(&seed);
			break;
		}
	}
	for (uint64_t p = 0; p < np; p++)
		if (bm[p / 64] >> (p % 64) & 1) {
			model_mark(&m, gpa + p * 4096, 4096);
			want++;
		}
	ck_assert_int_eq(dirty_view_merge_bitmap(v, gpa, 4096, bm, np), 0);
	ck_assert_int_eq(dirty_view_region_stats(v, gpa, &rs), 0);
	ck_assert_uint_eq(rs.pages_marked, want);
	ck_assert_uint_eq(drain_and_compare(v, &m, 1, 1 + (size_t)test_below(&seed, 64)), want);
	dirty_view_free(v);
	free(m.dirty);
	free(bm);
}
END_TEST

/*
 * Consecutive full chunks go out as one run per block (the claim takes
 * the whole block at once and consumes the page bits set under it);
 * with a run array of one, and with dirty_claim_release() in the middle
 * of the block's hand-out, every page still comes out exactly once.
 */
START_TEST(full_blocks_once)
{
	const uint64_t np = 70 * 4096 + 100;	/* a short last chunk */
	struct dirty_view *v = view_with(0, np * 4096, 4096);
	struct dirty_claim *cl;
	struct dirty_run run[2];
	struct model m;

	model_init(&m, 0, np * 4096, 4096);
	/* Blocks [2, 5), [6, 7), [60, end) with page bits under and between them. */
	dirty_view_mark(v, 3 * 4096 * 4096 + 7 * 4096, 4096);
	dirty_view_mark(v, 2 * 4096 * 4096, 3 * 4096 * 4096);
	dirty_view_mark(v, 5 * 4096 * 4096 + 9 * 4096, 4096);
	dirty_view_mark(v, 6 * 4096 * 4096, 4096 * 4096);
	dirty_view_mark(v, 62 * 4096 * 4096 + 1, 4096);
	dirty_view_mark(v, 60 * 4096 * 4096, (np - 60 * 4096) * 4096);
	model_mark(&m, 2 * 4096 * 4096, 3 * 4096 * 4096);
	model_mark(&m, 5 * 4096 * 4096 + 9 * 4096, 4096);
	model_mark(&m, 6 * 4096 * 4096, 4096 * 4096);
	model_mark(&m, 60 * 4096 * 4096, (np - 60 * 4096) * 4096);
	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	ck_assert_int_eq(dirty_claim_next(cl, run, 1), 1);
	ck_assert_uint_eq(run[0].gpa, 2 * 4096 * 4096);
	ck_assert_uint_eq(run[0].len, 3ull * 4096 * 4096);	/* one run for the block */
	/* The page between the blocks, then release with [6, 7) half way. */
	ck_assert_int_eq(dirty_claim_next(cl, run, 1), 1);
	ck_assert_uint_eq(run[0].gpa, 5 * 4096 * 4096 + 9 * 4096);
	dirty_claim_release(cl);
	model_mark(&m, 2 * 4096 * 4096, 0);
	memset(m.dirty + 2 * 4096, 0, 3 * 4096);
	m.dirty[5 * 4096 + 9] = 0;
	drain_and_compare(v, &m, 1, 1);
	dirty_claim_free(cl);
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

/*
 * A dense view splits among claimers: one call hands out about 8 GiB of
 * pages at most (full chunks join into one run, and without the bound the
 * first claimer would take the whole view), and a second cursor, which
 * starts half way into the region, finds the rest. Every page once.
 */
START_TEST(dense_view_splits_among_claimers)
{
	const uint64_t np = 24ull << 18;	/* 24 groups of 4 KiB pages: 24 GiB */
	struct dirty_view *v = view_with(0, np * 4096, 4096);
	struct dirty_claim *cl[2];
	struct dirty_run runs[4];
	uint64_t got[2] = { 0, 0 };
	uint8_t *seen = calloc(np, 1);
	bool more = true;

	ck_assert_ptr_nonnull(seen);
	ck_assert_int_eq(dirty_view_mark_all(v), 0);
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(dirty_claim_new(v, &cl[k]), 0);
	while (more) {
		more = false;
		for (int k = 0; k < 2; k++) {
			ssize_t n = dirty_claim_next(cl[k], runs, 4);
			uint64_t pages = 0;

			ck_assert_int_ge(n, 0);
			for (ssize_t i = 0; i < n; i++) {
				for (uint64_t p = runs[i].gpa / 4096; p < (runs[i].gpa + runs[i].len) / 4096; p++) {
					if (seen[p]++)
						ck_abort_msg("page %lu handed out twice", p);
				}
				pages += runs[i].len / 4096;
			}
			ck_assert_msg(pages <= (9ull << 18), "one call handed out %lu pages", pages);
			got[k] += pages;
			more |= n > 0;
		}
	}
	ck_assert_uint_eq(got[0] + got[1], np);
	ck_assert_msg(got[0] && got[1], "one claimer took everything (%lu, %lu)", got[0], got[1]);
	for (int k = 0; k < 2; k++)
		dirty_claim_free(cl[k]);
	dirty_view_free(v);
	free(seen);
}
END_TEST

START_TEST(claim_release_gives_back)
{
	const uint64_t np = 3 * 4096;
	struct dirty_view *v = view_with(0, np * 4096, 4096);
	struct dirty_claim *cl;
	struct dirty_run run;
	struct model m;

	model_init(&m, 0, np * 4096, 4096);
	for (uint64_t p = 0; p < 4096; p += 3)
		dirty_view_mark(v, p * 4096, 4096);
	dirty_view_mark(v, 4096 * 4096, 2 * 4096 * 4096);	/* two full chunks */
	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	/* Take the first 10 single-page runs, then give the rest back. */
	for (int i = 0; i < 10; i++) {
		ck_assert_int_eq(dirty_claim_next(cl, &run, 1), 1);
		ck_assert_uint_eq(run.gpa, (uint64_t)i * 3 * 4096);
	}
	dirty_claim_release(cl);
	for (uint64_t p = 30; p < 4096; p += 3)
		model_mark(&m, p * 4096, 4096);
	model_mark(&m, 4096 * 4096, 2 * 4096 * 4096);
	drain_and_compare(v, &m, 1, 64);

	/* Free releases too: a sparse chunk half handed out, two full chunks untouched. */
	for (uint64_t p = 0; p < 4096; p += 2)
		dirty_view_mark(v, p * 4096, 4096);
	dirty_view_mark(v, 4096 * 4096, 2 * 4096 * 4096);
	ck_assert_int_eq(dirty_claim_next(cl, &run, 1), 1);
	ck_assert_uint_eq(run.gpa, 0);
	ck_assert_uint_eq(run.len, 4096);
	dirty_claim_free(cl);
	for (uint64_t p = 2; p < 4096; p += 2)
		model_mark(&m, p * 4096, 4096);
	model_mark(&m, 4096 * 4096, 2 * 4096 * 4096);
	drain_and_compare(v, &m, 1, 64);
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

/* ---- sources ------------------------------------------------------------- */

struct fake {
	int fail_sync;		/* -errno to return from the next sync */
	uint64_t mark_gpa;	/* a page to report on each sync */
	int starts, stops, syncs, finals, destroyed;
};

static int fake_start(struct dirty_source *s)
{
	((struct fake *)dirty_source_priv(s))->starts++;
	return 0;
}

static int fake_stop(struct dirty_source *s)
{
	((struct fake *)dirty_source_priv(s))->stops++;
	return 0;
}

static int fake_sync(struct dirty_source *s)
{
	struct fake *f = dirty_source_priv(s);
	int err = f->fail_sync;

	f->syncs++;
	f->fail_sync = 0;
	if (err)
		return err;
	return dirty_source_mark(s, f->mark_gpa, 4096);
}

static int fake_final(struct dirty_source *s)
{
	((struct fake *)dirty_source_priv(s))->finals++;
	return fake_sync(s);
}

static void fake_destroy(struct dirty_source *s)
{
	((struct fake *)dirty_source_priv(s))->destroyed++;
}

static const struct dirty_source_ops fake_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "fake",
	.start = fake_start,
	.stop = fake_stop,
	.sync = fake_sync,
	.final = fake_final,
	.destroy = fake_destroy,
};

START_TEST(source_error_means_all_dirty)
{
	struct dirty_view *v = view_with(0, 64 << 20, 4096);
	struct dirty_range r[2] = { { 1 << 20, 1 << 20 }, { 8 << 20, 12288 } };
	struct fake f = { .mark_gpa = 5 * 4096 };
	struct dirty_source *s;
	struct dirty_source_stats st;
	struct model m;

	model_init(&m, 0, 64 << 20, 4096);
	ck_assert_int_eq(dirty_source_attach(v, &fake_ops, &f, r, 2, &s), 0);
	ck_assert_int_eq(dirty_view_start(v), 0);
	ck_assert_int_eq(f.starts, 1);

	ck_assert_int_eq(dirty_view_sync(v), 0);
	model_mark(&m, 5 * 4096, 4096);
	drain_and_compare(v, &m, 1, 64);

	/* A failed sync marks every page the source covers and says so. */
	f.fail_sync = -EIO;
	ck_assert_int_eq(dirty_view_sync(v), -EIO);
	ck_assert_msg(strstr(dirty_last_error(), "fake") && strstr(dirty_last_error(), "marked dirty"),
		      "message: %s", dirty_last_error());
	model_mark(&m, r[0].gpa, r[0].len);
	model_mark(&m, r[1].gpa, r[1].len);
	drain_and_compare(v, &m, 1, 64);
	ck_assert_int_eq(dirty_source_stats(s, &st), 0);
	ck_assert_uint_eq(st.errors, 1);
	ck_assert_int_eq(st.last_error, -EIO);
	ck_assert_uint_eq(st.syncs, 2);

	/* A positive return is a broken contract, treated as an error. */
	f.fail_sync = 5;
	ck_assert_int_eq(dirty_view_sync(v), -EPROTO);
	model_mark(&m, r[0].gpa, r[0].len);
	model_mark(&m, r[1].gpa, r[1].len);
	drain_and_compare(v, &m, 1, 64);

	/* Final uses the final callback, and its errors follow the same rule. */
	f.fail_sync = -ENODEV;
	ck_assert_int_eq(dirty_view_final(v), -ENODEV);
	ck_assert_int_eq(f.finals, 1);
	model_mark(&m, r[0].gpa, r[0].len);
	model_mark(&m, r[1].gpa, r[1].len);
	drain_and_compare(v, &m, 1, 64);

	ck_assert_int_eq(dirty_view_stop(v), 0);
	ck_assert_int_eq(f.stops, 1);
	dirty_source_detach(s);
	ck_assert_int_eq(f.destroyed, 1);
	ck_assert_int_eq(f.stops, 1);	/* already stopped: not stopped twice */
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

START_TEST(source_attach_checks_ops)
{
	struct dirty_view *v = view_with(0, 1 << 20, 4096);
	struct dirty_source_ops bad = fake_ops;
	struct dirty_source *s;

	bad.version = 99;
	ck_assert_int_eq(dirty_source_attach(v, &bad, NULL, NULL, 0, &s), -EINVAL);
	ck_assert_msg(strstr(dirty_last_error(), "version") != NULL, "%s", dirty_last_error());
	bad.version = DIRTY_SOURCE_OPS_VERSION;
	bad.precision = 0;
	ck_assert_int_eq(dirty_source_attach(v, &bad, NULL, NULL, 0, &s), -EINVAL);
	dirty_view_free(v);
}
END_TEST

START_TEST(memsrc_and_stats)
{
	struct dirty_view *v = view_with(1 << 30, 256 << 20, 4096);
	struct dirty_source *s;
	struct dirty_source_stats st;
	struct dirty_region_stats rs;
	struct model m;

	model_init(&m, 1 << 30, 256 << 20, 4096);
	ck_assert_int_eq(dirty_memsrc_new(v, 1 << 30, 128 << 20, 4096, &s), 0);
	ck_assert_int_eq(dirty_memsrc_mark(s, (1 << 30) + 4096 * 7, 4096 * 100), 0);
	ck_assert_int_eq(dirty_memsrc_mark(s, (1 << 30) + (16 << 20), 32 << 20), 0);
	ck_assert_int_eq(dirty_memsrc_mark(s, (1 << 30) + (128 << 20), 4096), -ERANGE);
	/* Marked in the source, not yet in the view. */
	drain_and_compare(v, &m, 1, 64);
	ck_assert_int_eq(dirty_view_sync(v), 0);
	model_mark(&m, (1 << 30) + 4096 * 7, 4096 * 100);
	model_mark(&m, (1 << 30) + (16 << 20), 32 << 20);
	drain_and_compare(v, &m, 1, 64);
	ck_assert_int_eq(dirty_source_stats(s, &st), 0);
	ck_assert_uint_eq(st.last_sync_pages, 100 + 8192);
	ck_assert_uint_eq(st.pages_marked, 100 + 8192);
	ck_assert_int_eq(dirty_view_region_stats(v, (1 << 30) + 5, &rs), 0);
	ck_assert_uint_eq(rs.pages_marked, 100 + 8192);
	ck_assert_uint_eq(rs.pages_claimed, 100 + 8192);
	/* An empty sync reports nothing new. */
	ck_assert_int_eq(dirty_view_sync(v), 0);
	ck_assert_int_eq(dirty_source_stats(s, &st), 0);
	ck_assert_uint_eq(st.last_sync_pages, 0);
	ck_assert_int_eq(dirty_view_region_stats(v, 1 << 30, &rs), 0);
	ck_assert(rs.dirty_rate == 0.0);
	dirty_view_free(v);
	free(m.dirty);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("view");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, mark_edges);
	tcase_add_test(tc, full_chunks_and_mark_all);
	tcase_add_test(tc, merge_same_size_unaligned);
	tcase_add_test(tc, merge_expand_and_fold);
	tcase_add_test(tc, merge_rejects_bad_arguments);
	tcase_add_test(tc, regions_add_remove);
	tcase_add_test(tc, random_against_model);
	tcase_add_test(tc, batches_against_model);
	tcase_add_test(tc, merge_aligned_chunks);
	tcase_add_test(tc, full_blocks_once);
	tcase_add_test(tc, dense_view_splits_among_claimers);
	tcase_add_test(tc, claim_release_gives_back);
	tcase_add_test(tc, source_error_means_all_dirty);
	tcase_add_test(tc, source_attach_checks_ops);
	tcase_add_test(tc, memsrc_and_stats);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
