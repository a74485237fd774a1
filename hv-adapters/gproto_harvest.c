/* SPDX-License-Identifier: MIT */
/*
 * gproto_harvest.c - the guest protocol's sync and final: dirty bits, pinned
 * pages and carried pages into the view; under DEFER, the claim-side
 * keeping back of pinned pages. The trust decision is gproto_trust.c's.
 *
 * Ordering: the guest sets a dirty bit, then its summary bit; it clears a
 * pin bit only after both (libdirty/proto.h). The host exchanges summary
 * words and then the dirty words they name (seq_cst, LDX + exchange), and
 * reads pin bits with acquire (LDA) before acting on "not pinned": a pin
 * seen clear shows the dirty bit set before it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gproto_state.h"

#define XCHG(p) __atomic_exchange_n((p), 0, __ATOMIC_SEQ_CST)

/*
 * Merge 64 words of pages (one 4096-page chunk) into the view; *counter
 * (a statistic) receives their number.
 */
static int flush_chunk(struct dirty_gp *gp, uint64_t c, uint64_t *words,
		       uint64_t *mask, _Atomic uint64_t *counter)
{
	uint64_t n = 0;
	int err;

	if (!*mask)
		return 0;
	for (unsigned int j = 0; j < 64; j++) {
		if (*mask >> j & 1) {
			n += hbm_popcount(words[j]);
			words[j] = htole64(words[j]);
		} else {
			words[j] = 0;
		}
	}
	*mask = 0;
	atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
	err = dirty_source_merge_bitmap(gp->src,
					gp->gpa + ((c * HBM_CHUNK_PAGES) << gp->shift),
					gp->page_size, words,
					gp->npages - c * HBM_CHUNK_PAGES < HBM_CHUNK_PAGES ?
					gp->npages - c * HBM_CHUNK_PAGES : HBM_CHUNK_PAGES);
	memset(words, 0, 64 * sizeof(words[0]));
	return err;
}

/* Words of one chunk on their way into the view, flushed when a word of another chunk comes. */
struct chunk_acc {
	uint64_t words[64], mask, cur;
	_Atomic uint64_t *counter;
	int err;	/* the first failure; the rest is still merged */
};

static void acc_init(struct chunk_acc *a, _Atomic uint64_t *counter)
{
	memset(a->words, 0, sizeof(a->words));
	a->mask = 0;
	a->cur = UINT64_MAX;
	a->counter = counter;
	a->err = 0;
}

static void acc_flush(struct dirty_gp *gp, struct chunk_acc *a)
{
	int e = flush_chunk(gp, a->cur, a->words, &a->mask, a->counter);

	a->err = a->err ? a->err : e;
}

/* Bits of dirty/pin word w (page w * 64 onwards). */
static void acc_add(struct dirty_gp *gp, struct chunk_acc *a, uint64_t w, uint64_t bits)
{
	if (w / 64 != a->cur) {
		acc_flush(gp, a);
		a->cur = w / 64;
	}
	a->words[w % 64] = bits;
	a->mask |= 1ull << (w % 64);
}

uint64_t __gp_word_mask(const struct dirty_gp *gp, uint64_t w)
{
	uint64_t left = gp->npages - w * 64;

	return left >= 64 ? ~0ull : (1ull << left) - 1;
}

/*
 * Move dirty bits into the view. Through the summary (O(dirty)), or, at
 * final, every dirty word: a guest that set a dirty bit and died before
 * its summary bit still gets its page sent.
 */
static int harvest(struct dirty_gp *gp, bool all_words)
{
	struct chunk_acc a;

	acc_init(&a, &gp->harvested);
	for (uint64_t sw = 0; sw < gp->lay.summary_words; sw++) {
		uint64_t s;

		if (all_words) {
			XCHG(&gp->summary[sw]);
			s = ~0ull;
		} else {
			if (!LDX(&gp->summary[sw]))
				continue;
			s = XCHG(&gp->summary[sw]);
		}
		while (s) {
			uint64_t w = sw * 64 + (uint64_t)__builtin_ctzll(s);
			uint64_t d;

			s &= s - 1;
			if (w >= gp->lay.dirty_words)
				break;	/* bits past the end: guest garbage */
			d = LDX(&gp->dirty[w]) ? XCHG(&gp->dirty[w]) & __gp_word_mask(gp, w) : 0;
			if (d)
				acc_add(gp, &a, w, d);
		}
	}
	acc_flush(gp, &a);
	return a.err;
}

/* Mark every pinned page (acquire: a clear pin means its dirty bit is visible). */
static int mark_pinned(struct dirty_gp *gp)
{
	struct chunk_acc a;

	acc_init(&a, &gp->pinned_sent);
	for (uint64_t w = 0; w < gp->lay.dirty_words; w++) {
		uint64_t p = LDA(&gp->pin[w]) & __gp_word_mask(gp, w);

		if (p)
			acc_add(gp, &a, w, p);
	}
	acc_flush(gp, &a);
	return a.err;
}

