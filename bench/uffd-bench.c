/* SPDX-License-Identifier: MIT */
/*
 * uffd-bench.c - what the userfaultfd source costs: a harvest
 * (PAGEMAP_SCAN that reports written runs and re-protects them, plus
 * marking them into the view) per GiB of tracked memory at 0.1 / 1 / 10 /
 * 100 % of its pages written, and what a tracked write costs the writer:
 * the first write to a page after a harvest (a write-protect fault the
 * kernel resolves itself) against a write to a page already written.
 *
 * Reproduce:  make bench && build/bin/uffd-bench [--json]
 *             build/bin/uffd-bench --quick      (smoke test, under 3 s)
 *
 * Memory is what the harness uses for guest RAM: a memfd mapped shared,
 * every page populated before tracking starts. Writes are single 8-byte
 * stores, one per chosen page, made by this thread. By default nothing
 * else runs, so the TLB flush of a re-protection stays on this CPU; with
 * --busy a second thread keeps reading the tracked memory, as a VMM's
 * other threads would, and every flush becomes an IPI to its CPU. It
 * reports what it measures and never fails on a slow number; it exits 1
 * when a harvest hands out other pages than the ones written (or on a
 * library error), 2 on a usage error, 77 when the kernel lacks the
 * feature.
 */
#include <errno.h>
#include <math.h>
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
#define NFRAC 5

static const double fractions[NFRAC] = { 0.0, 0.001, 0.01, 0.10, 1.0 };
static const char *const frac_labels[NFRAC] = { "0%", "0.1%", "1%", "10%", "100%" };

struct bench {
	uint64_t npages, bytes;
	double gib;
	int reps;
	uint8_t *mem;		/* the tracked mapping */
	struct dirty_view *view;
	struct dirty_uffd *u;
	struct dirty_claim *cl;
	double *t, *t2;		/* per-rep ns */
	bool busy;
	_Atomic bool busy_stop;
	pthread_t busy_thread;
};

struct harvest_result {
	char name[32];
	double fraction;
	uint64_t pages, runs;
	double sync_ns, drain_ns;
};

struct fault_result {
	uint64_t pages;
	double first_ns, again_ns;	/* per page */
};

/* Uniformly random pages (fixed seed), in ascending order. */
static uint64_t *pick_pages(uint64_t npages, double fraction, uint64_t seed,
			    uint64_t *count, uint64_t *runs)
{
	uint64_t want = (uint64_t)(fraction * (double)npages + 0.5), n = 0;
	uint64_t *bits = calloc((npages + 63) / 64, 8), *list;

	*count = *runs = 0;
	if (!bits)
		return NULL;
	if (fraction >= 1.0) {
		want = npages;
		memset(bits, 0xff, (npages + 63) / 64 * 8);
	} else {
		for (uint64_t got = 0; got < want;) {
			uint64_t p = splitmix64(&seed) % npages;

			if (!(bits[p / 64] >> (p % 64) & 1)) {
				bits[p / 64] |= 1ull << (p % 64);
				got++;
			}
		}
	}
	list = calloc(want ? want : 1, sizeof(*list));
	if (!list) {
		free(bits);
		return NULL;
	}
	for (uint64_t p = 0; p < npages; p++) {
		if (!(bits[p / 64] >> (p % 64) & 1))
			continue;
		if (!n || list[n - 1] != p - 1)
			(*runs)++;
		list[n++] = p;
	}
	free(bits);
	*count = n;
	return list;
}

static void write_pages(uint8_t *mem, const uint64_t *list, uint64_t n, uint64_t v)
{
	for (uint64_t i = 0; i < n; i++)
		*(volatile uint64_t *)(mem + (list[i] << PAGE_SHIFT)) = v;
}

