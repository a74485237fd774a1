/* SPDX-License-Identifier: MIT */
/*
 * test_migrate.c - the pre-copy driver against a live writer: a thread
 * keeps writing stamped pages of "guest memory" and reports them through
 * the in-memory source (the CPU dirty log stand-in); the driver's send
 * copies pages to a destination. After the migration the destination
 * must equal the source page by page. Also: the stop order, convergence
 * against a round cap, and a failure mid-migration that loses nothing, so
 * a retry ends equal too. And a source that behaves like KVM's clear-log
 * mode (a page is reported once until it is re-armed) loses nothing
 * because every claim re-arms it (prepare_read), while the same source
 * without that hook loses pages (the negative control).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "libdirty.h"
#include "testutil.h"

#define PS 4096ull
#define BASE 0x100000000ull

struct clog;

struct guest {
	uint8_t *src, *dst;
	struct clog *clog;	/* when set, writes are logged here, not in `log` */
	uint64_t npages;
	struct dirty_view *view;
	struct dirty_source *log;	/* the CPU dirty log stand-in */
	pthread_t writer;
	_Atomic bool stop_writes, writer_running;
	unsigned int write_delay_us;	/* between writes: the dirty rate */
	uint64_t seed;
	struct dirty_source *devlog;	/* the device's own log (DMA the CPU log misses) */
	/* Driver observations. */
	char order[16];		/* "D" device stop, "V" vCPU stop, "S" final sync, "F" final round */
	int nord;
	int fail_send_at;	/* fail the n-th send (0: never) */
	unsigned int dirty_per_send;	/* pages a "vCPU" writes during each send */
	bool marks_now;		/* those writes mark the view at once (KVM's ring reaper does) */
	uint64_t send_seed;		/* theirs: the writer thread reads `seed` */
	uint64_t stamp;
	int sends;
	int resumed;
	unsigned int rounds_seen;
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * A clear-log source, with KVM's documented semantics (api.rst,
 * KVM_CLEAR_DIRTY_LOG with MANUAL_DIRTY_LOG_PROTECT2): a write sets its
 * page's log bit; reading the log does not clear it; only a clear does.
 * Like the KVM adapter, sync reports each logged page once (pending) and
 * prepare_read clears the pending pages of a claimed batch.
 */
struct clog {
	uint64_t npages;
	_Atomic uint64_t *log;		/* "KVM's" bits: writers OR, clears AND */
	uint64_t *pending, *fresh;	/* under lock */
	pthread_mutex_t lock;
	_Atomic uint64_t clears;
};

/* Write, then log: a write after a clear always logs again. */
static void clog_write(struct clog *c, uint64_t p)
{
	atomic_fetch_or(&c->log[p / 64], 1ull << (p % 64));
}

static int clog_sync(struct dirty_source *src)
{
	struct clog *c = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&c->lock);
	for (uint64_t w = 0; w < (c->npages + 63) / 64; w++) {
		uint64_t v = atomic_load(&c->log[w]);

		c->fresh[w] = htole64(v & ~c->pending[w]);
		c->pending[w] |= v;
	}
	err = dirty_source_merge_bitmap(src, BASE, PS, c->fresh, c->npages);
	pthread_mutex_unlock(&c->lock);
	return err;
}

static int clog_start(struct dirty_source *src)
{
	struct clog *c = dirty_source_priv(src);

	/* Re-protect everything: the driver's first pass sends it all. */
	pthread_mutex_lock(&c->lock);
	for (uint64_t w = 0; w < (c->npages + 63) / 64; w++) {
		atomic_store(&c->log[w], 0);
		c->pending[w] = 0;
	}
	pthread_mutex_unlock(&c->lock);
	return 0;
}

static int clog_prepare_read(struct dirty_source *src, struct dirty_run *runs,
			     size_t *n, size_t max)
{
	struct clog *c = dirty_source_priv(src);

	(void)max;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < *n; i++)
		for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += PS) {
			uint64_t p = (a - BASE) / PS, b = 1ull << (p % 64);

			if (c->pending[p / 64] & b) {
				atomic_fetch_and(&c->log[p / 64], ~b);
				c->pending[p / 64] &= ~b;
				atomic_fetch_add(&c->clears, 1);
			}
		}
	pthread_mutex_unlock(&c->lock);
	return 0;
}

