/* SPDX-License-Identifier: MIT */
/*
 * test_gproto.c - the guest bitmap protocol end to end in one process:
 * the host creates the region and attaches it to a view, the guest
 * library opens it through the fd, and every test checks which pages the
 * view hands out afterwards. Covers directions, bit edges, reference
 * counts, pin conflicts, version refusal, the tracking handshake, pinned
 * policies, carry-over, health and the fallback at final.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "testutil.h"

#define BASE 0x40000000ull
#define PS 4096ull
#define NPAGES (3 * 4096 + 77)	/* short last summary word and chunk */

struct rig {
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_guest *g;
	struct dirty_proto_header *shared;	/* the host's own view of the region */
	uint8_t *map;
};

static size_t drain(struct dirty_view *v, uint64_t *pages, size_t max);

/* The first pass after trust is gained: every page, once. */
static void first_pass(struct dirty_view *v)
{
	uint64_t *got = calloc(NPAGES, sizeof(*got));
	size_t n = drain(v, got, NPAGES);

	ck_assert_msg(n == NPAGES, "the first pass after trust was gained handed out %zu pages, want all %llu",
		      n, (unsigned long long)NPAGES);
	free(got);
}

static void rig_up(struct rig *r, unsigned int pinned, unsigned int fallback,
		   bool start)
{
	struct dirty_gp_config cfg = {
		.gpa = BASE, .len = NPAGES * PS, .pinned = pinned,
		.fallback = fallback, .ack_timeout_ms = 200,
	};

	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, BASE, NPAGES * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_gp_create(r->v, &cfg, &r->gp), 0);
	r->map = mmap(NULL, dirty_gp_size(r->gp), PROT_READ | PROT_WRITE, MAP_SHARED,
		      dirty_gp_fd(r->gp), 0);
	ck_assert_ptr_ne(r->map, MAP_FAILED);
	r->shared = (struct dirty_proto_header *)r->map;
	ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(r->gp), &r->g), 0);
	if (start) {
		/* Start returns once the guest acknowledged: its agent polls. */
		ck_assert_int_eq(dirty_guest_agent_start(r->g, 1), 0);
		ck_assert_int_eq(dirty_view_start(r->v), 0);
		ck_assert_int_eq(dirty_gp_acked(r->gp), 1);
		/* Trust gained marks the range: the first pass, drained here. */
		first_pass(r->v);
	}
}

static void rig_down(struct rig *r)
{
	dirty_guest_close(r->g);
	munmap(r->map, dirty_gp_size(r->gp));
	dirty_view_free(r->v);	/* frees the gp source too */
}

/* Claim everything and return it as a sorted list of page numbers. */
static size_t drain(struct dirty_view *v, uint64_t *pages, size_t max)
{
	struct dirty_claim *cl;
	struct dirty_run runs[32];
	size_t n = 0;
	ssize_t k;

	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	while ((k = dirty_claim_next(cl, runs, 32)) > 0)
		for (ssize_t i = 0; i < k; i++)
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += PS) {
				ck_assert_uint_lt(n, max);
				pages[n++] = (a - BASE) / PS;
			}
	dirty_claim_free(cl);
	return n;
}

/* The view must hand out exactly the pages listed (ascending). */
static void expect_pages(struct dirty_view *v, const uint64_t *want, size_t nwant)
{
	uint64_t *got = calloc(NPAGES, sizeof(*got));
	size_t n = drain(v, got, NPAGES);

	for (size_t i = 0; i < n && i < nwant; i++)
		ck_assert_msg(got[i] == want[i], "page #%zu: got %lu, want %lu", i,
			      got[i], want[i]);
	ck_assert_msg(n == nwant, "got %zu pages, want %zu", n, nwant);
	free(got);
}

static uint64_t gpa_of(uint64_t p)
{
	return BASE + p * PS;
}

