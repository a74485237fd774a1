/* SPDX-License-Identifier: MIT */
/*
 * test_uffd.c - the userfaultfd source (hv-adapters/uffd.c) against the
 * running kernel: which pages the view hands out after each harvest.
 *
 * Cases (CK_RUN_CASE=<name> runs one):
 *   exact_sets      for memfd, anonymous shared and anonymous private
 *                   memory: start marks every page; then each harvest
 *                   reports exactly the pages written through the tracked
 *                   mapping since the previous one (reads excluded), an
 *                   idle harvest reports nothing (the re-protection
 *                   works), and a page never populated before start, one
 *                   populated only through the second mapping and one only
 *                   read are each reported after their first write;
 *                   private pages dropped with MADV_DONTNEED (now zeros)
 *                   are reported;
 *   dma_invisible   the guest memfd mapped twice, as the harness does:
 *                   writes through the second ("DMA") mapping are never
 *                   reported, writes through the tracked one always are;
 *   racing_writers  writer threads stamp random pages (write, then record)
 *                   while the main thread harvests round after round and
 *                   copies each reported page to a "destination"; a DMA
 *                   thread writes a page set of its own through the second
 *                   mapping. After the writers stop and a final harvest,
 *                   every page's destination copy equals its last stamp (a
 *                   write racing a scan lands in that harvest or the next),
 *                   every report is backed by a write since the page's
 *                   previous report, and no DMA-only page was reported;
 *   ranges          add while tracking (all dirty), remove while tracking
 *                   (last writes harvested), stop (no more reports, no
 *                   sync work), bad arguments and their messages;
 *   error_all_dirty a range replaced behind the source's back makes the
 *                   scan fail: every page is marked and the error says why;
 *   huge_pages      hugetlbfs memory if the system has huge pages, else an
 *                   anonymous THP: written huge pages reported, untouched
 *                   ones not, an idle harvest empty. Skipped with the
 *                   reason printed when neither is available. With a THP,
 *                   a whole huge page dropped with MADV_DONTNEED (no page
 *                   table left) is reported in full.
 *
 * The whole binary is skipped (77) with the probe's message when the
 * running kernel lacks WP-async userfaultfd or PAGEMAP_SCAN.
 * DIRTY_TEST_SCALE shrinks the racing case (0.2 under TSAN);
 * DIRTY_TEST_SEED replays its random choices (not its thread timing).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "libdirty.h"
#include "compat.h"
#include "testutil.h"

#define PS 4096ull
#define HUGE_2M (2ull << 20)
#define GPA_BASE 0x100000000ull
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t base_seed;

/* ---- memory ------------------------------------------------------------- */

enum mem_kind { MEM_MEMFD, MEM_SHARED_ANON, MEM_PRIVATE_ANON, MEM_KINDS };
static const char *const kind_names[MEM_KINDS] = { "memfd", "shared-anon", "private-anon" };

struct mem {
	enum mem_kind kind;
	uint64_t len;
	int fd;			/* memfd only */
	uint8_t *cpu;		/* the tracked mapping */
	uint8_t *dma;		/* memfd only: a second mapping of the same pages */
};

