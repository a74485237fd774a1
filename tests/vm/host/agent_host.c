/* agent_host.c - dirty-agent in a real Linux guest, host side (run by
 * tests/vm/t_vm_agent.sh; the guest side is tests/vm/guest/vm_agent.c).
 *
 *   agent_host --shm /dev/shm/NAME [--ram-mib 512] [--console FILE]
 *              [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]
 *
 * What a VMM's migration code would be, outside QEMU: a view over the
 * guest's RAM ([0, ram) at 4 KiB pages) and a guest-protocol source created
 * with dirty_gp_create at the given /dev/shm path (policy DEFER), which
 * QEMU exposes to the guest as an ivshmem-plain BAR. It fork/execs COMMAND
 * (run-vm.sh) and follows the guest program step by step through a
 * TEST-ONLY mailbox in the file's last 4 KiB, past the protocol region
 * (the layout is in guest/mbox-agent.h, which both sides include; the
 * parts every host half shares are in vm_host.c).
 *
 * It asserts, page by page over all of guest RAM (pins through
 * dirty_gp_pinned, dirty pages through a drain of the view):
 *   1 the agent found the region by itself: guest state RUNNING, version
 *     1.1, heartbeat moving, 0 clients, no waiting pid;
 *   2 with 2 clients connected and client A inside an RCU reader section,
 *     dirty_view_start waits: not acknowledged, WAITING, and past the
 *     agent's grace timeout guest.waiting_pid is A's pid; once the host
 *     lets A end its section, start returns 0, acknowledged, TRUSTED; the
 *     first pass (the whole range) drained;
 *   3 both clients mapped the buffer: exactly its 4 pages pinned, a sync
 *     + drain gives nothing;
 *   4 A unmapped (after the CPU wrote the pages): exactly the 4 still
 *     pinned (B maps them), the view holds 4 dirty pages, the claim keeps
 *     all 4 back (pinned, DEFER);
 *   5 B unmapped: no pin; a sync + drain gives exactly the 4 pages;
 *   6 A mapped 2 other pages and was killed: exactly those 2 pinned,
 *     guest.pin_leaks 2, 1 client;
 *   7 the agent stopped: guest state STOPPED, 0 clients, the 2 pages still
 *     pinned (nothing unpins them), the VM exits 0.
 * It never harvests while the guest changes bitmaps (the guest is parked
 * at a step), as gp_host.c explains.
 *
 * Lines: "agent_host: ok ..." / "agent_host: FAIL ...", then "agent_host:
 * RESULT checks=N failures=M ...". Exit 0 = pass, 1 = fail, 2 = bad usage.
 * The region file is removed at the end (and on SIGTERM/SIGINT).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vm/guest/vm-time.h"
#include "vm_host.h"
#include "vm/guest/mbox-agent.h"

static const char *const step_names[] = {
	"none", "AGENT_UP", "CLIENTS", "MAPPED", "FIRST_UNMAP", "LAST_UNMAP", "KILLED", "DONE",
};

/* How long the host keeps client A inside its reader section. */
#define HOLD_MS 600

static volatile struct agent_mbox *mb;

#define GUEST_WORD(f) __atomic_load_n(&hdr->guest.f, __ATOMIC_ACQUIRE)

/* ---- the steps ------------------------------------------------------------------- */