static const struct dirty_source_ops clog_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "clear-log-like",
	.start = clog_start,
	.sync = clog_sync,
	.prepare_read = clog_prepare_read,
};

/* The same source as a version-1 table: no read-side hook. */
static const struct dirty_source_ops clog_ops_v1 = {
	.version = 1,
	.precision = DIRTY_PRECISE,
	.name = "clear-log-like, no hook",
	.start = clog_start,
	.sync = clog_sync,
};

static struct clog *clog_attach(struct dirty_view *v, uint64_t npages, bool hook)
{
	struct clog *c = calloc(1, sizeof(*c));
	struct dirty_range range = { BASE, npages * PS };
	struct dirty_source *src;

	ck_assert_ptr_nonnull(c);
	c->npages = npages;
	c->log = calloc((npages + 63) / 64, 8);
	c->pending = calloc((npages + 63) / 64, 8);
	c->fresh = calloc((npages + 63) / 64, 8);
	ck_assert(c->log && c->pending && c->fresh);
	pthread_mutex_init(&c->lock, NULL);
	ck_assert_int_eq(dirty_source_attach(v, hook ? &clog_ops : &clog_ops_v1, c,
					     &range, 1, &src), 0);
	return c;
}

static void clog_free(struct clog *c)
{
	free((void *)c->log);
	free(c->pending);
	free(c->fresh);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static void report_write(struct guest *g, uint64_t p)
{
	if (g->clog)
		clog_write(g->clog, p);
	else
		dirty_memsrc_mark(g->log, BASE + p * PS, PS);
}

static void *writer_main(void *arg)
{
	struct guest *g = arg;
	uint64_t stamp = 1, s = g->seed;
	struct timespec ts = { 0, (long)g->write_delay_us * 1000 };

	while (!atomic_load(&g->stop_writes)) {
		uint64_t p = rnd(&s) % g->npages;

		/* Write, then report: the order a dirty log guarantees. */
		__atomic_store_n((uint64_t *)(g->src + p * PS), stamp++, __ATOMIC_RELEASE);
		__atomic_store_n((uint64_t *)(g->src + p * PS + PS - 8), stamp, __ATOMIC_RELEASE);
		report_write(g, p);
		if (g->write_delay_us)
			nanosleep(&ts, NULL);
	}
	return NULL;
}

static void start_writer(struct guest *g)
{
	atomic_store(&g->stop_writes, false);
	ck_assert_int_eq(pthread_create(&g->writer, NULL, writer_main, g), 0);
	atomic_store(&g->writer_running, true);
}

static void stop_writer(struct guest *g)
{
	atomic_store(&g->stop_writes, true);
	if (!atomic_load(&g->writer_running))
		return;
	pthread_join(g->writer, NULL);
	atomic_store(&g->writer_running, false);
}

static int op_send(void *opaque, uint64_t gpa, uint64_t len)
{
	struct guest *g = opaque;
	uint64_t off = gpa - BASE;

	ck_assert_msg(gpa >= BASE && off + len <= g->npages * PS,
		      "send of [%#lx, +%#lx) outside guest memory", gpa, len);
	if (g->fail_send_at && ++g->sends == g->fail_send_at)
		return -ECONNRESET;
	/* Writes that happen while the round runs, whatever the scheduler does. */
	for (unsigned int i = 0; i < g->dirty_per_send && !atomic_load(&g->stop_writes); i++) {
		uint64_t p = rnd(&g->send_seed) % g->npages;

		__atomic_store_n((uint64_t *)(g->src + p * PS), ++g->stamp, __ATOMIC_RELEASE);
		if (g->marks_now)
			dirty_view_mark(g->view, BASE + p * PS, PS);
		else
			report_write(g, p);
	}
	/* Word by word with atomics: the writer may be writing this page. */
	for (uint64_t i = 0; i < len; i += 8)
		*(uint64_t *)(g->dst + off + i) =
			__atomic_load_n((uint64_t *)(g->src + off + i), __ATOMIC_ACQUIRE);
	return 0;
}

static int op_end_round(void *opaque, unsigned int round, int final)
{
	struct guest *g = opaque;

	if (final)
		g->order[g->nord++] = 'F';
	g->rounds_seen = round + 1;
	return 0;
}

/* One last write to page p before a stop, logged in src: only a final sync sees it. */
static void last_write(struct guest *g, struct dirty_source *src, uint64_t p, uint64_t tag)
{
	__atomic_store_n((uint64_t *)(g->src + p * PS + 8), tag, __ATOMIC_RELEASE);
	dirty_memsrc_mark(src, BASE + p * PS, PS);
}

static int op_stop_device(void *opaque)
{
	struct guest *g = opaque;

	/* The device's last DMA, completed before it stops. */
	last_write(g, g->devlog, 1, 0xd0d0d0d0ull);
	g->order[g->nord++] = 'D';
	return 0;
}

static int op_stop_vcpus(void *opaque)
{
	struct guest *g = opaque;

	stop_writer(g);
	atomic_store(&g->stop_writes, true);	/* also the writes made during sends */
	/* The vCPU's last write, after the device stopped and before the vCPU does. */
	last_write(g, g->log, 2, 0xc0c0c0c0ull);
	g->order[g->nord++] = 'V';
	return 0;
}

/* Records where the driver's final sync falls among the stops. */
static int tracer_final(struct dirty_source *src)
{
	struct guest *g = dirty_source_priv(src);

	g->order[g->nord++] = 'S';
	return 0;
}

static const struct dirty_source_ops tracer_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "order-tracer",
	.final = tracer_final,
};