static void mem_new(struct mem *m, enum mem_kind kind, uint64_t len)
{
	memset(m, 0, sizeof(*m));
	m->kind = kind;
	m->len = len;
	m->fd = -1;
	if (kind == MEM_MEMFD) {
		m->fd = memfd_create("uffd-test-guest", MFD_CLOEXEC);
		ck_assert_int_ge(m->fd, 0);
		ck_assert_int_eq(ftruncate(m->fd, (off_t)len), 0);
		m->cpu = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
		m->dma = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
		ck_assert_ptr_ne(m->dma, MAP_FAILED);
	} else {
		m->cpu = mmap(NULL, len, PROT_READ | PROT_WRITE,
			      (kind == MEM_SHARED_ANON ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
			      -1, 0);
	}
	ck_assert_ptr_ne(m->cpu, MAP_FAILED);
}

static void mem_free(struct mem *m)
{
	munmap(m->cpu, m->len);
	if (m->dma)
		munmap(m->dma, m->len);
	if (m->fd >= 0)
		close(m->fd);
}

static void poke(uint8_t *base, uint64_t page, uint64_t v)
{
	__atomic_store_n((uint64_t *)(base + page * PS), v, __ATOMIC_RELAXED);
}

static uint64_t peek(const uint8_t *base, uint64_t page)
{
	return __atomic_load_n((const uint64_t *)(base + page * PS), __ATOMIC_RELAXED);
}

/* ---- rig: view + source over one memory ------------------------------- */

struct rig {
	struct dirty_view *v;
	struct dirty_uffd *u;
	struct dirty_claim *cl;
	struct mem m;
	uint64_t npages;
	uint8_t *seen;		/* per page: times handed out by the last drain */
};

static void rig_up(struct rig *r, enum mem_kind kind, uint64_t npages)
{
	memset(r, 0, sizeof(*r));
	r->npages = npages;
	mem_new(&r->m, kind, npages * PS);
	r->seen = calloc(npages, 1);
	ck_assert_ptr_nonnull(r->seen);
	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, GPA_BASE, npages * PS, PS, 0), 0);
	ck_assert_msg(dirty_uffd_create(r->v, &r->u) == 0, "create: %s", dirty_last_error());
	ck_assert_msg(dirty_uffd_add_range(r->u, r->m.cpu, npages * PS, GPA_BASE) == 0,
		      "add_range(%s): %s", kind_names[kind], dirty_last_error());
	ck_assert_int_eq(dirty_claim_new(r->v, &r->cl), 0);
}

static void rig_down(struct rig *r)
{
	dirty_claim_free(r->cl);
	dirty_view_free(r->v);	/* destroys the source */
	mem_free(&r->m);
	free(r->seen);
}

/* Drain everything dirty into r->seen; returns the number of pages. */
static uint64_t drain(struct rig *r)
{
	struct dirty_run runs[64];
	uint64_t total = 0, outside = 0, twice = 0;
	ssize_t n;

	/* Check's assertions cost a write(2) each: count, assert once. */
	memset(r->seen, 0, r->npages);
	while ((n = dirty_claim_next(r->cl, runs, 64)) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			if (runs[i].gpa < GPA_BASE ||
			    runs[i].gpa + runs[i].len > GPA_BASE + r->npages * PS) {
				outside++;
				continue;
			}
			for (uint64_t p = (runs[i].gpa - GPA_BASE) / PS;
			     p < (runs[i].gpa + runs[i].len - GPA_BASE) / PS; p++) {
				twice += r->seen[p];
				r->seen[p] = 1;
				total++;
			}
		}
	}
	ck_assert_int_eq(n, 0);
	ck_assert_msg(!outside && !twice, "drain: %" PRIu64 " runs outside the region, %" PRIu64 " pages handed out twice",
		      outside, twice);
	return total;
}

static void sync_ok(struct rig *r)
{
	int err = dirty_view_sync(r->v);

	ck_assert_msg(err == 0, "sync: %d %s", err, dirty_last_error());
}

/* The drained set must be exactly want[] (1 = expected). */
static void expect_exactly(struct rig *r, const uint8_t *want, const char *what)
{
	uint64_t missing = 0, extra = 0, first_missing = 0, first_extra = 0;

	drain(r);
	for (uint64_t p = 0; p < r->npages; p++) {
		if (want[p] && !r->seen[p] && !missing++)
			first_missing = p;
		if (!want[p] && r->seen[p] && !extra++)
			first_extra = p;
	}
	ck_assert_msg(missing == 0, "%s (%s): %" PRIu64 " written pages not reported (first: page %" PRIu64 ")",
		      what, kind_names[r->m.kind], missing, first_missing);
	ck_assert_msg(extra == 0, "%s (%s): %" PRIu64 " pages reported that were not written (first: page %" PRIu64 ")",
		      what, kind_names[r->m.kind], extra, first_extra);
}

/* ---- exact_sets --------------------------------------------------------- */

