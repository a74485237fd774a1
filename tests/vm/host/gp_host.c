/* gp_host.c - the guest library in a real Linux guest, host side (run by
 * tests/vm/t_vm_guestlib.sh; the guest side is tests/vm/guest/vm_guestlib.c).
 *
 *   gp_host --shm /dev/shm/NAME [--ram-mib 512] [--console FILE]
 *           [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]
 *
 * This host program is what a VMM's migration code would be, outside QEMU:
 * a view over the guest's RAM ([0, ram) at 4 KiB pages: q35 puts all of a
 * 512 MiB guest's RAM there) and a guest-protocol source created with
 * dirty_gp_create at the given /dev/shm path. It checks the file is what
 * QEMU's ivshmem-plain needs (a power of two, exactly dirty_gp_size()
 * bytes), then fork/execs COMMAND (run-vm.sh with --shm on that file), so
 * QEMU only ever sees a finished region, and follows the guest program
 * step by step through a TEST-ONLY mailbox in the file's last 4 KiB, past
 * the protocol region (see vm_guestlib.c for the steps; the layout is in
 * guest/mbox-guestlib.h, which both sides include). The parts every host
 * half shares are in vm_host.c.
 *
 * What it asserts, page by page over all of guest RAM (pins through
 * dirty_gp_pinned, dirty pages through a drain of the view), except where
 * only a count is available (the view's count, kept-back and carried
 * pages):
 *   1 the handshake: with the guest's region open (guest state RUNNING)
 *     and its agent not started, dirty_view_start() (on a thread) is still
 *     waiting and dirty_gp_acked() is 0; once the agent runs, start returns
 *     0, dirty_gp_acked() is 1 and the guest is TRUSTED; gaining trust
 *     marked every page exactly once (the first pass, drained here);
 *   2 while a buffer is mapped, exactly its pages are pinned (TO_DEVICE and
 *     FROM_DEVICE); a sync before the DMA finds nothing dirty;
 *   3 after edu's device -> RAM DMA, dirty_guest_sync_for_cpu_v of 3 of the
 *     6 pages makes 3 pages dirty (a count), which a claim keeps back while
 *     they are pinned (policy DEFER); after the FROM_DEVICE unmap, a sync
 *     and a drain give exactly the 6 mapped (= DMA'd) pages - the 3 never
 *     synced through the unmap's own dirty bits - and no pin is left;
 *   4 after the TO_DEVICE map, edu's RAM -> device read and its unmap: no
 *     page dirty, no pin;
 *   5 after the guest closed the region: state STOPPED, no pin leak, no
 *     conflict, no bad range; the VM exits 0.
 * The host never harvests while the guest changes bitmaps (the guest is
 * parked at a step): under TCG with one vCPU QEMU may emulate a guest's
 * locked read-modify-write without a host atomic, so only the protocol's
 * single-writer words are shared concurrently (heartbeat, ack, steps).
 *
 * Lines: "gp_host: ok ..." / "gp_host: FAIL ..." per check, then
 * "gp_host: RESULT checks=N failures=M ...". On any failure it prints the
 * host's view (dirty_gp_health, the mailbox) and the guest's (its message,
 * the console's last lines). Exit 0 = pass, 1 = fail, 2 = bad usage.
 * The region file is the caller's by the library's rules: this program
 * removes it once QEMU is gone (and on SIGTERM/SIGINT).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vm/guest/vm-time.h"
#include "vm_host.h"
#include "vm/guest/mbox-guestlib.h"

static const char *const step_names[] = {
	"none", "OPENED", "AGENT", "TO_MAPPED", "TO_DONE",
	"FROM_MAPPED", "FROM_SYNCED", "FROM_DONE", "CLOSED",
};

/* How long the handshake shows start waiting before the agent may run. */
#define HANDSHAKE_HOLD_MS 300

static volatile struct gl_mbox *mb;

static void expect_trusted(const char *when)
{
	struct dirty_gp_health h = health();

	CHECK(h.state == DIRTY_GP_TRUSTED, "%s: guest %s%s%s (want TRUSTED)", when,
	      state_name(h.state), h.reason[0] ? ": " : "", h.reason);
}

/* ---- the handshake ------------------------------------------------------------- */