static int op_resume(void *opaque)
{
	struct guest *g = opaque;

	g->resumed++;
	start_writer(g);
	return 0;
}

static const struct dirty_migrate_ops ops = {
	.version = DIRTY_MIGRATE_OPS_VERSION,
	.send = op_send,
	.end_round = op_end_round,
	.stop_device = op_stop_device,
	.stop_vcpus = op_stop_vcpus,
	.resume = op_resume,
};

static void guest_up(struct guest *g, uint64_t npages, unsigned int delay_us)
{
	memset(g, 0, sizeof(*g));
	g->npages = npages;
	g->write_delay_us = delay_us;
	g->seed = 0x9e3779b97f4a7c15ull;
	g->send_seed = 0x2545f4914f6cdd1dull;
	g->src = mmap(NULL, npages * PS, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	g->dst = mmap(NULL, npages * PS, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(g->src != MAP_FAILED && g->dst != MAP_FAILED);
	for (uint64_t p = 0; p < npages; p++)
		*(uint64_t *)(g->src + p * PS) = 0xabc0000000000000ull | p;
	ck_assert_int_eq(dirty_view_new(&g->view), 0);
	ck_assert_int_eq(dirty_view_add_region(g->view, BASE, npages * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_memsrc_new(g->view, BASE, npages * PS, PS, &g->log), 0);
	ck_assert_int_eq(dirty_memsrc_new(g->view, BASE, npages * PS, PS, &g->devlog), 0);
	{
		struct dirty_source *t;
		struct dirty_range all = { BASE, npages * PS };

		ck_assert_int_eq(dirty_source_attach(g->view, &tracer_ops, g, &all, 1, &t), 0);
	}
}

static void guest_down(struct guest *g)
{
	stop_writer(g);
	dirty_view_free(g->view);
	if (g->clog)
		clog_free(g->clog);
	munmap(g->src, g->npages * PS);
	munmap(g->dst, g->npages * PS);
}

/* Pages whose bytes differ between source and destination. */
static uint64_t count_lost(struct guest *g, uint64_t *first)
{
	uint64_t bad = 0;

	*first = UINT64_MAX;
	for (uint64_t p = 0; p < g->npages; p++) {
		if (memcmp(g->src + p * PS, g->dst + p * PS, PS)) {
			if (*first == UINT64_MAX)
				*first = p;
			bad++;
		}
	}
	return bad;
}

/* Page by page: every byte of every page reached the destination. */
static void expect_equal(struct guest *g, const char *what)
{
	uint64_t first, bad = count_lost(g, &first), w = 0;
	const uint64_t *s, *d;

	if (!bad)
		return;
	s = (const uint64_t *)(g->src + first * PS);
	d = (const uint64_t *)(g->dst + first * PS);
	while (w < PS / 8 - 1 && s[w] == d[w])
		w++;
	ck_abort_msg("%s: %lu of %lu pages differ, first page %lu, word %lu: source %#lx, destination %#lx",
		     what, bad, g->npages, first, w, s[w], d[w]);
}

START_TEST(converges_and_loses_nothing)
{
	struct guest g;
	struct dirty_migrate_config cfg = { .downtime_target_ms = 5, .max_rounds = 50 };
	struct dirty_migrate_result res;

	guest_up(&g, (uint64_t)(16384 * test_scale()) + 64, 20);
	start_writer(&g);
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), 0);
	/*
	 * Device first, then vCPUs, then the final sync, then the final
	 * round: the last DMA (page 1) and the last vCPU write (page 2) made
	 * inside the stops reach the destination only through that sync.
	 */
	ck_assert_msg(g.nord == 4 && !memcmp(g.order, "DVSF", 4), "stop order %.*s, want DVSF",
		      g.nord, g.order);
	expect_equal(&g, "after migration");
	ck_assert_int_eq(res.converged, 1);
	ck_assert_uint_ge(res.bytes_sent, g.npages * PS);	/* the full pass at least */
	ck_assert_uint_eq(res.pages_sent * PS, res.bytes_sent);
	ck_assert(res.bandwidth > 0 && res.downtime_ms >= 0 && res.total_ms >= res.downtime_ms);
	/* The final harvest (sync + claims, sends excluded) is inside the downtime. */
	ck_assert(res.final_sync_ms >= 0 && res.final_sync_ms <= res.downtime_ms);
	printf("converged: %u rounds, %lu pages sent, %lu final, expected %.3f ms, downtime %.3f ms\n",
	       res.rounds, res.pages_sent, res.final_pages, res.expected_downtime_ms, res.downtime_ms);
	guest_down(&g);
}
END_TEST

START_TEST(round_cap_when_too_dirty)
{
	struct guest g;
	/* A target no round can meet: every send dirties more pages. */
	struct dirty_migrate_config cfg = { .downtime_target_ms = 0, .max_rounds = 4 };
	struct dirty_migrate_result res;

	guest_up(&g, 4096, 0);
	g.dirty_per_send = 64;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), 0);
	ck_assert_msg(res.converged == 0, "converged after %u rounds: expected %.3f ms",
		      res.rounds, res.expected_downtime_ms);
	ck_assert_uint_eq(res.rounds, 4);
	ck_assert_uint_gt(res.final_pages, 0);
	expect_equal(&g, "after a capped migration");
	guest_down(&g);
}
END_TEST