static void exact_sets_kind(enum mem_kind kind)
{
	const uint64_t np = 2048;
	/* Before start: U never touched; R only read; D written only via DMA. */
	const uint64_t U = 17, R = 300, D = 1100;
	struct rig r;
	uint8_t *want = calloc(np, 1);
	uint64_t seed = base_seed ^ (uint64_t)kind;
	volatile uint64_t sink = 0;

	ck_assert_ptr_nonnull(want);
	rig_up(&r, kind, np);
	/* Populate about half of it, leave the rest never touched. */
	for (uint64_t p = 0; p < np; p++)
		if (p != U && p != R && p != D && (splitmix64(&seed) & 1))
			poke(r.m.cpu, p, 1);
	sink += peek(r.m.cpu, R);
	if (r.m.dma)
		poke(r.m.dma, D, 7);

	ck_assert_int_eq(dirty_view_start(r.v), 0);
	memset(want, 1, np);
	expect_exactly(&r, want, "start marks every page");

	sync_ok(&r);
	memset(want, 0, np);
	expect_exactly(&r, want, "idle harvest right after start");

	/* The first write to U, R and D is seen, and reads are not writes. */
	sink += peek(r.m.cpu, U + 1) + peek(r.m.cpu, 5);
	poke(r.m.cpu, U, 2);
	poke(r.m.cpu, R, 2);
	poke(r.m.cpu, D, 2);
	sync_ok(&r);
	want[U] = want[R] = want[D] = 1;
	expect_exactly(&r, want, "first writes after start (never-populated, read-only, DMA-populated pages)");

	for (int round = 0; round < 4; round++) {
		memset(want, 0, np);
		for (int i = 0; i < 150; i++) {
			uint64_t p = splitmix64(&seed) % np;

			want[p] = 1;
			poke(r.m.cpu, p, (uint64_t)round + 10);
			/* A read of a neighbour must not count. */
			sink += peek(r.m.cpu, (p + 1) % np);
		}
		/* A run that crosses a 2 MiB page-table boundary. */
		for (uint64_t p = 510; p < 515; p++) {
			want[p] = 1;
			poke(r.m.cpu, p, 3);
		}
		sync_ok(&r);
		expect_exactly(&r, want, "random writes");
		sync_ok(&r);
		memset(want, 0, np);
		expect_exactly(&r, want, "idle harvest (re-protection)");
	}
	if (kind == MEM_PRIVATE_ANON) {
		/* Dropped private pages now read as zeros: a change to send. */
		poke(r.m.cpu, 600, 5);
		poke(r.m.cpu, 601, 5);
		sync_ok(&r);
		drain(&r);
		ck_assert_int_eq(madvise(r.m.cpu + 600 * PS, 4 * PS, MADV_DONTNEED), 0);
		sync_ok(&r);
		memset(want, 0, np);
		for (uint64_t p = 600; p < 604; p++)
			want[p] = 1;
		expect_exactly(&r, want, "MADV_DONTNEED of private memory (its pages now read as zeros)");
	}
	(void)sink;
	rig_down(&r);
	free(want);
}

START_TEST(exact_sets)
{
	for (int k = 0; k < MEM_KINDS; k++)
		exact_sets_kind((enum mem_kind)k);
}
END_TEST

/* ---- dma_invisible ------------------------------------------------------ */

START_TEST(dma_invisible)
{
	const uint64_t np = 4096;
	struct rig r;
	uint8_t *want = calloc(np, 1);
	uint64_t seed = base_seed ^ 0xd3a;

	ck_assert_ptr_nonnull(want);
	rig_up(&r, MEM_MEMFD, np);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	drain(&r);
	for (int round = 0; round < 5; round++) {
		memset(want, 0, np);
		/* DMA writes everywhere, including pages the CPU also writes. */
		for (int i = 0; i < 400; i++)
			poke(r.m.dma, splitmix64(&seed) % np, 0xd0 + (uint64_t)round);
		for (uint64_t p = (uint64_t)round * 700; p < (uint64_t)round * 700 + 64; p++)
			poke(r.m.dma, p, 0xdd);
		for (int i = 0; i < 100; i++) {
			uint64_t p = splitmix64(&seed) % np;

			want[p] = 1;
			poke(r.m.cpu, p, 0xc0 + (uint64_t)round);
		}
		sync_ok(&r);
		drain(&r);
		for (uint64_t p = 0; p < np; p++) {
			/* The harness's no-protocol baseline relies on this. */
			if (!want[p] && r.seen[p])
				ck_abort_msg("round %d: page %" PRIu64 " was reported, but since the last harvest it was written only through the second (DMA) mapping or not at all: the uffd source must see the CPU mapping only",
					     round, p);
			if (want[p] && !r.seen[p])
				ck_abort_msg("round %d: page %" PRIu64 " written through the tracked mapping was not reported",
					     round, p);
		}
		/* And the DMA'd contents are really there, in the same pages. */
		ck_assert_uint_eq(peek(r.m.cpu, (uint64_t)round * 700), want[round * 700] ? 0xc0 + (uint64_t)round : 0xdd);
	}
	rig_down(&r);
	free(want);
}
END_TEST