static bool steps(double *boot_ms, double *ack_ms)
{
	uint64_t pages[8], kill[8], hb0, count = 0, bytes = 0;
	uint8_t *want = malloc(npages), *none = calloc(npages, 1);
	struct starter st = { .rc = -1 };
	struct dirty_gp_health h;
	bool ret = false, started = false, named;
	double start = now_ms(), released;
	uint64_t pid_a;

	if (!want || !none) {
		give_up("out of memory");
		goto out;
	}
	/* 1: the agent found the region and owns its guest words. */
	if (!wait_guest(STEP_AGENT_UP, opt.boot_timeout_s))
		goto out;
	*boot_ms = now_ms() - start;
	note("the guest's agent is up %.0f ms after QEMU was started (agent pid %" PRIu64 " in the guest)", *boot_ms,
	     (uint64_t)mb->agent_pid);
	CHECK(mb->h.bar_size == file_size, "the guest's ivshmem BAR 2 is %" PRIu64 " bytes = dirty_gp_size()",
	      (uint64_t)mb->h.bar_size);
	hb0 = GUEST_WORD(heartbeat);
	start = now_ms();
	/* A loaded host can stall a TCG guest for a while: up to 2 s. */
	while (GUEST_WORD(heartbeat) < hb0 + 2 && now_ms() - start < 2000)
		sleep_ms(10);
	CHECK(GUEST_WORD(state) == DIRTY_PROTO_GUEST_RUNNING && GUEST_WORD(major) == 1 && GUEST_WORD(minor) == 1 &&
	      GUEST_WORD(clients) == 0 && GUEST_WORD(waiting_pid) == 0,
	      "the agent found the region with libpci: guest state %s, v%u.%u, %" PRIu64 " clients, waiting pid %" PRIu64,
	      guest_state_name(GUEST_WORD(state)), GUEST_WORD(major), GUEST_WORD(minor), (uint64_t)GUEST_WORD(clients),
	      (uint64_t)GUEST_WORD(waiting_pid));
	CHECK(GUEST_WORD(heartbeat) >= hb0 + 2, "its heartbeat moves (%" PRIu64 " beats in %.0f ms)",
	      (uint64_t)(GUEST_WORD(heartbeat) - hb0), now_ms() - start);
	host_done(STEP_AGENT_UP);

	/* 2: the handshake waits for client A's reader section. */
	if (!wait_guest(STEP_CLIENTS, opt.step_timeout_s))
		goto out;
	pid_a = mb->pid_a;
	CHECK(GUEST_WORD(clients) == 2, "2 clients connected (guest.clients %" PRIu64 ")", (uint64_t)GUEST_WORD(clients));
	if (starter_run(&st)) {
		give_up("pthread_create failed");
		goto out;
	}
	started = true;
	start = now_ms();
	named = false;
	while (now_ms() - start < 5000 && !(named = GUEST_WORD(waiting_pid) == pid_a))
		sleep_ms(5);
	h = health();
	CHECK(named, "client A (pid %" PRIu64 ") in a reader section: the agent names it in guest.waiting_pid after %.0f ms",
	      pid_a, now_ms() - start);
	CHECK(!atomic_load(&st.done) && dirty_gp_acked(gp) == 0 && h.state == DIRTY_GP_WAITING,
	      "meanwhile dirty_view_start waits, nothing acknowledged: %s%s (want WAITING)", state_name(h.state),
	      atomic_load(&st.done) ? ", start RETURNED" : "");
	sleep_ms(HOLD_MS - 300 > 0 ? HOLD_MS - 300 : 0);
	CHECK(!atomic_load(&st.done) && dirty_gp_acked(gp) == 0, "still waiting %.0f ms after the generation",
	      now_ms() - start);
	released = now_ms();
	__atomic_store_n(&mb->release, 1, __ATOMIC_RELEASE);
	while (!atomic_load(&st.done) && now_ms() - released < opt.step_timeout_s * 1000)
		sleep_ms(1);
	if (!atomic_load(&st.done)) {
		give_up("dirty_view_start did not return within %.0f s of client A's release", opt.step_timeout_s);
		goto out;
	}
	pthread_join(st.t, NULL);
	started = false;
	*ack_ms = st.returned_ms - released;
	h = health();
	CHECK(st.rc == 0 && dirty_gp_acked(gp) == 1 && h.state == DIRTY_GP_TRUSTED && GUEST_WORD(waiting_pid) == 0,
	      "once A left its section, dirty_view_start returned %d after %.1f ms: acknowledged, %s, waiting pid 0",
	      st.rc, *ack_ms, state_name(h.state));
	memset(want, 1, npages);
	drain("first pass (trust gained marks the range)", want);
	host_done(STEP_CLIENTS);

	/* 3 */
	if (!wait_guest(STEP_MAPPED, opt.step_timeout_s) ||
	    !read_pages("the shared buffer", mb->pages, mb->npages, BUF_PAGES, pages) ||
	    !read_pages("the pages A dies with", mb->kill_pages, mb->nkill, KILL_PAGES, kill))
		goto out;
	set_of(pages, BUF_PAGES, want);
	expect_pins("both clients mapped the buffer: pinned pages", want);
	sync_and_drain("mapped, nothing written yet: sync + drain", none);
	host_done(STEP_MAPPED);

	/* 4 */
	if (!wait_guest(STEP_FIRST_UNMAP, opt.step_timeout_s))
		goto out;
	expect_pins("after the first client's unmap: pinned pages (the second still maps them)", want);
	if (dirty_view_sync(view))
		fail("dirty_view_sync: %s", dirty_last_error());
	dirty_view_count(view, &count, &bytes);
	CHECK(count == BUF_PAGES, "the first unmap's dirty bits: the view holds %" PRIu64 " dirty pages (want %u)",
	      count, BUF_PAGES);
	drain("still pinned: the claim keeps them back", none);
	h = health();
	CHECK(h.pages_carried == BUF_PAGES, "carried while pinned: %" PRIu64 " (want %u)", h.pages_carried, BUF_PAGES);
	host_done(STEP_FIRST_UNMAP);

	/* 5 */
	if (!wait_guest(STEP_LAST_UNMAP, opt.step_timeout_s))
		goto out;
	expect_pins("after the last unmap: pinned pages", none);
	sync_and_drain("after the last unmap: sync + drain", want);
	h = health();
	CHECK(h.state == DIRTY_GP_TRUSTED && h.pin_conflicts == 0,
	      "still TRUSTED, %" PRIu64 " pin conflicts (one shared pin table)", h.pin_conflicts);
	host_done(STEP_LAST_UNMAP);

	/* 6 */
	if (!wait_guest(STEP_KILLED, opt.step_timeout_s))
		goto out;
	set_of(kill, KILL_PAGES, want);
	expect_pins("client A killed holding 2 pages: pinned pages", want);
	CHECK(GUEST_WORD(pin_leaks) == KILL_PAGES && GUEST_WORD(clients) == 1,
	      "the agent reported the leak: guest.pin_leaks %" PRIu64 ", clients %" PRIu64 " (want %u, 1)",
	      (uint64_t)GUEST_WORD(pin_leaks), (uint64_t)GUEST_WORD(clients), KILL_PAGES);
	host_done(STEP_KILLED);

	/* 7 */
	if (!wait_guest(STEP_DONE, opt.step_timeout_s))
		goto out;
	CHECK(GUEST_WORD(state) == DIRTY_PROTO_GUEST_STOPPED && GUEST_WORD(clients) == 0,
	      "the agent stopped with no client left: guest state %s, %" PRIu64 " clients",
	      guest_state_name(GUEST_WORD(state)), (uint64_t)GUEST_WORD(clients));
	expect_pins("after the agent's exit: pinned pages (the dead client's, never unpinned)", want);
	host_done(STEP_DONE);
	ret = true;
out:
	if (started)
		pthread_join(st.t, NULL);
	free(want);
	free(none);
	return ret;
}