/*
 * Carried pages: send those no longer pinned (or all, at final); keep the
 * rest carried.
 */
static int release_carried(struct dirty_gp *gp, bool all)
{
	uint64_t words[64], wmask, g = 0;
	int err = 0;

	while ((g = hbm_find_group(&gp->carried, g)) != HBM_NONE) {
		uint64_t chunks, full;

		hbm_take_group(&gp->carried, g, &chunks, &full);
		for (chunks |= full; chunks; chunks &= chunks - 1) {
			uint64_t c = (g << 6) + (uint64_t)__builtin_ctzll(chunks);
			bool isfull = full >> (c & 63) & 1;
			uint64_t keep[64] = { 0 }, send = 0, sendw[64] = { 0 };

			hbm_claim_chunk(&gp->carried, c, isfull, words, &wmask);
			if (isfull) {
				uint64_t npg = hbm_chunk_pages(&gp->carried, c);

				wmask = 0;
				for (unsigned int j = 0; j * 64 < npg; j++) {
					words[j] = npg - j * 64 >= 64 ? ~0ull :
						(1ull << (npg - j * 64)) - 1;
					wmask |= 1ull << j;
				}
			}
			for (; wmask; wmask &= wmask - 1) {
				unsigned int j = (unsigned int)__builtin_ctzll(wmask);
				uint64_t pinned = all ? 0 : LDA(&gp->pin[c * 64 + j]);

				keep[j] = words[j] & pinned;
				sendw[j] = words[j] & ~pinned;
				if (sendw[j])
					send |= 1ull << j;
			}
			hbm_or_chunk(&gp->carried, c, keep, 64);
			if (send) {
				int e = flush_chunk(gp, c, sendw, &send, &gp->carried_sent);

				err = err ? err : e;
			}
		}
		g++;
	}
	return err;
}

static void set_final_started(struct dirty_gp *gp, bool on)
{
	pthread_mutex_lock(&gp->carry_lock);
	gp->final_started = on;
	pthread_mutex_unlock(&gp->carry_lock);
}

/*
 * A round. At final the guest must be trusted (gproto_trust.c says what
 * that is); if not, the configured fallback stands in for its bits. In
 * pre-copy an untrusted guest's bits are still harvested: they can only
 * add pages, and its range is marked whole when it is trusted again.
 */
static int sync_common(struct dirty_source *src, bool final)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	char reason[sizeof(gp->reason)];
	enum dirty_gp_state st;
	int err, e;

	/* From final on nothing is kept back; a later sync is a new pre-copy. */
	set_final_started(gp, final);

	pthread_mutex_lock(&gp->lock);
	st = __gp_judge(gp);
	memcpy(reason, gp->reason, sizeof(reason));
	pthread_mutex_unlock(&gp->lock);

	if (final && st != DIRTY_GP_TRUSTED) {
		if (gp->cfg.fallback == DIRTY_GP_FALLBACK_ABORT)
			return __dirty_err(-EHOSTDOWN, "guest protocol not trusted at final: %s",
					   reason);
		return dirty_source_mark(src, gp->gpa, gp->npages << gp->shift);
	}
	err = harvest(gp, final);
	if (final || gp->cfg.pinned == DIRTY_GP_PINNED_SEND) {
		e = mark_pinned(gp);
		err = err ? err : e;
	}
	e = release_carried(gp, final);
	return err ? err : e;
}

int __gp_sync(struct dirty_source *src)
{
	return sync_common(src, false);
}

int __gp_final(struct dirty_source *src)
{
	return sync_common(src, true);
}

/* Pinned pages in gp pages [p, end): the first one, or end. */
static uint64_t next_pinned(struct dirty_gp *gp, uint64_t p, uint64_t end)
{
	while (p < end) {
		/* Acquire: as mark_pinned(); a clear pin shows its dirty bit. */
		uint64_t v = LDA(&gp->pin[p / 64]) & (~0ull << (p % 64));

		if (v)
			return (p & ~63ull) + (uint64_t)__builtin_ctzll(v) < end ?
				(p & ~63ull) + (uint64_t)__builtin_ctzll(v) : end;
		p = (p & ~63ull) + 64;
	}
	return end;
}

/* Append [gpa, gpa + len) to out; false if that would pass max runs. */
static bool put_run(struct dirty_run *out, size_t *n, size_t max, uint64_t gpa,
		    uint64_t len)
{
	if (!len)
		return true;
	if (*n && out[*n - 1].gpa + out[*n - 1].len == gpa) {
		out[*n - 1].len += len;
		return true;
	}
	if (*n == max)
		return false;
	out[*n].gpa = gpa;
	out[(*n)++].len = len;
	return true;
}