/* ---- racing_writers ----------------------------------------------------- */

#define RW_WRITERS 3

struct race {
	struct rig r;
	uint64_t ncpu;			/* pages [0, ncpu): CPU writers */
	_Atomic uint64_t *started;	/* per page: writes begun */
	_Atomic uint64_t *done;		/* per page: last stamp completely written */
	_Atomic bool stop;
	_Atomic uint64_t writes, dma_writes;
};

struct writer {
	struct race *rc;
	unsigned int id;
	uint64_t seed;
	pthread_t t;
};

/* Owns the pages p with p % RW_WRITERS == id: each page has one writer. */
static void *cpu_writer_main(void *arg)
{
	struct writer *w = arg;
	struct race *rc = w->rc;
	uint64_t own = (rc->ncpu - w->id + RW_WRITERS - 1) / RW_WRITERS, n = 0;

	while (!atomic_load_explicit(&rc->stop, memory_order_relaxed)) {
		uint64_t p = (splitmix64(&w->seed) % own) * RW_WRITERS + w->id;
		uint64_t stamp = atomic_fetch_add(&rc->started[p], 1) + 1;

		poke(rc->r.m.cpu, p, stamp);	/* stamp the page ... */
		atomic_store(&rc->done[p], stamp);	/* ... then record it */
		/*
		 * Bursts, then a pause: most pages stay quiet within a round,
		 * so a harvest that failed to re-protect would show.
		 */
		if (!(++n % 32))
			usleep(100);
	}
	atomic_fetch_add(&rc->writes, n);
	return NULL;
}

static void *dma_writer_main(void *arg)
{
	struct writer *w = arg;
	struct race *rc = w->rc;
	uint64_t ndma = rc->r.npages - rc->ncpu, n = 0;

	while (!atomic_load_explicit(&rc->stop, memory_order_relaxed)) {
		poke(rc->r.m.dma, rc->ncpu + splitmix64(&w->seed) % ndma, ++n);
		if (!(n % 32))
			usleep(100);
	}
	atomic_fetch_add(&rc->dma_writes, n);
	return NULL;
}

