/* SPDX-License-Identifier: MIT */
/*
 * test_gproto_order.c - the two orderings of the guest library that the
 * end-to-end suites only notice by luck, each pinned down by a test that
 * fails when the ordering is broken:
 *
 *  unmap_dirties_before_unpin
 *      guest.c dirty_guest_unmap: "Dirty (and summary) strictly before any
 *      pin bit is cleared" (proto.h: a host that sees the pin clear, with
 *      acquire, sees the dirty bit). A forked guest maps and unmaps
 *      FROM_DEVICE buffers in a loop; the host freezes it with SIGSTOP at
 *      random moments and checks the frozen region: every page the guest
 *      finished mapping and whose pin bit is now clear must have its dirty
 *      bit set. Unpinning first leaves, at some freeze, a page unpinned
 *      and not dirty: the host would skip it while the device's write is
 *      not reported yet.
 *
 *  ack_waits_for_readers_that_saw_tracking_off
 *      guest.c dirty_guest_poll: the acknowledgement of a tracking
 *      generation comes only after an RCU grace period, so no operation
 *      that read tracking off (and so will not set a dirty bit) is still
 *      running. A thread stays inside a read-side critical section, where
 *      dirty_guest_unmap() reads the tracking flag; the host raises the
 *      generation; the guest's poll must not acknowledge until that thread
 *      leaves.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <urcu/urcu-bp.h>

#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "testutil.h"

#define BASE 0x80000000ull
#define PS 4096ull
#define NPAGES 16384u
#define BATCH 256u

#ifndef __SANITIZE_THREAD__	/* fork + SIGSTOP of a TSAN process: not supported */
struct shared {
	_Atomic uint8_t mapped[NPAGES];	/* guest: "map of p returned" */
	_Atomic int ready, quit;
};

static void guest_loop(int fd, struct shared *sh)
{
	struct dirty_guest *g;
	uint64_t seed = 0x243f6a8885a308d3ull, it = 0;

	if (dirty_guest_open_fd(fd, &g))
		_exit(2);
	atomic_store(&sh->ready, 1);
	while (!atomic_load_explicit(&sh->quit, memory_order_relaxed)) {
		uint32_t n = 1 + (uint32_t)(test_rnd(&seed) % BATCH);
		uint64_t first = (it++ * BATCH) % (NPAGES - BATCH);

		if (dirty_guest_map(g, BASE + first * PS, n * PS, DIRTY_FROM_DEVICE))
			_exit(3);
		for (uint32_t i = 0; i < n; i++)
			atomic_store_explicit(&sh->mapped[first + i], 1, memory_order_relaxed);
		if (dirty_guest_unmap(g, BASE + first * PS, n * PS, DIRTY_FROM_DEVICE))
			_exit(4);
	}
	_exit(0);
}