/* Steps 1 and 2. False when the run cannot go on. */
static bool handshake(struct starter *st, double *boot_ms, double *ack_ms)
{
	struct dirty_gp_health h;
	double start = now_ms(), released;
	uint8_t *all;
	bool joined = false;
	int acked;

	if (!wait_guest(STEP_OPENED, opt.boot_timeout_s))
		return false;
	*boot_ms = now_ms() - start;
	note("the guest opened the region %.0f ms after QEMU was started", *boot_ms);
	CHECK(mb->h.bar_size == file_size,
	      "QEMU took the region: the guest's ivshmem BAR 2 is %" PRIu64 " bytes = dirty_gp_size()",
	      (uint64_t)mb->h.bar_size);
	h = health();
	CHECK(h.guest_state == DIRTY_PROTO_GUEST_RUNNING && h.state == DIRTY_GP_IDLE,
	      "before dirty_view_start: guest state %s, source %s (want RUNNING, IDLE)",
	      guest_state_name(h.guest_state), state_name(h.state));

	if (starter_run(st)) {
		give_up("pthread_create failed");
		return false;
	}
	/* start raises the tracking generation first: wait to see it. */
	start = now_ms();
	while (__atomic_load_n(&hdr->host.track_gen, __ATOMIC_ACQUIRE) == 0 &&
	       now_ms() - start < 5000)
		sleep_ms(1);
	/*
	 * The guest is parked at step 1 with no agent: nothing can poll.
	 * A start that returned now would have begun the first pass before
	 * the guest acknowledged tracking.
	 */
	sleep_ms(HANDSHAKE_HOLD_MS);
	h = health();
	CHECK(__atomic_load_n(&hdr->host.track_gen, __ATOMIC_ACQUIRE) != 0,
	      "dirty_view_start raised the tracking generation (%" PRIu64 ")", h.generation);
	acked = dirty_gp_acked(gp);
	CHECK(acked == 0, "agent not started: dirty_gp_acked() = %d (want 0)", acked);
	CHECK(!atomic_load(&st->done),
	      "agent not started: dirty_view_start still waiting after %d ms%s", HANDSHAKE_HOLD_MS,
	      atomic_load(&st->done) ? " - it RETURNED" : "");
	CHECK(h.state == DIRTY_GP_WAITING && h.acked_generation != h.generation,
	      "agent not started: source %s, acked generation %" PRIu64 " of %" PRIu64 " (want WAITING, not acked)",
	      state_name(h.state), h.acked_generation, h.generation);
	released = now_ms();
	host_done(STEP_OPENED);

	/* The guest starts its agent, which polls and acknowledges. */
	while (!atomic_load(&st->done) && now_ms() - released < opt.step_timeout_s * 1000) {
		if (vm_mbox_load(&mb->h.guest_failed) || !vm_running())
			break;
		sleep_ms(1);
	}
	if (atomic_load(&st->done)) {
		pthread_join(st->t, NULL);
		joined = true;
		*ack_ms = st->returned_ms - released;
		CHECK(st->rc == 0, "dirty_view_start returned %d %.1f ms after the agent was allowed to start%s%s",
		      st->rc, *ack_ms, st->rc ? ": " : "", st->rc ? dirty_last_error() : "");
	}
	if (!wait_guest(STEP_AGENT, opt.step_timeout_s))
		goto out;
	if (!joined) {
		give_up("dirty_view_start did not return within %.0f s of the agent's start",
			opt.step_timeout_s);
		goto out;
	}
	h = health();
	acked = dirty_gp_acked(gp);
	CHECK(acked == 1, "agent running: dirty_gp_acked() = %d (want 1)", acked);
	CHECK(h.state == DIRTY_GP_TRUSTED && h.trust_gained == 1 && h.acked_generation == h.generation,
	      "agent running: source %s, trust gained %" PRIu64 " time(s), acked generation %" PRIu64 " of %" PRIu64 " (want TRUSTED, once, acked)",
	      state_name(h.state), h.trust_gained, h.acked_generation, h.generation);
	/* Trust gained marked the whole range once: the first pass. */
	all = malloc(npages);
	if (!all) {
		give_up("out of memory");
		goto out;
	}
	memset(all, 1, npages);
	drain("first pass (trust gained marks the range)", all);
	free(all);
	host_done(STEP_AGENT);
	return !aborted;
out:
	if (!joined) {
		/* start waits at most its own cap; never leave the thread behind. */
		pthread_join(st->t, NULL);
	}
	return false;
}

/* ---- the DMA steps ----------------------------------------------------------- */

