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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hbm.h"
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

int main(void)
{
	Suite *s = suite_create("hbm");
	TCase *tc = tcase_create("interleavings");

	tcase_add_test(tc, full_bit_follows_level2_owner);
	tcase_add_test(tc, full_mark_between_steps_is_not_lost);
	tcase_add_test(tc, lazy_clear_rereads_below);
	tcase_add_test(tc, lazy_clear_rereads_below_level2);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