START_TEST(unmap_dirties_before_unpin)
{
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_gp_config cfg = { .gpa = BASE, .len = (uint64_t)NPAGES * PS };
	struct dirty_proto_layout l;
	struct shared *sh;
	uint64_t *dirty, seed = (uint64_t)time(NULL);
	uint64_t checked = 0, violations = 0, first_bad = UINT64_MAX;
	unsigned int stops = (unsigned int)(600 * test_scale()) + 50;
	uint8_t *map;
	pid_t pid;
	int st;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, BASE, (uint64_t)NPAGES * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_int_eq(dirty_proto_layout(NPAGES, &l), 0);
	map = mmap(NULL, l.region_size, PROT_READ | PROT_WRITE, MAP_SHARED, dirty_gp_fd(gp), 0);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert(map != MAP_FAILED && sh != MAP_FAILED);
	dirty = (uint64_t *)(map + l.dirty_off);
	/* Tracking on before the guest exists: every unmap must dirty. */
	ck_assert_int_eq(dirty_gp_track(gp, 1), 0);

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		guest_loop(dirty_gp_fd(gp), sh);
	while (!atomic_load(&sh->ready))
		usleep(100);
	for (unsigned int s = 0; s < stops; s++) {
		usleep((useconds_t)(test_rnd(&seed) % 300));
		ck_assert_int_eq(kill(pid, SIGSTOP), 0);
		ck_assert_int_eq(waitpid(pid, &st, WUNTRACED), pid);
		ck_assert_msg(WIFSTOPPED(st), "guest ended early: status %#x", st);
		/* The guest is frozen: its region and flags hold still. */
		for (uint64_t p = 0; p < NPAGES; p++) {
			uint64_t bit = 1ull << (p % 64);

			if (!atomic_load_explicit(&sh->mapped[p], memory_order_relaxed) ||
			    dirty_gp_pinned(gp, BASE + p * PS) != 0)
				continue;
			checked++;
			if (!(__atomic_load_n(&dirty[p / 64], __ATOMIC_ACQUIRE) & bit)) {
				if (!violations++)
					first_bad = p;
				continue;
			}
			/* Seen: consume it, as a harvest would, for the next freeze. */
			atomic_store_explicit(&sh->mapped[p], 0, memory_order_relaxed);
			__atomic_fetch_and(&dirty[p / 64], ~bit, __ATOMIC_SEQ_CST);
		}
		ck_assert_int_eq(kill(pid, SIGCONT), 0);
	}
	atomic_store(&sh->quit, 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "guest failed: status %#x", st);
	printf("unmap ordering: %u freezes, %lu unpinned pages checked, %lu unpinned without "
	       "their dirty bit (first page %ld)\n", stops, checked, violations,
	       violations ? (long)first_bad : -1L);
	ck_assert_uint_gt(checked, 0);
	ck_assert_msg(violations == 0, "%lu times a FROM_DEVICE page was unpinned before its "
		      "dirty bit was set (first page %lu)", violations, first_bad);
	munmap(sh, sizeof(*sh));
	munmap(map, l.region_size);
	dirty_view_free(v);
}
END_TEST
#endif /* !__SANITIZE_THREAD__ */

struct reader {
	_Atomic bool inside, leave;
};

/* Stands for an operation that read tracking off and has not finished yet. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;

	/* The guest library's RCU is liburcu-bp's, one per process: this read
	 * section is what dirty_guest_unmap() holds around its flag read. */
	urcu_bp_read_lock();
	atomic_store(&r->inside, true);
	while (!atomic_load(&r->leave))
		usleep(100);
	urcu_bp_read_unlock();
	return NULL;
}

struct poller {
	struct dirty_guest *g;
	_Atomic int ret;
	_Atomic bool done;
};

static void *poller_main(void *arg)
{
	struct poller *p = arg;

	atomic_store(&p->ret, dirty_guest_poll(p->g));
	atomic_store(&p->done, true);
	return NULL;
}

START_TEST(ack_waits_for_readers_that_saw_tracking_off)
{
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_guest *g;
	struct dirty_gp_config cfg = { .gpa = BASE, .len = 64 * PS, .ack_timeout_ms = 60000 };
	struct reader rd = { 0 };
	struct poller pl = { 0 };
	pthread_t rt, pt;

	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, BASE, 64 * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_gp_create(v, &cfg, &gp), 0);
	ck_assert_int_eq(dirty_guest_open_fd(dirty_gp_fd(gp), &g), 0);
	pl.g = g;
	ck_assert_int_eq(pthread_create(&rt, NULL, reader_main, &rd), 0);
	while (!atomic_load(&rd.inside))
		usleep(100);
	/* Tracking goes on while the reader, which saw it off, is still inside. */
	ck_assert_int_eq(dirty_gp_track(gp, 1), 0);
	ck_assert_int_eq(pthread_create(&pt, NULL, poller_main, &pl), 0);
	usleep(100 * 1000);
	ck_assert_msg(!atomic_load(&pl.done) && dirty_gp_acked(gp) == 0,
		      "the guest acknowledged tracking (poll returned %d) while an operation "
		      "that read tracking off was still running",
		      atomic_load(&pl.done) ? atomic_load(&pl.ret) : -1);
	atomic_store(&rd.leave, true);
	pthread_join(rt, NULL);
	pthread_join(pt, NULL);
	ck_assert_int_eq(atomic_load(&pl.ret), 1);
	ck_assert_int_eq(dirty_gp_acked(gp), 1);
	dirty_guest_close(g);
	dirty_view_free(v);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gproto_order");
	TCase *tc = tcase_create("orderings");

	tcase_set_timeout(tc, 120);
#ifndef __SANITIZE_THREAD__
	tcase_add_test(tc, unmap_dirties_before_unpin);	/* fork + SIGSTOP: not under TSAN */
#endif
	tcase_add_test(tc, ack_waits_for_readers_that_saw_tracking_off);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