static bool dma_steps(void)
{
	uint64_t to[GL_MBOX_MAX_PAGES], from[GL_MBOX_MAX_PAGES], synced[GL_MBOX_MAX_PAGES];
	uint8_t *want = malloc(npages), *none = calloc(npages, 1);
	struct dirty_gp_health h;
	uint64_t count = 0, bytes = 0;
	bool ret = false;
	int rc;

	if (!want || !none) {
		give_up("out of memory");
		goto out;
	}

	/* 3: TO_DEVICE mapped: exactly its pages pinned. */
	if (!wait_guest(STEP_TO_MAPPED, opt.step_timeout_s) ||
	    !read_pages("TO_DEVICE mapping", mb->to, mb->nto, TO_PAGES, to))
		goto out;
	set_of(to, TO_PAGES, want);
	expect_pins("TO_DEVICE mapped: pinned pages", want);
	host_done(STEP_TO_MAPPED);

	/* 4: edu read it and the guest unmapped it: nothing dirty, no pin. */
	if (!wait_guest(STEP_TO_DONE, opt.step_timeout_s))
		goto out;
	sync_and_drain("TO_DEVICE read by edu and unmapped: sync + drain", none);
	expect_pins("TO_DEVICE unmapped: pinned pages", none);
	expect_trusted("after the TO_DEVICE unmap");
	host_done(STEP_TO_DONE);

	/* 5: FROM_DEVICE mapped: exactly its pages pinned, nothing dirty yet. */
	if (!wait_guest(STEP_FROM_MAPPED, opt.step_timeout_s) ||
	    !read_pages("FROM_DEVICE mapping", mb->from, mb->nfrom, FROM_PAGES, from))
		goto out;
	for (uint32_t i = 0; i < FROM_PAGES; i++)
		for (uint32_t j = 0; j < TO_PAGES; j++)
			if (from[i] == to[j]) {
				give_up("the guest's FROM and TO buffers share page %#" PRIx64, from[i]);
				goto out;
			}
	set_of(from, FROM_PAGES, want);
	expect_pins("FROM_DEVICE mapped: pinned pages", want);
	/*
	 * DEFER: a sync leaves pinned pages to the final round, and the
	 * device has not written yet, so the view gets nothing.
	 */
	sync_and_drain("FROM_DEVICE mapped, before the DMA: sync + drain", none);
	host_done(STEP_FROM_MAPPED);

	/*
	 * 6: edu wrote all 6 pages; the guest synced 3 of them for the CPU
	 * and keeps the mapping. All 6 still pinned; the sync harvests the 3
	 * synced pages' dirty bits (the view counts 3), and the claim keeps
	 * them back, pinned, to send after their unpin (DEFER). The other 3
	 * are dirty only once the unmap says so: step 7 must get them from
	 * the unmap's own dirty bits.
	 */
	if (!wait_guest(STEP_FROM_SYNCED, opt.step_timeout_s) ||
	    !read_pages("pages synced for the CPU", mb->synced, mb->nsynced, SYNCED_PAGES, synced))
		goto out;
	for (uint32_t i = 0; i < SYNCED_PAGES; i++) {
		bool in = false;

		for (uint32_t j = 0; j < FROM_PAGES; j++)
			in |= synced[i] == from[j];
		if (!in) {
			give_up("synced page %#" PRIx64 " is not one of the FROM_DEVICE mapping", synced[i]);
			goto out;
		}
	}
	expect_pins("FROM_DEVICE written, 3 pages synced for the CPU: pinned pages", want);
	rc = dirty_view_sync(view);
	if (rc)
		fail("dirty_view_sync = %d: %s", rc, dirty_last_error());
	rc = dirty_view_count(view, &count, &bytes);
	CHECK(!rc && count == SYNCED_PAGES,
	      "after sync_for_cpu_v: the view holds %" PRIu64 " dirty pages (want the %u synced)",
	      rc ? 0 : count, SYNCED_PAGES);
	drain("synced pages while pinned: drain (DEFER keeps them back)", none);
	h = health();
	CHECK(h.pages_kept_back == SYNCED_PAGES && h.pages_carried == SYNCED_PAGES,
	      "the claim kept back %" PRIu64 " pinned pages, carried now %" PRIu64 " (want %u, %u)",
	      h.pages_kept_back, h.pages_carried, SYNCED_PAGES, SYNCED_PAGES);
	host_done(STEP_FROM_SYNCED);

	/*
	 * 7: unmapped: exactly the DMA'd pages dirty, once (the 3 never synced
	 * through the unmap's dirty bits; the 3 synced also as carried pages
	 * now unpinned); pins gone, nothing carried.
	 */
	if (!wait_guest(STEP_FROM_DONE, opt.step_timeout_s))
		goto out;
	sync_and_drain("FROM_DEVICE written by edu and unmapped: sync + drain", want);
	expect_pins("FROM_DEVICE unmapped: pinned pages", none);
	expect_trusted("after the FROM_DEVICE unmap");
	h = health();
	CHECK(h.pages_carried == 0 && h.pages_carried_sent == SYNCED_PAGES &&
	      dirty_view_held_bytes(view) == 0,
	      "carried pages sent once unpinned: %" PRIu64 ", still carried %" PRIu64 ", held %" PRIu64 " bytes (want %u, 0, 0)",
	      h.pages_carried_sent, h.pages_carried, dirty_view_held_bytes(view), SYNCED_PAGES);
	host_done(STEP_FROM_DONE);

	/* 8: closed cleanly. */
	if (!wait_guest(STEP_CLOSED, opt.step_timeout_s))
		goto out;
	h = health();
	CHECK(h.guest_state == DIRTY_PROTO_GUEST_STOPPED,
	      "guest closed the region: guest state %s (want STOPPED)", guest_state_name(h.guest_state));
	CHECK(h.pin_leaks == 0 && h.pin_conflicts == 0 && h.bad_ranges == 0,
	      "guest counters: pin leaks %" PRIu64 ", pin conflicts %" PRIu64 ", bad ranges %" PRIu64 " (want 0)",
	      h.pin_leaks, h.pin_conflicts, h.bad_ranges);
	host_done(STEP_CLOSED);
	ret = true;
out:
	free(want);
	free(none);
	return ret;
}