/*
 * A source that marks the view while a round sends (KVM's ring reaper does)
 * and outpaces the sends: a round must still end (it sends what was dirty
 * when it began), so the caps are checked and the migration stops. Before
 * rounds were bounded, this one never returned.
 */
START_TEST(round_ends_when_marks_outpace_sends)
{
	struct guest g;
	struct dirty_migrate_config cfg = { .downtime_target_ms = 0, .max_rounds = 5 };
	struct dirty_migrate_result res;

	guest_up(&g, 2048, 0);
	g.dirty_per_send = 2;
	g.marks_now = true;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), 0);
	ck_assert_int_eq(res.converged, 0);
	ck_assert_int_eq(res.stop, DIRTY_MIGRATE_ROUND_CAP);
	ck_assert_uint_eq(res.rounds, 5);
	/* Each round sends about what was dirty at its start, not forever. */
	ck_assert_uint_lt(res.pages_sent, 5 * 2 * g.npages + res.final_pages + 5 * 256);
	expect_equal(&g, "after rounds outpaced by marks");
	guest_down(&g);
}
END_TEST

START_TEST(failure_keeps_dirty_state_and_retry_is_exact)
{
	struct guest g;
	struct dirty_migrate_config cfg = { .downtime_target_ms = 5, .max_rounds = 50, .batch_runs = 8 };
	struct dirty_migrate_result res;
	uint64_t pages;

	guest_up(&g, 8192, 50);
	start_writer(&g);
	/* The connection drops at the first send of the first pass. */
	g.fail_send_at = 1;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), -ECONNRESET);
	ck_assert_msg(strstr(dirty_last_error(), "retry") != NULL, "message: %s", dirty_last_error());
	ck_assert_int_eq(g.resumed, 0);	/* it never stopped the VM */
	/* Nothing was lost: everything not acknowledged is dirty again. */
	ck_assert_int_eq(dirty_view_count(g.view, &pages, NULL), 0);
	ck_assert_uint_eq(pages, g.npages);

	/* The retry, onto a destination that starts over. */
	g.fail_send_at = 0;
	g.sends = 0;
	memset(g.dst, 0, g.npages * PS);
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), 0);
	expect_equal(&g, "after the retry");
	guest_down(&g);
}
END_TEST

