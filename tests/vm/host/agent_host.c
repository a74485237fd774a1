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
 * (the layout is repeated in vm_agent.c, pinned by _Static_asserts).
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

/* ---- the test mailbox (same layout in tests/vm/guest/vm_agent.c) ---------- */

#define MBOX_MAGIC 0x3130474142584d41ull	/* "AMXBAG01" in memory */
#define MBOX_SIZE 4096u
#define BUF_PAGES 4u
#define KILL_PAGES 2u

struct mbox {
	uint64_t magic;
	uint64_t bar_size;
	uint32_t guest_step;
	uint32_t host_step;
	uint32_t guest_failed;
	uint32_t host_failed;
	uint32_t release;
	uint32_t npages, nkill;
	uint32_t reserved;
	uint64_t pid_a, pid_b, agent_pid;
	uint64_t pages[8];
	uint64_t kill_pages[8];
	char guest_msg[512];
	char host_msg[512];
};
_Static_assert(__builtin_offsetof(struct mbox, guest_step) == 16, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, release) == 32, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, pid_a) == 48, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, pages) == 72, "mailbox layout");
_Static_assert(__builtin_offsetof(struct mbox, guest_msg) == 200, "mailbox layout");
_Static_assert(sizeof(struct mbox) == 1224 && sizeof(struct mbox) <= MBOX_SIZE, "mailbox layout");

enum step {
	STEP_AGENT_UP = 1,
	STEP_CLIENTS,
	STEP_MAPPED,
	STEP_FIRST_UNMAP,
	STEP_LAST_UNMAP,
	STEP_KILLED,
	STEP_DONE,
};
static const char *const step_names[] = {
	"none", "AGENT_UP", "CLIENTS", "MAPPED", "FIRST_UNMAP", "LAST_UNMAP", "KILLED", "DONE",
};
#define NSTEPS (sizeof(step_names) / sizeof(step_names[0]))

/* How long the host keeps client A inside its reader section. */
#define HOLD_MS 600

static struct {
	const char *shm, *console;
	uint64_t ram;
	double boot_timeout_s, step_timeout_s;
	char **cmd;
} opt = { .ram = 512ull << 20, .boot_timeout_s = 90, .step_timeout_s = 30 };

static struct dirty_view *view;
static struct dirty_gp *gp;
static uint64_t npages, file_size;
static uint8_t *file_map;
static volatile struct mbox *mb;
static const struct dirty_proto_header *hdr;
static int checks, failures;
static bool aborted;
static double t0;

static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t file_created;
static int child_status = -1;
static bool child_reaped;

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void vline(const char *tag, const char *fmt, va_list ap)
{
	printf("agent_host: %s[%7.1f ms] ", tag, now_ms() - t0);
	vprintf(fmt, ap);
	putchar('\n');
	fflush(stdout);
}

__attribute__((format(printf, 1, 2)))
static void ok(const char *fmt, ...)
{
	va_list ap;

	checks++;
	va_start(ap, fmt);
	vline("ok   ", fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 1, 2)))
static void fail(const char *fmt, ...)
{
	va_list ap;

	checks++;
	failures++;
	va_start(ap, fmt);
	vline("FAIL ", fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 1, 2)))
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline("     ", fmt, ap);
	va_end(ap);
}

#define CHECK(cond, ...) do { if (cond) ok(__VA_ARGS__); else fail(__VA_ARGS__); } while (0)

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
		for (size_t i = 0; i < sizeof(mb->host_msg) - 1 && msg[i]; i++)
			mb->host_msg[i] = msg[i];
		__atomic_store_n(&mb->host_failed, 1, __ATOMIC_RELEASE);
	}
}

static void on_signal(int sig)
{
	if (child_pid > 0)
		kill((pid_t)child_pid, SIGTERM);
	if (file_created && opt.shm)
		unlink(opt.shm);
	_exit(128 + sig);
}

