/* SPDX-License-Identifier: MIT */
/*
 * test_gproto_life.c - the guest protocol through a guest's life, with
 * the README's host configuration (heartbeat 500 ms, DEFER, ALL_DIRTY):
 *
 *   slow_boot           the guest shows up 30 s (x DIRTY_TEST_SCALE) after
 *                       tracking began: waiting all along, never a fault;
 *                       trusted on its first acknowledgement with a new
 *                       pass of the range; then exact, final included (no
 *                       fallback: the case that marked 131,072 pages).
 *   never_booted        a guest that never shows up is not trusted at
 *                       final: the fallback (all pages, or -EHOSTDOWN).
 *   agent_restart       the agent goes away mid-migration: silent, so not
 *                       trusted and a fresh generation; a new agent's
 *                       acknowledgement brings trust back with a new pass;
 *                       a restart shorter than the heartbeat timeout
 *                       changes nothing (the tracking flag stays on).
 *   header_restored     an overwritten header stays fatal, even written
 *                       back by the guest, until dirty_gp_restore().
 *   region_for_a_bar    a file region is a power of two (QEMU's ivshmem
 *                       BAR), a guest maps all of it, the file is the
 *                       caller's unless DIRTY_GP_UNLINK.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "testutil.h"

#define BASE 0x40000000ull
#define PS 4096ull
#define NPAGES 8192ull

struct rig {
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_guest *g;
};

/* The README's example, with a shorter heartbeat where a test waits on it. */
static void rig_up(struct rig *r, unsigned int heartbeat_ms, unsigned int fallback)
{
	struct dirty_gp_config cfg = {
		.gpa = BASE, .len = NPAGES * PS,
		.pinned = DIRTY_GP_PINNED_DEFER, .fallback = fallback,
		.heartbeat_timeout_ms = heartbeat_ms,
	};

	memset(r, 0, sizeof(*r));
	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, BASE, NPAGES * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_gp_create(r->v, &cfg, &r->gp), 0);
}

static void guest_boots(struct rig *r)
{
	ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(r->gp), &r->g), 0);
	ck_assert_int_eq(dirty_guest_agent_start(r->g, 10), 0);
}

static void rig_down(struct rig *r)
{
	if (r->g)
		dirty_guest_close(r->g);
	dirty_view_free(r->v);
}

static uint64_t drain(struct dirty_view *v)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t pages = 0;
	ssize_t k;

	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	while ((k = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < k; i++)
			pages += runs[i].len / PS;
	ck_assert_int_eq(k, 0);
	dirty_claim_free(cl);
	return pages;
}

static struct dirty_gp_health health(struct rig *r)
{
	struct dirty_gp_health h;

	ck_assert_int_eq(dirty_gp_health(r->gp, &h), 0);
	return h;
}

/* Sync until the guest is trusted (its agent polls every 10 ms). */
static void sync_until_trusted(struct rig *r)
{
	for (int i = 0; i < 500 && !health(r).healthy; i++) {
		ck_assert_int_eq(dirty_view_sync(r->v), 0);
		usleep(10 * 1000);
	}
	ck_assert_msg(health(r).healthy, "never trusted: %s", health(r).reason);
}

/* One device write to page p, reported as the DMA API does. */
static void dma(struct rig *r, uint64_t p)
{
	ck_assert_int_eq(dirty_guest_map(r->g, BASE + p * PS, PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r->g, BASE + p * PS, PS, DIRTY_FROM_DEVICE), 0);
}