START_TEST(directions)
{
	struct rig r;
	static const uint64_t want[] = { 1, 2, 64, 4095, 4096, NPAGES - 1 };

	/* SEND: the still-mapped page 64 comes out too (DEFER keeps it back). */
	rig_up(&r, DIRTY_GP_PINNED_SEND, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	/* FROM_DEVICE unmap dirties; BIDIRECTIONAL sync_for_cpu dirties. */
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(1), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(1), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(64), 100, DIRTY_BIDIRECTIONAL), 0);
	ck_assert_int_eq(dirty_guest_sync_for_cpu(r.g, gpa_of(64), 100, DIRTY_BIDIRECTIONAL), 0);
	/* TO_DEVICE never dirties, neither on sync nor on unmap. */
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(10), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_sync_for_cpu(r.g, gpa_of(10), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(10), PS, DIRTY_TO_DEVICE), 0);
	/* sync_for_device records nothing. */
	ck_assert_int_eq(dirty_guest_sync_for_device(r.g, gpa_of(64), PS, DIRTY_FROM_DEVICE), 0);
	/* Summary word and chunk edges, and the very last page. */
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(4095), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(4095), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(NPAGES - 1), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(NPAGES - 1), PS, DIRTY_FROM_DEVICE), 0);
	/* Not in the view until the host harvests. */
	expect_pages(r.v, NULL, 0);
	/* 64's dirty bit, not just its pin: the sync for the CPU set it. */
	ck_assert(((uint64_t *)(r.map + r.shared->dirty_off))[1] & 1);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, want, sizeof(want) / sizeof(want[0]));
	/* Harvest consumed the bits: only the still-pinned 64 again (SEND). */
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, want + 2, 1);

	/* Bad ranges and directions are refused and counted. */
	ck_assert_int_eq(dirty_guest_map(r.g, BASE - PS, PS, DIRTY_FROM_DEVICE), -ERANGE);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(NPAGES), PS, DIRTY_FROM_DEVICE), -ERANGE);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(NPAGES - 1), UINT64_MAX, DIRTY_FROM_DEVICE), -ERANGE);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(3), PS, 0), -EINVAL);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(3), PS, DIRTY_FROM_DEVICE), -ENOENT);
	ck_assert_uint_eq(r.shared->guest.bad_ranges, 4);
	rig_down(&r);
}
END_TEST

START_TEST(refcounts_and_conflicts)
{
	struct rig r;
	struct dirty_gp_health h;

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(7)), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(7), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(7), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(7)), 1);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(7), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_msg(dirty_gp_pinned(r.gp, gpa_of(7)) == 1,
		      "pin cleared while a mapping remains");
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(7), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(7)), 0);
	/* A double unmap is an error, not an underflow. */
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(7), PS, DIRTY_FROM_DEVICE), -ENOENT);

	/* Another client (here: a raw write) pinned page 9: we never clear it. */
	dirty_proto_pin((uint64_t *)(r.map + r.shared->pin_off), 9);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(9), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(9), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(9)), 1);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_uint_eq(h.pin_conflicts, 1);

	/* Closing with a mapping open leaves its pin and counts the leak. */
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(20), 3 * PS, DIRTY_FROM_DEVICE), 0);
	dirty_guest_close(r.g);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(21)), 1);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_uint_eq(h.pin_leaks, 3);
	ck_assert_uint_eq(h.guest_state, DIRTY_PROTO_GUEST_STOPPED);
	ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(r.gp), &r.g), 0);
	rig_down(&r);
}
END_TEST

START_TEST(tracking_handshake)
{
	struct rig r;
	struct dirty_gp_health h;
	struct dirty_guest_info info;
	static const uint64_t want[] = { 5 };

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, false);
	/* Tracking off: pins are exact, dirty bits are skipped. */
	ck_assert_int_eq(dirty_guest_info(r.g, &info), 0);
	ck_assert_int_eq(info.tracking, 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(4), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(4)), 1);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(4), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(4)), 0);
	ck_assert_int_eq(dirty_gp_track(r.gp, 1), 0);
	/* Not acknowledged until the guest has passed a grace period. */
	ck_assert_int_eq(dirty_gp_acked(r.gp), 0);
	ck_assert_int_eq(dirty_guest_poll(r.g), 1);
	ck_assert_int_eq(dirty_gp_acked(r.gp), 1);
	ck_assert_int_eq(dirty_guest_poll(r.g), 0);	/* nothing new */
	/* Trust gained: the whole range once (page 4's unmap saw tracking off). */
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	first_pass(r.v);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_int_eq(h.state, DIRTY_GP_TRUSTED);
	ck_assert_uint_eq(h.trust_gained, 1);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(5), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(5), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, want, 1);	/* then exact */

	/* A live guest with no acknowledgement within the timeout: untrusted, and why. */
	ck_assert_int_eq(dirty_gp_track(r.gp, 1), 0);
	usleep(250 * 1000);
	ck_assert_int_eq(dirty_gp_acked(r.gp), -ETIMEDOUT);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_int_eq(h.healthy, 0);
	ck_assert_int_eq(h.state, DIRTY_GP_UNTRUSTED);
	ck_assert_msg(strstr(h.reason, "acknowledge") != NULL, "reason: %s", h.reason);
	rig_down(&r);
}
END_TEST

