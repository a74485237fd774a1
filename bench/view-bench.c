/* SPDX-License-Identifier: MIT */
/*
 * view-bench.c - the view's mark + drain against QEMU's flat migration
 * bitmap and against the memory-bandwidth floor, side by side in one run.
 *
 * Owns the numbers behind the view's performance targets (issue 16): the
 * view is never slower than the flat bitmap at any dirty fraction; for a
 * fixed dirty set its time follows the dirty pages, not the memory size
 * (16 TiB within 2x of 64 GiB; >= 20x the flat bitmap at 1 TiB and >= 100x
 * at 16 TiB with 1,000 pages); two claimers drain >= 1.6x faster than one;
 * at 100% it stays within 2x of a memcpy of the page bitmap. It reports
 * what it measures and never fails on a missed target; it exits 1 only
 * when a side drains a page set other than the one it was given.
 *
 * Reproduce:  make bench && build/bin/view-bench [--json]
 *             build/bin/view-bench --quick      (smoke test, about a second)
 *
 * Sections (--only picks one):
 *  fractions  0.01%, 1%, 10%, 100% of --gib GiB, uniform random pages,
 *             given as runs (dirty ring, guest summary harvest,
 *             PAGEMAP_SCAN: dirty_view_mark_ranges) or as a little-endian
 *             bitmap (KVM_GET_DIRTY_LOG: dirty_view_merge_bitmap);
 *  sets       1,000 / 10,000 / 100,000 dirty pages at 64 GiB, 1 TiB and
 *             16 TiB: random single pages ("runs") or runs of 8-64 pages
 *             ("clustered"): the last rounds of a converged migration,
 *             whose dirty set is bounded by downtime x bandwidth whatever
 *             the memory size;
 *  claimers   one view at 10% and 100% drained by 1 and by 2 claimer
 *             threads, each with its own cursor (drain only; marked before).
 *
 * Fairness: both sides get the same dirty set each round and hand what
 * they drain to the same consumer in batches of RUN_BATCH runs. The flat
 * side models QEMU's cheapest path and nothing more: one log bitmap, one
 * migration bitmap, no per-client or per-block split, and a bitmap input
 * is taken as the log itself rather than first ORed into one. Its bitmaps
 * are written before timing, as a running VMM's are; the view's memory is
 * reserved untouched and faults in where marks land (the warm-up round),
 * so neither side is timed on page faults. Every timed part starts with
 * cold caches and TLB (the bench first reads CHILL_BYTES, twice the L3 of
 * the machines here), as a migration thread's page copying leaves them
 * between two harvests; without it a small bitmap would be timed warm
 * and a terabyte one cold. "view KiB" is what the view's bitmap made
 * resident (growth of the process's RSS over the case).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "opts.h"
#include "rng.h"
#include "stats.h"
#include "libdirty.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ull << PAGE_SHIFT)
#define RUN_BATCH 256
#define NFRAC 4
#define MAX_RESULTS 64
#define GIB_PAGES (1ull << (30 - PAGE_SHIFT))
#define CHILL_BYTES (64ull << 20)

static const double fractions[NFRAC] = { 0.0001, 0.01, 0.10, 1.0 };
static const char *const frac_labels[NFRAC] = { "0.01%", "1%", "10%", "100%" };
static const char *const families[2] = { "runs", "bitmap" };
static const uint64_t set_counts[3] = { 1000, 10000, 100000 };
static const char *const set_patterns[2] = { "runs", "clustered" };

/* One dirty set: runs always; the flat bitmap only for the fraction cases. */
struct input {
	uint64_t npages, ndirty, idxsum;	/* idxsum: sum of page indices, mod 2^64 */
	uint64_t *bitmap;			/* bit i = page i, or NULL */
	struct dirty_range *ranges;
	size_t nranges;
};

/* What a drain produced; checked against the input, so never elided. */
struct tally {
	uint64_t pages, idxsum;
};

struct result {
	char name[48];
	const char *section;
	double fraction;		/* fractions only */
	uint64_t ndirty, npages;
	double view_ns, flat_ns, floor_ns;	/* floor_ns 0: not measured */
	int64_t view_bytes;		/* -1: not measured */
	int claimers;			/* 0: not a claimers case */
	double speedup;			/* claimers = 2: one claimer's time / this */
};

/* The flat side's memory, written once for the largest size in the run. */
struct flat {
	_Atomic uint64_t *log;	/* QEMU's ram_list.dirty_memory[MIGRATION] */
	uint64_t *bmap;		/* QEMU's RAMBlock::bmap */
	uint64_t *floor_dst;
	uint64_t *work;		/* the view's copy of a bitmap input */
	uint64_t cap_words;
};

/* A second claimer: drains when told, reports its tally. */
struct helper {
	pthread_t thread;
	struct dirty_view *_Atomic view;	/* published with go (release) */
	_Atomic uint64_t go, done;		/* round numbers; go = UINT64_MAX: exit */
	struct tally t;				/* written before done (release) */
	int err;
};

struct bench {
	int reps;
	bool json;
	struct flat f;
	const uint64_t *chill;	/* CHILL_BYTES, read to evict everything else */
	double *tv, *tf, *tm, *t1;	/* per-rep ns of each column */
	struct result res[MAX_RESULTS];
	int nres;
	struct helper h;
};

