/* SPDX-License-Identifier: MIT */
/*
 * test_hbm.c - white-box tests of the hierarchical bitmap (libdirty/hbm.c):
 * interleavings of markers and claimers that the concurrent stress suite
 * hits only by luck, replayed here step by step through the steps
 * hbm_take_group() is made of (hbm_take_chunks, hbm_take_full,
 * hbm_lazy_clear). Each test names the line of reasoning in hbm.h it pins
 * down; each fails if that reasoning is dropped from the code.
 *
 * Geometry: three groups (3 x 64 chunks of 4096 pages), so there are four
 * levels and group 1 is reached only through the level-3 summary.
 *
 * The batch tests compare hbm_batch (marks gathered into word masks, the
 * summaries written when the batch moves on) with what single marks
 * give, and check the reachability invariant after every flush.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hbm_mark.h"
#include "testutil.h"

#define GROUPS 3
#define NPAGES ((uint64_t)GROUPS * 64 * HBM_CHUNK_PAGES)

/* Pages handed out per page, by claims of the chunks a claimer owns. */
static void claim_owned(struct hbm *h, uint64_t g, uint64_t chunks, uint64_t full,
			uint8_t *got)
{
	for (uint64_t m = chunks | full; m; m &= m - 1) {
		uint64_t c = g * 64 + (uint64_t)__builtin_ctzll(m), wmask;
		uint64_t words[HBM_CHUNK_WORDS];
		bool isfull = full >> (c & 63) & 1;

		hbm_claim_chunk(h, c, isfull, words, &wmask);
		if (isfull) {
			for (uint64_t p = 0; p < hbm_chunk_pages(h, c); p++)
				got[c * HBM_CHUNK_PAGES + p]++;
			continue;
		}
		for (; wmask; wmask &= wmask - 1) {
			unsigned int j = (unsigned int)__builtin_ctzll(wmask);

			for (uint64_t v = words[j]; v; v &= v - 1)
				got[c * HBM_CHUNK_PAGES + j * 64 + (uint64_t)__builtin_ctzll(v)]++;
		}
	}
}

/* Drain everything left, as one claimer. */
static void drain(struct hbm *h, uint8_t *got)
{
	uint64_t g = 0;

	while ((g = hbm_find_group(h, g)) != HBM_NONE) {
		uint64_t chunks, full;

		hbm_take_group(h, g, &chunks, &full);
		claim_owned(h, g, chunks, full, got);
		g++;
	}
}

static void setup(struct hbm *h, uint8_t **got)
{
	ck_assert_int_eq(hbm_init(h, NPAGES), 0);
	ck_assert_uint_eq(h->nlevels, 4);
	*got = calloc(NPAGES, 1);
	ck_assert_ptr_nonnull(*got);
}

/*
 * hbm.h, "Ownership of a chunk is its level-2 bit": a chunk with a page
 * marked on its own and the whole chunk marked full, drained after the
 * marks: every page is handed out exactly once (the full claim consumes
 * the page bit under it). Claimer A exchanges the group's level-2 word,
 * claimer B comes between A's two steps, then A takes the full bits.
 * Before the fix B found the group through its full word alone and took
 * the full bit of A's chunk: A handed out the page bit, B the whole chunk,
 * page 5 twice.
 */