/* ---- on failure: the host's view (vm_host_end adds the guest's) ---------------- */

static void host_view(void)
{
	struct dirty_gp_health h = health();

	printf("agent_host: host view: source %s%s%s; generation %" PRIu64 ", acked %" PRIu64
	       "; guest state %s, clients %" PRIu64 ", waiting pid %" PRIu64 ", pin leaks %" PRIu64 "\n",
	       state_name(h.state), h.reason[0] ? ": " : "", h.reason, h.generation, h.acked_generation,
	       guest_state_name(h.guest_state), (uint64_t)GUEST_WORD(clients),
	       (uint64_t)GUEST_WORD(waiting_pid), h.pin_leaks);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: agent_host --shm /dev/shm/NAME [--ram-mib N] [--console FILE]\n"
		   "                  [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]\n");
}

static bool setup(void)
{
	if (!vm_host_region() || !vm_host_map_mbox(AGENT_MBOX_MAGIC))
		return false;
	mb = (volatile struct agent_mbox *)vm_mb;
	note("region %s: %" PRIu64 " bytes for %" PRIu64 " MiB of guest RAM", opt.shm, file_size, opt.ram >> 20);
	return true;
}

int main(int argc, char **argv)
{
	double boot_ms = 0, ack_ms = 0;

	vm_host_init("agent_host", argc, argv, usage, step_names,
		     sizeof(step_names) / sizeof(step_names[0]));
	/* Every exact set lists its pages, the first pass's first ones too. */
	vm_host_list_max = SIZE_MAX;
	if (setup() && vm_host_start_vm() == 0)
		steps(&boot_ms, &ack_ms);
	vm_host_end(host_view, 60, false);
	mb = NULL;
	printf("agent_host: RESULT checks=%d failures=%d boot_to_agent_ms=%.0f handshake_ms=%.1f total_ms=%.0f\n",
	       checks, failures, boot_ms, ack_ms, vm_elapsed_ms());
	return failures ? 1 : 0;
}
