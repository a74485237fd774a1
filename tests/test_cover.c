/* SPDX-License-Identifier: MIT */
/*
 * test_cover.c - the cover policy (dirty_source_cover): a healthy precise
 * source stands in for a coarse one over its ranges; an unhealthy one
 * does not, from the next round on and at final. With in-memory sources:
 *
 *   precise  a test source with the guest protocol's contract: it marks
 *            the pages its "guest" reported, says whether it is healthy,
 *            and on becoming healthy again marks its whole range (a new
 *            first pass), as hv-adapters/gproto_trust.c does.
 *   coarse   VFIO type1 as it behaves without a vIOMMU: every page of its
 *            range dirty at every sync and final.
 *
 * The migration test drives dirty_migrate() over a "guest" whose device
 * DMA-writes pages and reports them through the precise source only while
 * healthy; mid-migration the guest turns unhealthy and its DMA goes
 * unreported. Every page must reach the destination (page by page), and a
 * control without the coarse source must lose pages (the cover is what
 * stands in for them, not luck).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "libdirty.h"
#include "testutil.h"

#define PS 4096ull
#define BASE 0x10000000ull
#define NPAGES 2048ull

struct precise {
	struct dirty_source *src, *mem;	/* mem: the pages the guest reported */
	_Atomic bool healthy, was_healthy;
	_Atomic uint64_t regains;
};

static int precise_sync(struct dirty_source *src)
{
	struct precise *p = dirty_source_priv(src);
	bool now = atomic_load(&p->healthy);

	/* Trusted again: nothing from the untrusted window may be missed. */
	if (now && !atomic_exchange(&p->was_healthy, true)) {
		atomic_fetch_add(&p->regains, 1);
		dirty_source_mark(src, BASE, NPAGES * PS);
	}
	if (!now)
		atomic_store(&p->was_healthy, false);
	return 0;
}

static int precise_healthy(struct dirty_source *src)
{
	return atomic_load(&((struct precise *)dirty_source_priv(src))->healthy);
}

static const struct dirty_source_ops precise_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "test-precise",
	.sync = precise_sync,
	.healthy = precise_healthy,
};

static int coarse_sync(struct dirty_source *src)
{
	(void)src;
	return dirty_source_mark(src, BASE, NPAGES * PS);
}

static const struct dirty_source_ops coarse_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_COARSE,
	.name = "test-all-mapped",
	.sync = coarse_sync,
};

struct rig {
	struct dirty_view *v;
	struct precise p;
	struct dirty_source *coarse;
};

static void rig_up(struct rig *r, bool coarse, bool cover)
{
	struct dirty_range all = { BASE, NPAGES * PS };

	memset(r, 0, sizeof(*r));
	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, BASE, NPAGES * PS, PS, 0), 0);
	atomic_store(&r->p.healthy, true);
	atomic_store(&r->p.was_healthy, true);
	ck_assert_int_eq(dirty_source_attach(r->v, &precise_ops, &r->p, &all, 1, &r->p.src), 0);
	ck_assert_int_eq(dirty_memsrc_new(r->v, BASE, NPAGES * PS, PS, &r->p.mem), 0);
	if (coarse)
		ck_assert_int_eq(dirty_source_attach(r->v, &coarse_ops, NULL, &all, 1, &r->coarse), 0);
	if (cover)
		ck_assert_int_eq(dirty_source_cover(r->p.src, r->coarse), 0);
}

static uint64_t dirty_pages(struct dirty_view *v)
{
	uint64_t n;

	ck_assert_int_eq(dirty_view_count(v, &n, NULL), 0);
	return n;
}

static void drain(struct dirty_view *v)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];

	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	while (dirty_claim_next(cl, runs, 64) > 0)
		;
	dirty_claim_free(cl);
}

START_TEST(healthy_precise_stands_in)
{
	struct rig r;
	struct dirty_source_stats st;

	rig_up(&r, true, true);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_int_eq(dirty_memsrc_mark(r.p.mem, BASE + 5 * PS, PS), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	/* Exactly the reported page: the coarse "every page" is dropped. */
	ck_assert_uint_eq(dirty_pages(r.v), 1);
	ck_assert_int_eq(dirty_source_stats(r.coarse, &st), 0);
	ck_assert_uint_eq(st.pages_covered, NPAGES);
	drain(r.v);

	/* Unhealthy: the coarse bits count again, from this round. */
	atomic_store(&r.p.healthy, false);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), NPAGES);
	drain(r.v);

	/* Healthy again: the precise source's new first pass, then exact. */
	atomic_store(&r.p.healthy, true);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), NPAGES);
	drain(r.v);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), 0);

	/* Unhealthy at final: the coarse bits count at final too. */
	atomic_store(&r.p.healthy, false);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), NPAGES);
	dirty_view_free(r.v);
}
END_TEST

