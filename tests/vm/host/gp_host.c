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
 * the protocol region (see vm_guestlib.c for the steps; the layout is
 * repeated below and pinned by _Static_asserts on both sides).
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
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libdirty.h>
#include <libdirty/proto.h>

#include "clock.h"

#define P ((uint64_t)4096)

/* ---- the test mailbox (same layout in tests/vm/guest/vm_guestlib.c) ----- */

/*
 * TEST-ONLY: not part of the guest protocol. The file's last MBOX_SIZE
 * bytes, which this program checks lie past dirty_proto_layout()'s
 * region_size (a power-of-two file leaves room there). One writer per
 * field; steps are published with release after their data.
 */
#define MBOX_MAGIC 0x31304f58424d4c47ull	/* "GLMBOX01" in memory */
#define MBOX_SIZE 4096u
#define MBOX_MAX_PAGES 32u

struct mbox {
	uint64_t magic;		/* host, before boot */
	uint64_t bar_size;	/* guest: BAR 2 bytes as it mapped them */
	uint32_t guest_step;	/* guest: last step reached (release) */
	uint32_t host_step;	/* host: last step it checked (release) */
	uint32_t guest_failed;	/* guest gave up; guest_msg says why */
	uint32_t host_failed;	/* host gave up; host_msg says why */
	uint32_t nfrom, nto, nsynced;	/* entries of from[], to[], synced[] */
	uint32_t reserved;
	uint64_t from[MBOX_MAX_PAGES];	/* page GPAs of the FROM_DEVICE mapping */
	uint64_t to[MBOX_MAX_PAGES];	/* page GPAs of the TO_DEVICE mapping */
	uint64_t synced[MBOX_MAX_PAGES];	/* FROM pages synced for the CPU while mapped */
	char guest_msg[512];
	char host_msg[512];
};
_Static_assert(__builtin_offsetof(struct mbox, guest_step) == 16, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, nfrom) == 32, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, from) == 48, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, to) == 304, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, synced) == 560, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, guest_msg) == 816, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, host_msg) == 1328, "mailbox layout");
_Static_assert(sizeof(struct mbox) == 1840 && sizeof(struct mbox) <= MBOX_SIZE, "mailbox layout");

enum step {
	STEP_OPENED = 1,
	STEP_AGENT,
	STEP_TO_MAPPED,
	STEP_TO_DONE,
	STEP_FROM_MAPPED,
	STEP_FROM_SYNCED,
	STEP_FROM_DONE,
	STEP_CLOSED,
};
static const char *const step_names[] = {
	"none", "OPENED", "AGENT", "TO_MAPPED", "TO_DONE",
	"FROM_MAPPED", "FROM_SYNCED", "FROM_DONE", "CLOSED",
};

/* The guest's plan (vm_guestlib.c): pages its buffers' DMA touches. */
#define TO_PAGES 2u
#define FROM_PAGES 6u
#define SYNCED_PAGES 3u	/* of the FROM pages: synced for the CPU while mapped */

/* How long the handshake shows start waiting before the agent may run. */
#define HANDSHAKE_HOLD_MS 300

/* ---- state ----------------------------------------------------------------- */

static struct {
	const char *shm, *console;
	uint64_t ram;
	double boot_timeout_s, step_timeout_s;
	char **cmd;
} opt = { .ram = 512ull << 20, .boot_timeout_s = 90, .step_timeout_s = 30 };

static struct dirty_view *view;
static struct dirty_gp *gp;
static uint64_t npages, file_size;
static uint8_t *file_map;		/* the whole file, for the mailbox */
static volatile struct mbox *mb;
static const struct dirty_proto_header *hdr;	/* read only: host.track_gen */
static int checks, failures;
static bool aborted;
static double t0;

/* For the signal handler: only async-signal-safe use. */
static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t file_created;
static int child_status = -1;		/* waitpid status once reaped */
static bool child_reaped;

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