/*
 * One claimed run: pass its pages on to out, keeping back (carrying) the
 * pinned ones in units of `unit` bytes (the larger of the region's and
 * the protocol's page size, so what is handed out stays page aligned).
 * At most lim runs may be used in all; a split that would need more is
 * not made and the rest goes out as is: sending a pinned page is merely
 * early, never wrong. The caller leaves a free slot for the run.
 */
static void withhold_run(struct dirty_gp *gp, struct dirty_run in, uint64_t unit,
			 struct dirty_run *out, size_t *n, size_t lim)
{
	uint64_t end = in.gpa + in.len, gend = gp->gpa + (gp->npages << gp->shift);
	uint64_t a = in.gpa > gp->gpa ? in.gpa : gp->gpa;
	uint64_t e = end < gend ? end : gend;
	uint64_t pos = in.gpa;	/* what is not yet handed out or kept back */

	while (a < e) {
		uint64_t last = (e - gp->gpa + gp->page_size - 1) >> gp->shift;
		uint64_t p = next_pinned(gp, (a - gp->gpa) >> gp->shift, last);
		uint64_t x = gp->gpa + (p << gp->shift), k0, k1, first, count;
		size_t need;

		if (p >= last)
			break;
		k0 = x & ~(unit - 1);
		k1 = k0 + unit;
		k0 = k0 < pos ? pos : k0;
		k1 = k1 > end ? end : k1;
		a = k1;
		/* Only whole units inside the protocol's range are kept back. */
		if (k0 < gp->gpa || k1 > gend)
			continue;
		/* Slots for the part before (unless it joins) and for a tail. */
		need = (k0 > pos && !(*n && out[*n - 1].gpa + out[*n - 1].len == pos)) +
		       (k1 < end);
		if (*n + need > lim)
			break;
		put_run(out, n, lim, pos, k0 - pos);
		/*
		 * Carried whole: a run shorter than a protocol page keeps back
		 * part of one, and the page is carried (and later sent) whole.
		 */
		first = (k0 - gp->gpa) >> gp->shift;
		count = ((k1 - gp->gpa + gp->page_size - 1) >> gp->shift) - first;
		hbm_mark(&gp->carried, first, count);
		atomic_fetch_add_explicit(&gp->kept_back, count, memory_order_relaxed);
		pos = k1;
	}
	put_run(out, n, lim, pos, end - pos);	/* room was left for it */
}

/*
 * DEFER: pinned pages a claim took are kept back until they are unpinned
 * (then marked again by release_carried()) or until final; the claimer
 * never sees them, so no caller has to skip and report them.
 */
int __gp_prepare_read(struct dirty_source *src, struct dirty_run *runs,
		      size_t *n, size_t max)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	uint64_t gend = gp->gpa + (gp->npages << gp->shift);
	struct dirty_view *view = dirty_source_view(src);
	struct dirty_run *in;
	size_t i, nin = *n;
	bool any = false;

	for (i = 0; i < nin && !any; i++) {
		uint64_t a = runs[i].gpa > gp->gpa ? runs[i].gpa : gp->gpa;
		uint64_t e = runs[i].gpa + runs[i].len < gend ? runs[i].gpa + runs[i].len : gend;

		any = a < e && next_pinned(gp, (a - gp->gpa) >> gp->shift,
					   (e - gp->gpa + gp->page_size - 1) >> gp->shift) <
			       (e - gp->gpa + gp->page_size - 1) >> gp->shift;
	}
	if (!any)
		return 0;
	in = malloc(nin * sizeof(*in));
	if (!in)
		return 0;	/* nothing kept back: every page goes out, which is correct */
	memcpy(in, runs, nin * sizeof(*in));
	pthread_mutex_lock(&gp->carry_lock);
	if (gp->final_started) {
		pthread_mutex_unlock(&gp->carry_lock);
		free(in);
		return 0;
	}
	*n = 0;
	for (i = 0; i < nin; i++) {
		uint64_t rps = __dirty_page_size_at(view, in[i].gpa);
		uint64_t unit = rps > gp->page_size ? rps : gp->page_size;

		/* One slot stays free for each run still to come. */
		withhold_run(gp, in[i], unit, runs, n, max - (nin - 1 - i));
	}
	pthread_mutex_unlock(&gp->carry_lock);
	free(in);
	return 0;
}

/* DEFER: what final will add that the view does not hold now (at most). */
uint64_t __gp_held_bytes(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	uint64_t pages = hbm_count(&gp->carried);

	for (uint64_t w = 0; w < gp->lay.dirty_words; w++)
		pages += hbm_popcount(LDA(&gp->pin[w]) & __gp_word_mask(gp, w));
	return pages << gp->shift;
}