START_TEST(agent_thread_acks)
{
	struct rig r;
	int acked = 0;

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, false);
	ck_assert_int_eq(dirty_guest_agent_start(r.g, 1), 0);
	ck_assert_int_eq(dirty_gp_track(r.gp, 1), 0);
	for (int i = 0; i < 2000 && acked != 1; i++) {
		acked = dirty_gp_acked(r.gp);
		usleep(1000);
	}
	ck_assert_int_eq(acked, 1);
	rig_down(&r);
}
END_TEST

START_TEST(pinned_policies_and_carry_over)
{
	struct rig r;
	static const uint64_t pinned[] = { 30, 31 };
	static const uint64_t carried[] = { 40 };
	static const uint64_t final[] = { 30, 31, 50 };

	/* SEND: pinned pages come out at every sync. */
	rig_up(&r, DIRTY_GP_PINNED_SEND, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(30), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, pinned, 2);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, pinned, 2);
	rig_down(&r);

	/* DEFER: pinned pages wait; a deferred page comes out once unpinned. */
	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(30), 2 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(40), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(50), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, NULL, 0);
	/* 40 and 50 were CPU-dirtied: a claim keeps them back, pinned. */
	ck_assert_int_eq(dirty_view_mark(r.v, gpa_of(40), PS), 0);
	ck_assert_int_eq(dirty_view_mark(r.v, gpa_of(50), PS), 0);
	expect_pages(r.v, NULL, 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, NULL, 0);	/* still pinned: still carried */
	/* TO_DEVICE unmap sets no dirty bit: only the carry-over sends 40. */
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(40), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, carried, 1);
	/* Final (device stopped): pinned and carried pages, all of them. */
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	expect_pages(r.v, final, 3);
	rig_down(&r);
}
END_TEST

/*
 * DEFER: the claim itself keeps pinned pages back, whoever marked them,
 * splitting runs around them; the source carries them until they are
 * unpinned (then they come out) or until final. Nothing for the caller to
 * skip or report.
 */
START_TEST(defer_claims_keep_pinned_back)
{
	struct rig r;
	struct dirty_gp_health h;
	struct dirty_claim *cl;
	struct dirty_run run;
	uint64_t want[100], n = 0;
	static const uint64_t unmapped[] = { 20 };
	static const uint64_t final[] = { 30, 31 };

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(20), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(r.g, gpa_of(30), 2 * PS, DIRTY_BIDIRECTIONAL), 0);
	/* The CPU log reports pages 0..99: one run, split around the pins. */
	ck_assert_int_eq(dirty_view_mark(r.v, gpa_of(0), 100 * PS), 0);
	for (uint64_t p = 0; p < 100; p++)
		if (p != 20 && p != 30 && p != 31)
			want[n++] = p;
	expect_pages(r.v, want, n);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_uint_eq(h.pages_kept_back, 3);
	ck_assert_uint_eq(h.pages_carried, 3);

	/* No room to split (one run): everything goes out, pins included. */
	ck_assert_int_eq(dirty_view_mark(r.v, gpa_of(0), 100 * PS), 0);
	ck_assert_int_eq(dirty_claim_new(r.v, &cl), 0);
	ck_assert_int_eq(dirty_claim_next(cl, &run, 1), 1);
	ck_assert_uint_eq(run.gpa, gpa_of(0));
	ck_assert_uint_eq(run.len, 100 * PS);
	ck_assert_int_eq(dirty_claim_next(cl, &run, 1), 0);
	dirty_claim_free(cl);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_uint_eq(h.pages_kept_back, 3);

	/* Unpinned: the carry-over hands it out (its dirty bit too). */
	ck_assert_int_eq(dirty_guest_unmap(r.g, gpa_of(20), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, unmapped, 1);
	/* Final: what is still pinned, carried or not; never kept back again. */
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	expect_pages(r.v, final, 2);
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_uint_eq(h.pages_carried, 0);
	rig_down(&r);
}
END_TEST