START_TEST(slow_boot)
{
	struct rig r;
	struct dirty_gp_health h;
	double t0, boot_s = 30 * test_scale();

	rig_up(&r, 500, DIRTY_GP_FALLBACK_ALL_DIRTY);
	/* No guest yet: start does not wait for one that is not there. */
	t0 = test_now_s();
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_msg(test_now_s() - t0 < 0.5, "start waited %.2f s for a guest that is not there",
		      test_now_s() - t0);
	ck_assert_uint_eq(drain(r.v), 0);	/* nothing vouched for yet: the driver's pass sends it */
	/* Pre-copy rounds while the guest boots: waiting, never a fault. */
	while (test_now_s() - t0 < boot_s) {
		ck_assert_int_eq(dirty_view_sync(r.v), 0);
		h = health(&r);
		ck_assert_msg(h.state == DIRTY_GP_WAITING, "%.1f s into the boot: state %d (%s)",
			      test_now_s() - t0, h.state, h.reason);
		ck_assert_msg(strstr(h.reason, "waiting for the guest") != NULL, "reason: %s", h.reason);
		ck_assert_uint_eq(h.trust_lost, 0);
		usleep(100 * 1000);
	}
	printf("slow_boot: waited %.1f s (heartbeat timeout 500 ms, ack timeout 1000 ms): %s\n",
	       test_now_s() - t0, h.reason);
	guest_boots(&r);
	sync_until_trusted(&r);
	h = health(&r);
	ck_assert_uint_eq(h.trust_gained, 1);
	/* A new first pass of the protocol's range, then exact. */
	ck_assert_uint_eq(drain(r.v), NPAGES);
	dma(&r, 77);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_uint_eq(drain(r.v), 1);
	/* Final: trusted, so exact - no fallback. */
	dma(&r, 78);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	ck_assert_uint_eq(drain(r.v), 1);
	rig_down(&r);
}
END_TEST

START_TEST(never_booted)
{
	struct rig r;

	rig_up(&r, 500, DIRTY_GP_FALLBACK_ALL_DIRTY);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	ck_assert_uint_eq(drain(r.v), NPAGES);	/* nobody vouched: everything */
	rig_down(&r);

	rig_up(&r, 500, DIRTY_GP_FALLBACK_ABORT);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_int_eq(dirty_view_final(r.v), -EHOSTDOWN);
	ck_assert_msg(strstr(dirty_last_error(), "waiting for the guest") != NULL, "%s",
		      dirty_last_error());
	ck_assert_uint_eq(drain(r.v), NPAGES);	/* and never clean */
	rig_down(&r);
}
END_TEST

START_TEST(agent_restart)
{
	struct rig r;
	struct dirty_gp_health h;
	uint64_t gen;

	/* Long enough that a loaded machine restarts the agent well inside it. */
	rig_up(&r, 500, DIRTY_GP_FALLBACK_ALL_DIRTY);
	guest_boots(&r);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert(health(&r).healthy);
	ck_assert_uint_eq(drain(r.v), NPAGES);

	/* A restart shorter than the heartbeat timeout: nothing changes. */
	dirty_guest_close(r.g);
	guest_boots(&r);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	h = health(&r);
	ck_assert_msg(h.healthy && h.trust_lost == 0, "quick restart: %s", h.reason);
	ck_assert_uint_eq(drain(r.v), 0);

	/* The agent goes away for longer: silent, untrusted, a fresh generation. */
	gen = health(&r).generation;
	dirty_guest_close(r.g);
	r.g = NULL;
	usleep(1200 * 1000);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	h = health(&r);
	ck_assert_int_eq(h.state, DIRTY_GP_UNTRUSTED);
	ck_assert_msg(strstr(h.reason, "silent") != NULL, "reason: %s", h.reason);
	ck_assert_uint_eq(h.trust_lost, 1);
	ck_assert_uint_gt(h.generation, gen);
	drain(r.v);
	/* A new agent acknowledges the fresh generation: trusted, with a new pass. */
	guest_boots(&r);
	sync_until_trusted(&r);
	h = health(&r);
	ck_assert_uint_eq(h.trust_gained, 2);
	ck_assert_uint_eq(h.acked_generation, h.generation);
	ck_assert_uint_eq(drain(r.v), NPAGES);
	dma(&r, 5);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	ck_assert_uint_eq(drain(r.v), 1);
	rig_down(&r);
}
END_TEST