static void tally_add(struct tally *t, uint64_t first, uint64_t cnt)
{
	t->pages += cnt;
	t->idxsum += cnt * first + cnt * (cnt - 1) / 2;
}

/* The migration thread's use of a batch: it must read every run. */
static void consume(struct tally *t, const struct dirty_run *runs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tally_add(t, runs[i].gpa >> PAGE_SHIFT, runs[i].len >> PAGE_SHIFT);
}

static bool test_bit(const uint64_t *map, uint64_t i)
{
	return map[i / 64] >> (i % 64) & 1;
}

/* First set bit >= from, or size: the word-by-word scan of QEMU's drain. */
static uint64_t find_next_bit(const uint64_t *map, uint64_t size, uint64_t from)
{
	uint64_t w, v, nw = (size + 63) / 64;

	if (from >= size)
		return size;
	w = from / 64;
	v = map[w] & (~0ull << (from % 64));
	while (!v) {
		if (++w >= nw)
			return size;
		v = map[w];
	}
	from = w * 64 + (uint64_t)__builtin_ctzll(v);
	return from < size ? from : size;
}

/* Evict the caches and the TLB by reading memory nobody else uses. */
static void chill(const struct bench *b)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < CHILL_BYTES / 8; i += 8)
		sum += b->chill[i];
	__asm__ volatile("" : : "r"(sum));
}

