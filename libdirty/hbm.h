/* SPDX-License-Identifier: MIT */
/*
 * hbm.h - the hierarchical atomic bitmap behind every view region.
 *
 * Level 0 has one bit per page. Level 1 has one bit per level-0 word.
 * A *chunk* is the 64 level-0 words one level-1 word describes (4096
 * pages). Level 2 has one bit per chunk, set when the chunk's level-1
 * word is non-zero *or* its `full` bit is set; `full` says "every page
 * of this chunk is dirty" without touching level 0, so dense ranges
 * (first round, error fallback, 100% dirty bitmaps) cost O(chunks).
 * Levels 3.. summarise the level below until one word is left.
 *
 * Memory ordering: every access to the bitmap words is seq_cst. The
 * protocol (a marker sets bottom-up, a claimer exchanges top-down and
 * clears a stale summary bit only after re-checking the word below)
 * relies on one total order over these accesses; on x86 seq_cst loads
 * and RMWs cost the same as acquire/release ones, and there are no
 * seq_cst plain stores. Marking releases the page contents written before
 * it to the claimer that exchanges the bit: the level-0 (or full) word is
 * therefore always written with an RMW, never skipped after a load that
 * finds the bit set; only summary levels may skip that way, and only on a
 * load made after the writes below them (a bit seen set earlier proves
 * nothing: a claimer may have cleared it since).
 *
 * Batches (struct hbm_batch, hbm_mark.h) change when a mark's writes happen, never
 * their order: page bits wait in word masks until the batch moves to
 * another chunk, summary bits until it moves to another summary word,
 * and every word is still written after all the words it summarises. A
 * claimer may clear the level-3 bits of several groups it took in one
 * RMW (hbm_lazy_clear_mask); until then they are stale, which costs a
 * finder a look and never hides a page. hbm_ahead() and the prefetch
 * helpers (hbm_ahead.h) only load: they own, set and clear nothing.
 *
 * This header owns the layout, claiming and counting (hbm.c); marking is
 * hbm_mark.h (hbm_mark.c), claimers' prefetching hbm_ahead.h (hbm_ahead.c).
 *
 * Which atomics, library-wide: memory the library allocates and only it
 * touches (these bitmaps, the region table pointer, counters, the guest
 * library's pin count words) is C11 _Atomic with the <stdatomic.h>
 * operations. Memory laid out by someone else is plain integers reached
 * with the __atomic builtins: the guest protocol region (proto.h is
 * freestanding and a guest kernel or bare payload compiles it; the host
 * also reads it), KVM's dirty ring entries (struct kvm_dirty_gfn), and
 * the pin and dirty words the guest writes. Either way every shared
 * access is an atomic operation, seq_cst unless it names a weaker order
 * (and a weaker order carries a comment saying what it pairs with).
 */
#ifndef LIBDIRTY_HBM_H
#define LIBDIRTY_HBM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HBM_MAX_LEVELS 12
#define HBM_CHUNK_PAGES 4096u	/* pages per chunk: 64 words x 64 bits */
#define HBM_CHUNK_WORDS 64u
#define HBM_NONE UINT64_MAX

struct hbm {
	uint64_t npages;
	uint64_t nchunks;
	unsigned int nlevels;	/* >= 3; level nlevels-1 has one word */
	uint64_t nwords[HBM_MAX_LEVELS];
	_Atomic uint64_t *lv[HBM_MAX_LEVELS];
	_Atomic uint64_t *full;	/* nwords[2] words, bit c = chunk c */
	/* Level 0 alone, then the summaries and full (huge pages if large). */
	void *mem, *sum_mem;
	size_t mem_len, sum_len;
};

int hbm_init(struct hbm *h, uint64_t npages);
void hbm_destroy(struct hbm *h);