START_TEST(racing_writers)
{
	const double secs = 2.5 * test_scale() < 1.0 ? 1.0 : 2.5 * test_scale();
	const uint64_t np = 16384;
	struct race rc;
	struct writer w[RW_WRITERS + 1];
	uint64_t *pre = calloc(np, sizeof(*pre));	/* done[] before this round's scan */
	uint64_t *last_pre = calloc(np, sizeof(*last_pre));	/* pre of the page's last report */
	uint64_t *sent = calloc(np, sizeof(*sent));	/* destination: stamp copied out */
	uint64_t rounds = 0, reports = 0, unbacked = 0, dma_reported = 0, lost = 0;
	uint64_t first_unbacked = 0, first_dma = 0, first_lost = 0;
	double t0;

	ck_assert(pre && last_pre && sent);
	memset(&rc, 0, sizeof(rc));
	rc.ncpu = np - np / 8;
	rc.started = calloc(np, sizeof(*rc.started));
	rc.done = calloc(np, sizeof(*rc.done));
	ck_assert(rc.started && rc.done);
	rig_up(&rc.r, MEM_MEMFD, np);
	ck_assert_int_eq(dirty_view_start(rc.r.v), 0);
	ck_assert_uint_eq(drain(&rc.r), np);	/* the first round: everything */

	for (unsigned int i = 0; i <= RW_WRITERS; i++) {
		w[i] = (struct writer){ .rc = &rc, .id = i, .seed = base_seed + 977 * i };
		ck_assert_int_eq(pthread_create(&w[i].t, NULL,
						i < RW_WRITERS ? cpu_writer_main : dma_writer_main,
						&w[i]), 0);
	}
	t0 = now_s();
	for (bool last = false;;) {
		int err;

		if (!last && now_s() - t0 >= secs) {
			atomic_store(&rc.stop, true);
			for (unsigned int i = 0; i <= RW_WRITERS; i++)
				pthread_join(w[i].t, NULL);
			last = true;
		}
		for (uint64_t p = 0; p < np; p++)
			pre[p] = atomic_load(&rc.done[p]);
		err = last ? dirty_view_final(rc.r.v) : dirty_view_sync(rc.r.v);
		if (err) {
			/* Writers may still run: stop them before failing. */
			atomic_store(&rc.stop, true);
			for (unsigned int i = 0; !last && i <= RW_WRITERS; i++)
				pthread_join(w[i].t, NULL);
			ck_abort_msg("round %" PRIu64 ": %s", rounds, dirty_last_error());
		}
		drain(&rc.r);
		rounds++;
		for (uint64_t p = 0; p < np; p++) {
			if (!rc.r.seen[p])
				continue;
			reports++;
			if (p >= rc.ncpu) {
				if (!dma_reported++)
					first_dma = p;
				continue;
			}
			/*
			 * The write behind this report began before now and
			 * finished after the page's previous report was
			 * re-protected, i.e. after that round's snapshot.
			 */
			if (atomic_load(&rc.started[p]) <= last_pre[p] && !unbacked++)
				first_unbacked = p;
			last_pre[p] = pre[p];
			sent[p] = peek(rc.r.m.dma, p);	/* "send" the page */
		}
		if (last)
			break;
		if (rounds % 4 == 0)
			usleep(500);	/* and otherwise back to back */
	}
	for (uint64_t p = 0; p < rc.ncpu; p++) {
		uint64_t final = peek(rc.r.m.cpu, p);

		if (final != atomic_load(&rc.done[p]) ||
		    atomic_load(&rc.started[p]) != atomic_load(&rc.done[p]))
			ck_abort_msg("page %" PRIu64 ": holds %" PRIu64 ", recorded %" PRIu64 ", begun %" PRIu64 " (test bug)",
				     p, final, atomic_load(&rc.done[p]), atomic_load(&rc.started[p]));
		if (sent[p] != final && !lost++)
			first_lost = p;
	}
	printf("racing_writers: %.1f s, %" PRIu64 " harvests, %" PRIu64 " CPU writes, %" PRIu64
	       " DMA writes, %" PRIu64 " pages reported\n", now_s() - t0, rounds,
	       atomic_load(&rc.writes), atomic_load(&rc.dma_writes), reports);
	ck_assert_msg(lost == 0,
		      "%" PRIu64 " pages lost a write: the destination holds an older stamp (first: page %" PRIu64 ", sent %" PRIu64 ", last written %" PRIu64 ")",
		      lost, first_lost, sent[first_lost], peek(rc.r.m.cpu, first_lost));
	ck_assert_msg(unbacked == 0,
		      "%" PRIu64 " reports with no write since the page's previous report (first: page %" PRIu64 "): the harvest does not re-protect",
		      unbacked, first_unbacked);
	ck_assert_msg(dma_reported == 0,
		      "%" PRIu64 " pages written only through the DMA mapping were reported (first: page %" PRIu64 ")",
		      dma_reported, first_dma);
	ck_assert_uint_gt(rounds, 3);
	ck_assert_uint_gt(atomic_load(&rc.writes), rc.ncpu);
	rig_down(&rc.r);
	free(rc.started);
	free(rc.done);
	free(pre);
	free(last_pre);
	free(sent);
}
END_TEST

/* ---- ranges ------------------------------------------------------------- */