static long rss_bytes(void)
{
	long size, rss;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

static uint64_t mem_available(void)
{
	char line[128];
	unsigned long long kib = 0;
	FILE *f = fopen("/proc/meminfo", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib << 10;
}

/* ---- inputs --------------------------------------------------------------- */

static void input_free(struct input *in)
{
	free(in->bitmap);
	free(in->ranges);
	memset(in, 0, sizeof(*in));
}

/* Runs from the bitmap (two passes: at 100% an upper bound is npages runs). */
static int ranges_from_bitmap(struct input *in)
{
	struct tally t = { 0, 0 };
	uint64_t p, e;

	for (int pass = 0; pass < 2; pass++) {
		in->nranges = 0;
		for (p = find_next_bit(in->bitmap, in->npages, 0); p < in->npages;
		     p = find_next_bit(in->bitmap, in->npages, e)) {
			for (e = p + 1; e < in->npages && test_bit(in->bitmap, e); e++)
				;
			if (pass) {
				in->ranges[in->nranges].gpa = p << PAGE_SHIFT;
				in->ranges[in->nranges].len = (e - p) << PAGE_SHIFT;
				tally_add(&t, p, e - p);
			}
			in->nranges++;
		}
		if (!pass && !(in->ranges = calloc(in->nranges ? in->nranges : 1, sizeof(*in->ranges))))
			return -ENOMEM;
	}
	in->ndirty = t.pages;
	in->idxsum = t.idxsum;
	return 0;
}

/* A fraction of npages, uniform random (fixed seed), as bitmap and runs. */
static int input_fraction(struct input *in, uint64_t npages, double fraction, uint64_t seed)
{
	memset(in, 0, sizeof(*in));
	in->npages = npages;
	if (!(in->bitmap = calloc(npages / 64, sizeof(uint64_t))))
		return -ENOMEM;
	if (fraction >= 1.0) {
		memset(in->bitmap, 0xff, npages / 8);
	} else {
		uint64_t want = (uint64_t)(fraction * (double)npages + 0.5), got = 0;

		while (got < (want ? want : 1)) {
			uint64_t p = splitmix64(&seed) % npages;

			if (!test_bit(in->bitmap, p)) {
				in->bitmap[p / 64] |= 1ull << (p % 64);
				got++;
			}
		}
	}
	return ranges_from_bitmap(in);
}

static int cmp_range(const void *a, const void *b)
{
	uint64_t x = ((const struct dirty_range *)a)->gpa, y = ((const struct dirty_range *)b)->gpa;

	return (x > y) - (x < y);
}

/*
 * Exactly `want` dirty pages of npages without a bitmap of them (16 TiB
 * would need 512 MiB): random runs of 1 page, or of 8-64 pages, sorted and
 * coalesced; overlaps are topped up until the count is exact.
 */
static int input_set(struct input *in, uint64_t npages, uint64_t want, bool clustered,
		     uint64_t seed)
{
	size_t cap = (size_t)want + 16;
	uint64_t have = 0;

	memset(in, 0, sizeof(*in));
	in->npages = npages;
	if (!(in->ranges = calloc(cap, sizeof(*in->ranges))))
		return -ENOMEM;
	while (have < want) {
		size_t k = 0;

		while (have < want && in->nranges < cap) {
			uint64_t len = clustered ? 8 + rng_below(&seed, 57) : 1, p;

			if (len > want - have)
				len = want - have;
			p = rng_below(&seed, npages - len + 1);
			in->ranges[in->nranges].gpa = p << PAGE_SHIFT;
			in->ranges[in->nranges++].len = len << PAGE_SHIFT;
			have += len;
		}
		qsort(in->ranges, in->nranges, sizeof(*in->ranges), cmp_range);
		/* Coalesce overlapping or touching runs, then count again. */
		have = 0;
		for (size_t i = 0; i < in->nranges; i++) {
			struct dirty_range *r = &in->ranges[i], *l = k ? &in->ranges[k - 1] : NULL;

			if (l && r->gpa <= l->gpa + l->len) {
				uint64_t end = r->gpa + r->len;

				if (end > l->gpa + l->len)
					l->len = end - l->gpa;
			} else {
				in->ranges[k++] = *r;
			}
		}
		in->nranges = k;
		for (size_t i = 0; i < k; i++)
			have += in->ranges[i].len >> PAGE_SHIFT;
		/* Overshoot can only come from the last top-up: trim the end. */
		while (have > want) {
			struct dirty_range *l = &in->ranges[in->nranges - 1];
			uint64_t cut = have - want, lp = l->len >> PAGE_SHIFT;

			if (cut >= lp) {
				in->nranges--;
				have -= lp;
			} else {
				l->len -= cut << PAGE_SHIFT;
				have -= cut;
			}
		}
	}
	for (size_t i = 0; i < in->nranges; i++) {
		struct tally t = { in->ndirty, in->idxsum };

		tally_add(&t, in->ranges[i].gpa >> PAGE_SHIFT, in->ranges[i].len >> PAGE_SHIFT);
		in->ndirty = t.pages;
		in->idxsum = t.idxsum;
	}
	return 0;
}

/* ---- the flat side ---------------------------------------------------------- */

/* Mark pages [start, start + nr) with bitmap_set_atomic()'s semantics. */
static void flat_set_range(_Atomic uint64_t *map, uint64_t start, uint64_t nr)
{
	uint64_t end = start + nr, w = start / 64, last = (end - 1) / 64;
	uint64_t head = ~0ull << (start % 64), tail = ~0ull >> (63 - (end - 1) % 64);

	if (w == last) {
		atomic_fetch_or(&map[w], head & tail);
		return;
	}
	atomic_fetch_or(&map[w], head);
	/* Whole words need no RMW: the closing fetch_or is the barrier. */
	for (w++; w < last; w++)
		atomic_store_explicit(&map[w], ~0ull, memory_order_relaxed);
	atomic_fetch_or(&map[last], tail);
}

/* cpu_physical_memory_sync_dirty_bitmap(): take each log word, OR it in. */
static uint64_t flat_sync(struct flat *f, uint64_t nwords)
{
	uint64_t newly = 0;

	for (uint64_t k = 0; k < nwords; k++) {
		if (atomic_load_explicit(&f->log[k], memory_order_relaxed)) {
			uint64_t bits = atomic_exchange(&f->log[k], 0);

			/* QEMU counts new pages for its dirty-rate estimate. */
			newly += (uint64_t)__builtin_popcountll(bits & ~f->bmap[k]);
			f->bmap[k] |= bits;
		}
	}
	return newly;
}

/* migration_bitmap_find_dirty() + test_and_clear_bit(), page by page. */
static void flat_drain(struct flat *f, uint64_t npages, struct tally *t)
{
	struct dirty_run runs[RUN_BATCH];
	size_t n = 0;

	for (uint64_t p = find_next_bit(f->bmap, npages, 0); p < npages;
	     p = find_next_bit(f->bmap, npages, p + 1)) {
		uint64_t *w = &f->bmap[p / 64], m = 1ull << (p % 64);

		if (!(*w & m))
			continue;
		*w &= ~m;
		if (n && runs[n - 1].gpa + runs[n - 1].len == p << PAGE_SHIFT) {
			runs[n - 1].len += PAGE_SIZE;
			continue;
		}
		if (n == RUN_BATCH) {
			consume(t, runs, n);
			n = 0;
		}
		runs[n].gpa = p << PAGE_SHIFT;
		runs[n++].len = PAGE_SIZE;
	}
	consume(t, runs, n);
}

/* The log written from the input: set_range per run, or the bitmap as is. */
static void flat_log(struct flat *f, const struct input *in, bool bitmap_in)
{
	if (bitmap_in) {
		memcpy((void *)f->log, in->bitmap, in->npages / 8);
		return;
	}
	for (size_t i = 0; i < in->nranges; i++)
		flat_set_range(f->log, in->ranges[i].gpa >> PAGE_SHIFT,
			       in->ranges[i].len >> PAGE_SHIFT);
}

/* ---- the view side ---------------------------------------------------------- */

static int view_open(uint64_t npages, struct dirty_view **v, struct dirty_claim **cl)
{
	*v = NULL;
	*cl = NULL;
	if (dirty_view_new(v) || dirty_view_add_region(*v, 0, npages << PAGE_SHIFT, PAGE_SIZE, 0) ||
	    dirty_claim_new(*v, cl)) {
		fprintf(stderr, "view-bench: %s\n", dirty_last_error());
		dirty_view_free(*v);
		return -ENOMEM;
	}
	return 0;
}

static void view_close(struct dirty_view *v, struct dirty_claim *cl)
{
	dirty_claim_free(cl);
	dirty_view_free(v);
}

static int view_mark(struct dirty_view *v, const struct input *in, const uint64_t *bitmap)
{
	if (bitmap)
		return dirty_view_merge_bitmap(v, 0, PAGE_SIZE, bitmap, in->npages);
	return dirty_view_mark_ranges(v, in->ranges, in->nranges);
}

static int view_drain(struct dirty_claim *cl, struct tally *t)
{
	struct dirty_run runs[RUN_BATCH];
	ssize_t n;

	while ((n = dirty_claim_next(cl, runs, RUN_BATCH)) > 0)
		consume(t, runs, (size_t)n);
	return (int)n;
}

static int verify(const char *name, const char *what, const struct tally *t,
		  const struct input *in)
{
	if (t->pages == in->ndirty && t->idxsum == in->idxsum)
		return 0;
	fprintf(stderr, "view-bench: %s: %s gave %llu pages, index sum %#llx; the input has %llu, %#llx\n",
		name, what, (unsigned long long)t->pages, (unsigned long long)t->idxsum,
		(unsigned long long)in->ndirty, (unsigned long long)in->idxsum);
	return -EIO;
}

/*
 * One mark + drain case on a fresh view: a warm-up round (faults, caches),
 * then reps timed rounds of each side; floor: memcpy of the page bitmap.
 */
static int run_case(struct bench *b, const struct input *in, bool bitmap_in, struct result *res)
{
	struct dirty_view *v;
	struct dirty_claim *cl;
	uint64_t nwords = in->npages / 64;
	long rss0 = rss_bytes();
	int err = view_open(in->npages, &v, &cl);

	for (int rep = -1; rep < b->reps && !err; rep++) {
		struct tally tv = { 0, 0 }, tf = { 0, 0 }, ts;
		uint64_t t0, t1;

		/* Each side gets a fresh copy, so both start equally cached. */
		if (bitmap_in)
			memcpy(b->f.work, in->bitmap, in->npages / 8);
		chill(b);
		t0 = now_ns();
		err = view_mark(v, in, bitmap_in ? b->f.work : NULL);
		if (!err)
			err = view_drain(cl, &tv);
		t1 = now_ns();
		if (err) {
			fprintf(stderr, "view-bench: %s: %s\n", res->name, dirty_last_error());
			break;
		}
		if (rep >= 0)
			b->tv[rep] = (double)(t1 - t0);

		if (bitmap_in)
			memcpy((void *)b->f.log, in->bitmap, in->npages / 8);
		chill(b);
		t0 = now_ns();
		if (!bitmap_in)
			flat_log(&b->f, in, false);
		/* The sync's count has no page indices: only pages are checked. */
		ts = (struct tally){ flat_sync(&b->f, nwords), in->idxsum };
		flat_drain(&b->f, in->npages, &tf);
		t1 = now_ns();
		if (rep >= 0)
			b->tf[rep] = (double)(t1 - t0);

		chill(b);
		t0 = now_ns();
		memcpy(b->f.floor_dst, bitmap_in ? in->bitmap : b->f.bmap, in->npages / 8);
		/* The copy is never read: keep the compiler from dropping it. */
		__asm__ volatile("" : : "r"(b->f.floor_dst) : "memory");
		if (rep >= 0)
			b->tm[rep] = (double)(now_ns() - t0);

		if ((err = verify(res->name, "view drain", &tv, in)) ||
		    (err = verify(res->name, "flat sync", &ts, in)) ||
		    (err = verify(res->name, "flat drain", &tf, in)))
			break;
	}
	res->view_bytes = rss0 < 0 || rss_bytes() < 0 ? -1 : rss_bytes() - rss0;
	view_close(v, cl);
	if (err)
		return err;
	res->npages = in->npages;
	res->ndirty = in->ndirty;
	res->view_ns = median(b->tv, b->reps);
	res->flat_ns = median(b->tf, b->reps);
	res->floor_ns = median(b->tm, b->reps);
	return 0;
}

/* ---- claimers ----------------------------------------------------------------- */

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	uint64_t seen = 0;

	for (;;) {
		uint64_t g;
		struct dirty_claim *cl;

		while ((g = atomic_load_explicit(&h->go, memory_order_acquire)) == seen)
			cpu_relax();
		if (g == UINT64_MAX)
			return NULL;
		seen = g;
		h->t = (struct tally){ 0, 0 };
		h->err = dirty_claim_new(atomic_load_explicit(&h->view, memory_order_relaxed), &cl);
		if (!h->err) {
			h->err = view_drain(cl, &h->t);
			dirty_claim_free(cl);
		}
		/* Release: the tally is read once done says this round. */
		atomic_store_explicit(&h->done, g, memory_order_release);
	}
}

/* Drain v with k claimers (this thread and, for k = 2, the helper). */
static int drain_with(struct bench *b, struct dirty_view *v, int k, uint64_t round,
		      struct tally *t, double *ns)
{
	struct dirty_claim *cl;
	uint64_t t0, t1;
	int err;

	if ((err = dirty_claim_new(v, &cl)))
		return err;
	atomic_store_explicit(&b->h.view, v, memory_order_relaxed);
	t0 = now_ns();
	if (k == 2)
		atomic_store_explicit(&b->h.go, round, memory_order_release);
	err = view_drain(cl, t);
	while (k == 2 && atomic_load_explicit(&b->h.done, memory_order_acquire) != round)
		cpu_relax();
	t1 = now_ns();
	dirty_claim_free(cl);
	if (k == 2) {
		t->pages += b->h.t.pages;
		t->idxsum += b->h.t.idxsum;
		err = err ? err : b->h.err;
	}
	*ns = (double)(t1 - t0);
	return err;
}

/*
 * The same dirty set drained by one claimer and by two, alternating which
 * goes first each rep; the flat side's sync + drain of the same set as the
 * reference. Results: one row per claimer count.
 */
static int run_claimers(struct bench *b, const struct input *in, struct result *one,
			struct result *two)
{
	struct dirty_view *v;
	struct dirty_claim *cl;
	uint64_t round = 0;
	int err = view_open(in->npages, &v, &cl);

	for (int rep = -1; rep < b->reps && !err; rep++) {
		for (int i = 0; i < 2 && !err; i++) {
			int k = (rep & 1) ? 2 - i : 1 + i;
			struct tally t = { 0, 0 };
			double ns;

			if (!(err = view_mark(v, in, NULL)))
				chill(b);
			if (err || (err = drain_with(b, v, k, ++round, &t, &ns))) {
				fprintf(stderr, "view-bench: claimers: %s\n", dirty_last_error());
				break;
			}
			if (rep >= 0)
				(k == 1 ? b->t1 : b->tv)[rep] = ns;
			err = verify(k == 1 ? one->name : two->name, "claimers' drain", &t, in);
		}
		if (!err) {
			struct tally tf = { 0, 0 };
			uint64_t t0;

			flat_log(&b->f, in, false);
			chill(b);
			t0 = now_ns();
			flat_sync(&b->f, in->npages / 64);
			flat_drain(&b->f, in->npages, &tf);
			if (rep >= 0)
				b->tf[rep] = (double)(now_ns() - t0);
			err = verify(one->name, "flat drain", &tf, in);
		}
	}
	view_close(v, cl);
	if (err)
		return err;
	one->npages = two->npages = in->npages;
	one->ndirty = two->ndirty = in->ndirty;
	one->claimers = 1;
	two->claimers = 2;
	one->view_ns = median(b->t1, b->reps);
	two->view_ns = median(b->tv, b->reps);
	one->flat_ns = two->flat_ns = median(b->tf, b->reps);
	two->speedup = one->view_ns / two->view_ns;
	one->speedup = 1;
	one->view_bytes = two->view_bytes = -1;
	return 0;
}

/* ---- output ------------------------------------------------------------------- */

static void print_json(const struct result *r)
{
	printf("{\"section\":\"%s\",\"case\":\"%s\",\"dirty_pages\":%llu,\"mem_gib\":%g,"
	       "\"view_ns\":%.0f,\"flat_ns\":%.0f,\"ratio_flat_over_view\":%.3f",
	       r->section, r->name, (unsigned long long)r->ndirty,
	       (double)r->npages / (double)GIB_PAGES, r->view_ns, r->flat_ns,
	       r->flat_ns / r->view_ns);
	if (!strcmp(r->section, "fractions"))
		printf(",\"dirty_fraction\":%g", r->fraction);
	if (r->floor_ns > 0)
		printf(",\"floor_ns\":%.0f", r->floor_ns);
	if (r->view_bytes >= 0)
		printf(",\"view_bytes\":%lld", (long long)r->view_bytes);
	if (r->claimers)
		printf(",\"claimers\":%d,\"speedup_over_one_claimer\":%.3f", r->claimers, r->speedup);
	printf("}\n");
}

static void mem_label(char *buf, size_t len, uint64_t npages)
{
	uint64_t gib = npages / GIB_PAGES;

	if (gib >= 1024 && gib % 1024 == 0)
		snprintf(buf, len, "%llu TiB", (unsigned long long)(gib / 1024));
	else
		snprintf(buf, len, "%llu GiB", (unsigned long long)gib);
}

static void print_table(const struct bench *b, const char *section)
{
	bool head = false;

	/* Fractions family by family: runs-* then bitmap-*. */
	for (int i = 0; i < 2 * b->nres; i++) {
		const struct result *r = &b->res[i % b->nres];
		char mem[32], kib[32] = "-";

		if (strcmp(r->section, section))
			continue;
		if (!strcmp(section, "fractions") &&
		    strncmp(r->name, families[i / b->nres], strlen(families[i / b->nres])))
			continue;
		if (strcmp(section, "fractions") && i >= b->nres)
			break;
		mem_label(mem, sizeof(mem), r->npages);
		if (r->view_bytes >= 0)
			snprintf(kib, sizeof(kib), "%.0f", (double)r->view_bytes / 1024);
		if (!head && r->claimers)
			printf("\n%-15s %7s %11s %9s %11s %10s %9s %8s\n", "case", "memory",
			       "dirty pages", "claimers", "drain us", "flat us", "flat/view",
			       "speedup");
		else if (!head)
			printf("\n%-24s %7s %11s %10s %10s %9s %10s %9s %10s\n", "case", "memory",
			       "dirty pages", "view us", "flat us", "flat/view", "floor us",
			       "view/floor", "view KiB");
		head = true;
		if (r->claimers)
			printf("%-15s %7s %11llu %9d %11.1f %10.1f %8.2fx %7.2fx\n", r->name, mem,
			       (unsigned long long)r->ndirty, r->claimers, r->view_ns / 1e3,
			       r->flat_ns / 1e3, r->flat_ns / r->view_ns, r->speedup);
		else
			printf("%-24s %7s %11llu %10.1f %10.1f %8.2fx %10.1f %9.2fx %10s\n", r->name,
			       mem, (unsigned long long)r->ndirty, r->view_ns / 1e3, r->flat_ns / 1e3,
			       r->flat_ns / r->view_ns, r->floor_ns / 1e3, r->view_ns / r->floor_ns,
			       kib);
	}
}

static const struct result *find(const struct bench *b, const char *section, const char *name,
				 uint64_t npages, uint64_t ndirty, int claimers)
{
	for (int i = 0; i < b->nres; i++) {
		const struct result *r = &b->res[i];

		if (!strcmp(r->section, section) && !strncmp(r->name, name, strlen(name)) &&
		    (!npages || r->npages == npages) && (!ndirty || r->ndirty == ndirty) &&
		    r->claimers == claimers)
			return r;
	}
	return NULL;
}

static void print_targets(const struct bench *b, uint64_t small, uint64_t mid, uint64_t big)
{
	const struct result *worst = NULL;
	char ms[32], mm[32], mb[32];

	mem_label(ms, sizeof(ms), small);
	mem_label(mm, sizeof(mm), mid);
	mem_label(mb, sizeof(mb), big);
	printf("\n");
	for (int i = 0; i < b->nres; i++) {
		const struct result *r = &b->res[i];

		if (!strcmp(r->section, "fractions") &&
		    (!worst || r->flat_ns / r->view_ns < worst->flat_ns / worst->view_ns))
			worst = r;
	}
	if (worst)
		printf("target flat/view >= 1.0x on every fraction case: worst %.2fx (%s) \u2014 %s\n",
		       worst->flat_ns / worst->view_ns, worst->name,
		       worst->flat_ns >= worst->view_ns ? "met" : "not met");
	for (int fam = 0; fam < 2; fam++) {
		char name[32];
		const struct result *r;

		snprintf(name, sizeof(name), "%s-100%%", families[fam]);
		if ((r = find(b, "fractions", name, 0, 0, 0)))
			printf("target view/floor <= 2x at 100%% (%s): %.2fx \u2014 %s\n", families[fam],
			       r->view_ns / r->floor_ns, r->view_ns <= 2 * r->floor_ns ? "met" : "not met");
	}
	for (int p = 0; p < 2; p++) {
		for (int c = 0; c < 3; c++) {
			const struct result *s = find(b, "sets", set_patterns[p], small, set_counts[c], 0);
			const struct result *l = find(b, "sets", set_patterns[p], big, set_counts[c], 0);

			if (s && l && big > small)
				printf("target view at %s <= 2x view at %s (%s, %llu pages): %.2fx \u2014 %s\n",
				       mb, ms, set_patterns[p], (unsigned long long)set_counts[c],
				       l->view_ns / s->view_ns, l->view_ns <= 2 * s->view_ns ? "met" : "not met");
		}
	}
	for (int p = 0; p < 2; p++) {
		const struct result *r = find(b, "sets", set_patterns[p], mid, 1000, 0);
		const struct result *l = find(b, "sets", set_patterns[p], big, 1000, 0);

		if (r && mid == 1024 * GIB_PAGES)
			printf("target flat/view >= 20x at %s with 1000 pages (%s): %.1fx \u2014 %s\n", mm,
			       set_patterns[p], r->flat_ns / r->view_ns,
			       r->flat_ns >= 20 * r->view_ns ? "met" : "not met");
		if (l && big == 16384 * GIB_PAGES)
			printf("target flat/view >= 100x at %s with 1000 pages (%s): %.1fx \u2014 %s\n", mb,
			       set_patterns[p], l->flat_ns / l->view_ns,
			       l->flat_ns >= 100 * l->view_ns ? "met" : "not met");
	}
	for (int f = 2; f < NFRAC; f++) {
		char name[32];
		const struct result *r;

		snprintf(name, sizeof(name), "claimers-%s", frac_labels[f]);
		if ((r = find(b, "claimers", name, 0, 0, 2)))
			printf("target 2 claimers >= 1.6x one at %s: %.2fx \u2014 %s\n", frac_labels[f],
			       r->speedup, r->speedup >= 1.6 ? "met" : "not met");
	}
}

static void usage(FILE *f)
{
	fputs("usage: view-bench [--json] [--reps N] [--gib N] [--set-max-gib N]\n"
"                  [--only fractions|sets|claimers] [--quick] [--help]\n\n"
"Times the libdirty view (mark the input, drain it with claim cursors)\n"
"against a flat bitmap used as QEMU does (atomic set into a log, exchange\n"
"into the migration bitmap, find_next_bit + test_and_clear_bit per page)\n"
"and against memcpy of the page bitmap, the memory-bandwidth floor.\n\n"
"  fractions  0.01%, 1%, 10%, 100% of --gib GiB of 4 KiB pages, uniform\n"
"             random (fixed seed), as runs (dirty_view_mark_ranges) or as\n"
"             a little-endian bitmap (dirty_view_merge_bitmap)\n"
"  sets       1000, 10000, 100000 dirty pages at 64 GiB, 1 TiB, 16 TiB:\n"
"             random single pages (runs-*) or runs of 8-64 (clustered-*)\n"
"  claimers   10% and 100% of --gib GiB drained by 1 and by 2 threads\n\n"
"  --json          one JSON object per case on stdout instead of the tables\n"
"  --reps N        timed rounds per case after one warm-up (default 5);\n"
"                  each column is the median\n"
"  --gib N         memory of the fractions and claimers cases (default 64)\n"
"  --set-max-gib N skip set sizes above N GiB (default 16384)\n"
"  --only S        one section\n"
"  --quick         fractions at 4 GiB, sets at 4 and 64 GiB, 2 reps unless\n"
"                  given: the make check smoke test\n"
"  --help          this text\n\n"
"Columns: view us (mark + drain on a fresh view); flat us (set + sync +\n"
"drain); flat/view (above 1: the view is faster); floor us (memcpy of the\n"
"page bitmap); view KiB (memory the view's bitmap made resident). Claimers:\n"
"drain us (the view drained by that many threads, marked before);\n"
"flat us (sync + drain, one thread); speedup (one claimer's time / this).\n"
"A size whose flat bitmaps do not fit in half of the available memory is\n"
"skipped with a line saying so. One line per target follows. Exit 1 if a\n"
"side drained other pages than it was given (or on a library error), 2 on\n"
"a usage error.\n", f);
}

static int run_fractions(struct bench *b, uint64_t npages)
{
	int err = 0;

	for (int fi = 0; fi < NFRAC && !err; fi++) {
		struct input in;

		/* One seed per fraction: both families see the very same pages. */
		if ((err = input_fraction(&in, npages, fractions[fi], 0x6c6962646972747aull + (uint64_t)fi)))
			fprintf(stderr, "view-bench: out of memory building the input\n");
		for (int fam = 0; fam < 2 && !err; fam++) {
			struct result *r = &b->res[b->nres];

			snprintf(r->name, sizeof(r->name), "%s-%s", families[fam], frac_labels[fi]);
			r->section = "fractions";
			r->fraction = fractions[fi];
			if (isatty(STDERR_FILENO))
				fprintf(stderr, "view-bench: %s: %llu pages in %zu runs...\n", r->name,
					(unsigned long long)in.ndirty, in.nranges);
			if (!(err = run_case(b, &in, fam == 1, r)))
				b->nres++;
		}
		input_free(&in);
	}
	return err;
}

static int run_sets(struct bench *b, const uint64_t *sizes, int nsizes)
{
	int err = 0;

	for (int s = 0; s < nsizes && !err; s++) {
		for (int p = 0; p < 2 && !err; p++) {
			for (int c = 0; c < 3 && !err; c++) {
				struct result *r = &b->res[b->nres];
				struct input in;
				char mem[32];

				if (set_counts[c] > sizes[s] / 4)
					continue;
				mem_label(mem, sizeof(mem), sizes[s]);
				snprintf(r->name, sizeof(r->name), "%s-%llu", set_patterns[p],
					 (unsigned long long)set_counts[c]);
				r->section = "sets";
				if ((err = input_set(&in, sizes[s], set_counts[c], p == 1,
						     0x7365747300ull + (uint64_t)c))) {
					fprintf(stderr, "view-bench: out of memory building the input\n");
					break;
				}
				if (isatty(STDERR_FILENO))
					fprintf(stderr, "view-bench: %s at %s: %zu runs...\n", r->name, mem,
						in.nranges);
				if (!(err = run_case(b, &in, false, r)))
					b->nres++;
				input_free(&in);
			}
		}
	}
	return err;
}

static int run_claimer_cases(struct bench *b, uint64_t npages)
{
	int err = 0;

	if ((err = -pthread_create(&b->h.thread, NULL, helper_main, &b->h))) {
		fprintf(stderr, "view-bench: cannot start the second claimer\n");
		return err;
	}
	for (int fi = 2; fi < NFRAC && !err; fi++) {
		struct result *one = &b->res[b->nres], *two = one + 1;
		struct input in;

		if ((err = input_fraction(&in, npages, fractions[fi], 0x6c6962646972747aull + (uint64_t)fi))) {
			fprintf(stderr, "view-bench: out of memory building the input\n");
			break;
		}
		snprintf(one->name, sizeof(one->name), "claimers-%s", frac_labels[fi]);
		snprintf(two->name, sizeof(two->name), "claimers-%s", frac_labels[fi]);
		one->section = two->section = "claimers";
		one->fraction = two->fraction = fractions[fi];
		if (isatty(STDERR_FILENO))
			fprintf(stderr, "view-bench: %s: 1 and 2 claimers...\n", one->name);
		if (!(err = run_claimers(b, &in, one, two)))
			b->nres += 2;
		input_free(&in);
	}
	atomic_store_explicit(&b->h.go, UINT64_MAX, memory_order_release);
	pthread_join(b->h.thread, NULL);
	return err;
}

int main(int argc, char **argv)
{
	static struct bench b;
	uint64_t sizes[3] = { 64 * GIB_PAGES, 1024 * GIB_PAGES, 16384 * GIB_PAGES };
	uint64_t npages, maxwords = 0, workwords = 0;
	bool quick = false, do_frac, do_sets, do_claim;
	double gib = 0, reps = 0, set_max = 16384;
	const char *only = NULL;
	int nsizes = 0, err = 0;
	char *mem = NULL;
	size_t memlen = 0;

	const struct opt opts[] = {
		OPT_FLAG_("--json", &b.json),
		OPT_FLAG_("--quick", &quick),
		OPT_NUM_("--reps", &reps, 1, 1000, true),
		/* The cap keeps the index sums' products inside 64 bits. */
		OPT_NUM_("--gib", &gib, 1, 4096, true),
		OPT_NUM_("--set-max-gib", &set_max, 1, 16384, true),
		OPT_STR_("--only", &only),
	};
	int rc = opts_parse("view-bench", argc, argv, 1, opts, sizeof(opts) / sizeof(opts[0]), usage);

	if (rc)
		return rc == OPTS_HELP ? 0 : 2;
	if (only && strcmp(only, "fractions") && strcmp(only, "sets") && strcmp(only, "claimers")) {
		fprintf(stderr, "view-bench: --only takes fractions, sets or claimers, not '%s'\n\n", only);
		usage(stderr);
		return 2;
	}
	do_frac = !only || !strcmp(only, "fractions");
	do_sets = !only || !strcmp(only, "sets");
	do_claim = !only || !strcmp(only, "claimers");
	b.reps = (int)(reps ? reps : quick ? 2 : 5);
	gib = gib ? gib : quick ? 4 : 64;
	npages = (uint64_t)gib * GIB_PAGES;
	if (quick) {
		sizes[0] = 4 * GIB_PAGES;
		sizes[1] = 64 * GIB_PAGES;
		sizes[2] = 0;
	}
	/* What RAM allows: the flat side's three bitmaps, in half of what is free. */
	for (int s = 0; s < 3 && do_sets; s++) {
		char label[32];

		if (!sizes[s])
			continue;
		mem_label(label, sizeof(label), sizes[s]);
		if (sizes[s] > (uint64_t)set_max * GIB_PAGES) {
			fprintf(b.json ? stderr : stdout, "SKIP: sets at %s: above --set-max-gib %.0f\n",
				label, set_max);
			continue;
		}
		if (3 * sizes[s] / 8 > mem_available() / 2) {
			fprintf(b.json ? stderr : stdout, "SKIP: sets at %s: the flat side needs %llu MiB "
				"of bitmaps, more than half of the %llu MiB available\n", label,
				(unsigned long long)(3 * sizes[s] / 8 >> 20),
				(unsigned long long)(mem_available() >> 20));
			continue;
		}
		sizes[nsizes++] = sizes[s];
	}
	for (int s = 0; s < nsizes; s++)
		maxwords = sizes[s] / 64 > maxwords ? sizes[s] / 64 : maxwords;
	if ((do_frac || do_claim) && npages / 64 > maxwords)
		maxwords = npages / 64;
	if (do_frac)
		workwords = npages / 64;

	/* The bitmaps, each page-aligned, written now: no page fault is timed. */
	memlen = (3 * maxwords + workwords) * sizeof(uint64_t) + CHILL_BYTES;
	mem = mmap(NULL, memlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	b.tv = calloc(4 * (size_t)b.reps, sizeof(double));
	if (mem == MAP_FAILED || !b.tv) {
		fprintf(stderr, "view-bench: out of memory\n");
		mem = NULL;
		err = -ENOMEM;
		goto out;
	}
	memset(mem, 0, memlen);
	b.f.log = (_Atomic uint64_t *)mem;
	b.f.bmap = (uint64_t *)mem + maxwords;
	b.f.floor_dst = (uint64_t *)mem + 2 * maxwords;
	b.f.work = (uint64_t *)mem + 3 * maxwords;
	b.chill = (uint64_t *)mem + 3 * maxwords + workwords;
	b.f.cap_words = maxwords;
	b.tf = b.tv + b.reps;
	b.tm = b.tf + b.reps;
	b.t1 = b.tm + b.reps;

	if (!b.json)
		printf("4 KiB pages, median of %d reps; fractions and claimers at %.0f GiB\n", b.reps, gib);
	if (do_frac && !err)
		err = run_fractions(&b, npages);
	if (do_sets && !err)
		err = run_sets(&b, sizes, nsizes);
	if (do_claim && !err)
		err = run_claimer_cases(&b, npages);
	if (err)
		goto out;
	if (b.json) {
		for (int i = 0; i < b.nres; i++)
			print_json(&b.res[i]);
	} else {
		print_table(&b, "fractions");
		print_table(&b, "sets");
		print_table(&b, "claimers");
		print_targets(&b, nsizes ? sizes[0] : 0, nsizes > 1 ? sizes[1] : 0,
			      nsizes ? sizes[nsizes - 1] : 0);
	}
out:
	if (mem)
		munmap(mem, memlen);
	free(b.tv);
	return err ? 1 : 0;
}