/*
 * Claiming. hbm_find_group() returns the first level-2 word index >= from
 * that may hold chunks (HBM_NONE if none). hbm_take_group() exchanges it
 * with zero, returning the chunks it named in *chunks and, of those, the
 * ones marked full in *full; the caller then owns them and claims each
 * with hbm_claim_chunk() or gives them back with hbm_return_group().
 *
 * Ownership of a chunk is its level-2 bit, and nothing else: a claimer
 * takes only the full bits of chunks whose level-2 bit it exchanged. A
 * full bit whose level-2 bit is not set yet belongs to a marker between
 * its two steps (mark_full sets full, then level 2), and the claimer that
 * later takes that level-2 bit takes the full bit with it. (Taking every
 * full bit of the group let a second claimer take the full bit of a chunk
 * a first claimer owned through level 2: both then handed the chunk out.)
 */
uint64_t hbm_find_group(struct hbm *h, uint64_t from);
void hbm_take_group(struct hbm *h, uint64_t g, uint64_t *chunks,
		    uint64_t *full);
void hbm_return_group(struct hbm *h, uint64_t g, uint64_t chunks,
		      uint64_t full);
/*
 * Claim chunk c (taken through its group) and return its dirty pages.
 * Not full: words[j] receives level-0 word j for every j in *wmask (other
 * entries are left untouched). Full: every page of the chunk is claimed,
 * *wmask is 0, and the level-0 bits set before are consumed with it (one
 * page, one claim).
 */
uint64_t hbm_claim_chunk(struct hbm *h, uint64_t c, bool full,
			 uint64_t words[HBM_CHUNK_WORDS], uint64_t *wmask);

/* Dirty pages right now, without claiming. O(dirty). */
uint64_t hbm_count(struct hbm *h);

/*
 * The steps of hbm_take_group(), exposed so tests/test_hbm.c can replay
 * interleavings deterministically: exchange level-2 word g; take the full
 * bits of `chunks` from group g; clear summary bit i of level k (k >= 2)
 * if the word below is empty, re-reading that word after the clear.
 */
uint64_t hbm_take_chunks(struct hbm *h, uint64_t g);
uint64_t hbm_take_full(struct hbm *h, uint64_t g, uint64_t chunks);
void hbm_lazy_clear(struct hbm *h, unsigned int k, uint64_t i);
/*
 * hbm_lazy_clear() for several bits of one word: bits `mask` of level-k
 * word w, each pointing at a word below found empty. One RMW for all of
 * them; each is put back if the word below is non-empty after it (the
 * same re-read as for one bit), and the word above is cleared in turn
 * only if this one became empty.
 */
void hbm_lazy_clear_mask(struct hbm *h, unsigned int k, uint64_t w, uint64_t mask);
/*
 * hbm_take_group() without its lazy clear of level 3, for a claimer that
 * takes several groups under one level-3 word and clears their bits
 * together with hbm_lazy_clear_mask(h, 3, g >> 6, ...) after. Until then
 * those level-3 bits are stale, which costs others a look, never a page.
 */
void hbm_take_group_deferred(struct hbm *h, uint64_t g, uint64_t *chunks,
			     uint64_t *full);

/*
 * Population count without a libgcc call: x86-64's baseline has no
 * POPCNT, and __builtin_popcountll then becomes a function call.
 */
static inline unsigned int hbm_popcount(uint64_t v)
{
#ifdef __POPCNT__
	return (unsigned int)__builtin_popcountll(v);
#else
	v = v - ((v >> 1) & 0x5555555555555555ull);
	v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (unsigned int)((v * 0x0101010101010101ull) >> 56);
#endif
}

/* Pages in chunk c (the last chunk may be short). */
static inline uint64_t hbm_chunk_pages(const struct hbm *h, uint64_t c)
{
	uint64_t left = h->npages - c * HBM_CHUNK_PAGES;

	return left < HBM_CHUNK_PAGES ? left : HBM_CHUNK_PAGES;
}

#endif /* LIBDIRTY_HBM_H */