static int fail_final(void *opaque, unsigned int round, int final)
{
	(void)round;
	return final ? -EPIPE : op_end_round(opaque, round, final);
}

START_TEST(failure_after_stop_resumes_then_retry)
{
	struct guest g;
	struct dirty_migrate_config cfg = { .downtime_target_ms = 5, .max_rounds = 50 };
	struct dirty_migrate_result res;
	struct dirty_migrate_ops bad = ops;
	uint64_t pages;

	guest_up(&g, 4096, 50);
	start_writer(&g);
	bad.end_round = fail_final;	/* the destination never acknowledges the final round */
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &bad, &g, &res), -EPIPE);
	ck_assert_int_eq(g.resumed, 1);
	ck_assert(atomic_load(&g.writer_running));
	/* The final round's pages were sent but not acknowledged: dirty again. */
	ck_assert_int_eq(dirty_view_count(g.view, &pages, NULL), 0);
	ck_assert_uint_ge(pages, res.final_pages ? 1 : 0);
	g.nord = 0;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), 0);
	expect_equal(&g, "after the retry");
	guest_down(&g);
}
END_TEST

/*
 * A clear-log source under the driver with a live writer. With its
 * prepare_read hook (called by every claim) nothing is lost; as a
 * version-1 table without it, a page reported once is never reported
 * again and its later writes are lost: that is what dirty_migrate() did
 * with KVM's clear-log mode before the hook existed (issue 9: 156 pages).
 */
static uint64_t migrate_clear_log(bool hook, struct dirty_migrate_result *res)
{
	struct guest g;
	/* Never converged: six rounds, each rewriting pages already reported. */
	struct dirty_migrate_config cfg = { .downtime_target_ms = 0, .max_rounds = 6,
					    .batch_runs = 16 };
	uint64_t lost, first;

	guest_up(&g, (uint64_t)(4096 * test_scale()) + 64, 20);
	g.clog = clog_attach(g.view, g.npages, hook);
	g.dirty_per_send = 2;	/* writes while the rounds run, whatever the scheduler does */
	start_writer(&g);
	ck_assert_msg(dirty_migrate(g.view, &cfg, &ops, &g, res) == 0, "%s", dirty_last_error());
	lost = count_lost(&g, &first);
	printf("clear-log %s the hook: %u rounds, %lu pages sent, %lu re-armed by claims, "
	       "%lu lost (first page %ld)\n", hook ? "with" : "without", res->rounds,
	       res->pages_sent, (uint64_t)atomic_load(&g.clog->clears), lost,
	       lost ? (long)first : -1L);
	if (hook)
		ck_assert_uint_gt(atomic_load(&g.clog->clears), 0);
	guest_down(&g);
	return lost;
}

START_TEST(clear_log_source_loses_nothing)
{
	struct dirty_migrate_result res;

	ck_assert_uint_eq(migrate_clear_log(true, &res), 0);
	ck_assert_uint_eq(res.rounds, 6);	/* pre-copy well beyond the first pass */
}
END_TEST

START_TEST(clear_log_without_hook_loses_pages)
{
	struct dirty_migrate_result res;

	ck_assert_msg(migrate_clear_log(false, &res) > 0,
		      "the control lost nothing: the positive case would not notice the hook missing");
}
END_TEST

START_TEST(rejects_bad_arguments)
{
	struct guest g;
	struct dirty_migrate_config cfg = { 0 };
	struct dirty_migrate_ops o = ops;
	struct dirty_migrate_result res;

	guest_up(&g, 64, 0);
	o.version = 7;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &o, &g, &res), -EINVAL);
	o = ops;
	o.send = NULL;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &o, &g, &res), -EINVAL);
	cfg.downtime_target_ms = -1;
	ck_assert_int_eq(dirty_migrate(g.view, &cfg, &ops, &g, &res), -EINVAL);
	guest_down(&g);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("migrate");
	TCase *tc = tcase_create("driver");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, converges_and_loses_nothing);
	tcase_add_test(tc, round_cap_when_too_dirty);
	tcase_add_test(tc, round_ends_when_marks_outpace_sends);
	tcase_add_test(tc, failure_keeps_dirty_state_and_retry_is_exact);
	tcase_add_test(tc, failure_after_stop_resumes_then_retry);
	tcase_add_test(tc, clear_log_source_loses_nothing);
	tcase_add_test(tc, clear_log_without_hook_loses_pages);
	tcase_add_test(tc, rejects_bad_arguments);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