START_TEST(ranges)
{
	const uint64_t np = 512;
	struct dirty_view *v;
	struct dirty_uffd *u;
	struct dirty_claim *cl;
	struct dirty_run runs[16];
	struct rig r;
	uint8_t *a, *b, *gone;
	uint8_t *want = calloc(np, 1);
	struct dirty_source_stats st;
	uint64_t n;

	ck_assert_ptr_nonnull(want);
	/* Bad arguments, each with its message. */
	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_uffd_create(v, &u), 0);
	a = mmap(NULL, 8 * PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(a, MAP_FAILED);
	ck_assert_int_eq(dirty_uffd_add_range(u, a + 1, PS, 0), -EINVAL);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "aligned"));
	ck_assert_int_eq(dirty_uffd_add_range(u, a, 0, 0), -EINVAL);
	ck_assert_int_eq(dirty_uffd_add_range(u, a, PS, 123), -EINVAL);
	ck_assert_int_eq(dirty_uffd_add_range(u, a, 4 * PS, 0), 0);
	ck_assert_int_eq(dirty_uffd_add_range(u, a + 3 * PS, 2 * PS, 0), -EEXIST);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "overlaps"));
	ck_assert_int_eq(dirty_uffd_remove_range(u, a + PS), -ENOENT);
	gone = mmap(NULL, 4 * PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(gone, MAP_FAILED);
	munmap(gone, 4 * PS);
	ck_assert_int_lt(dirty_uffd_add_range(u, gone, 4 * PS, 0x10000), 0);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "UFFDIO_REGISTER"));
	ck_assert_int_eq(dirty_uffd_remove_range(u, a), 0);
	ck_assert_int_eq(dirty_uffd_add_range(u, a, 8 * PS, 0), 0);	/* again */
	dirty_uffd_destroy(u);
	dirty_view_free(v);
	munmap(a, 8 * PS);

	/* Add while tracking: its first round, all dirty. */
	rig_up(&r, MEM_MEMFD, np);
	ck_assert_int_eq(dirty_view_add_region(r.v, 2 * GPA_BASE, 64 * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	drain(&r);
	b = mmap(NULL, 64 * PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(b, MAP_FAILED);
	ck_assert_int_eq(dirty_uffd_add_range(r.u, b, 64 * PS, 2 * GPA_BASE), 0);
	ck_assert_int_eq(dirty_view_count(r.v, &n, NULL), 0);
	ck_assert_uint_eq(n, 64);
	ck_assert_int_eq(dirty_claim_new(r.v, &cl), 0);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 16), 1);
	ck_assert_uint_eq(runs[0].gpa, 2 * GPA_BASE);
	ck_assert_uint_eq(runs[0].len, 64 * PS);
	/* ... and tracked from then on. */
	poke(b, 9, 1);
	sync_ok(&r);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 16), 1);
	ck_assert_uint_eq(runs[0].gpa, 2 * GPA_BASE + 9 * PS);
	ck_assert_uint_eq(runs[0].len, PS);

	/* Remove while tracking: its last writes are harvested. */
	poke(b, 33, 1);
	ck_assert_int_eq(dirty_uffd_remove_range(r.u, b), 0);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 16), 1);
	ck_assert_uint_eq(runs[0].gpa, 2 * GPA_BASE + 33 * PS);
	poke(b, 34, 1);	/* no longer tracked */
	sync_ok(&r);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 16), 0);
	dirty_claim_free(cl);
	munmap(b, 64 * PS);

	/* The other range is unaffected. */
	poke(r.m.cpu, 100, 1);
	sync_ok(&r);
	memset(want, 0, np);
	want[100] = 1;
	expect_exactly(&r, want, "after a remove");

	/* Stop: protection dropped, syncs report nothing. */
	ck_assert_int_eq(dirty_view_stop(r.v), 0);
	poke(r.m.cpu, 200, 1);
	sync_ok(&r);
	memset(want, 0, np);
	expect_exactly(&r, want, "sync after stop");
	/* Start again: all dirty, then only new writes. */
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	memset(want, 1, np);
	expect_exactly(&r, want, "restart");
	poke(r.m.cpu, 201, 1);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	memset(want, 0, np);
	want[201] = 1;
	expect_exactly(&r, want, "final after restart");
	ck_assert_int_eq(dirty_source_stats(dirty_uffd_source(r.u), &st), 0);
	ck_assert_uint_eq(st.errors, 0);
	rig_down(&r);
	free(want);
}
END_TEST

/* ---- error_all_dirty ---------------------------------------------------- */