START_TEST(full_bit_follows_level2_owner)
{
	struct hbm h;
	uint8_t *got;
	uint64_t c = 70, a_chunks, a_full, b_chunks = 0, b_full = 0, g;

	setup(&h, &got);
	hbm_mark(&h, c * HBM_CHUNK_PAGES + 5, 1);
	hbm_mark(&h, c * HBM_CHUNK_PAGES, HBM_CHUNK_PAGES);

	a_chunks = hbm_take_chunks(&h, 1);			/* A, step 1 */
	ck_assert_uint_eq(a_chunks, 1ull << (c - 64));
	g = hbm_find_group(&h, 0);				/* B, whole */
	if (g != HBM_NONE)
		hbm_take_group(&h, g, &b_chunks, &b_full);
	a_full = hbm_take_full(&h, 1, a_chunks);		/* A, step 2 */
	if (h.nlevels > 3)
		hbm_lazy_clear(&h, 3, 1);

	claim_owned(&h, 1, a_chunks, a_full, got);
	if (g != HBM_NONE)
		claim_owned(&h, g, b_chunks, b_full, got);
	drain(&h, got);
	for (uint64_t p = 0; p < NPAGES; p++) {
		unsigned int want = p / HBM_CHUNK_PAGES == c;

		ck_assert_msg(got[p] == want, "page %lu (chunk %lu) handed out %u times, want %u "
			      "(A took chunks %#lx full %#lx, B group %ld chunks %#lx full %#lx)",
			      p, p / HBM_CHUNK_PAGES, got[p], want, a_chunks, a_full,
			      g == HBM_NONE ? -1L : (long)g, b_chunks, b_full);
	}
	ck_assert_uint_eq(hbm_count(&h), 0);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/*
 * A marker between a claimer's two steps: the full bit it sets for a chunk
 * the claimer took through level 2 goes with that claimer (seen by
 * hbm_take_full), or, if set after, comes back through level 2. Either
 * way the full mark is handed out once and nothing is lost.
 */
START_TEST(full_mark_between_steps_is_not_lost)
{
	struct hbm h;
	uint8_t *got;
	uint64_t c = 64 + 9, chunks, full;

	setup(&h, &got);
	hbm_mark(&h, c * HBM_CHUNK_PAGES + 100, 1);
	chunks = hbm_take_chunks(&h, 1);
	hbm_mark(&h, c * HBM_CHUNK_PAGES, HBM_CHUNK_PAGES);	/* full, mid-take */
	full = hbm_take_full(&h, 1, chunks);
	hbm_lazy_clear(&h, 3, 1);
	claim_owned(&h, 1, chunks, full, got);
	drain(&h, got);
	for (uint64_t p = c * HBM_CHUNK_PAGES; p < (c + 1) * HBM_CHUNK_PAGES; p++)
		ck_assert_msg(got[p] >= 1, "page %lu of the full-marked chunk never handed out", p);
	/* The page marked twice may come twice (two marks); the rest once. */
	for (uint64_t p = c * HBM_CHUNK_PAGES; p < (c + 1) * HBM_CHUNK_PAGES; p++)
		ck_assert_msg(got[p] <= (p == c * HBM_CHUNK_PAGES + 100 ? 2u : 1u),
			      "page %lu handed out %u times for its marks", p, got[p]);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/*
 * hbm.c, lazy_clear: "A marker raced with us and may have seen the bit
 * set." A claimer exchanged group 1's level-2 word (its level-3 bit is
 * now stale); a marker then sets a page in group 1: level 0, 1 and 2, and
 * finds the level-3 bit still set, so it leaves it. The claimer's
 * lazy_clear of that level-3 bit must re-read level 2 after clearing and
 * put the bit back; without the re-read, group 1 is unreachable from the
 * top and the page is never handed out.
 */
START_TEST(lazy_clear_rereads_below)
{
	struct hbm h;
	uint8_t *got;
	uint64_t p1 = 64 * HBM_CHUNK_PAGES + 3, p2 = 65 * HBM_CHUNK_PAGES + 7, chunks, full;

	setup(&h, &got);
	hbm_mark(&h, p1, 1);
	chunks = hbm_take_chunks(&h, 1);	/* the claimer, before its lazy clear */
	full = hbm_take_full(&h, 1, chunks);
	hbm_mark(&h, p2, 1);			/* the marker: stops at the stale level-3 bit */
	hbm_lazy_clear(&h, 3, 1);		/* the claimer's clear, last */
	ck_assert_uint_eq(hbm_find_group(&h, 0), 1);
	claim_owned(&h, 1, chunks, full, got);
	drain(&h, got);
	ck_assert_msg(got[p1] == 1, "the claimer's own page handed out %u times", got[p1]);
	ck_assert_msg(got[p2] == 1, "the page marked during the lazy clear handed out %u times "
		      "(0: its group became unreachable)", got[p2]);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/* The same replay one level down: a stale level-2 bit of a chunk. */
START_TEST(lazy_clear_rereads_below_level2)
{
	struct hbm h;
	uint8_t *got;
	uint64_t c = 5, p = c * HBM_CHUNK_PAGES + 64 * 3;

	setup(&h, &got);
	/* A level-2 bit pointing at an empty chunk: what a claim leaves behind. */
	hbm_mark(&h, p, 1);
	{
		uint64_t words[HBM_CHUNK_WORDS], wmask;

		ck_assert_uint_eq(hbm_claim_chunk(&h, c, false, words, &wmask), 1);
	}
	hbm_mark(&h, p + 1, 1);			/* sets levels 0 and 1, level 2 looks set */
	hbm_lazy_clear(&h, 2, c);		/* a finder that saw the empty chunk, late */
	drain(&h, got);
	ck_assert_msg(got[p + 1] == 1, "page marked during the lazy clear handed out %u times",
		      got[p + 1]);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/*
 * hbm_lazy_clear_mask(), the claimer's deferred clear of several level-3
 * bits at once (claim.c takes groups 1 and 2, then clears both bits in
 * one RMW). Between the takes and the clear a marker sets a page in group
 * 1: levels 0-2, and finds the level-3 bit still set, so it leaves it.
 * The masked clear must re-read level 2 of each group after its RMW and
 * put group 1's bit back; group 2's, empty, stays clear.
 */
START_TEST(lazy_clear_mask_rereads_each_bit)
{
	struct hbm h;
	uint8_t *got;
	uint64_t p1 = 64 * HBM_CHUNK_PAGES + 3, p2 = 128 * HBM_CHUNK_PAGES + 9;
	uint64_t p3 = 70 * HBM_CHUNK_PAGES + 11, c1, f1, c2, f2;

	setup(&h, &got);
	hbm_mark(&h, p1, 1);
	hbm_mark(&h, p2, 1);
	hbm_take_group_deferred(&h, 1, &c1, &f1);
	hbm_take_group_deferred(&h, 2, &c2, &f2);
	hbm_mark(&h, p3, 1);			/* the marker: stops at the stale level-3 bit */
	hbm_lazy_clear_mask(&h, 3, 0, 1ull << 1 | 1ull << 2);
	ck_assert_msg(atomic_load(&h.lv[3][0]) & 1ull << 1,
		      "group 1's level-3 bit was cleared although a page was marked under it");
	ck_assert_msg(!(atomic_load(&h.lv[3][0]) & 1ull << 2),
		      "group 2's stale level-3 bit was left set");
	claim_owned(&h, 1, c1, f1, got);
	claim_owned(&h, 2, c2, f2, got);
	drain(&h, got);
	ck_assert_msg(got[p1] == 1 && got[p2] == 1, "the claimer's own pages handed out %u, %u times",
		      got[p1], got[p2]);
	ck_assert_msg(got[p3] == 1, "the page marked before the deferred clear handed out %u times "
		      "(0: its group became unreachable)", got[p3]);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/* ---- batched marking ------------------------------------------------------ */

/*
 * hbm.h's invariant, checked word by word: every set bit below is
 * reachable from the top. A non-zero level-0 word has its level-1 bit, a
 * non-zero level-1 word or a full bit its level-2 bit, a non-zero word of
 * level k >= 2 its bit at level k + 1. Walks every word: small bitmaps.
 */
static void assert_reachable(struct hbm *h, const char *what)
{
	/* ck_abort only on failure: ck_assert costs a mark point per word. */
	for (uint64_t w = 0; w < h->nwords[0]; w++)
		if (atomic_load(&h->lv[0][w]) && !(atomic_load(&h->lv[1][w >> 6]) >> (w & 63) & 1))
			ck_abort_msg("%s: level-0 word %lu is set but its level-1 bit is not", what, w);
	for (uint64_t c = 0; c < h->nchunks; c++)
		if ((atomic_load(&h->lv[1][c]) || (atomic_load(&h->full[c >> 6]) >> (c & 63) & 1)) &&
		    !(atomic_load(&h->lv[2][c >> 6]) >> (c & 63) & 1))
			ck_abort_msg("%s: chunk %lu has bits but its level-2 bit is not set", what, c);
	for (unsigned int k = 2; k + 1 < h->nlevels; k++)
		for (uint64_t w = 0; w < h->nwords[k]; w++)
			if (atomic_load(&h->lv[k][w]) &&
			    !(atomic_load(&h->lv[k + 1][w >> 6]) >> (w & 63) & 1))
				ck_abort_msg("%s: level-%u word %lu is set but its level-%u bit is not",
					     what, k, w, k + 1);
}

/*
 * A batch is a sequence of single marks: random ranges (single pages,
 * runs across words and chunks, whole chunks, the short last chunk,
 * overlaps, ascending or shuffled), some given as word masks through
 * hbm_batch_or_chunk(), flushed at random points; after each flush
 * every mark is reachable, and a drain hands out exactly the marked
 * pages, each once. The geometry has a short last chunk and a level 3.
 */
START_TEST(batch_marks_like_single_marks)
{
	const uint64_t np = 2 * 64 * HBM_CHUNK_PAGES + 5 * HBM_CHUNK_PAGES + 77;
	uint64_t seed = 0x6261746368ull + (uint64_t)_i;
	uint8_t *want = calloc(np, 1), *got = calloc(np, 1);
	struct hbm h;

	ck_assert_ptr_nonnull(want);
	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(hbm_init(&h, np), 0);
	ck_assert_uint_ge(h.nlevels, 4);
	for (int round = 0; round < 8; round++) {
		struct hbm_batch b;
		uint64_t n = 1 + test_below(&seed, 400), base = test_below(&seed, np);
		bool sorted = test_below(&seed, 2);

		hbm_batch_init(&b);
		for (uint64_t i = 0; i < n; i++) {
			uint64_t first, count;

			switch (test_below(&seed, 6)) {
			case 0:		/* whole chunks, maybe to the end */
				first = test_below(&seed, h.nchunks) * HBM_CHUNK_PAGES;
				count = (1 + test_below(&seed, 3)) * HBM_CHUNK_PAGES;
				break;
			case 1:		/* across words and chunks */
				first = test_below(&seed, np);
				count = 1 + test_below(&seed, 3 * HBM_CHUNK_PAGES);
				break;
			case 2:		/* word masks straight into a chunk */
			{
				uint64_t c = test_below(&seed, h.nchunks), words[HBM_CHUNK_WORDS], wm = 0;
				uint64_t cp = hbm_chunk_pages(&h, c);

				for (unsigned int k = 0; k < 3; k++) {
					unsigned int j = (unsigned int)test_below(&seed, (cp + 63) / 64);
					uint64_t v = test_rnd(&seed);

					if (c * HBM_CHUNK_PAGES + j * 64ull + 64 > np)
						v &= (1ull << (np - c * HBM_CHUNK_PAGES - j * 64ull)) - 1;
					words[j] = (wm >> j & 1) ? words[j] | v : v;
					wm |= (uint64_t)(words[j] != 0) << j;
				}
				for (uint64_t m = wm; m; m &= m - 1) {
					unsigned int j = (unsigned int)__builtin_ctzll(m);

					for (unsigned int q = 0; q < 64; q++)
						if (words[j] >> q & 1)
							want[c * HBM_CHUNK_PAGES + j * 64ull + q] = 1;
				}
				hbm_batch_or_chunk(&h, &b, c, words, wm);
				continue;
			}
			default:	/* short runs near the last one: the inline path */
				first = sorted ? (base + i * 37) % np : test_below(&seed, np);
				count = 1 + test_below(&seed, 64);
				break;
			}
			if (first >= np)
				first = np - 1;
			if (count > np - first)
				count = np - first;
			ck_assert_uint_eq(hbm_batch_add(&h, &b, first, count), count);
			memset(want + first, 1, count);
			if (test_below(&seed, 50) == 0) {
				hbm_batch_flush(&h, &b);
				assert_reachable(&h, "mid-batch flush");
			}
		}
		hbm_batch_flush(&h, &b);
		assert_reachable(&h, "after the batch");
		if (round % 2 == 0)
			continue;	/* let marks of two rounds overlap */
		drain(&h, got);
		for (uint64_t p = 0; p < np; p++) {
			if (got[p] != want[p])
				ck_abort_msg("round %d: page %lu handed out %u times, marked %u "
					     "(chunk %lu)", round, p, got[p], want[p], p / HBM_CHUNK_PAGES);
			got[p] = want[p] = 0;
		}
		ck_assert_uint_eq(hbm_count(&h), 0);
	}
	free(want);
	free(got);
	hbm_destroy(&h);
}
END_TEST

/*
 * The summaries of a region past 4 TiB of 4 KiB pages span huge pages:
 * mapped 2 MiB aligned on their own, unmapped whole at destroy (neither
 * a byte of someone else's memory nor a byte left), and a mark at
 * either end is reached and claimed.
 */
START_TEST(huge_summaries_map_and_unmap)
{
	const uint64_t np = 8ull << 30;		/* 32 TiB of 4 KiB pages */
	uint8_t vec;
	struct hbm h;
	uint64_t pages[2] = { 5, np - 1 }, g = 0, n = 0;
	void *sum, *l0;
	size_t sum_len, l0_len;

	ck_assert_int_eq(hbm_init(&h, np), 0);
	ck_assert_uint_ge(h.sum_len, 2u << 20);
	ck_assert_msg(((uintptr_t)h.sum_mem & ((2u << 20) - 1)) == 0,
		      "summaries at %p are not 2 MiB aligned", h.sum_mem);
	for (int i = 0; i < 2; i++)
		hbm_mark(&h, pages[i], 1);
	ck_assert_uint_eq(hbm_count(&h), 2);
	while ((g = hbm_find_group(&h, g)) != HBM_NONE) {
		uint64_t chunks, full;

		hbm_take_group(&h, g, &chunks, &full);
		for (uint64_t m = chunks; m; m &= m - 1) {
			uint64_t words[HBM_CHUNK_WORDS], wmask;

			n += hbm_claim_chunk(&h, g * 64 + (uint64_t)__builtin_ctzll(m), false,
					     words, &wmask);
		}
		g++;
	}
	ck_assert_uint_eq(n, 2);
	sum = h.sum_mem;
	sum_len = h.sum_len;
	l0 = h.mem;
	l0_len = h.mem_len;
	hbm_destroy(&h);
	/* mincore() fails with ENOMEM on any page of the range that is unmapped. */
	ck_assert_int_eq(mincore(sum, 4096, &vec), -1);
	ck_assert_int_eq(mincore((char *)sum + ((sum_len - 1) & ~(size_t)4095), 4096, &vec), -1);
	ck_assert_int_eq(mincore(l0, 4096, &vec), -1);
	ck_assert_int_eq(mincore((char *)l0 + l0_len - 4096, 4096, &vec), -1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hbm");
	TCase *tc = tcase_create("interleavings");
	TCase *tb = tcase_create("batches");

	tcase_add_test(tc, full_bit_follows_level2_owner);
	tcase_add_test(tc, full_mark_between_steps_is_not_lost);
	tcase_add_test(tc, lazy_clear_rereads_below);
	tcase_add_test(tc, lazy_clear_rereads_below_level2);
	tcase_add_test(tc, lazy_clear_mask_rereads_each_bit);
	suite_add_tcase(s, tc);
	tcase_add_loop_test(tb, batch_marks_like_single_marks, 0, 6);
	tcase_add_test(tb, huge_summaries_map_and_unmap);
	tcase_set_timeout(tb, 120);
	suite_add_tcase(s, tb);
	return test_run_suite(s);
}
