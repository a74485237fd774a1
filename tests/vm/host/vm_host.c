/* vm_host.c - the host halves' common part; see vm_host.h. */
#include "vm_host.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vm/guest/vm-time.h"

struct vm_host_opt opt = { .ram = 512ull << 20, .boot_timeout_s = 90, .step_timeout_s = 30 };
struct dirty_view *view;
struct dirty_gp *gp;
uint64_t npages, file_size;
volatile struct vm_mbox *vm_mb;
const struct dirty_proto_header *hdr;
bool aborted;
size_t vm_host_list_max = 16;

static const char *prog;
static const char *const *step_names;
static uint32_t nsteps;
static uint8_t *file_map;		/* the whole file, for the mailbox */

/* For the signal handler: only async-signal-safe use. */
static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t file_created;
static int child_status = -1;		/* waitpid status once reaped */
static bool child_reaped;

static const char *step_name(uint32_t s)
{
	return s < nsteps ? step_names[s] : "?";
}

/* ---- the command line ------------------------------------------------------- */

static bool parse_num(const char *s, double lo, double hi, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return !errno && end != s && !*end && *out >= lo && *out <= hi;
}

static int parse(int argc, char **argv, void (*usage)(FILE *f))
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

static void on_signal(int sig)
{
	/* Stop the VM (run-vm.sh forwards SIGTERM to QEMU) and drop our file. */
	if (child_pid > 0)
		kill((pid_t)child_pid, SIGTERM);
	if (file_created && opt.shm)
		unlink(opt.shm);
	_exit(128 + sig);
}

void vm_host_init(const char *name, int argc, char **argv, void (*usage)(FILE *f),
		  const char *const *steps, uint32_t n)
{
	struct sigaction sa;

	prog = name;
	step_names = steps;
	nsteps = n;
	vm_check_init(name, true);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse(argc, argv, usage)) {
		usage(stderr);
		exit(2);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

/* ---- the region and the mailbox ----------------------------------------------- */

bool vm_host_region(void)
{
	struct dirty_gp_config cfg = {
		.gpa = 0, .len = opt.ram, .path = opt.shm,
		.pinned = DIRTY_GP_PINNED_DEFER, .fallback = DIRTY_GP_FALLBACK_ALL_DIRTY,
		/* Generous for TCG: two guests may share the host's two CPUs. */
		.heartbeat_timeout_ms = 5000,
		/* Longer than any handshake hold, so start keeps waiting through it. */
		.ack_timeout_ms = 20000,
		/* .size: the default, a power of two for a file. */
	};
	int rc;

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
	return true;
}

bool vm_host_map_mbox(uint64_t magic)
{
	struct dirty_proto_layout lay;
	int fd;

	if (dirty_proto_layout(npages, &lay)) {
		fail("no protocol layout for %" PRIu64 " pages", npages);
		return false;
	}
	if (file_size < lay.region_size || file_size - lay.region_size < VM_MBOX_SIZE) {
		fail("no room for the test mailbox past the protocol region (%" PRIu64 " of %" PRIu64 " bytes used)",
		     lay.region_size, file_size);
		return false;
	}
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
	vm_mb = (volatile struct vm_mbox *)(file_map + file_size - VM_MBOX_SIZE);
	__atomic_store_n(&vm_mb->magic, magic, __ATOMIC_RELEASE);
	return true;
}

/* ---- the VM ------------------------------------------------------------------ */

bool vm_running(void)
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

int vm_host_start_vm(void)
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
		fprintf(stderr, "%s: cannot run %s: %s\n", prog, opt.cmd[0], strerror(errno));
		_exit(127);
	}
	child_pid = pid;
	return 0;
}

/* After the last step (or a give_up): the VM's own end, bounded. */
static void finish_vm(double timeout_s)
{
	double end = now_ms() + timeout_s * 1000;
	char how[64];

	if (child_pid <= 0)
		return;
	while (vm_running() && now_ms() < end)
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

/* ---- stepping ----------------------------------------------------------------- */

void give_up(const char *fmt, ...)
{
	char msg[VM_MBOX_MSG];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fail("%s", msg);
	aborted = true;
	if (vm_mb)
		vm_mbox_give_up(vm_mb->host_msg, &vm_mb->host_failed, msg);
}

bool wait_guest(uint32_t s, double timeout_s)
{
	double start = now_ms();

	for (;;) {
		uint32_t at = vm_mbox_load(&vm_mb->guest_step);

		if (vm_mbox_load(&vm_mb->guest_failed)) {
			give_up("the guest failed before step %d %s (it reached %u); its message is below",
				(int)s, step_name(s), at);
			return false;
		}
		if (at >= s)
			return true;
		if (!vm_running()) {
			char how[64];

			describe_status(child_status, how, sizeof(how));
			give_up("the VM ended (%s) while the host waited for step %d %s (guest at %u)",
				how, (int)s, step_name(s), at);
			return false;
		}
		if (now_ms() - start > timeout_s * 1000) {
			give_up("the guest did not reach step %d %s within %.0f s (it is at %u %s)",
				(int)s, step_name(s), timeout_s, at, step_name(at));
			return false;
		}
		sleep_ms(1);
	}
}

void host_done(uint32_t s)
{
	vm_mbox_publish(&vm_mb->host_step, s);
}

/* ---- page sets -------------------------------------------------------------- */

void set_of(const uint64_t *pages, size_t n, uint8_t *want)
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
	bool listed;

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
	listed = nwant && nwant <= vm_host_list_max;
	if (!nmiss && !nextra && !ntwice)
		ok("%s: exactly %zu pages%s%s%s", what, nwant, listed ? " {" : "",
		   listed ? list : "", listed ? "}" : "");
	else
		fail("%s: expected %zu pages; missing %zu {%s%s}, unexpected %zu {%s%s}, more than once %zu {%s%s}",
		     what, nwant, nmiss, miss, nmiss > 8 ? " ..." : "", nextra, extra,
		     nextra > 8 ? " ..." : "", ntwice, twice, ntwice > 8 ? " ..." : "");
}