START_TEST(error_all_dirty)
{
	const uint64_t np = 256;
	struct rig r;
	struct dirty_source_stats st;
	uint8_t *want = calloc(np, 1), *again;
	int err;

	ck_assert_ptr_nonnull(want);
	rig_up(&r, MEM_SHARED_ANON, np);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	drain(&r);
	/* Replace the tracked mapping behind the source's back. */
	again = mmap(r.m.cpu, np * PS, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ck_assert_ptr_eq(again, r.m.cpu);
	err = dirty_view_sync(r.v);
	ck_assert_int_eq(err, -EPERM);
	ck_assert_msg(strstr(dirty_last_error(), "PAGEMAP_SCAN") &&
		      strstr(dirty_last_error(), "all its pages were marked dirty"),
		      "message: %s", dirty_last_error());
	memset(want, 1, np);
	expect_exactly(&r, want, "a failed harvest marks everything");
	ck_assert_int_eq(dirty_source_stats(dirty_uffd_source(r.u), &st), 0);
	ck_assert_uint_eq(st.errors, 1);
	ck_assert_int_eq(st.last_error, -EPERM);
	/* Still failing next round, still all dirty: never "clean". */
	ck_assert_int_lt(dirty_view_final(r.v), 0);
	expect_exactly(&r, want, "and again at final");
	rig_down(&r);
	free(want);
}
END_TEST

/* ---- huge_pages --------------------------------------------------------- */

/* Pages of [p, p + len) the kernel reports in category cat (no WP). */
static uint64_t count_category(void *p, uint64_t len, uint64_t cat)
{
	struct page_region vec[64];
	struct pm_scan_arg arg = {
		.size = sizeof(arg), .start = (uint64_t)(uintptr_t)p,
		.end = (uint64_t)(uintptr_t)p + len, .vec = (uint64_t)(uintptr_t)vec,
		.vec_len = 64, .category_mask = cat, .return_mask = cat,
	};
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	long n;
	uint64_t pages = 0;

	if (fd < 0)
		return 0;
	n = ioctl(fd, PAGEMAP_SCAN, &arg);
	close(fd);
	for (long i = 0; i < n; i++)
		pages += (vec[i].end - vec[i].start) / PS;
	return pages;
}

struct hugemem {
	uint8_t *p, *raw;
	uint64_t len, raw_len;
	int fd;
	const char *what;
};

/* hugetlbfs if the system has huge pages, else an anonymous THP; or why not. */
static bool huge_get(struct hugemem *h, uint64_t nhuge, char *why, size_t whylen)
{
	char buf[128] = "", nr[32] = "?", hugetlb[128];
	FILE *f;
	int herr;

	memset(h, 0, sizeof(*h));
	h->len = nhuge * HUGE_2M;
	h->fd = memfd_create("uffd-test-huge", MFD_CLOEXEC | MFD_HUGETLB);
	if (h->fd >= 0 && ftruncate(h->fd, (off_t)h->len) == 0) {
		h->p = mmap(NULL, h->len, PROT_READ | PROT_WRITE, MAP_SHARED, h->fd, 0);
		if (h->p != MAP_FAILED) {
			h->what = "hugetlbfs memfd, 2 MiB pages";
			return true;
		}
	}
	herr = errno;
	f = fopen("/proc/sys/vm/nr_hugepages", "r");
	if (f) {
		if (fgets(nr, sizeof(nr), f))
			nr[strcspn(nr, "\n")] = 0;
		fclose(f);
	}
	snprintf(hugetlb, sizeof(hugetlb), "no hugetlb memory (%s; vm.nr_hugepages = %s)",
		 strerror(herr), nr);
	if (h->fd >= 0)
		close(h->fd);
	h->fd = -1;

	f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	if (!strstr(buf, "[always]") && !strstr(buf, "[madvise]")) {
		snprintf(why, whylen, "%s and transparent huge pages are %s", hugetlb,
			 buf[0] ? "disabled" : "not available");
		return false;
	}
	h->raw_len = h->len + HUGE_2M;
	h->raw = mmap(NULL, h->raw_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h->raw == MAP_FAILED) {
		snprintf(why, whylen, "cannot map %" PRIu64 " bytes", h->raw_len);
		return false;
	}
	h->p = (uint8_t *)(((uintptr_t)h->raw + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
	madvise(h->p, h->len, MADV_HUGEPAGE);
	memset(h->p, 1, h->len);
	if (count_category(h->p, h->len, PAGE_IS_HUGE) < h->len / PS) {
		snprintf(why, whylen, "%s and the kernel gave no THP for a MADV_HUGEPAGE mapping (fragmented memory?)",
			 hugetlb);
		munmap(h->raw, h->raw_len);
		return false;
	}
	h->what = "anonymous THP (MADV_HUGEPAGE), 2 MiB pages";
	return true;
}

START_TEST(huge_pages)
{
	const uint64_t nhuge = 4, per = HUGE_2M / PS, np = nhuge * per;
	const uint64_t writes[] = { 5, 2 * per + 100, 2 * per + 101, 3 * per + per - 1 };
	struct dirty_view *v;
	struct dirty_uffd *u;
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	struct hugemem h;
	uint8_t hit[4] = { 1, 0, 1, 1 }, *seen = calloc(np, 1);
	char why[256];
	uint64_t reported = 0;
	ssize_t n;

	ck_assert_ptr_nonnull(seen);
	if (!huge_get(&h, nhuge, why, sizeof(why))) {
		printf("SKIP huge_pages: %s\n", why);
		free(seen);
		return;
	}
	printf("huge_pages: %s\n", h.what);
	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, 0, h.len, PS, 0), 0);
	ck_assert_int_eq(dirty_uffd_create(v, &u), 0);
	if (h.fd >= 0) {
		/* hugetlbfs registers whole huge pages only. */
		ck_assert_int_eq(dirty_uffd_add_range(u, h.p, h.len - PS, 0), -EINVAL);
		ck_assert_ptr_nonnull(strstr(dirty_last_error(), "huge page size"));
	}
	ck_assert_msg(dirty_uffd_add_range(u, h.p, h.len, 0) == 0, "%s", dirty_last_error());
	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	ck_assert_int_eq(dirty_view_start(v), 0);
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		;
	ck_assert_int_eq(dirty_view_sync(v), 0);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 64), 0);	/* idle */

	for (size_t i = 0; i < ARRAY_LEN(writes); i++)
		poke(h.p, writes[i], 9);
	ck_assert_int_eq(dirty_view_sync(v), 0);
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < n; i++)
			for (uint64_t p = runs[i].gpa / PS; p < (runs[i].gpa + runs[i].len) / PS; p++) {
				seen[p] = 1;
				reported++;
			}
	for (size_t i = 0; i < ARRAY_LEN(writes); i++)
		ck_assert_msg(seen[writes[i]], "written page %" PRIu64 " (%s) not reported",
			      writes[i], h.what);
	for (uint64_t p = 0; p < np; p++)
		if (seen[p] && !hit[p / per])
			ck_abort_msg("page %" PRIu64 " reported, but nothing in its huge page was written (%s)",
				     p, h.what);
	printf("huge_pages: %zu pages written in 3 huge pages, %" PRIu64 " pages reported\n",
	       ARRAY_LEN(writes), reported);
	ck_assert_int_eq(dirty_view_sync(v), 0);
	ck_assert_int_eq(dirty_claim_next(cl, runs, 64), 0);	/* re-protected */
	if (h.fd < 0) {
		/*
		 * Anonymous THP: huge page 1, never written, is still mapped
		 * whole. Dropping it leaves no page table at all, and its
		 * pages now read as zeros: the harvest must report all of it
		 * (kernels without "fs/proc/task_mmu: fix PAGEMAP_SCAN written
		 * state for PMD holes" miss it).
		 */
		uint64_t got = 0;

		ck_assert_int_eq(madvise(h.p + HUGE_2M, HUGE_2M, MADV_DONTNEED), 0);
		ck_assert_int_eq(dirty_view_sync(v), 0);
		while ((n = dirty_claim_next(cl, runs, 64)) > 0)
			for (ssize_t i = 0; i < n; i++) {
				ck_assert_uint_ge(runs[i].gpa, HUGE_2M);
				ck_assert_uint_le(runs[i].gpa + runs[i].len, 2 * HUGE_2M);
				got += runs[i].len / PS;
			}
		ck_assert_msg(got == per, "a dropped THP: %" PRIu64 " of its %" PRIu64 " pages reported",
			      got, per);
	}
	dirty_claim_free(cl);
	dirty_view_free(v);
	if (h.fd >= 0) {
		munmap(h.p, h.len);
		close(h.fd);
	} else {
		munmap(h.raw, h.raw_len);
	}
	free(seen);
}
END_TEST

/* ---- runner -------------------------------------------------------------- */

static void add_case(Suite *s, const char *name, const TTest *t)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}

int main(void)
{
	const char *s = getenv("DIRTY_TEST_SEED");
	Suite *suite;

	TEST_REQUIRE(dirty_uffd_probe() == 0, "userfaultfd source unavailable: %s", dirty_last_error());
	base_seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	printf("uffd: seed %#" PRIx64 " (DIRTY_TEST_SEED replays it), scale %.2f\n",
	       base_seed, test_scale());
	fflush(stdout);
	suite = suite_create("uffd");
	add_case(suite, "exact_sets", exact_sets);
	add_case(suite, "dma_invisible", dma_invisible);
	add_case(suite, "racing_writers", racing_writers);
	add_case(suite, "ranges", ranges);
	add_case(suite, "error_all_dirty", error_all_dirty);
	add_case(suite, "huge_pages", huge_pages);
	return test_run_suite(suite);
}