__attribute__((format(printf, 1, 2)))
static void ok(const char *fmt, ...)
{
	va_list ap;

	checks++;
	printf("gp_host: ok   [%7.1f ms] ", now_ms() - t0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

__attribute__((format(printf, 1, 2)))
static void fail(const char *fmt, ...)
{
	va_list ap;

	checks++;
	failures++;
	printf("gp_host: FAIL [%7.1f ms] ", now_ms() - t0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

__attribute__((format(printf, 1, 2)))
static void note(const char *fmt, ...)
{
	va_list ap;

	printf("gp_host:      [%7.1f ms] ", now_ms() - t0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

#define CHECK(cond, ...) do { if (cond) ok(__VA_ARGS__); else fail(__VA_ARGS__); } while (0)

/*
 * Give up on the run: a failure, told to the guest through the mailbox
 * so it stops waiting and exits (the host's message is on its console).
 */
__attribute__((format(printf, 1, 2)))
static void give_up(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fail("%s", msg);
	aborted = true;
	if (mb) {
		for (size_t i = 0; i < sizeof(mb->host_msg); i++) {
			mb->host_msg[i] = msg[i];
			if (!msg[i])
				break;
		}
		mb->host_msg[sizeof(mb->host_msg) - 1] = '\0';
		__atomic_store_n(&mb->host_failed, 1, __ATOMIC_RELEASE);
	}
}

static void on_signal(int sig)
{
	/* Stop the VM (run-vm.sh forwards SIGTERM to QEMU) and drop our file. */
	if (child_pid > 0)
		kill((pid_t)child_pid, SIGTERM);
	if (file_created && opt.shm)
		unlink(opt.shm);
	_exit(128 + sig);
}

static const char *state_name(int s)
{
	static const char *const n[] = { "IDLE", "WAITING", "TRUSTED", "UNTRUSTED", "BROKEN" };

	return s >= 0 && s < (int)(sizeof(n) / sizeof(n[0])) ? n[s] : "?";
}

static const char *guest_state_name(uint32_t s)
{
	return s == DIRTY_PROTO_GUEST_ABSENT ? "ABSENT" : s == DIRTY_PROTO_GUEST_RUNNING ? "RUNNING" :
	       s == DIRTY_PROTO_GUEST_STOPPED ? "STOPPED" : "?";
}

static struct dirty_gp_health health(void)
{
	struct dirty_gp_health h;

	dirty_gp_health(gp, &h);
	return h;
}

/* ---- the VM ------------------------------------------------------------------ */

/* Reap the child if it ended; true while it runs. */
static bool child_running(void)
{
	int st;
	pid_t r;

	if (child_reaped)
		return false;
	r = waitpid((pid_t)child_pid, &st, WNOHANG);
	if (r == (pid_t)child_pid) {
		child_reaped = true;
		child_status = st;
		return false;
	}
	return true;
}

static void describe_status(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(st));
	else
		snprintf(buf, len, "status %#x", st);
}

static int start_child(void)
{
	pid_t parent = getpid(), pid = fork();

	if (pid < 0) {
		fail("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		/* If this program dies, run-vm.sh gets SIGTERM and stops QEMU. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(125);
		execvp(opt.cmd[0], opt.cmd);
		fprintf(stderr, "gp_host: cannot run %s: %s\n", opt.cmd[0], strerror(errno));
		_exit(127);
	}
	child_pid = pid;
	return 0;
}

/* After the last step (or a give_up): the VM's own end, bounded. */
static void finish_child(double timeout_s)
{
	double end = now_ms() + timeout_s * 1000;
	char how[64];

	if (child_pid <= 0)
		return;
	while (child_running() && now_ms() < end)
		sleep_ms(20);
	if (!child_reaped) {
		fail("the VM (pid %d) is still running %.0f s after the test; stopping it",
		     (int)child_pid, timeout_s);
		kill((pid_t)child_pid, SIGTERM);
		if (waitpid((pid_t)child_pid, &child_status, 0) == (pid_t)child_pid)
			child_reaped = true;
	}
	if (!child_reaped)
		return;
	describe_status(child_status, how, sizeof(how));
	if (!aborted)
		CHECK(WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0,
		      "the VM (run-vm.sh) ended: %s (want exit 0)", how);
	else
		note("the VM (run-vm.sh) ended: %s", how);
}

/*
 * Wait until the guest reached step s. False, after give_up, when the
 * guest failed, the VM ended, or the timeout passed.
 */
static bool wait_guest(enum step s, double timeout_s)
{
	double start = now_ms();

	for (;;) {
		uint32_t at = __atomic_load_n(&mb->guest_step, __ATOMIC_ACQUIRE);

		if (__atomic_load_n(&mb->guest_failed, __ATOMIC_ACQUIRE)) {
			give_up("the guest failed before step %d %s (it reached %u); its message is below",
				(int)s, step_names[s], at);
			return false;
		}
		if (at >= (uint32_t)s)
			return true;
		if (!child_running()) {
			char how[64];

			describe_status(child_status, how, sizeof(how));
			give_up("the VM ended (%s) while the host waited for step %d %s (guest at %u)",
				how, (int)s, step_names[s], at);
			return false;
		}
		if (now_ms() - start > timeout_s * 1000) {
			give_up("the guest did not reach step %d %s within %.0f s (it is at %u %s)",
				(int)s, step_names[s], timeout_s, at,
				at < sizeof(step_names) / sizeof(step_names[0]) ? step_names[at] : "?");
			return false;
		}
		sleep_ms(1);
	}
}

static void host_done(enum step s)
{
	__atomic_store_n(&mb->host_step, (uint32_t)s, __ATOMIC_RELEASE);
}

/* ---- page sets -------------------------------------------------------------- */

/* want[p] = 1 for each page GPA in pages[0 .. n) (validated before). */
static void set_of(const uint64_t *pages, size_t n, uint8_t *want)
{
	memset(want, 0, npages);
	for (size_t i = 0; i < n; i++)
		want[pages[i] / P] = 1;
}

/*
 * Compare got[p] (times page p was seen) with want[p] (0/1) over every
 * page of guest RAM; one line either way, the differing pages listed.
 */
static void compare(const char *what, const uint8_t *got, const uint8_t *want)
{
	char miss[256] = "", extra[256] = "", twice[256] = "", list[256] = "";
	size_t nmiss = 0, nextra = 0, ntwice = 0, nwant = 0, lo = 0;

	for (uint64_t p = 0; p < npages; p++) {
		char *buf = NULL;
		size_t *cnt = NULL;

		nwant += want[p];
		if (want[p] && !got[p]) {
			buf = miss;
			cnt = &nmiss;
		} else if (!want[p] && got[p]) {
			buf = extra;
			cnt = &nextra;
		} else if (got[p] > 1) {
			buf = twice;
			cnt = &ntwice;
		} else if (want[p] && lo < sizeof(list) - 24) {
			lo += (size_t)snprintf(list + lo, sizeof(list) - lo, "%s%#" PRIx64,
					       lo ? " " : "", p * P);
		}
		if (buf && (*cnt)++ < 8) {
			size_t l = strlen(buf);

			snprintf(buf + l, 256 - l, "%s%#" PRIx64, l ? " " : "", p * P);
		}
	}
	if (!nmiss && !nextra && !ntwice)
		ok("%s: exactly %zu pages%s%s%s", what, nwant, nwant && nwant <= 16 ? " {" : "",
		   nwant && nwant <= 16 ? list : "", nwant && nwant <= 16 ? "}" : "");
	else
		fail("%s: expected %zu pages; missing %zu {%s%s}, unexpected %zu {%s%s}, more than once %zu {%s%s}",
		     what, nwant, nmiss, miss, nmiss > 8 ? " ..." : "", nextra, extra,
		     nextra > 8 ? " ..." : "", ntwice, twice, ntwice > 8 ? " ..." : "");
}

/* Pages whose pin bit the host sees, page by page. */
static void expect_pins(const char *what, const uint8_t *want)
{
	uint8_t *got = calloc(npages, 1);

	if (!got) {
		fail("%s: out of memory", what);
		return;
	}
	for (uint64_t p = 0; p < npages; p++) {
		int r = dirty_gp_pinned(gp, p * P);

		if (r < 0) {
			fail("%s: dirty_gp_pinned(%#" PRIx64 ") = %d: %s", what, p * P, r,
			     dirty_last_error());
			free(got);
			return;
		}
		got[p] = (uint8_t)r;
	}
	compare(what, got, want);
	free(got);
}

/* Claim everything the view holds; got[p] counts the times page p came. */
static void drain(const char *what, const uint8_t *want)
{
	uint8_t *got = calloc(npages, 1);
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t outside = 0;
	ssize_t n;
	int rc;

	if (!got) {
		fail("%s: out of memory", what);
		return;
	}
	rc = dirty_claim_new(view, &cl);
	if (rc) {
		fail("%s: dirty_claim_new = %d: %s", what, rc, dirty_last_error());
		free(got);
		return;
	}
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < n; i++)
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += P) {
				if (a >= opt.ram)
					outside++;
				else if (got[a / P] < 255)
					got[a / P]++;
			}
	dirty_claim_free(cl);
	if (n < 0)
		fail("%s: dirty_claim_next = %zd: %s", what, n, dirty_last_error());
	if (outside)
		fail("%s: %" PRIu64 " claimed pages lie outside guest RAM", what, outside);
	compare(what, got, want);
	free(got);
}

/* Sync the view (the guest protocol harvests), then drain and compare. */
static void sync_and_drain(const char *what, const uint8_t *want)
{
	int rc = dirty_view_sync(view);

	if (rc)
		fail("%s: dirty_view_sync = %d: %s", what, rc, dirty_last_error());
	drain(what, want);
}

static void expect_trusted(const char *when)
{
	struct dirty_gp_health h = health();

	CHECK(h.state == DIRTY_GP_TRUSTED, "%s: guest %s%s%s (want TRUSTED)", when,
	      state_name(h.state), h.reason[0] ? ": " : "", h.reason);
}

/*
 * Copy n page GPAs the guest wrote into the mailbox, bounds-checked: the
 * mailbox is the guest's to write, so nothing is used unchecked.
 */
static bool read_pages(const char *what, volatile const uint64_t *src, uint32_t n,
		       uint32_t want_n, uint64_t *out)
{
	if (n != want_n) {
		give_up("%s: the guest reports %u pages, the plan has %u", what, n, want_n);
		return false;
	}
	for (uint32_t i = 0; i < n; i++) {
		out[i] = src[i];
		if (out[i] % P || out[i] >= opt.ram) {
			give_up("%s: page %u at GPA %#" PRIx64 " is not a page of guest RAM", what, i,
				out[i]);
			return false;
		}
		for (uint32_t j = 0; j < i; j++)
			if (out[j] == out[i]) {
				give_up("%s: page %#" PRIx64 " reported twice", what, out[i]);
				return false;
			}
	}
	return true;
}

/* ---- the handshake ------------------------------------------------------------- */

struct starter {
	pthread_t t;
	atomic_bool done;
	int rc;
	double returned_ms;
};

static void *starter_main(void *arg)
{
	struct starter *s = arg;

	s->rc = dirty_view_start(view);
	s->returned_ms = now_ms();
	atomic_store(&s->done, true);
	return NULL;
}

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
	CHECK(mb->bar_size == file_size,
	      "QEMU took the region: the guest's ivshmem BAR 2 is %" PRIu64 " bytes = dirty_gp_size()",
	      (uint64_t)mb->bar_size);
	h = health();
	CHECK(h.guest_state == DIRTY_PROTO_GUEST_RUNNING && h.state == DIRTY_GP_IDLE,
	      "before dirty_view_start: guest state %s, source %s (want RUNNING, IDLE)",
	      guest_state_name(h.guest_state), state_name(h.state));

	if (pthread_create(&st->t, NULL, starter_main, st)) {
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
		if (__atomic_load_n(&mb->guest_failed, __ATOMIC_ACQUIRE) || !child_running())
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
	uint64_t to[MBOX_MAX_PAGES], from[MBOX_MAX_PAGES], synced[MBOX_MAX_PAGES];
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

/* ---- on failure: both sides' view -------------------------------------------- */

static void print_views(void)
{
	char msg[sizeof(mb->guest_msg)];
	FILE *f;

	if (gp) {
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
	if (mb) {
		uint32_t gs = __atomic_load_n(&mb->guest_step, __ATOMIC_ACQUIRE);
		uint32_t hs = __atomic_load_n(&mb->host_step, __ATOMIC_ACQUIRE);

		/* Bounded copy: the guest's text may lack its NUL. */
		for (size_t i = 0; i < sizeof(msg); i++)
			msg[i] = mb->guest_msg[i];
		msg[sizeof(msg) - 1] = '\0';
		printf("gp_host: mailbox: guest step %u %s, host step %u %s, guest failed %u%s%s\n",
		       gs, gs < 9 ? step_names[gs] : "?", hs, hs < 9 ? step_names[hs] : "?",
		       mb->guest_failed, msg[0] ? ": " : "", msg);
	}
	if (opt.console && (f = fopen(opt.console, "r"))) {
		/* The console's last 40 lines, from a ring of line starts. */
		static char lines[40][256];
		unsigned n = 0;

		while (fgets(lines[n % 40], sizeof(lines[0]), f))
			n++;
		fclose(f);
		printf("gp_host: ---- guest view: the console's last %u lines (%s) ----\n",
		       n < 40 ? n : 40, opt.console);
		for (unsigned i = n < 40 ? 0 : n - 40; i < n; i++) {
			char *l = lines[i % 40];

			l[strcspn(l, "\r\n")] = '\0';
			printf("gp_host: | %s\n", l);
		}
	}
	printf("gp_host: ----\n");
	fflush(stdout);
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

static bool parse_num(const char *s, double lo, double hi, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return !errno && end != s && !*end && *out >= lo && *out <= hi;
}

static int parse(int argc, char **argv)
{
	double v;

	for (int i = 1; i < argc; i += 2) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--")) {
			if (i + 1 >= argc)
				return -1;
			opt.cmd = argv + i + 1;
			break;
		}
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		}
		if (!val)
			return -1;
		if (!strcmp(a, "--shm"))
			opt.shm = val;
		else if (!strcmp(a, "--console"))
			opt.console = val;
		else if (!strcmp(a, "--ram-mib") && parse_num(val, 1, 1 << 20, &v) && v == (uint64_t)v)
			opt.ram = (uint64_t)v << 20;
		else if (!strcmp(a, "--boot-timeout") && parse_num(val, 1, 3600, &v))
			opt.boot_timeout_s = v;
		else if (!strcmp(a, "--step-timeout") && parse_num(val, 1, 3600, &v))
			opt.step_timeout_s = v;
		else
			return -1;
	}
	return opt.shm && opt.cmd ? 0 : -1;
}

/* Create the view and the region; check the file is what QEMU needs. */
static bool setup(void)
{
	struct dirty_gp_config cfg = {
		.gpa = 0, .len = opt.ram, .path = opt.shm,
		.pinned = DIRTY_GP_PINNED_DEFER, .fallback = DIRTY_GP_FALLBACK_ALL_DIRTY,
		/* Generous for TCG: two guests may share the host's two CPUs. */
		.heartbeat_timeout_ms = 5000,
		/* Longer than the handshake hold, so start keeps waiting through it. */
		.ack_timeout_ms = 20000,
		/* .size: the default, a power of two for a file. */
	};
	struct dirty_proto_layout lay;
	struct stat st;
	int rc, fd;

	npages = opt.ram / P;
	if ((rc = dirty_view_new(&view)) || (rc = dirty_view_add_region(view, 0, opt.ram, P, 0))) {
		fail("view of [0, %#" PRIx64 "): %s", opt.ram, dirty_last_error());
		return false;
	}
	rc = dirty_gp_create(view, &cfg, &gp);
	if (rc) {
		fail("dirty_gp_create(%s) = %d: %s", opt.shm, rc, dirty_last_error());
		return false;
	}
	file_created = 1;
	file_size = dirty_gp_size(gp);
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
	if (file_size - lay.region_size < MBOX_SIZE) {
		fail("no room for the test mailbox past the protocol region (%" PRIu64 " of %" PRIu64 " bytes used)",
		     lay.region_size, file_size);
		return false;
	}
	note("QEMU: -object memory-backend-file,id=...,share=on,mem-path=%s,size=%" PRIu64
	     " -device ivshmem-plain,memdev=...", opt.shm, file_size);

	/* Our own mapping of the whole file: the mailbox, and the header to watch. */
	fd = open(opt.shm, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fail("open %s: %s", opt.shm, strerror(errno));
		return false;
	}
	file_map = mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (file_map == MAP_FAILED) {
		file_map = NULL;
		fail("mmap %s: %s", opt.shm, strerror(errno));
		return false;
	}
	hdr = (const struct dirty_proto_header *)file_map;
	mb = (volatile struct mbox *)(file_map + file_size - MBOX_SIZE);
	__atomic_store_n(&mb->magic, MBOX_MAGIC, __ATOMIC_RELEASE);
	return true;
}

int main(int argc, char **argv)
{
	struct starter st = { .rc = -1 };
	double boot_ms = 0, ack_ms = 0;
	struct sigaction sa;
	struct stat sb;

	t0 = now_ms();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse(argc, argv)) {
		usage(stderr);
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	if (setup() && start_child() == 0 && handshake(&st, &boot_ms, &ack_ms))
		dma_steps();
	finish_child(aborted ? 10 : 60);
	if (failures)
		print_views();

	if (view)
		dirty_view_stop(view);
	if (gp) {
		dirty_gp_destroy(gp);
		gp = NULL;
		/* Without DIRTY_GP_UNLINK the file is its creator's to remove. */
		CHECK(stat(opt.shm, &sb) == 0, "dirty_gp_destroy left %s to its creator", opt.shm);
	}
	if (file_map)
		munmap(file_map, file_size);
	mb = NULL;
	if (file_created && unlink(opt.shm) && errno != ENOENT)
		fail("cannot remove %s: %s", opt.shm, strerror(errno));
	file_created = 0;
	dirty_view_free(view);
	printf("gp_host: RESULT checks=%d failures=%d boot_to_open_ms=%.0f handshake_ms=%.1f total_ms=%.0f\n",
	       checks, failures, boot_ms, ack_ms, now_ms() - t0);
	return failures ? 1 : 0;
}