/* Drain the view; it must hand out exactly the n pages of list. */
static int drain_check(struct bench *b, const uint64_t *list, uint64_t n,
		       const char *name)
{
	struct dirty_run runs[RUN_BATCH];
	uint64_t i = 0, bad = 0;
	ssize_t got;

	while ((got = dirty_claim_next(b->cl, runs, RUN_BATCH)) > 0) {
		for (ssize_t k = 0; k < got; k++) {
			for (uint64_t p = runs[k].gpa >> PAGE_SHIFT;
			     p < (runs[k].gpa + runs[k].len) >> PAGE_SHIFT; p++) {
				if (i >= n || list[i] != p)
					bad++;
				i++;
			}
		}
	}
	if (got < 0 || bad || i != n) {
		fprintf(stderr, "uffd-bench: %s: the harvest handed out %llu pages (%llu not written); %llu were written\n",
			name, (unsigned long long)i, (unsigned long long)bad,
			(unsigned long long)n);
		return -EIO;
	}
	return 0;
}

static int sync_checked(struct bench *b)
{
	int err = dirty_view_sync(b->view);

	if (err)
		fprintf(stderr, "uffd-bench: sync: %s\n", dirty_last_error());
	return err;
}

/* One fraction: warm-up, then reps of write (untimed), harvest, drain. */
static int run_harvest(struct bench *b, int fi, struct harvest_result *r)
{
	uint64_t *list = pick_pages(b->npages, fractions[fi], 0x7566666462656e63ull + (uint64_t)fi,
				    &r->pages, &r->runs);

	if (!list) {
		fprintf(stderr, "uffd-bench: out of memory\n");
		return -ENOMEM;
	}
	snprintf(r->name, sizeof(r->name), "harvest-%s", frac_labels[fi]);
	r->fraction = fractions[fi];
	for (int rep = -1; rep < b->reps; rep++) {
		uint64_t t0, t1, t2;
		int err;

		write_pages(b->mem, list, r->pages, (uint64_t)rep + 2);
		t0 = now_ns();
		err = sync_checked(b);
		t1 = now_ns();
		if (!err)
			err = drain_check(b, list, r->pages, r->name);
		t2 = now_ns();
		if (err) {
			free(list);
			return err;
		}
		if (rep >= 0) {
			b->t[rep] = (double)(t1 - t0);
			b->t2[rep] = (double)(t2 - t1);
		}
	}
	r->sync_ns = median(b->t, b->reps);
	r->drain_ns = median(b->t2, b->reps);
	free(list);
	return 0;
}

/* First write to each of n pages after a harvest, then a second write. */
static int run_faults(struct bench *b, struct fault_result *r)
{
	uint64_t *list = malloc(r->pages * sizeof(*list));
	/* Spread over the whole memory, in order. */
	uint64_t stride = b->npages / r->pages;

	if (!list) {
		fprintf(stderr, "uffd-bench: out of memory\n");
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < r->pages; i++)
		list[i] = i * stride;
	for (int rep = -1; rep < b->reps; rep++) {
		uint64_t t0, t1, t2;
		int err = sync_checked(b);	/* everything protected */

		if (!err)
			while (dirty_claim_next(b->cl, (struct dirty_run[RUN_BATCH]){ 0 }, RUN_BATCH) > 0)
				;
		if (err) {
			free(list);
			return err;
		}
		t0 = now_ns();
		write_pages(b->mem, list, r->pages, 0xf0 + (uint64_t)rep);
		t1 = now_ns();
		write_pages(b->mem, list, r->pages, 0xe0 + (uint64_t)rep);
		t2 = now_ns();
		if (rep >= 0) {
			b->t[rep] = (double)(t1 - t0) / (double)r->pages;
			b->t2[rep] = (double)(t2 - t1) / (double)r->pages;
		}
	}
	r->first_ns = median(b->t, b->reps);
	r->again_ns = median(b->t2, b->reps);
	/* Leave nothing pending for whoever comes next. */
	if (!sync_checked(b))
		drain_check(b, list, r->pages, "fault-reset");
	free(list);
	return 0;
}

/* --busy: read the tracked memory from another thread (reads never fault). */
static void *busy_main(void *arg)
{
	struct bench *b = arg;
	uint64_t seed = 42, sum = 0;

	while (!atomic_load_explicit(&b->busy_stop, memory_order_relaxed))
		for (int i = 0; i < 1024; i++)
			sum += *(volatile uint64_t *)(b->mem + ((splitmix64(&seed) % b->npages) << PAGE_SHIFT));
	return (void *)(uintptr_t)sum;
}