static const char *state_name(int s)
{
	static const char *const n[] = { "IDLE", "WAITING", "TRUSTED", "UNTRUSTED", "BROKEN" };

	return s >= 0 && s < 5 ? n[s] : "?";
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

#define GUEST_WORD(f) __atomic_load_n(&hdr->guest.f, __ATOMIC_ACQUIRE)

/* ---- the VM ------------------------------------------------------------------ */

static bool child_running(void)
{
	int st;

	if (child_reaped)
		return false;
	if (waitpid((pid_t)child_pid, &st, WNOHANG) == (pid_t)child_pid) {
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
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(125);
		execvp(opt.cmd[0], opt.cmd);
		fprintf(stderr, "agent_host: cannot run %s: %s\n", opt.cmd[0], strerror(errno));
		_exit(127);
	}
	child_pid = pid;
	return 0;
}

static void finish_child(double timeout_s)
{
	double end = now_ms() + timeout_s * 1000;
	char how[64];

	if (child_pid <= 0)
		return;
	while (child_running() && now_ms() < end)
		sleep_ms(20);
	if (!child_reaped) {
		fail("the VM (pid %d) is still running %.0f s after the test; stopping it", (int)child_pid, timeout_s);
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
			give_up("the VM ended (%s) while the host waited for step %d %s (guest at %u)", how, (int)s,
				step_names[s], at);
			return false;
		}
		if (now_ms() - start > timeout_s * 1000) {
			give_up("the guest did not reach step %d %s within %.0f s (it is at %u %s)", (int)s,
				step_names[s], timeout_s, at, at < NSTEPS ? step_names[at] : "?");
			return false;
		}
		sleep_ms(1);
	}
}

static void host_done(enum step s)
{
	__atomic_store_n(&mb->host_step, (uint32_t)s, __ATOMIC_RELEASE);
}

/* ---- page sets ---------------------------------------------------------------- */

static void set_of(const uint64_t *pages, size_t n, uint8_t *want)
{
	memset(want, 0, npages);
	for (size_t i = 0; i < n; i++)
		want[pages[i] / P] = 1;
}

static void compare(const char *what, const uint8_t *got, const uint8_t *want)
{
	char miss[256] = "", extra[256] = "", list[256] = "";
	size_t nmiss = 0, nextra = 0, nwant = 0, lo = 0;

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
		} else if (want[p] && lo < sizeof(list) - 24) {
			lo += (size_t)snprintf(list + lo, sizeof(list) - lo, "%s%#" PRIx64, lo ? " " : "", p * P);
		}
		if (buf && (*cnt)++ < 8) {
			size_t l = strlen(buf);

			snprintf(buf + l, 256 - l, "%s%#" PRIx64, l ? " " : "", p * P);
		}
	}
	if (!nmiss && !nextra)
		ok("%s: exactly %zu pages%s%s%s", what, nwant, nwant ? " {" : "", nwant ? list : "", nwant ? "}" : "");
	else
		fail("%s: expected %zu pages; missing %zu {%s}, unexpected %zu {%s}", what, nwant, nmiss, miss,
		     nextra, extra);
}

static void expect_pins(const char *what, const uint8_t *want)
{
	uint8_t *got = calloc(npages, 1);

	for (uint64_t p = 0; got && p < npages; p++)
		got[p] = (uint8_t)(dirty_gp_pinned(gp, p * P) == 1);
	if (got)
		compare(what, got, want);
	free(got);
}

static void drain(const char *what, const uint8_t *want)
{
	uint8_t *got = calloc(npages, 1);
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	ssize_t n;

	if (!got || dirty_claim_new(view, &cl)) {
		fail("%s: cannot claim: %s", what, dirty_last_error());
		free(got);
		return;
	}
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < n; i++)
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += P)
				if (a < opt.ram)
					got[a / P] = 1;
	dirty_claim_free(cl);
	if (n < 0)
		fail("%s: dirty_claim_next = %zd: %s", what, n, dirty_last_error());
	compare(what, got, want);
	free(got);
}

static void sync_and_drain(const char *what, const uint8_t *want)
{
	if (dirty_view_sync(view))
		fail("%s: dirty_view_sync: %s", what, dirty_last_error());
	drain(what, want);
}