START_TEST(cover_is_explicit_and_checked)
{
	struct rig r;
	struct dirty_source *other;
	struct dirty_range all = { BASE, NPAGES * PS };

	/* Without the policy every source is ORed in. */
	rig_up(&r, true, false);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), NPAGES);
	/* Wrong kinds, twice, across views. */
	ck_assert_int_eq(dirty_source_cover(r.coarse, r.p.src), -EINVAL);
	ck_assert_int_eq(dirty_source_cover(r.p.mem, r.coarse), -EINVAL);	/* no healthy callback */
	ck_assert_int_eq(dirty_source_cover(r.p.src, r.coarse), 0);
	ck_assert_int_eq(dirty_source_cover(r.p.src, r.coarse), -EBUSY);
	{
		struct dirty_view *v2;

		ck_assert_int_eq(dirty_view_new(&v2), 0);
		ck_assert_int_eq(dirty_source_attach(v2, &coarse_ops, NULL, &all, 1, &other), 0);
		ck_assert_int_eq(dirty_source_cover(r.p.src, other), -EINVAL);
		dirty_view_free(v2);
	}
	/* The coverer leaves: what it covered counts again. */
	drain(r.v);
	dirty_source_detach(r.p.src);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(dirty_pages(r.v), NPAGES);
	dirty_view_free(r.v);
}
END_TEST

/* ---- a migration whose guest turns unhealthy midway ------------------------ */

struct mig {
	struct rig r;
	uint8_t *ram, *dst;
	uint64_t seed, stamp;
	uint64_t sent, unhealthy_from, healthy_from;	/* in pages sent */
	uint64_t unreported;		/* DMA writes nobody reported */
	uint64_t regained;
	bool device_stopped;
};

/* The device writes a page; a healthy guest reports it, a broken one does not. */
static void dma(struct mig *m)
{
	uint64_t p = test_below(&m->seed, NPAGES);

	*(uint64_t *)(m->ram + p * PS) = ++m->stamp;
	if (atomic_load(&m->r.p.healthy))
		dirty_memsrc_mark(m->r.p.mem, BASE + p * PS, PS);
	else
		m->unreported++;
}

static int op_send(void *opaque, uint64_t gpa, uint64_t len)
{
	struct mig *m = opaque;

	/* Page by page, with DMA in between, as a real sender races the device. */
	for (uint64_t off = 0; off < len; off += PS) {
		m->sent++;
		if (m->sent == m->unhealthy_from)
			atomic_store(&m->r.p.healthy, false);
		if (m->healthy_from && m->sent == m->healthy_from)
			atomic_store(&m->r.p.healthy, true);
		if (m->sent % 4 == 0 && !m->device_stopped)
			dma(m);
		memcpy(m->dst + (gpa - BASE) + off, m->ram + (gpa - BASE) + off, PS);
	}
	return 0;
}

static int op_end_round(void *opaque, unsigned int round, int final)
{
	(void)opaque;
	(void)round;
	(void)final;
	return 0;
}

static int op_stop_device(void *opaque)
{
	((struct mig *)opaque)->device_stopped = true;
	return 0;
}

static const struct dirty_migrate_ops mops = {
	.version = DIRTY_MIGRATE_OPS_VERSION,
	.send = op_send,
	.end_round = op_end_round,
	.stop_device = op_stop_device,
};

static uint64_t migrate(bool coarse, uint64_t unhealthy_from, uint64_t healthy_from,
			struct mig *m)
{
	struct dirty_migrate_config cfg = { .downtime_target_ms = 0, .max_rounds = 6,
					    .batch_runs = 8 };
	struct dirty_migrate_result res;
	uint64_t lost = 0;

	memset(m, 0, sizeof(*m));
	m->seed = 0x9e3779b97f4a7c15ull;
	m->unhealthy_from = unhealthy_from;
	m->healthy_from = healthy_from;
	m->ram = calloc(NPAGES, PS);
	m->dst = calloc(NPAGES, PS);
	ck_assert(m->ram && m->dst);
	rig_up(&m->r, coarse, coarse);
	ck_assert_int_eq(dirty_migrate(m->r.v, &cfg, &mops, m, &res), 0);
	for (uint64_t p = 0; p < NPAGES; p++)
		lost += memcmp(m->ram + p * PS, m->dst + p * PS, PS) != 0;
	printf("%s, unhealthy from page %lu%s: %u rounds, %lu pages sent (%lu final), "
	       "%lu DMA writes unreported, %lu lost, %lu regained\n",
	       coarse ? "covered type1" : "no type1 (control)", unhealthy_from,
	       healthy_from ? " to a later one" : " on", res.rounds, res.pages_sent,
	       res.final_pages, m->unreported, lost, (uint64_t)atomic_load(&m->r.p.regains));
	ck_assert_uint_gt(m->unreported, 0);
	m->regained = atomic_load(&m->r.p.regains);
	dirty_view_free(m->r.v);
	free(m->ram);
	free(m->dst);
	return lost;
}

START_TEST(guest_unhealthy_midway_loses_nothing)
{
	struct mig m;

	/* Unhealthy from the middle of the first pass to the end. */
	ck_assert_uint_eq(migrate(true, NPAGES / 16, 0, &m), 0);
	/* Unhealthy for a while, then healthy again: a new first pass. */
	ck_assert_uint_eq(migrate(true, NPAGES / 16, NPAGES + NPAGES / 2, &m), 0);
	ck_assert_uint_eq(m.regained, 1);
}
END_TEST

START_TEST(control_without_coarse_source_loses_pages)
{
	struct mig m;

	ck_assert_msg(migrate(false, NPAGES / 16, 0, &m) > 0,
		      "the control lost nothing: the test would not notice the cover missing");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cover");
	TCase *tc = tcase_create("policy");

	tcase_add_test(tc, healthy_precise_stands_in);
	tcase_add_test(tc, cover_is_explicit_and_checked);
	tcase_add_test(tc, guest_unhealthy_midway_loses_nothing);
	tcase_add_test(tc, control_without_coarse_source_loses_pages);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