static void usage(FILE *f)
{
	fputs("usage: uffd-bench [--json] [--reps N] [--gib N] [--quick] [--busy] [--help]\n\n"
"Times the userfaultfd source (hv-adapters/uffd.c) on a memfd mapped\n"
"shared, every page populated, as the harness maps guest RAM:\n"
"  harvest-F   a dirty_view_sync() after writing fraction F of the 4 KiB\n"
"              pages (uniformly random, fixed seed; 0% is an idle harvest):\n"
"              PAGEMAP_SCAN reporting written runs and re-protecting them,\n"
"              plus marking them into the view. The drain that follows is\n"
"              timed apart and checked: exactly the written pages.\n"
"  write-fault the first 8-byte store to a page after a harvest (a\n"
"              write-protect fault resolved in the kernel, WP_ASYNC) and a\n"
"              second store to the same page (no fault), per page, over\n"
"              pages spread evenly through the memory.\n\n"
"  --json    one JSON object per case on stdout instead of the table\n"
"  --reps N  timed rounds per case after one warm-up (default 5); each\n"
"            figure is the median\n"
"  --gib N   tracked memory in GiB, fractions allowed (default 1)\n"
"  --quick   0.25 GiB and 2 reps unless given: a smoke run under 3 s\n"
"  --busy    a second thread reads random tracked pages throughout, so\n"
"            each re-protection's TLB flush must reach its CPU (as with a\n"
"            VMM's vCPU and device threads); default: this thread only\n"
"  --help    this text\n\n"
"Harvest columns: case; written % of pages; written pages; runs they form;\n"
"harvest us; harvest us per GiB tracked; ns per written page; drain us.\n"
"Write-fault columns: pages; first write ns/page; second write ns/page;\n"
"their difference (the fault). Exit 1 if a harvest hands out other pages\n"
"than the ones written (or on a library error), 2 on a usage error; when\n"
"the kernel lacks WP-async userfaultfd or PAGEMAP_SCAN it says so and\n"
"exits 77.\n", f);
}

static void print_results(const struct harvest_result *h, const struct fault_result *f,
			  bool json, const struct bench *b)
{
	if (!json)
		printf("%g GiB memfd (shared), %llu pages of 4 KiB, all populated; median of %d reps;\n"
		       "%s\n\n"
		       "%-13s %8s %10s %9s %11s %11s %9s %10s\n", b->gib,
		       (unsigned long long)b->npages, b->reps,
		       b->busy ? "a second thread reads the memory throughout (--busy)" :
		       "no other thread runs (--busy adds one)", "case", "written %",
		       "pages", "runs", "harvest us", "us/GiB", "ns/page", "drain us");
	for (int i = 0; i < NFRAC; i++) {
		const struct harvest_result *r = &h[i];
		double per_page = r->pages ? r->sync_ns / (double)r->pages : 0;

		if (json)
			printf("{\"case\":\"%s\",\"written_fraction\":%g,\"pages\":%llu,\"runs\":%llu,"
			       "\"harvest_ns\":%.0f,\"harvest_us_per_gib\":%.1f,\"ns_per_written_page\":%.1f,"
			       "\"drain_ns\":%.0f,\"gib\":%g,\"busy\":%s}\n", r->name, r->fraction,
			       (unsigned long long)r->pages, (unsigned long long)r->runs,
			       r->sync_ns, r->sync_ns / 1e3 / b->gib, per_page, r->drain_ns,
			       b->gib, b->busy ? "true" : "false");
		else
			printf("%-13s %8g %10llu %9llu %11.1f %11.1f %9.1f %10.1f\n", r->name,
			       r->fraction * 100, (unsigned long long)r->pages,
			       (unsigned long long)r->runs, r->sync_ns / 1e3,
			       r->sync_ns / 1e3 / b->gib, per_page, r->drain_ns / 1e3);
	}
	if (json) {
		printf("{\"case\":\"write-fault\",\"pages\":%llu,\"first_write_ns\":%.1f,"
		       "\"rewrite_ns\":%.1f,\"fault_ns\":%.1f,\"busy\":%s}\n",
		       (unsigned long long)f->pages, f->first_ns, f->again_ns,
		       f->first_ns - f->again_ns, b->busy ? "true" : "false");
		return;
	}
	printf("\n%-13s %10s %16s %14s %10s\n", "case", "pages", "first write ns",
	       "rewrite ns", "fault ns");
	printf("%-13s %10llu %16.1f %14.1f %10.1f\n", "write-fault",
	       (unsigned long long)f->pages, f->first_ns, f->again_ns,
	       f->first_ns - f->again_ns);
}