void expect_pins(const char *what, const uint8_t *want)
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

void drain(const char *what, const uint8_t *want)
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

void sync_and_drain(const char *what, const uint8_t *want)
{
	int rc = dirty_view_sync(view);

	if (rc)
		fail("%s: dirty_view_sync = %d: %s", what, rc, dirty_last_error());
	drain(what, want);
}

bool read_pages(const char *what, volatile const uint64_t *src, uint32_t n, uint32_t want_n,
		uint64_t *out)
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

/* ---- the source ---------------------------------------------------------------- */

static void *starter_main(void *arg)
{
	struct starter *s = arg;

	s->rc = dirty_view_start(view);
	s->returned_ms = now_ms();
	atomic_store(&s->done, true);
	return NULL;
}

int starter_run(struct starter *s)
{
	return pthread_create(&s->t, NULL, starter_main, s);
}

const char *state_name(int s)
{
	static const char *const n[] = { "IDLE", "WAITING", "TRUSTED", "UNTRUSTED", "BROKEN" };

	return s >= 0 && s < (int)(sizeof(n) / sizeof(n[0])) ? n[s] : "?";
}

const char *guest_state_name(uint32_t s)
{
	return s == DIRTY_PROTO_GUEST_ABSENT ? "ABSENT" : s == DIRTY_PROTO_GUEST_RUNNING ? "RUNNING" :
	       s == DIRTY_PROTO_GUEST_STOPPED ? "STOPPED" : "?";
}

struct dirty_gp_health health(void)
{
	struct dirty_gp_health h;

	dirty_gp_health(gp, &h);
	return h;
}

/* ---- the end ------------------------------------------------------------------- */

/* The guest's side of a failure: the mailbox, then the console's last lines. */
static void print_guest_view(unsigned nlines)
{
	FILE *f;

	if (vm_mb) {
		char msg[VM_MBOX_MSG];
		uint32_t gs = vm_mbox_load(&vm_mb->guest_step);
		uint32_t hs = vm_mbox_load(&vm_mb->host_step);

		vm_mbox_read_msg(vm_mb->guest_msg, msg);
		printf("%s: mailbox: guest step %u %s, host step %u %s, guest failed %u%s%s\n",
		       prog, gs, step_name(gs), hs, step_name(hs), vm_mb->guest_failed,
		       msg[0] ? ": " : "", msg);
	}
	if (opt.console && nlines && (f = fopen(opt.console, "r"))) {
		/* A ring of the last nlines lines. */
		char (*lines)[256] = calloc(nlines, sizeof(*lines));
		unsigned n = 0;

		if (lines) {
			while (fgets(lines[n % nlines], sizeof(lines[0]), f))
				n++;
			printf("%s: ---- guest view: the console's last %u lines (%s) ----\n",
			       prog, n < nlines ? n : nlines, opt.console);
			for (unsigned i = n < nlines ? 0 : n - nlines; i < n; i++) {
				char *l = lines[i % nlines];

				l[strcspn(l, "\r\n")] = '\0';
				printf("%s: | %s\n", prog, l);
			}
			free(lines);
		}
		fclose(f);
	}
	printf("%s: ----\n", prog);
	fflush(stdout);
}

void vm_host_end(void (*host_view)(void), unsigned console_lines, bool check_kept)
{
	struct stat sb;

	finish_vm(aborted ? 10 : 60);
	if (failures) {
		if (gp)
			host_view();
		print_guest_view(console_lines);
	}
	if (view)
		dirty_view_stop(view);
	if (gp) {
		dirty_gp_destroy(gp);
		gp = NULL;
		/* Without DIRTY_GP_UNLINK the file is its creator's to remove. */
		if (check_kept)
			CHECK(stat(opt.shm, &sb) == 0, "dirty_gp_destroy left %s to its creator", opt.shm);
	}
	if (file_map)
		munmap(file_map, file_size);
	file_map = NULL;
	vm_mb = NULL;
	if (file_created && unlink(opt.shm) && errno != ENOENT)
		fail("cannot remove %s: %s", opt.shm, strerror(errno));
	file_created = 0;
	dirty_view_free(view);
	view = NULL;
}