START_TEST(header_restored)
{
	struct rig r;
	struct dirty_proto_header *hdr;
	uint64_t flags;

	rig_up(&r, 0, DIRTY_GP_FALLBACK_ALL_DIRTY);
	guest_boots(&r);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_uint_eq(drain(r.v), NPAGES);
	hdr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dirty_gp_fd(r.gp), 0);
	ck_assert_ptr_ne(hdr, MAP_FAILED);
	flags = hdr->host.flags;
	hdr->host.flags = 0;
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_int_eq(health(&r).state, DIRTY_GP_BROKEN);
	/* Written back by the guest: still broken, the host cannot know what else it wrote. */
	hdr->host.flags = flags;
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	ck_assert_int_eq(health(&r).state, DIRTY_GP_BROKEN);
	/* The host rewrites it: trusted again after a fresh acknowledgement, with a new pass. */
	ck_assert_int_eq(dirty_gp_restore(r.gp), 0);
	sync_until_trusted(&r);
	ck_assert_uint_eq(drain(r.v), NPAGES);
	dma(&r, 9);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	ck_assert_uint_eq(drain(r.v), 1);
	munmap(hdr, 4096);
	rig_down(&r);
}
END_TEST

START_TEST(region_for_a_bar)
{
	char path[64];
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_gp_config cfg = { .gpa = 0, .len = 512ull << 20 };
	struct dirty_proto_layout l;
	struct dirty_guest *g;
	struct dirty_guest_info info;
	struct stat st;

	snprintf(path, sizeof(path), "/dev/shm/libdirty-test-bar-%d", (int)getpid());
	if (access("/dev/shm", W_OK))
		snprintf(path, sizeof(path), "/tmp/libdirty-test-bar-%d", (int)getpid());
	unlink(path);
	ck_assert_int_eq(dirty_proto_layout((512ull << 20) / PS, &l), 0);
	ck_assert_int_eq(dirty_view_new(&v), 0);

	/* A file: a power of two (40,960 bytes of protocol -> 64 KiB), and the caller's. */
	cfg.path = path;
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_uint_eq(l.region_size, 40960);
	ck_assert_uint_eq(dirty_gp_size(gp), 65536);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, dirty_gp_size(gp));
	/* The guest maps the whole BAR, larger than the protocol. */
	ck_assert_int_eq(dirty_guest_open_path(path, &g), 0);
	ck_assert_int_eq(dirty_guest_info(g, &info), 0);
	ck_assert_uint_eq(info.npages, (512ull << 20) / PS);
	dirty_guest_close(g);
	/* A second create on the same path is refused, and leaves the file alone. */
	{
		struct dirty_gp *again;

		ck_assert_int_eq(dirty_gp_create(v, &cfg, &again), -EEXIST);
		ck_assert_msg(strstr(dirty_last_error(), "remove it") != NULL, "%s", dirty_last_error());
		ck_assert_int_eq(access(path, F_OK), 0);
	}
	dirty_gp_destroy(gp);
	ck_assert_int_eq(access(path, F_OK), 0);	/* not ours to remove */
	unlink(path);

	/* Exact size on request; removed at destroy on request. */
	cfg.size = DIRTY_GP_SIZE_EXACT;
	cfg.flags = DIRTY_GP_UNLINK;
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_uint_eq(dirty_gp_size(gp), l.region_size);
	dirty_gp_destroy(gp);
	ck_assert_int_ne(access(path, F_OK), 0);

	/* A memfd: exact unless asked; a power of two when asked. */
	cfg.path = NULL;
	cfg.flags = 0;
	cfg.size = DIRTY_GP_SIZE_AUTO;
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_uint_eq(dirty_gp_size(gp), l.region_size);
	dirty_gp_destroy(gp);
	cfg.size = DIRTY_GP_SIZE_POW2;
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_uint_eq(dirty_gp_size(gp), 65536);
	ck_assert_int_eq(fstat(dirty_gp_fd(gp), &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, 65536);
	dirty_gp_destroy(gp);
	cfg.size = 9;
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), -EINVAL);
	dirty_view_free(v);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gproto_life");
	TCase *tc = tcase_create("life");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, region_for_a_bar);
	tcase_add_test(tc, never_booted);
	tcase_add_test(tc, agent_restart);
	tcase_add_test(tc, header_restored);
	tcase_add_test(tc, slow_boot);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