int main(int argc, char **argv)
{
	struct harvest_result h[NFRAC];
	struct fault_result f = { 0 };
	struct bench b = { 0 };
	bool json = false, quick = false;
	double gib = 0, reps = 0;
	int fd = -1, err = 0;

	const struct opt opts[] = {
		OPT_FLAG_("--json", &json),
		OPT_FLAG_("--quick", &quick),
		OPT_FLAG_("--busy", &b.busy),
		OPT_NUM_("--reps", &reps, 1, 1000, true),
		OPT_NUM_("--gib", &gib, 1.0 / 64, 1024, false),
	};

	if ((err = opts_parse("uffd-bench", argc, argv, 1, opts, sizeof(opts) / sizeof(opts[0]), usage)))
		return err == OPTS_HELP ? 0 : 2;
	if (dirty_uffd_probe() != 0) {
		fprintf(stderr, "uffd-bench: %s\n", dirty_last_error());
		return 77;
	}
	b.reps = (int)(reps ? reps : quick ? 2 : 5);
	b.gib = gib ? gib : quick ? 0.25 : 1;
	b.npages = (uint64_t)(b.gib * (double)(1ull << (30 - PAGE_SHIFT)));
	b.bytes = b.npages << PAGE_SHIFT;
	f.pages = b.npages < 65536 ? b.npages : 65536;
	b.t = calloc(2 * (size_t)b.reps, sizeof(double));
	if (!b.t) {
		fprintf(stderr, "uffd-bench: out of memory\n");
		return 1;
	}
	b.t2 = b.t + b.reps;

	fd = memfd_create("uffd-bench-guest", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)b.bytes) < 0 ||
	    (b.mem = mmap(NULL, b.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		fprintf(stderr, "uffd-bench: cannot map a %g GiB memfd: %s\n", b.gib, strerror(errno));
		b.mem = NULL;
		err = -errno;
		goto out;
	}
	memset(b.mem, 1, b.bytes);	/* populated guest RAM, faulted in now */
	if ((err = dirty_view_new(&b.view)) ||
	    (err = dirty_view_add_region(b.view, 0, b.bytes, PAGE_SIZE, 0)) ||
	    (err = dirty_uffd_create(b.view, &b.u)) ||
	    (err = dirty_uffd_add_range(b.u, b.mem, b.bytes, 0)) ||
	    (err = dirty_claim_new(b.view, &b.cl)) ||
	    (err = dirty_view_start(b.view))) {
		fprintf(stderr, "uffd-bench: %s\n", dirty_last_error());
		goto out;
	}
	while (dirty_claim_next(b.cl, (struct dirty_run[RUN_BATCH]){ 0 }, RUN_BATCH) > 0)
		;	/* the first round: everything */

	if (b.busy && (err = -pthread_create(&b.busy_thread, NULL, busy_main, &b))) {
		fprintf(stderr, "uffd-bench: cannot start the --busy thread: %s\n", strerror(-err));
		b.busy = false;
		goto out;
	}
	for (int fi = 0; fi < NFRAC && !err; fi++) {
		if (isatty(STDERR_FILENO) && !json)
			fprintf(stderr, "uffd-bench: harvest at %s written...\n", frac_labels[fi]);
		err = run_harvest(&b, fi, &h[fi]);
	}
	if (!err)
		err = run_faults(&b, &f);
	if (b.busy) {
		atomic_store(&b.busy_stop, true);
		pthread_join(b.busy_thread, NULL);
	}
	if (!err)
		print_results(h, &f, json, &b);
out:
	dirty_claim_free(b.cl);
	dirty_view_free(b.view);	/* destroys the source */
	if (b.mem)
		munmap(b.mem, b.bytes);
	if (fd >= 0)
		close(fd);
	free(b.t);
	return err ? 1 : 0;
}