static bool read_pages(const char *what, volatile const uint64_t *src, uint32_t n, uint32_t want_n,
		       uint64_t *out)
{
	if (n != want_n) {
		give_up("%s: the guest reports %u pages, the plan has %u", what, n, want_n);
		return false;
	}
	for (uint32_t i = 0; i < n; i++) {
		out[i] = src[i];
		if (out[i] % P || out[i] >= opt.ram) {
			give_up("%s: page %u at GPA %#" PRIx64 " is not a page of guest RAM", what, i, out[i]);
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

/* ---- the steps ------------------------------------------------------------------- */

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
	CHECK(mb->bar_size == file_size, "the guest's ivshmem BAR 2 is %" PRIu64 " bytes = dirty_gp_size()",
	      (uint64_t)mb->bar_size);
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
	if (pthread_create(&st.t, NULL, starter_main, &st)) {
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

static void print_views(void)
{
	FILE *f;

	if (gp) {
		struct dirty_gp_health h = health();

		printf("agent_host: host view: source %s%s%s; generation %" PRIu64 ", acked %" PRIu64
		       "; guest state %s, clients %" PRIu64 ", waiting pid %" PRIu64 ", pin leaks %" PRIu64 "\n",
		       state_name(h.state), h.reason[0] ? ": " : "", h.reason, h.generation, h.acked_generation,
		       guest_state_name(h.guest_state), (uint64_t)GUEST_WORD(clients),
		       (uint64_t)GUEST_WORD(waiting_pid), h.pin_leaks);
	}
	if (mb) {
		char msg[sizeof(mb->guest_msg)];

		for (size_t i = 0; i < sizeof(msg); i++)
			msg[i] = mb->guest_msg[i];
		msg[sizeof(msg) - 1] = 0;
		printf("agent_host: mailbox: guest step %u, host step %u, guest failed %u%s%s\n", mb->guest_step,
		       mb->host_step, mb->guest_failed, msg[0] ? ": " : "", msg);
	}
	if (opt.console && (f = fopen(opt.console, "r"))) {
		static char lines[60][256];
		unsigned int n = 0;

		while (fgets(lines[n % 60], sizeof(lines[0]), f))
			n++;
		fclose(f);
		printf("agent_host: ---- the console's last %u lines (%s) ----\n", n < 60 ? n : 60, opt.console);
		for (unsigned int i = n < 60 ? 0 : n - 60; i < n; i++) {
			char *l = lines[i % 60];

			l[strcspn(l, "\r\n")] = 0;
			printf("agent_host: | %s\n", l);
		}
	}
	fflush(stdout);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: agent_host --shm /dev/shm/NAME [--ram-mib N] [--console FILE]\n"
		   "                  [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]\n");
}

static int parse(int argc, char **argv)
{
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
		else if (!strcmp(a, "--ram-mib"))
			opt.ram = strtoull(val, NULL, 10) << 20;
		else if (!strcmp(a, "--boot-timeout"))
			opt.boot_timeout_s = atof(val);
		else if (!strcmp(a, "--step-timeout"))
			opt.step_timeout_s = atof(val);
		else
			return -1;
	}
	return opt.shm && opt.cmd && opt.ram && opt.boot_timeout_s > 0 && opt.step_timeout_s > 0 ? 0 : -1;
}

static bool setup(void)
{
	struct dirty_gp_config cfg = {
		.gpa = 0, .len = opt.ram, .path = opt.shm,
		.pinned = DIRTY_GP_PINNED_DEFER, .fallback = DIRTY_GP_FALLBACK_ALL_DIRTY,
		.heartbeat_timeout_ms = 5000, .ack_timeout_ms = 20000,
	};
	struct dirty_proto_layout lay;
	int fd;

	npages = opt.ram / P;
	if (dirty_view_new(&view) || dirty_view_add_region(view, 0, opt.ram, P, 0) ||
	    dirty_gp_create(view, &cfg, &gp)) {
		fail("view + dirty_gp_create(%s): %s", opt.shm, dirty_last_error());
		return false;
	}
	file_created = 1;
	file_size = dirty_gp_size(gp);
	if (dirty_proto_layout(npages, &lay) || file_size - lay.region_size < MBOX_SIZE) {
		fail("no room for the mailbox past the protocol region of %" PRIu64 " bytes", file_size);
		return false;
	}
	fd = open(opt.shm, O_RDWR | O_CLOEXEC);
	file_map = fd < 0 ? MAP_FAILED : mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fd >= 0)
		close(fd);
	if (file_map == MAP_FAILED) {
		file_map = NULL;
		fail("mmap %s: %s", opt.shm, strerror(errno));
		return false;
	}
	hdr = (const struct dirty_proto_header *)file_map;
	mb = (volatile struct mbox *)(file_map + file_size - MBOX_SIZE);
	__atomic_store_n(&mb->magic, MBOX_MAGIC, __ATOMIC_RELEASE);
	note("region %s: %" PRIu64 " bytes for %" PRIu64 " MiB of guest RAM", opt.shm, file_size, opt.ram >> 20);
	return true;
}

int main(int argc, char **argv)
{
	double boot_ms = 0, ack_ms = 0;
	struct sigaction sa;

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
	if (setup() && start_child() == 0)
		steps(&boot_ms, &ack_ms);
	finish_child(aborted ? 10 : 60);
	if (failures)
		print_views();
	if (view)
		dirty_view_stop(view);
	if (gp)
		dirty_gp_destroy(gp);
	if (file_map)
		munmap(file_map, file_size);
	mb = NULL;
	if (file_created && unlink(opt.shm) && errno != ENOENT)
		fail("cannot remove %s: %s", opt.shm, strerror(errno));
	file_created = 0;
	dirty_view_free(view);
	printf("agent_host: RESULT checks=%d failures=%d boot_to_agent_ms=%.0f handshake_ms=%.1f total_ms=%.0f\n",
	       checks, failures, boot_ms, ack_ms, now_ms() - t0);
	return failures ? 1 : 0;
}