/* Scatter-gather lists: all pieces or none, dirty before any unpin. */
START_TEST(vectored_calls)
{
	struct rig r;
	const struct dirty_dma_piece rx[] = {
		{ gpa_of(3) + 100, 2 * PS },	/* a partial page, a whole, a partial: 3..5 */
		{ gpa_of(63), 2 * PS },		/* across a dirty-word boundary: 63, 64 */
		{ gpa_of(4096), 1 },		/* a chunk edge, one byte */
	};
	const struct dirty_dma_piece bad[] = { { gpa_of(10), PS }, { gpa_of(NPAGES), PS } };
	const struct dirty_dma_piece tx[] = { { gpa_of(200), PS }, { gpa_of(300), PS } };
	static const uint64_t want[] = { 3, 4, 5, 63, 64, 4096 };
	struct dirty_guest_info info;

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	ck_assert_int_eq(dirty_guest_map_v(r.g, rx, 3, DIRTY_FROM_DEVICE), 0);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(want[i])), 1);
	/* One bad piece: nothing is mapped, nothing is left pinned. */
	ck_assert_int_eq(dirty_guest_map_v(r.g, bad, 2, DIRTY_FROM_DEVICE), -ERANGE);
	ck_assert_int_eq(dirty_gp_pinned(r.gp, gpa_of(10)), 0);
	ck_assert_int_eq(dirty_guest_info(r.g, &info), 0);
	ck_assert_uint_eq(info.pinned_pages, 6);
	/* TO_DEVICE lists never dirty. */
	ck_assert_int_eq(dirty_guest_map_v(r.g, tx, 2, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_sync_for_cpu_v(r.g, tx, 2, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap_v(r.g, tx, 2, DIRTY_TO_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap_v(r.g, rx, 3, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap_v(r.g, rx, 3, DIRTY_FROM_DEVICE), -ENOENT);
	ck_assert_int_eq(dirty_guest_info(r.g, &info), 0);
	ck_assert_uint_eq(info.pinned_pages, 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, want, sizeof(want) / sizeof(want[0]));
	/* A list of more pieces than fit the stack. */
	{
		struct dirty_dma_piece many[40];

		for (int i = 0; i < 40; i++)
			many[i] = (struct dirty_dma_piece){ gpa_of(1000 + 2 * (uint64_t)i), PS };
		ck_assert_int_eq(dirty_guest_map_v(r.g, many, 40, DIRTY_FROM_DEVICE), 0);
		ck_assert_int_eq(dirty_guest_sync_for_cpu_v(r.g, many, 40, DIRTY_FROM_DEVICE), 0);
		ck_assert_int_eq(dirty_guest_unmap_v(r.g, many, 40, DIRTY_FROM_DEVICE), 0);
		ck_assert_int_eq(dirty_view_sync(r.v), 0);
		uint64_t *seen = calloc(NPAGES, 8);

		ck_assert_uint_eq(drain(r.v, seen, NPAGES), 40);
		free(seen);
	}
	rig_down(&r);
}
END_TEST

/* A virtual buffer as guest-physical pieces, from /proc/self/pagemap. */
START_TEST(pieces_from_pagemap)
{
	size_t len = 64 * PS;
	uint8_t *buf = mmap(NULL, len + PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct dirty_dma_piece p[64];
	ssize_t n;
	uint64_t total = 0;

	ck_assert_ptr_ne(buf, MAP_FAILED);
	/* Not resident yet: refused, never a wrong address. */
	ck_assert_int_eq(dirty_guest_pieces(buf, len, p, 64), -EFAULT);
	ck_assert_msg(strstr(dirty_guest_last_error(), "mlock") != NULL, "%s", dirty_guest_last_error());
	ck_assert_int_eq(mlock(buf, len), 0);
	/* ASan makes mlock a no-op: writing the pages makes them resident there too. */
	memset(buf, 0x5a, len);
	n = dirty_guest_pieces(buf + 100, len - 200, p, 64);
	if (n == -EPERM) {
		ck_assert_msg(geteuid() != 0, "root read frame numbers as 0?");
		ck_assert_msg(strstr(dirty_guest_last_error(), "CAP_SYS_ADMIN") != NULL, "%s",
			      dirty_guest_last_error());
		printf("pieces_from_pagemap: not root, frame numbers hidden: %s\n", dirty_guest_last_error());
	} else {
		ck_assert_msg(n > 0 && n <= 64, "%zd pieces: %s", n, dirty_guest_last_error());
		for (ssize_t i = 0; i < n; i++) {
			ck_assert_uint_ne(p[i].gpa, 0);
			total += p[i].len;
		}
		ck_assert_uint_eq(total, len - 200);
		ck_assert_uint_eq(p[0].gpa % PS, 100);	/* the offset inside the first page */
		/* Too little room: the count says how much is needed. */
		if (n > 1) {
			struct dirty_dma_piece one;

			ck_assert_int_eq(dirty_guest_pieces(buf + 100, len - 200, &one, 1), n);
			ck_assert_uint_eq(one.gpa, p[0].gpa);
			ck_assert_uint_eq(one.len, p[0].len);
		}
		printf("pieces_from_pagemap: 64 pages in %zd physically contiguous pieces\n", n);
		/* Without the privilege the frame numbers read 0: say so, never use them. */
		if (geteuid() == 0) {
			pid_t pid = fork();
			int st;

			ck_assert_int_ge(pid, 0);
			if (pid == 0) {
				ssize_t r;

				/* An ordinary user's process: dumpable, so its pagemap opens. */
				if (setuid(65534) || prctl(PR_SET_DUMPABLE, 1))
					_exit(3);
				r = dirty_guest_pieces(buf, len, p, 64);
				_exit(r == -EPERM && strstr(dirty_guest_last_error(), "CAP_SYS_ADMIN") ? 0 : 1);
			}
			ck_assert_int_eq(waitpid(pid, &st, 0), pid);
			ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
				      "unprivileged pieces: status %#x", st);
		}
	}
	munmap(buf, len + PS);
}
END_TEST

START_TEST(final_scans_without_summary)
{
	struct rig r;
	uint64_t *dirty, *summary;
	static const uint64_t want[] = { 100, NPAGES - 2 };

	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	dirty = (uint64_t *)(r.map + r.shared->dirty_off);
	summary = (uint64_t *)(r.map + r.shared->summary_off);
	/* A guest that died between the dirty bit and its summary bit. */
	dirty[100 / 64] |= 1ull << (100 % 64);
	dirty[(NPAGES - 2) / 64] |= 1ull << ((NPAGES - 2) % 64);
	/* Garbage past the last page and in unused summary bits. */
	dirty[(NPAGES - 1) / 64] |= ~0ull << (((NPAGES - 1) % 64) + 1);
	summary[0] |= ~0ull << 60;
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, NULL, 0);	/* pre-copy goes by the summary */
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	expect_pages(r.v, want, 2);
	rig_down(&r);
}
END_TEST

START_TEST(corrupt_header_fallbacks)
{
	struct rig r;
	struct dirty_gp_health h;
	uint64_t *all = malloc(NPAGES * sizeof(*all));

	for (uint64_t p = 0; p < NPAGES; p++)
		all[p] = p;
	/* ALL_DIRTY: a guest that scribbles on the header gets everything resent. */
	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ALL_DIRTY, true);
	r.shared->npages = 1ull << 40;
	ck_assert_int_eq(dirty_view_sync(r.v), 0);	/* never reads npages back */
	ck_assert_int_eq(dirty_gp_health(r.gp, &h), 0);
	ck_assert_int_eq(h.healthy, 0);
	ck_assert_int_eq(h.state, DIRTY_GP_BROKEN);
	ck_assert_msg(strstr(h.reason, "npages") != NULL, "reason: %s", h.reason);
	expect_pages(r.v, NULL, 0);
	ck_assert_int_eq(dirty_view_final(r.v), 0);
	expect_pages(r.v, all, NPAGES);
	rig_down(&r);

	/* ABORT: final fails, and the view still marks everything (never clean). */
	rig_up(&r, DIRTY_GP_PINNED_DEFER, DIRTY_GP_FALLBACK_ABORT, true);
	r.shared->host.flags = 0;
	ck_assert_int_eq(dirty_view_final(r.v), -EHOSTDOWN);
	ck_assert_msg(strstr(dirty_last_error(), "host.flags") != NULL, "%s", dirty_last_error());
	expect_pages(r.v, all, NPAGES);
	rig_down(&r);
	free(all);
}
END_TEST


/* A region built by hand, to feed the guest's validation. */
static uint8_t *make_region(uint64_t npages, struct dirty_proto_layout *l)
{
	uint8_t *m;
	struct dirty_proto_header *h;

	ck_assert_int_eq(dirty_proto_layout(npages, l), 0);
	m = aligned_alloc(4096, l->region_size);
	memset(m, 0, l->region_size);
	h = (struct dirty_proto_header *)m;
	h->magic = DIRTY_PROTO_MAGIC;
	h->major = DIRTY_PROTO_MAJOR;
	h->minor = DIRTY_PROTO_MINOR;
	h->header_size = DIRTY_PROTO_HEADER_SIZE;
	h->page_shift = 12;
	h->gpa_base = 0;
	h->npages = npages;
	h->region_size = l->region_size;
	h->dirty_off = l->dirty_off;
	h->dirty_len = l->dirty_len;
	h->summary_off = l->summary_off;
	h->summary_len = l->summary_len;
	h->pin_off = l->pin_off;
	h->pin_len = l->pin_len;
	return m;
}

START_TEST(guest_refuses_bad_regions)
{
	struct dirty_proto_layout l;
	uint8_t *m = make_region(1000, &l);
	struct dirty_proto_header *h = (struct dirty_proto_header *)m;
	struct dirty_guest *g;

	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), 0);
	dirty_guest_close(g);
	/* A newer minor is fine; a newer major is refused with a reason. */
	h->minor = 7;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), 0);
	dirty_guest_close(g);
	h->major = 2;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTONOSUPPORT);
	ck_assert_msg(strstr(dirty_guest_last_error(), "v2.7") != NULL, "%s", dirty_guest_last_error());
	h->major = 1;
	h->magic ^= 1;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTO);
	h->magic ^= 1;
	h->pin_off += 4096;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTO);
	h->pin_off -= 4096;
	h->page_shift = 11;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTO);
	h->page_shift = 12;
	h->npages = 0;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTO);
	h->npages = 1000;
	h->gpa_base = UINT64_MAX - 4095;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size, &g), -EPROTO);
	h->gpa_base = 0;
	ck_assert_int_eq(dirty_guest_open_mem(m, l.region_size - 1, &g), -EINVAL);
	ck_assert_int_eq(dirty_guest_open_mem(m, 100, &g), -EINVAL);
	ck_assert_int_eq(dirty_guest_open_path("/nonexistent/region", &g), -ENOENT);
	free(m);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gproto");
	TCase *tc = tcase_create("protocol");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, directions);
	tcase_add_test(tc, refcounts_and_conflicts);
	tcase_add_test(tc, tracking_handshake);
	tcase_add_test(tc, agent_thread_acks);
	tcase_add_test(tc, pinned_policies_and_carry_over);
	tcase_add_test(tc, defer_claims_keep_pinned_back);
	tcase_add_test(tc, vectored_calls);
	tcase_add_test(tc, pieces_from_pagemap);
	tcase_add_test(tc, final_scans_without_summary);
	tcase_add_test(tc, corrupt_header_fallbacks);
	tcase_add_test(tc, guest_refuses_bad_regions);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