/* ---- on failure: the host's view (vm_host_end adds the guest's) ---------------- */

static void host_view(void)
{
	struct dirty_gp_health h = health();

	printf("gp_host: ---- host view ----\n"
	       "gp_host: source %s%s%s; generation %" PRIu64 ", acked %" PRIu64
	       "; trust gained %" PRIu64 ", lost %" PRIu64 "; heartbeat age %" PRIu64 " ms\n"
	       "gp_host: guest state %s; pin conflicts %" PRIu64 ", leaks %" PRIu64
	       ", bad ranges %" PRIu64 "; harvested %" PRIu64 ", carried %" PRIu64 "\n",
	       state_name(h.state), h.reason[0] ? ": " : "", h.reason, h.generation,
	       h.acked_generation, h.trust_gained, h.trust_lost, h.heartbeat_age_ms,
	       guest_state_name(h.guest_state), h.pin_conflicts, h.pin_leaks, h.bad_ranges,
	       h.pages_harvested, h.pages_carried);
}

/* ---- main ----------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: gp_host --shm /dev/shm/NAME [--ram-mib N] [--console FILE]\n"
		   "               [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]\n"
		   "Creates the guest-protocol region at NAME (it must not exist), runs COMMAND\n"
		   "(run-vm.sh --shm NAME ... with guest/vm_guestlib) and checks what the host\n"
		   "sees step by step; removes NAME at the end. --console: the guest's serial\n"
		   "log (run-vm.sh --log), printed on failure.\n");
}

/* Create the view and the region; check the file is what QEMU needs. */
static bool setup(void)
{
	struct dirty_proto_layout lay;
	struct stat st;
	int rc;

	if (!vm_host_region())
		return false;
	if (dirty_proto_layout(npages, &lay)) {
		fail("no protocol layout for %" PRIu64 " pages", npages);
		return false;
	}
	rc = stat(opt.shm, &st);
	CHECK(!rc && (uint64_t)st.st_size == file_size,
	      "the file %s is %lld bytes, dirty_gp_size() %" PRIu64, opt.shm,
	      rc ? -1LL : (long long)st.st_size, file_size);
	CHECK(file_size >= 4096 && !(file_size & (file_size - 1)) && file_size >= lay.region_size,
	      "dirty_gp_size() %" PRIu64 " is a power of two >= the protocol's %" PRIu64 " bytes (%" PRIu64 " pages of RAM)",
	      file_size, lay.region_size, npages);
	if (failures)
		return false;
	if (!vm_host_map_mbox(GL_MBOX_MAGIC))
		return false;
	mb = (volatile struct gl_mbox *)vm_mb;
	note("QEMU: -object memory-backend-file,id=...,share=on,mem-path=%s,size=%" PRIu64
	     " -device ivshmem-plain,memdev=...", opt.shm, file_size);
	return true;
}

int main(int argc, char **argv)
{
	struct starter st = { .rc = -1 };
	double boot_ms = 0, ack_ms = 0;

	vm_host_init("gp_host", argc, argv, usage, step_names,
		     sizeof(step_names) / sizeof(step_names[0]));
	if (setup() && vm_host_start_vm() == 0 && handshake(&st, &boot_ms, &ack_ms))
		dma_steps();
	vm_host_end(host_view, 40, true);
	mb = NULL;
	printf("gp_host: RESULT checks=%d failures=%d boot_to_open_ms=%.0f handshake_ms=%.1f total_ms=%.0f\n",
	       checks, failures, boot_ms, ack_ms, vm_elapsed_ms());
	return failures ? 1 : 0;
}
