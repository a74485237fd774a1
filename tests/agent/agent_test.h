/* SPDX-License-Identifier: MIT */
/*
 * agent_test.h - what the dirty-agent test programs share (tests/agent/ programs,
 * run by tests/t_agent*.sh): check lines, starting the daemon, raw wire
 * clients (agent_wire.h), child processes driven over a command socket,
 * and a naive reader of the daemon's status JSON.
 *
 * Output: "ok   ..." / "FAIL ..." per check; a program exits 1 if any
 * check failed, 77 (after "SKIP: why") when something it needs is
 * missing, 0 otherwise.
 */
#ifndef AGENT_TEST_H
#define AGENT_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent_wire.h"
#include "libdirty/proto.h"
#include "pintable.h"

/* ---- checks ----------------------------------------------------------------- */

static int t_checks, t_failures;
static double t_zero;

static inline double t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static inline void t_sleep_ms(double ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6) };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

__attribute__((format(printf, 2, 3)))
static inline bool t_check(bool cond, const char *fmt, ...)
{
	va_list ap;

	t_checks++;
	if (!cond)
		t_failures++;
	printf("%s [%7.1f ms] ", cond ? "ok  " : "FAIL", t_now_ms() - t_zero);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	return cond;
}

__attribute__((format(printf, 1, 2)))
static inline void t_note(const char *fmt, ...)
{
	va_list ap;

	printf("     [%7.1f ms] ", t_now_ms() - t_zero);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

__attribute__((noreturn, format(printf, 1, 2)))
static inline void t_skip(const char *fmt, ...)
{
	va_list ap;

	printf("SKIP: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	exit(77);
}

/* Poll cond every ms until it holds or timeout_ms passed; its last value. */
#define T_WAIT(cond, timeout_ms)                                                  \
	({                                                                         \
		double t_w0_ = t_now_ms();                                         \
		bool t_ok_;                                                        \
		while (!(t_ok_ = (cond)) && t_now_ms() - t_w0_ < (timeout_ms))     \
			t_sleep_ms(2);                                             \
		t_ok_;                                                             \
	})

/* ---- the daemon --------------------------------------------------------------- */

struct agent_proc {
	pid_t pid;
	char socket[108];
	char log[512];
	const char *bin;
};

/*
 * Start bin with args (NULL-terminated; --socket must be among them, it
 * is copied from there), stderr and stdout to log; wait until it accepts.
 */
static inline bool agent_start(struct agent_proc *a, const char *bin, const char *log, const char *const *args)
{
	const char *argv[64];
	int n = 0;

	a->bin = bin;
	snprintf(a->log, sizeof(a->log), "%s", log);
	a->socket[0] = 0;
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 62; i++) {
		if (!strcmp(args[i], "--socket") && args[i + 1])
			snprintf(a->socket, sizeof(a->socket), "%s", args[i + 1]);
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	a->pid = fork();
	if (a->pid < 0)
		return false;
	if (a->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	/* Ready: it accepts a connection (READY=1 is sent at that point too). */
	for (int i = 0; i < 5000; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd, st;

		if (waitpid(a->pid, &st, WNOHANG) == a->pid) {
			a->pid = 0;
			return false;
		}
		fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		memcpy(sa.sun_path, a->socket, strlen(a->socket) + 1);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(fd);
			return true;
		}
		if (fd >= 0)
			close(fd);
		t_sleep_ms(2);
	}
	return false;
}

static inline bool agent_alive(const struct agent_proc *a)
{
	return a->pid > 0 && waitpid(a->pid, NULL, WNOHANG) == 0;
}

/* SIGTERM and wait: its exit status (or -1). */
static inline int agent_stop(struct agent_proc *a)
{
	int st;

	if (a->pid <= 0)
		return -1;
	kill(a->pid, SIGTERM);
	for (int i = 0; i < 5000; i++) {
		if (waitpid(a->pid, &st, WNOHANG) == a->pid) {
			a->pid = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		t_sleep_ms(2);
	}
	kill(a->pid, SIGKILL);
	waitpid(a->pid, &st, 0);
	a->pid = 0;
	return -1;
}

static inline void agent_show_log(const struct agent_proc *a, int last)
{
	char cmd[700];

	printf("---- the agent's log (%s), last %d lines ----\n", a->log, last);
	fflush(stdout);
	snprintf(cmd, sizeof(cmd), "tail -n %d '%s'", last, a->log);
	if (system(cmd) != 0)
		printf("(no log)\n");
	printf("----\n");
	fflush(stdout);
}

/* `dirty-agent status [--json]` into buf; its exit status. */
static inline int agent_status(const struct agent_proc *a, bool json, char *buf, size_t cap)
{
	char cmd[700];
	size_t n = 0;
	FILE *f;
	int st;

	snprintf(cmd, sizeof(cmd), "'%s' status %s--socket '%s' 2>&1", a->bin, json ? "--json " : "", a->socket);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	while (n + 1 < cap && !feof(f)) {
		size_t k = fread(buf + n, 1, cap - 1 - n, f);

		if (!k)
			break;
		n += k;
	}
	buf[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * The number after "key": in json at or after `from` (NULL: the start);
 * -1 when there is none. Enough for the agent's flat, known output.
 */
static inline long long json_num(const char *json, const char *key, const char **from)
{
	char pat[128];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(from && *from ? *from : json, pat);
	if (!p)
		return -1;
	if (from)
		*from = p + strlen(pat);
	return strtoll(p + strlen(pat), NULL, 10);
}

/* The object in json's "clients" or "leaks" array whose "pid" is pid. */
static inline const char *json_entry(const char *json, const char *array, int pid)
{
	char pat[96];
	const char *start = strstr(json, array), *p;

	if (!start)
		return NULL;
	snprintf(pat, sizeof(pat), "{\"pid\": %d,", pid);
	p = strstr(start, pat);
	return p;
}

/* A printable copy of the JSON object starting at e (up to its '}'). */
static inline const char *json_obj(const char *e)
{
	static char buf[512];
	size_t n = 0;

	if (!e)
		return "(none)";
	while (e[n] && e[n] != '}' && n + 2 < sizeof(buf))
		n++;
	memcpy(buf, e, n);
	buf[n] = e[n] == '}' ? '}' : 0;
	buf[n + 1] = 0;
	return buf;
}

/* ---- raw wire clients ----------------------------------------------------------- */

static inline int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static inline int raw_send(int fd, const void *m, size_t len)
{
	ssize_t n = send(fd, m, len, MSG_NOSIGNAL);

	return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

static inline int raw_hello(int fd, uint32_t flags)
{
	struct agent_hello h;

	memset(&h, 0, sizeof(h));
	agent_wire_hdr(&h.h, AGENT_HELLO, sizeof(h));
	h.flags = flags;
	return raw_send(fd, &h, sizeof(h));
}

/*
 * One message within timeout_ms, with up to 4 fds: its length, 0 at EOF,
 * -ETIMEDOUT, or -errno.
 */
static inline ssize_t raw_recv(int fd, void *buf, size_t cap, int *fds, int *nfds, int timeout_ms)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(4 * sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t n;

	if (nfds)
		*nfds = 0;
	if (poll(&p, 1, timeout_ms) == 0)
		return -ETIMEDOUT;
	n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int f;

				memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(f));
				if (fds && nfds && *nfds < 4)
					fds[(*nfds)++] = f;
				else
					close(f);
			}
	return n;
}

/* A raw DMA client: connected, welcomed, region and table mapped. */
struct raw_client {
	int fd;
	struct agent_welcome w;
	uint8_t *region;
	struct dirty_proto_header *hdr;
	uint64_t *pin;
	struct pintable_header *tbl;
	_Atomic uint32_t *count;
};

static inline int raw_client_open(struct raw_client *c, const char *path, char *why, size_t whylen)
{
	uint8_t buf[512];
	struct agent_msg m;
	struct dirty_proto_layout lay;
	int fds[4], nfds, type;
	ssize_t n;

	memset(c, 0, sizeof(*c));
	c->fd = raw_connect(path);
	if (c->fd < 0) {
		snprintf(why, whylen, "connect: %s", strerror(-c->fd));
		return -1;
	}
	if (raw_hello(c->fd, 0)) {
		snprintf(why, whylen, "HELLO: %s", strerror(errno));
		return -1;
	}
	n = raw_recv(c->fd, buf, sizeof(buf), fds, &nfds, 5000);
	if (n <= 0) {
		snprintf(why, whylen, "no WELCOME: %s", n == 0 ? "EOF" : strerror((int)-n));
		return -1;
	}
	type = agent_wire_parse(buf, (size_t)n, &m, why, whylen);
	if (type != AGENT_WELCOME || nfds != 2) {
		if (type == AGENT_REFUSED)
			snprintf(why, whylen, "REFUSED %d: %s", m.u.refused.err, m.u.refused.text);
		else if (type > 0)
			snprintf(why, whylen, "answer type %d with %d fds", type, nfds);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return -1;
	}
	c->w = m.u.welcome;
	c->region = mmap(NULL, c->w.region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	c->tbl = mmap(NULL, c->w.table_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	close(fds[0]);
	close(fds[1]);
	if (c->region == MAP_FAILED || c->tbl == MAP_FAILED || dirty_proto_layout(c->w.npages, &lay)) {
		snprintf(why, whylen, "cannot map what WELCOME passed");
		return -1;
	}
	c->hdr = (struct dirty_proto_header *)c->region;
	c->pin = (uint64_t *)(c->region + lay.pin_off);
	c->count = (_Atomic uint32_t *)((uint8_t *)c->tbl + PINTABLE_HEADER_SIZE);
	return 0;
}

/* Take one reference on page p as guest.c does (the slot's refs too). */
static inline void raw_pin(struct raw_client *c, uint64_t p)
{
	uint32_t v = atomic_load(&c->count[p]);

	for (;;) {
		if (v & PIN_BUSY) {
			v = atomic_load(&c->count[p]);
			continue;
		}
		if (v & PIN_COUNT) {
			if (atomic_compare_exchange_weak(&c->count[p], &v, v + 1))
				break;
			continue;
		}
		if (!atomic_compare_exchange_weak(&c->count[p], &v, PIN_BUSY))
			continue;
		v = dirty_proto_pin(c->pin, p) ? 1 : (1 | PIN_OWNED);
		atomic_store(&c->count[p], v);
		break;
	}
	atomic_fetch_add_explicit(&c->tbl->slot[c->w.slot].refs, 1, memory_order_relaxed);
}

static inline bool region_pinned_bit(const uint64_t *pin, uint64_t p)
{
	return __atomic_load_n(&pin[p >> 6], __ATOMIC_ACQUIRE) & (1ull << (p & 63));
}

/* ---- child processes on a command socket ------------------------------------------ */

/*
 * A child is this same program exec'd with "child <fd>" first: it reads
 * one command per message from the socketpair fd and answers one line.
 */
struct child {
	pid_t pid;
	int fd;
};

static inline bool child_spawn(struct child *ch, const char *self, const char *const *extra)
{
	int sv[2];
	char fdarg[16];
	const char *argv[32];
	int n = 0;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return false;
	ch->pid = fork();
	if (ch->pid < 0)
		return false;
	if (ch->pid == 0) {
		int fd = dup(sv[1]);	/* without CLOEXEC */

		snprintf(fdarg, sizeof(fdarg), "%d", fd);
		argv[n++] = self;
		argv[n++] = "child";
		argv[n++] = fdarg;
		for (int i = 0; extra && extra[i] && n < 30; i++)
			argv[n++] = extra[i];
		argv[n] = NULL;
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	close(sv[1]);
	ch->fd = sv[0];
	return true;
}

/* Send a command, wait for the answer line (into out): true if "ok". */
__attribute__((format(printf, 4, 5)))
static inline bool child_cmd(struct child *ch, char *out, size_t cap, const char *fmt, ...)
{
	char cmd[256], tmp[512];
	struct pollfd p = { .fd = ch->fd, .events = POLLIN };
	va_list ap;
	ssize_t n;

	if (!out) {
		out = tmp;
		cap = sizeof(tmp);
	}
	out[0] = 0;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (send(ch->fd, cmd, strlen(cmd), MSG_NOSIGNAL) < 0) {
		snprintf(out, cap, "err send: %s", strerror(errno));
		return false;
	}
	if (poll(&p, 1, 20000) != 1) {
		snprintf(out, cap, "err no answer to '%s' in 20 s", cmd);
		return false;
	}
	n = recv(ch->fd, out, cap - 1, 0);
	if (n <= 0) {
		snprintf(out, cap, "err the child hung up on '%s'", cmd);
		return false;
	}
	out[n] = 0;
	return !strncmp(out, "ok", 2);
}

static inline int child_reap(struct child *ch, int sig)
{
	int st = -1;

	if (ch->pid <= 0)
		return -1;
	if (sig)
		kill(ch->pid, sig);
	waitpid(ch->pid, &st, 0);
	close(ch->fd);
	ch->pid = 0;
	return st;
}

/* In the child: the next command (NUL-terminated), false at EOF. */
static inline bool child_next(int fd, char *buf, size_t cap)
{
	ssize_t n = recv(fd, buf, cap - 1, 0);

	if (n <= 0)
		return false;
	buf[n] = 0;
	return true;
}

__attribute__((format(printf, 2, 3)))
static inline void child_reply(int fd, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	send(fd, buf, strlen(buf), MSG_NOSIGNAL);
}

/* How many fds a process has open (its /proc/<pid>/fd entries). */
static inline int fd_count(pid_t pid)
{
	char cmd[96], buf[32];
	FILE *f;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd 2>/dev/null | wc -l", (int)pid);
	f = popen(cmd, "r");
	if (f && fgets(buf, sizeof(buf), f))
		n = atoi(buf);
	if (f)
		pclose(f);
	return n;
}

#endif /* AGENT_TEST_H */
