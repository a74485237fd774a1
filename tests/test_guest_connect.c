/* SPDX-License-Identifier: MIT */
/*
 * test_guest_connect.c - the client half of the dirty-agent protocol
 * (guest-agent/guest_connect.c, dirty_guest_connect) against a fake
 * agent that lives in this file: a thread on a listening SOCK_SEQPACKET
 * socket that answers HELLO with a real WELCOME - a real region made by
 * the host library (dirty_gp_create) and a real shared pin table
 * (guest-agent/pintable.h, in a memfd) - or with whatever a case asks
 * for. The test process is host and agent at once, and reads the region's
 * bitmaps and the table's words through its own mappings.
 *
 *  connect_attaches_and_leaves_guest_words_alone
 *      WELCOME's slot and geometry reach dirty_guest_info; the client's
 *      HELLO is well formed; a connected handle never writes the region's
 *      guest-owned control words (heartbeat, ack_gen, state, version);
 *      poll is a no-op and agent_start refuses; close says BYE; connect +
 *      close leaves no fd and no mapping behind.
 *  shared_pin_survives_first_unmap_procs (fork)
 *      two client processes map one page: the pin bit stays set until
 *      BOTH unmapped; the first FROM_DEVICE unmap sets the dirty (and
 *      summary) bit while the pin stays; each slot.refs follows its own
 *      process; no pin_conflicts (one table, one owner).
 *  standalone_handles_lose_pin_control
 *      the same steps with two dirty_guest_open_fd handles (private
 *      tables): the first unmap clears the pin the second still holds.
 *      The known limit the agent removes: shows the check above bites.
 *  slot_refs_follow_each_call
 *      slot.refs (and info.pinned_pages) after vectored maps, a page
 *      mapped twice, a partly unmapped list (-ENOENT), a refused range
 *      (-ERANGE), a map undone by -EOVERFLOW; close with mappings open
 *      leaves refs, counts and pins in the table.
 *  killed_client_keeps_its_pins (fork)
 *      a client SIGKILLed with pages mapped: its slot still counts them,
 *      their count words and pin bits stay; the agent sees EOF without
 *      BYE; another client's map + unmap of one of them leaves it pinned.
 *  grace_done_waits_for_reader
 *      GRACE{gen} is answered with GRACE_DONE{gen} only after a thread
 *      that was inside urcu_bp_read_lock left it; without a reader at once.
 *  server_goes_silent_on_bad_agent
 *      after a malformed message, a non-GRACE message, a GRACE with an fd
 *      or EOF, the client never answers a GRACE again; map/unmap still
 *      work and close returns promptly.
 *  bad_answers_refused_without_leaks
 *      a table of ~45 broken answers to HELLO (REFUSED, malformed
 *      messages, wrong fds, WELCOME geometry against the region, region
 *      headers, table headers and sizes, slots): each refused with the
 *      expected -errno (-EPROTO for everything malformed or inconsistent;
 *      REFUSED's own err and text), and no fd or mapping left.
 *  connect_errors
 *      no socket (DIRTY_AGENT_SOCKET by default), not a listener, a path
 *      too long, an agent that never answers (-ETIMEDOUT after 10 s).
 *  child_close_of_inherited_handle_is_harmless (fork)
 *      a child's dirty_guest_close() of the handle it inherited sends no
 *      BYE and shuts nothing down: the parent's client still answers
 *      GRACE and unmaps.
 *  concurrent_clients_never_lose_a_held_pin (threads; and procs, fork)
 *      several connected clients map, check and unmap a few hot pages at
 *      once; after each map returns, and until its unmap, the page's pin
 *      bit must read set. Ends with every count, pin and slot at 0.
 *
 * Fork cases do not run under ThreadSanitizer (the thread variant does).
 * DIRTY_TEST_SCALE shrinks the stress.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
#include <unistd.h>

#include <urcu/urcu-bp.h>

#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "testutil.h"
#include "../guest-agent/agent_wire.h"
#include "../guest-agent/pintable.h"

#define BASE 0x40000000ull
#define PS 4096ull
#define NPAGES 1024u
#define MAXCONN 32

/* ---- the fake agent ------------------------------------------------------ */

struct agent;
/* Answers one HELLO on fd; returns true to keep the connection open. */
typedef bool (*reply_fn)(struct agent *a, int fd, const void *arg);

struct agent {
	char dir[64], path[108];
	int lfd;
	struct dirty_view *v;
	struct dirty_gp *gp;
	int region_fd;
	uint64_t region_bytes;
	struct dirty_proto_layout lay;
	uint8_t *region;		/* the host's own mapping */
	struct dirty_proto_header *hdr;
	uint64_t *dirty, *summary, *pin;
	int table_fd;
	struct pintable_header *tbl;	/* the agent's own mapping */
	_Atomic uint32_t *cnt;
	pthread_t thr;
	_Atomic bool stop;
	pthread_mutex_t lock;		/* the fields below */
	reply_fn reply;
	const void *reply_arg;
	int conns[MAXCONN];		/* admitted connections, in order */
	uint32_t slots[MAXCONN];
	int nconns;
	int open_extra[MAXCONN];	/* connections a case keeps open unanswered */
	int nextra;
	uint32_t next_slot;
	unsigned int served, bad_hellos;
};

static struct agent *cur;	/* for the checked teardown */
static pid_t kids[16];
static int nkids;

static uint64_t pgpa(uint64_t p) { return BASE + p * PS; }

static bool bit(const uint64_t *bm, uint64_t i)
{
	return (__atomic_load_n(&bm[i / 64], __ATOMIC_ACQUIRE) >> (i % 64)) & 1;
}

static uint32_t count_word(struct agent *a, uint64_t p)
{
	return atomic_load_explicit(&a->cnt[p], memory_order_acquire);
}

static uint64_t slot_refs(struct agent *a, uint32_t slot)
{
	return atomic_load_explicit(&a->tbl->slot[slot].refs, memory_order_relaxed);
}

static int send_fds(int fd, const void *buf, size_t len, const int *fds, int n)
{
	union {
		struct cmsghdr align;
		char b[CMSG_SPACE(sizeof(int) * 8)];
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memset(&ctl, 0, sizeof(ctl));
	if (n) {
		struct cmsghdr *c;

		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
	}
	return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* The WELCOME this agent sends for slot. */
static struct agent_welcome good_welcome(struct agent *a, uint32_t slot)
{
	struct agent_welcome w = { 0 };

	agent_wire_hdr(&w.h, AGENT_WELCOME, sizeof(w));
	w.slot = slot;
	w.page_shift = 12;
	w.gpa_base = BASE;
	w.npages = NPAGES;
	w.region_bytes = a->region_bytes;
	w.table_bytes = pintable_bytes(NPAGES);
	return w;
}

/* Admit the client: slot, its pid in the slot, WELCOME + [region, table]. */
static bool reply_welcome(struct agent *a, int fd, const void *arg)
{
	int fds[2] = { a->region_fd, a->table_fd };
	struct ucred cr;
	socklen_t crl = sizeof(cr);
	struct agent_welcome w;
	uint32_t slot;

	(void)arg;
	pthread_mutex_lock(&a->lock);
	slot = a->next_slot++;
	pthread_mutex_unlock(&a->lock);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) == 0)
		atomic_store_explicit(&a->tbl->slot[slot].pid, (uint32_t)cr.pid, memory_order_release);
	w = good_welcome(a, slot);
	if (send_fds(fd, &w, sizeof(w), fds, 2))
		return false;
	pthread_mutex_lock(&a->lock);
	a->slots[a->nconns] = slot;
	a->conns[a->nconns++] = fd;
	pthread_mutex_unlock(&a->lock);
	return true;
}

static void *agent_main(void *arg)
{
	struct agent *a = arg;

	while (!atomic_load(&a->stop)) {
		struct pollfd pfd = { .fd = a->lfd, .events = POLLIN };
		char buf[256];
		struct agent_msg m;
		reply_fn fn;
		const void *fa;
		ssize_t n;
		int fd;
		bool keep;

		if (poll(&pfd, 1, 20) <= 0)
			continue;
		fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		pfd.fd = fd;
		n = poll(&pfd, 1, 5000) == 1 ? recv(fd, buf, sizeof(buf), 0) : -1;
		pthread_mutex_lock(&a->lock);
		if (n < 0 || agent_wire_parse(buf, (size_t)n, &m, NULL, 0) != AGENT_HELLO ||
		    m.u.hello.flags)
			a->bad_hellos++;
		fn = a->reply;
		fa = a->reply_arg;
		pthread_mutex_unlock(&a->lock);
		keep = fn(a, fd, fa);
		pthread_mutex_lock(&a->lock);
		if (!keep)
			close(fd);
		a->served++;
		pthread_mutex_unlock(&a->lock);
	}
	return NULL;
}

static void agent_set_reply(struct agent *a, reply_fn fn, const void *arg)
{
	pthread_mutex_lock(&a->lock);
	a->reply = fn;
	a->reply_arg = arg;
	pthread_mutex_unlock(&a->lock);
}

static unsigned int agent_served(struct agent *a)
{
	unsigned int n;

	pthread_mutex_lock(&a->lock);
	n = a->served;
	pthread_mutex_unlock(&a->lock);
	return n;
}

/* Wait until the agent finished with its served-th connection. */
static void agent_wait_served(struct agent *a, unsigned int served)
{
	double end = test_now_s() + 10;

	while (agent_served(a) < served)
		ck_assert_msg(test_now_s() < end, "the fake agent did not finish its reply");
	/* (busy wait is fine: the agent answers within microseconds) */
}

static unsigned int agent_bad_hellos(struct agent *a)
{
	unsigned int n;

	pthread_mutex_lock(&a->lock);
	n = a->bad_hellos;
	pthread_mutex_unlock(&a->lock);
	return n;
}

static int agent_conn(struct agent *a, int i)
{
	int fd;

	pthread_mutex_lock(&a->lock);
	ck_assert_int_lt(i, a->nconns);
	fd = a->conns[i];
	pthread_mutex_unlock(&a->lock);
	return fd;
}

static uint32_t agent_slot(struct agent *a, int i)
{
	uint32_t s;

	pthread_mutex_lock(&a->lock);
	ck_assert_int_lt(i, a->nconns);
	s = a->slots[i];
	pthread_mutex_unlock(&a->lock);
	return s;
}

/*
 * One message from connection fd within ms: its type (and *gen for GRACE
 * and GRACE_DONE), 0 at EOF, -ETIMEDOUT, or -1 for anything malformed.
 */
static int agent_recv(int fd, int ms, uint64_t *gen)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char buf[256];
	struct agent_msg m;
	ssize_t n;
	int t;

	if (poll(&pfd, 1, ms) == 0)
		return -ETIMEDOUT;
	n = recv(fd, buf, sizeof(buf), 0);
	if (n == 0)
		return 0;
	if (n < 0)
		return -1;
	t = agent_wire_parse(buf, (size_t)n, &m, NULL, 0);
	if (t == AGENT_GRACE_DONE && gen)
		*gen = m.u.gen.gen;
	return t > 0 ? t : -1;
}

static void agent_send_grace(int fd, uint64_t gen)
{
	struct agent_gen m = { 0 };

	agent_wire_hdr(&m.h, AGENT_GRACE, sizeof(m));
	m.gen = gen;
	ck_assert_int_eq(send(fd, &m, sizeof(m), MSG_NOSIGNAL), (ssize_t)sizeof(m));
}

/* A memfd holding a copy of size bytes at src (or zeros), for broken variants. */
static int memfd_copy(const char *name, const void *src, size_t len, size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	void *p;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	if (src && len) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		ck_assert(p != MAP_FAILED);
		memcpy(p, src, len < size ? len : size);
		munmap(p, size);
	}
	return fd;
}

static struct agent *agent_start(void)
{
	struct agent *a = calloc(1, sizeof(*a));
	struct dirty_gp_config cfg = { .gpa = BASE, .len = (uint64_t)NPAGES * PS,
				       .ack_timeout_ms = 60000 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t tbytes = pintable_bytes(NPAGES);

	ck_assert_ptr_nonnull(a);
	pthread_mutex_init(&a->lock, NULL);
	a->reply = reply_welcome;
	ck_assert_int_eq(dirty_view_new(&a->v), 0);
	ck_assert_int_eq(dirty_view_add_region(a->v, BASE, (uint64_t)NPAGES * PS, PS, 0), 0);
	ck_assert_int_eq(dirty_gp_create(a->v, &cfg, &a->gp), 0);
	a->region_fd = dirty_gp_fd(a->gp);
	a->region_bytes = dirty_gp_size(a->gp);
	ck_assert_int_eq(dirty_proto_layout(NPAGES, &a->lay), 0);
	a->region = mmap(NULL, a->region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, a->region_fd, 0);
	ck_assert(a->region != MAP_FAILED);
	a->hdr = (struct dirty_proto_header *)a->region;
	a->dirty = (uint64_t *)(a->region + a->lay.dirty_off);
	a->summary = (uint64_t *)(a->region + a->lay.summary_off);
	a->pin = (uint64_t *)(a->region + a->lay.pin_off);

	/* The shared table, as the daemon makes it: header, then magic last. */
	a->table_fd = memfd_copy("test-pintable", NULL, 0, tbytes);
	a->tbl = mmap(NULL, tbytes, PROT_READ | PROT_WRITE, MAP_SHARED, a->table_fd, 0);
	ck_assert(a->tbl != MAP_FAILED);
	a->tbl->version = PINTABLE_VERSION;
	a->tbl->header_size = PINTABLE_HEADER_SIZE;
	a->tbl->npages = NPAGES;
	a->tbl->gpa_base = BASE;
	a->tbl->page_shift = 12;
	a->tbl->nslots = PINTABLE_SLOTS;
	__atomic_store_n(&a->tbl->magic, PINTABLE_MAGIC, __ATOMIC_RELEASE);
	a->cnt = (_Atomic uint32_t *)((uint8_t *)a->tbl + PINTABLE_HEADER_SIZE);

	strcpy(a->dir, "/tmp/ldagent-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(a->dir));
	snprintf(a->path, sizeof(a->path), "%s/agent.sock", a->dir);
	memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
	a->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(a->lfd, 0);
	ck_assert_int_eq(bind(a->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(a->lfd, 16), 0);
	ck_assert_int_eq(pthread_create(&a->thr, NULL, agent_main, a), 0);
	cur = a;
	return a;
}

static void agent_stop(struct agent *a)
{
	if (!a)
		return;
	atomic_store(&a->stop, true);
	pthread_join(a->thr, NULL);
	for (int i = 0; i < a->nconns; i++)
		close(a->conns[i]);
	for (int i = 0; i < a->nextra; i++)
		close(a->open_extra[i]);
	close(a->lfd);
	unlink(a->path);
	rmdir(a->dir);
	munmap(a->tbl, pintable_bytes(NPAGES));
	close(a->table_fd);
	munmap(a->region, a->region_bytes);
	dirty_view_free(a->v);
	pthread_mutex_destroy(&a->lock);
	free(a);
	cur = NULL;
}

/* The region's guest-owned words: a connected client writes none of them. */
static void assert_guest_words_untouched(struct agent *a)
{
	const struct dirty_proto_guest *gw = &a->hdr->guest;

	ck_assert_uint_eq(__atomic_load_n(&gw->heartbeat, __ATOMIC_ACQUIRE), 0);
	ck_assert_uint_eq(__atomic_load_n(&gw->ack_gen, __ATOMIC_ACQUIRE), 0);
	ck_assert_uint_eq(__atomic_load_n(&gw->state, __ATOMIC_ACQUIRE), DIRTY_PROTO_GUEST_ABSENT);
	ck_assert_uint_eq(__atomic_load_n(&gw->major, __ATOMIC_ACQUIRE), 0);
	ck_assert_uint_eq(__atomic_load_n(&gw->minor, __ATOMIC_ACQUIRE), 0);
	ck_assert_uint_eq(__atomic_load_n(&gw->pin_leaks, __ATOMIC_ACQUIRE), 0);
}

/* ---- leak accounting ------------------------------------------------------ */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1;	/* the directory's own fd */
}

/* Mappings of memfds: regions and tables, ours and the library's. */
static int count_memfd_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, "memfd:") != NULL;
	fclose(f);
	return n;
}

/* ---- forked clients (not under TSAN) ---------------------------------------- */
#ifndef __SANITIZE_THREAD__

enum { CMD_NONE, CMD_MAP, CMD_UNMAP, CMD_CLOSE };

struct remote {
	_Atomic int ready, cmd_seq, done_seq;
	int cmd, dir;
	uint64_t gpa, len;
	_Atomic int ret;
	int connect_err;
	uint32_t slot;
};

static void remote_main(const char *path, struct remote *r)
{
	struct dirty_guest *g;
	struct dirty_guest_info info;
	int seen = 0;

	r->connect_err = dirty_guest_connect(path, &g);
	if (!r->connect_err) {
		dirty_guest_info(g, &info);
		r->slot = info.slot;
	}
	atomic_store(&r->ready, 1);
	if (r->connect_err)
		_exit(2);
	for (;;) {
		int ret = 0;

		while (atomic_load(&r->cmd_seq) == seen) {
			if (getppid() == 1)
				_exit(3);
			usleep(50);
		}
		seen = atomic_load(&r->cmd_seq);
		if (r->cmd == CMD_MAP)
			ret = dirty_guest_map(g, r->gpa, r->len, r->dir);
		else if (r->cmd == CMD_UNMAP)
			ret = dirty_guest_unmap(g, r->gpa, r->len, r->dir);
		else
			dirty_guest_close(g);
		atomic_store(&r->ret, ret);
		atomic_store(&r->done_seq, seen);
		if (r->cmd == CMD_CLOSE)
			_exit(0);
	}
}

static pid_t fork_wrapped(void (*fn)(void *), void *arg)
{
	pid_t pid;

	/* liburcu-bp's registry and call_rcu worker across fork without exec. */
	urcu_bp_call_rcu_before_fork();
	urcu_bp_before_fork();
	pid = fork();
	if (pid == 0) {
		urcu_bp_after_fork_child();
		urcu_bp_call_rcu_after_fork_child();
		fn(arg);
		_exit(0);
	}
	urcu_bp_after_fork_parent();
	urcu_bp_call_rcu_after_fork_parent();
	ck_assert_int_gt(pid, 0);
	kids[nkids++] = pid;
	return pid;
}

struct remote_start {
	const char *path;
	struct remote *r;
};

static void remote_entry(void *arg)
{
	struct remote_start *s = arg;

	remote_main(s->path, s->r);
}

static struct remote *remote_new(struct agent *a, pid_t *pid)
{
	struct remote *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct remote_start s = { a->path, r };
	double end = test_now_s() + 10;

	ck_assert(r != MAP_FAILED);
	*pid = fork_wrapped(remote_entry, &s);
	while (!atomic_load(&r->ready)) {
		ck_assert_msg(test_now_s() < end, "forked client did not connect");
		usleep(100);
	}
	ck_assert_msg(r->connect_err == 0, "forked client: dirty_guest_connect returned %d", r->connect_err);
	return r;
}

static int remote_do(struct remote *r, int cmd, uint64_t gpa, uint64_t len, int dir)
{
	int seq = atomic_load(&r->cmd_seq) + 1;
	double end = test_now_s() + 10;

	r->cmd = cmd;
	r->gpa = gpa;
	r->len = len;
	r->dir = dir;
	atomic_store(&r->cmd_seq, seq);
	while (atomic_load(&r->done_seq) != seq) {
		ck_assert_msg(test_now_s() < end, "forked client did not answer command %d", cmd);
		usleep(50);
	}
	return atomic_load(&r->ret);
}

static void reap(pid_t pid, int want_exit)
{
	int st;

	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	for (int i = 0; i < nkids; i++)
		if (kids[i] == pid)
			kids[i] = kids[--nkids];
	if (want_exit >= 0)
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == want_exit,
			      "client %d: status %#x, want exit %d", pid, st, want_exit);
}

#endif /* !__SANITIZE_THREAD__ */

/* Checked teardown: a failed case leaves no child and no agent behind. */
static void teardown(void)
{
	for (int i = 0; i < nkids; i++) {
		kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	nkids = 0;
	agent_stop(cur);
}

/* ---- cases ----------------------------------------------------------------- */

START_TEST(connect_attaches_and_leaves_guest_words_alone)
{
	struct agent *a = agent_start();
	struct dirty_guest_info info;
	struct dirty_guest *g, *g2;
	int fds0 = count_fds(), maps0 = count_memfd_maps();
	uint64_t gen = 0;

	ck_assert_int_eq(dirty_gp_track(a->gp, 1), 0);
	ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
	ck_assert_int_eq(dirty_guest_connect(a->path, &g2), 0);
	agent_wait_served(a, 2);
	ck_assert_uint_eq(agent_bad_hellos(a), 0);
	ck_assert_int_eq(dirty_guest_info(g, &info), 0);
	ck_assert_int_eq(info.connected, 1);
	ck_assert_uint_eq(info.slot, agent_slot(a, 0));
	ck_assert_uint_eq(info.gpa_base, BASE);
	ck_assert_uint_eq(info.npages, NPAGES);
	ck_assert_uint_eq(info.page_size, PS);
	ck_assert_int_eq(info.tracking, 1);
	ck_assert_uint_eq(info.pinned_pages, 0);
	ck_assert_int_eq(dirty_guest_info(g2, &info), 0);
	ck_assert_uint_eq(info.slot, agent_slot(a, 1));
	ck_assert_uint_ne(agent_slot(a, 0), agent_slot(a, 1));
	ck_assert_uint_eq(atomic_load(&a->tbl->slot[info.slot].pid), (uint32_t)getpid());

	/* The agent owns heartbeat and acknowledgement. */
	ck_assert_int_eq(dirty_guest_poll(g), 0);
	ck_assert_int_eq(dirty_guest_agent_start(g, 1), -EINVAL);
	ck_assert_msg(strstr(dirty_guest_last_error(), "dirty-agent daemon answers for connected clients"),
		      "message: %s", dirty_guest_last_error());
	ck_assert_int_eq(dirty_guest_map(g, pgpa(3), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(g, pgpa(3), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert(bit(a->dirty, 3));
	assert_guest_words_untouched(a);

	dirty_guest_close(g);
	ck_assert_int_eq(agent_recv(agent_conn(a, 0), 5000, &gen), AGENT_BYE);
	ck_assert_int_eq(agent_recv(agent_conn(a, 0), 5000, &gen), 0);	/* then EOF */
	dirty_guest_close(g2);
	ck_assert_int_eq(agent_recv(agent_conn(a, 1), 5000, &gen), AGENT_BYE);
	assert_guest_words_untouched(a);
	/* Nothing of either handle is left: no fd, no mapping (the agent's conns aside). */
	ck_assert_int_eq(count_fds() - 2, fds0);
	ck_assert_int_eq(count_memfd_maps(), maps0);
	agent_stop(a);
}
END_TEST

#ifndef __SANITIZE_THREAD__
START_TEST(shared_pin_survives_first_unmap_procs)
{
	struct agent *a = agent_start();
	const uint64_t p = 77;
	struct remote *ra, *rb;
	pid_t pa, pb;

	ck_assert_int_eq(dirty_gp_track(a->gp, 1), 0);
	ra = remote_new(a, &pa);
	rb = remote_new(a, &pb);
	ck_assert_uint_ne(ra->slot, rb->slot);

	uint32_t cw[3];
	uint64_t refs[3][2];

	ck_assert_int_eq(remote_do(ra, CMD_MAP, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert(bit(a->pin, p));
	cw[0] = count_word(a, p);
	ck_assert_int_eq(remote_do(rb, CMD_MAP, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	cw[1] = count_word(a, p);
	refs[0][0] = slot_refs(a, ra->slot);
	refs[0][1] = slot_refs(a, rb->slot);
	ck_assert(!bit(a->dirty, p));

	/* The process that set the bit unmaps first: the pin is B's too. */
	ck_assert_int_eq(remote_do(ra, CMD_UNMAP, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_msg(bit(a->pin, p), "page %lu unpinned by the first of two processes mapping it", p);
	ck_assert_int_eq(dirty_gp_pinned(a->gp, pgpa(p)), 1);
	ck_assert_msg(bit(a->dirty, p) && bit(a->summary, p / 64),
		      "FROM_DEVICE unmap did not set the dirty and summary bits");
	cw[2] = count_word(a, p);
	refs[1][0] = slot_refs(a, ra->slot);
	refs[1][1] = slot_refs(a, rb->slot);

	ck_assert_int_eq(remote_do(rb, CMD_UNMAP, pgpa(p), PS, DIRTY_TO_DEVICE), 0);
	ck_assert(!bit(a->pin, p));
	refs[2][0] = slot_refs(a, ra->slot);
	refs[2][1] = slot_refs(a, rb->slot);
	ck_assert_uint_eq(__atomic_load_n(&a->hdr->guest.pin_conflicts, __ATOMIC_RELAXED), 0);

	/* The shared words behind it: one table, one owner, each slot its own. */
	ck_assert_uint_eq(cw[0], 1 | PIN_OWNED);
	ck_assert_uint_eq(cw[1], 2 | PIN_OWNED);
	ck_assert_uint_eq(cw[2], 1 | PIN_OWNED);
	ck_assert_uint_eq(count_word(a, p), 0);
	ck_assert(refs[0][0] == 1 && refs[0][1] == 1);
	ck_assert(refs[1][0] == 0 && refs[1][1] == 1);
	ck_assert(refs[2][0] == 0 && refs[2][1] == 0);

	ck_assert_int_eq(remote_do(ra, CMD_CLOSE, 0, 0, 0), 0);
	ck_assert_int_eq(remote_do(rb, CMD_CLOSE, 0, 0, 0), 0);
	reap(pa, 0);
	reap(pb, 0);
	assert_guest_words_untouched(a);
	munmap(ra, sizeof(*ra));
	munmap(rb, sizeof(*rb));
	agent_stop(a);
}
END_TEST
#endif

START_TEST(standalone_handles_lose_pin_control)
{
	struct agent *a = agent_start();
	struct dirty_guest *ga, *gb;
	const uint64_t p = 77;

	ck_assert_int_eq(dirty_guest_open_fd(a->region_fd, &ga), 0);
	ck_assert_int_eq(dirty_guest_open_fd(a->region_fd, &gb), 0);
	ck_assert_int_eq(dirty_guest_map(ga, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_map(gb, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(dirty_guest_unmap(ga, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	/* The limit the shared table removes: B still maps p, the pin is gone. */
	ck_assert_msg(!bit(a->pin, p), "control: private tables kept the pin; the shared-pin "
		      "case proves nothing");
	ck_assert_int_eq(dirty_guest_unmap(gb, pgpa(p), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_uint_eq(__atomic_load_n(&a->hdr->guest.pin_conflicts, __ATOMIC_RELAXED), 1);
	dirty_guest_close(ga);
	dirty_guest_close(gb);
	agent_stop(a);
}
END_TEST

START_TEST(slot_refs_follow_each_call)
{
	struct agent *a = agent_start();
	struct dirty_guest_info info;
	struct dirty_guest *g;
	uint32_t s;
	const struct dirty_dma_piece v[3] = {
		{ pgpa(10), PS },		/* 1 page */
		{ pgpa(20), 3 * PS },		/* 3 pages */
		{ pgpa(30) + 100, PS },		/* 2 pages, unaligned */
	};
	const struct dirty_dma_piece half[2] = {
		{ pgpa(20), 3 * PS },		/* mapped: 3 dropped */
		{ pgpa(40), 2 * PS },		/* never mapped */
	};
	const uint64_t q = 500;

	ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
	agent_wait_served(a, 1);
	s = agent_slot(a, 0);
	ck_assert_int_eq(dirty_guest_map_v(g, v, 3, DIRTY_FROM_DEVICE), 0);
	ck_assert_uint_eq(slot_refs(a, s), 6);
	ck_assert_int_eq(dirty_guest_map(g, pgpa(10), PS, DIRTY_TO_DEVICE), 0);
	ck_assert_uint_eq(slot_refs(a, s), 7);
	ck_assert_uint_eq(count_word(a, 10), 2 | PIN_OWNED);
	ck_assert_int_eq(dirty_guest_info(g, &info), 0);
	ck_assert_uint_eq(info.pinned_pages, 7);

	/* Partly not mapped: only the dropped references leave the slot. */
	ck_assert_int_eq(dirty_guest_unmap_v(g, half, 2, DIRTY_TO_DEVICE), -ENOENT);
	ck_assert_uint_eq(slot_refs(a, s), 4);
	for (uint64_t p = 20; p < 23; p++)
		ck_assert(!bit(a->pin, p) && count_word(a, p) == 0);

	/* Refused before anything changes. */
	ck_assert_int_eq(dirty_guest_map(g, pgpa(NPAGES - 1), 2 * PS, DIRTY_FROM_DEVICE), -ERANGE);
	ck_assert_uint_eq(slot_refs(a, s), 4);

	/* A map undone halfway (a count at its maximum) leaves no reference. */
	atomic_store(&a->cnt[q], PIN_COUNT);
	ck_assert_int_eq(dirty_guest_map(g, pgpa(q - 2), 3 * PS, DIRTY_FROM_DEVICE), -EOVERFLOW);
	ck_assert_uint_eq(slot_refs(a, s), 4);
	ck_assert(count_word(a, q - 2) == 0 && count_word(a, q - 1) == 0);
	ck_assert(!bit(a->pin, q - 2) && !bit(a->pin, q - 1));
	atomic_store(&a->cnt[q], 0);

	/* Close with 4 references: they stay in the table, pins set. */
	dirty_guest_close(g);
	ck_assert_uint_eq(slot_refs(a, s), 4);
	ck_assert_uint_eq(count_word(a, 10), 2 | PIN_OWNED);
	ck_assert_uint_eq(count_word(a, 30), 1 | PIN_OWNED);
	ck_assert_uint_eq(count_word(a, 31), 1 | PIN_OWNED);
	ck_assert(bit(a->pin, 10) && bit(a->pin, 30) && bit(a->pin, 31));
	ck_assert_int_eq(agent_recv(agent_conn(a, 0), 5000, NULL), AGENT_BYE);
	assert_guest_words_untouched(a);	/* no pin_leaks: the agent reports them */
	agent_stop(a);
}
END_TEST

#ifndef __SANITIZE_THREAD__
START_TEST(killed_client_keeps_its_pins)
{
	struct agent *a = agent_start();
	struct dirty_guest *g;
	struct remote *r;
	pid_t pid;
	uint32_t s;

	r = remote_new(a, &pid);
	s = r->slot;
	ck_assert_int_eq(remote_do(r, CMD_MAP, pgpa(100), 10 * PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_int_eq(remote_do(r, CMD_MAP, pgpa(100), PS, DIRTY_BIDIRECTIONAL), 0);
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	reap(pid, -1);

	ck_assert_uint_eq(slot_refs(a, s), 11);
	ck_assert_uint_eq(count_word(a, 100), 2 | PIN_OWNED);
	for (uint64_t p = 100; p < 110; p++) {
		ck_assert_msg(bit(a->pin, p), "page %lu lost its pin with its client", p);
		ck_assert_uint_eq(count_word(a, p) & PIN_COUNT, p == 100 ? 2 : 1);
	}
	/* The agent sees the death as EOF, without BYE. */
	ck_assert_int_eq(agent_recv(agent_conn(a, 0), 5000, NULL), 0);

	/* Another client's map + unmap of such a page keeps it pinned. */
	ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
	ck_assert_int_eq(dirty_guest_map(g, pgpa(105), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_uint_eq(count_word(a, 105), 2 | PIN_OWNED);
	ck_assert_int_eq(dirty_guest_unmap(g, pgpa(105), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert_msg(bit(a->pin, 105), "a dead client's pin was cleared by another's unmap");
	ck_assert_uint_eq(count_word(a, 105), 1 | PIN_OWNED);
	dirty_guest_close(g);
	ck_assert_uint_eq(slot_refs(a, s), 11);
	munmap(r, sizeof(*r));
	agent_stop(a);
}
END_TEST
#endif

#ifndef __SANITIZE_THREAD__
static void close_inherited(void *arg)
{
	dirty_guest_close(arg);
	_exit(0);
}

START_TEST(child_close_of_inherited_handle_is_harmless)
{
	struct agent *a = agent_start();
	struct dirty_guest *g;
	uint64_t gen = 0;
	int fd;

	ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
	agent_wait_served(a, 1);
	fd = agent_conn(a, 0);
	ck_assert_int_eq(dirty_guest_map(g, pgpa(9), PS, DIRTY_FROM_DEVICE), 0);
	reap(fork_wrapped(close_inherited, g), 0);
	/* The child's close said nothing to the agent and cut nothing. */
	ck_assert_int_eq(agent_recv(fd, 200, NULL), -ETIMEDOUT);
	agent_send_grace(fd, 5);
	ck_assert_int_eq(agent_recv(fd, 10000, &gen), AGENT_GRACE_DONE);
	ck_assert_uint_eq(gen, 5);
	ck_assert(bit(a->pin, 9));
	ck_assert_int_eq(dirty_guest_unmap(g, pgpa(9), PS, DIRTY_FROM_DEVICE), 0);
	ck_assert(!bit(a->pin, 9));
	dirty_guest_close(g);
	ck_assert_int_eq(agent_recv(fd, 5000, NULL), AGENT_BYE);
	agent_stop(a);
}
END_TEST
#endif

struct reader {
	_Atomic bool inside, leave;
};

/* Stands for a map/unmap that read tracking off and has not finished. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;

	urcu_bp_read_lock();
	atomic_store(&r->inside, true);
	while (!atomic_load(&r->leave))
		usleep(100);
	urcu_bp_read_unlock();
	return NULL;
}

START_TEST(grace_done_waits_for_reader)
{
	struct agent *a = agent_start();
	struct reader rd = { 0 };
	struct dirty_guest *g;
	pthread_t rt;
	uint64_t gen = 0;
	int fd, early;

	ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
	agent_wait_served(a, 1);
	fd = agent_conn(a, 0);
	ck_assert_int_eq(pthread_create(&rt, NULL, reader_main, &rd), 0);
	while (!atomic_load(&rd.inside))
		usleep(100);
	agent_send_grace(fd, 7);
	early = agent_recv(fd, 300, &gen);
	/* Let the reader go before any assertion: a reader left inside blocks every later grace period. */
	atomic_store(&rd.leave, true);
	pthread_join(rt, NULL);
	ck_assert_msg(early == -ETIMEDOUT, "GRACE_DONE{%lu} came (%d) while a reader that may have read "
		      "tracking off was inside", (unsigned long)gen, early);
	ck_assert_int_eq(agent_recv(fd, 10000, &gen), AGENT_GRACE_DONE);
	ck_assert_uint_eq(gen, 7);
	/* No reader: answered at once, with the generation asked. */
	agent_send_grace(fd, 0xfeedull << 32);
	ck_assert_int_eq(agent_recv(fd, 10000, &gen), AGENT_GRACE_DONE);
	ck_assert_uint_eq(gen, 0xfeedull << 32);
	assert_guest_words_untouched(a);
	dirty_guest_close(g);
	ck_assert_int_eq(agent_recv(fd, 5000, NULL), AGENT_BYE);
	agent_stop(a);
}
END_TEST

/* What a case sends after the handshake to silence the client. */
enum { SILENCE_GARBAGE, SILENCE_WELCOME, SILENCE_GRACE_FD, SILENCE_EOF, SILENCE_SHORT };

START_TEST(server_goes_silent_on_bad_agent)
{
	for (int how = SILENCE_GARBAGE; how <= SILENCE_SHORT; how++) {
		struct agent *a = agent_start();
		struct dirty_guest *g;
		struct agent_gen m = { 0 };
		double t0;
		int fd, r;

		ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
		agent_wait_served(a, 1);
		fd = agent_conn(a, 0);
		agent_send_grace(fd, 1);	/* answering before */
		ck_assert_int_eq(agent_recv(fd, 10000, NULL), AGENT_GRACE_DONE);
		agent_wire_hdr(&m.h, AGENT_GRACE, sizeof(m));
		m.gen = 2;
		switch (how) {
		case SILENCE_GARBAGE:
			m.h.magic ^= 1;
			ck_assert_int_eq(send(fd, &m, sizeof(m), 0), (ssize_t)sizeof(m));
			break;
		case SILENCE_WELCOME: {
			struct agent_welcome w = good_welcome(a, 0);

			ck_assert_int_eq(send(fd, &w, sizeof(w), 0), (ssize_t)sizeof(w));
			break;
		}
		case SILENCE_GRACE_FD: {
			int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

			ck_assert_int_eq(send_fds(fd, &m, sizeof(m), &devnull, 1), 0);
			close(devnull);
			break;
		}
		case SILENCE_EOF:
			ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
			break;
		case SILENCE_SHORT:
			ck_assert_int_eq(send(fd, &m, sizeof(m) - 1, 0), (ssize_t)sizeof(m) - 1);
			break;
		}
		if (how != SILENCE_EOF) {
			/* A well-formed GRACE now gets no answer. */
			agent_send_grace(fd, 3);
			r = agent_recv(fd, 300, NULL);
			ck_assert_msg(r == -ETIMEDOUT, "case %d: the client answered (%d) after a bad message",
				      how, r);
		}
		/* The handle still works, and closes at once. */
		ck_assert_int_eq(dirty_guest_map(g, pgpa(1), PS, DIRTY_FROM_DEVICE), 0);
		ck_assert_int_eq(dirty_guest_unmap(g, pgpa(1), PS, DIRTY_FROM_DEVICE), 0);
		t0 = test_now_s();
		dirty_guest_close(g);
		ck_assert_msg(test_now_s() - t0 < 2, "close took %.1f s", test_now_s() - t0);
		r = agent_recv(fd, 5000, NULL);
		ck_assert_msg(r == AGENT_BYE, "case %d: the agent got %d (errno %d), not BYE", how, r, errno);
		agent_stop(a);
	}
}
END_TEST

/* ---- broken answers to HELLO ------------------------------------------------ */

enum mut {
	M_NONE,
	/* the message */
	M_REFUSED_OK, M_REFUSED_CTRL, M_REFUSED_POSITIVE, M_REFUSED_HUGE_ERR, M_REFUSED_NO_NUL,
	M_REFUSED_WITH_FDS, M_GRACE, M_BYE, M_STATUS_TEXT, M_SHORT, M_LONG, M_BAD_MAGIC,
	M_BAD_VERSION, M_HDR_RESERVED, M_HDR_LEN, M_EOF, M_WELCOME_ZERO_PAGES,
	/* the fds */
	M_FDS_0, M_FDS_1, M_FDS_3, M_FDS_SWAPPED, M_FDS_SAME, M_TABLE_PIPE, M_REGION_SOCKET,
	/* WELCOME against the region */
	M_W_NPAGES, M_W_GPA, M_W_SHIFT, M_W_REGION_BIG, M_W_REGION_SMALL, M_W_TABLE_SMALL,
	M_W_TABLE_BIG, M_W_SLOT_60, M_W_SLOT_1023,
	/* the region's header */
	M_R_MAGIC, M_R_MAJOR, M_R_LAYOUT, M_R_NPAGES,
	/* the table */
	M_T_MAGIC, M_T_VERSION, M_T_HSIZE, M_T_NPAGES, M_T_GPA, M_T_SHIFT, M_T_NSLOTS_0,
	M_T_NSLOTS_61, M_T_NSLOTS_SMALL, M_T_SHORT_FILE,
	M_COUNT
};

struct bad_case {
	enum mut m;
	const char *name;
	int err;
	const char *msg;	/* in dirty_guest_last_error(), or NULL */
};

static const struct bad_case bad_cases[] = {
	{ M_REFUSED_OK, "REFUSED", -EBUSY, "refused this client: 60 clients already" },
	{ M_REFUSED_CTRL, "REFUSED, control characters", -EPERM, "bad?text" },
	{ M_REFUSED_POSITIVE, "REFUSED, err > 0", -EPROTO, "malformed" },
	{ M_REFUSED_HUGE_ERR, "REFUSED, err not an errno", -EPROTO, "malformed" },
	{ M_REFUSED_NO_NUL, "REFUSED, text without NUL", -EPROTO, "malformed" },
	{ M_REFUSED_WITH_FDS, "REFUSED with fds", -EPROTO, "REFUSED with none" },
	{ M_GRACE, "GRACE instead of WELCOME", -EPROTO, "want WELCOME" },
	{ M_BYE, "BYE instead of WELCOME", -EPROTO, "want WELCOME" },
	{ M_STATUS_TEXT, "STATUS_TEXT instead of WELCOME", -EPROTO, "want WELCOME" },
	{ M_SHORT, "WELCOME one byte short", -EPROTO, "malformed" },
	{ M_LONG, "600-byte message", -EPROTO, "longer than" },
	{ M_BAD_MAGIC, "bad magic", -EPROTO, "magic" },
	{ M_BAD_VERSION, "wire version 2", -EPROTO, "version" },
	{ M_HDR_RESERVED, "header reserved set", -EPROTO, "reserved" },
	{ M_HDR_LEN, "header length lies", -EPROTO, "malformed" },
	{ M_EOF, "hang up", -ECONNRESET, "hung up" },
	{ M_WELCOME_ZERO_PAGES, "WELCOME with 0 pages", -EPROTO, "impossible geometry" },
	{ M_FDS_0, "WELCOME without fds", -EPROTO, "0 fds" },
	{ M_FDS_1, "WELCOME with 1 fd", -EPROTO, "1 fds" },
	{ M_FDS_3, "WELCOME with 3 fds", -EPROTO, "3 fds" },
	{ M_FDS_SWAPPED, "table and region swapped", -EPROTO, "the file has" },
	{ M_FDS_SAME, "the region twice", -EPROTO, "pin table is not one" },
	{ M_TABLE_PIPE, "a pipe as the table", -EPROTO, "not a file" },
	{ M_REGION_SOCKET, "a socket as the region", -EPROTO, "not a file or a device" },
	{ M_W_NPAGES, "WELCOME npages + 1", -EPROTO, "WELCOME describes" },
	{ M_W_GPA, "WELCOME gpa_base + 4 KiB", -EPROTO, "WELCOME describes" },
	{ M_W_SHIFT, "WELCOME page_shift 13", -EPROTO, "WELCOME describes" },
	{ M_W_REGION_BIG, "region_bytes past the file", -EPROTO, "the file has" },
	{ M_W_REGION_SMALL, "region_bytes below the region", -EPROTO, "region it passed is refused" },
	{ M_W_TABLE_SMALL, "table_bytes below the table", -EPROTO, "needs" },
	{ M_W_TABLE_BIG, "table_bytes past the file", -EPROTO, "needs" },
	{ M_W_SLOT_60, "slot 60 of 60", -EPROTO, "slot 60" },
	{ M_W_SLOT_1023, "slot 1023", -EPROTO, "slot 1023" },
	{ M_R_MAGIC, "region magic", -EPROTO, "not a libdirty region" },
	{ M_R_MAJOR, "region major 2", -EPROTO, "protocol v2" },
	{ M_R_LAYOUT, "region dirty_off", -EPROTO, "not where protocol v1 puts them" },
	{ M_R_NPAGES, "region npages 0", -EPROTO, "impossible range" },
	{ M_T_MAGIC, "table magic", -EPROTO, "pin table is not one" },
	{ M_T_VERSION, "table version 2", -EPROTO, "pin table version 2" },
	{ M_T_HSIZE, "table header_size 8192", -EPROTO, "8192-byte header" },
	{ M_T_NPAGES, "table npages - 1", -EPROTO, "for another region" },
	{ M_T_GPA, "table gpa_base", -EPROTO, "for another region" },
	{ M_T_SHIFT, "table page_shift 21", -EPROTO, "for another region" },
	{ M_T_NSLOTS_0, "table nslots 0", -EPROTO, "of the pin table's 0" },
	{ M_T_NSLOTS_61, "table nslots 61", -EPROTO, "of the pin table's 61" },
	{ M_T_NSLOTS_SMALL, "slot 5 of nslots 5", -EPROTO, "slot 5 is not one" },
	{ M_T_SHORT_FILE, "table file 4 bytes short", -EPROTO, "needs" },
};

/* A copy of the table's header page, mutated, in a file of size bytes. */
static int bad_table(struct agent *a, enum mut m, uint64_t size)
{
	struct pintable_header h;

	memcpy(&h, a->tbl, sizeof(h));
	switch (m) {
	case M_T_MAGIC: h.magic ^= 1; break;
	case M_T_VERSION: h.version = 2; break;
	case M_T_HSIZE: h.header_size = 8192; break;
	case M_T_NPAGES: h.npages = NPAGES - 1; break;
	case M_T_GPA: h.gpa_base = 0; break;
	case M_T_SHIFT: h.page_shift = 21; break;
	case M_T_NSLOTS_0: h.nslots = 0; break;
	case M_T_NSLOTS_61: h.nslots = 61; break;
	case M_T_NSLOTS_SMALL: h.nslots = 5; break;
	default: break;
	}
	return memfd_copy("test-bad-table", &h, sizeof(h), size);
}

static int bad_region(struct agent *a, enum mut m)
{
	struct dirty_proto_header h;

	memcpy(&h, a->region, sizeof(h));
	switch (m) {
	case M_R_MAGIC: h.magic = 0; break;
	case M_R_MAJOR: h.major = 2; break;
	case M_R_LAYOUT: h.dirty_off += 4096; break;
	case M_R_NPAGES: h.npages = 0; break;
	default: break;
	}
	return memfd_copy("test-bad-region", &h, sizeof(h), a->region_bytes);
}

static bool reply_bad(struct agent *a, int fd, const void *arg)
{
	const struct bad_case *c = arg;
	union {
		struct agent_welcome w;
		struct agent_refused r;
		struct agent_gen gen;
		char raw[600];
	} u;
	size_t len = sizeof(u.w);
	int fds[3] = { a->region_fd, a->table_fd, a->region_fd }, nfds = 2;
	int made[2] = { -1, -1 }, sp[2] = { -1, -1 };
	uint64_t tb = pintable_bytes(NPAGES);

	memset(&u, 0, sizeof(u));
	u.w = good_welcome(a, 0);
	switch (c->m) {
	case M_REFUSED_OK: case M_REFUSED_CTRL: case M_REFUSED_POSITIVE: case M_REFUSED_HUGE_ERR:
	case M_REFUSED_NO_NUL: case M_REFUSED_WITH_FDS:
		memset(&u.r, 0, sizeof(u.r));
		len = sizeof(u.r);
		agent_wire_hdr(&u.r.h, AGENT_REFUSED, len);
		u.r.err = c->m == M_REFUSED_POSITIVE ? EBUSY : c->m == M_REFUSED_HUGE_ERR ? -5000 :
			  c->m == M_REFUSED_CTRL ? -EPERM : -EBUSY;
		snprintf(u.r.text, sizeof(u.r.text), c->m == M_REFUSED_CTRL ? "bad\ntext" :
			 "60 clients already: try again later");
		if (c->m == M_REFUSED_NO_NUL)
			memset(u.r.text, 'x', sizeof(u.r.text));
		nfds = c->m == M_REFUSED_WITH_FDS ? 1 : 0;
		break;
	case M_GRACE: case M_BYE:
		len = c->m == M_GRACE ? sizeof(struct agent_gen) : sizeof(struct agent_bye);
		agent_wire_hdr(&u.gen.h, c->m == M_GRACE ? AGENT_GRACE : AGENT_BYE, len);
		break;
	case M_STATUS_TEXT:
		len = sizeof(struct agent_hdr) + 3;
		agent_wire_hdr(&u.w.h, AGENT_STATUS_TEXT, len);
		memcpy(u.raw + sizeof(struct agent_hdr), "ok", 3);
		break;
	case M_SHORT:
		len = sizeof(u.w) - 1;
		u.w.h.len = (uint32_t)len;
		break;
	case M_LONG:
		len = sizeof(u.raw);
		u.w.h.len = (uint32_t)len;
		break;
	case M_BAD_MAGIC: u.w.h.magic = 0x12345678; break;
	case M_BAD_VERSION: u.w.h.version = 2; break;
	case M_HDR_RESERVED: u.w.h.reserved = 1; break;
	case M_HDR_LEN: u.w.h.len = (uint32_t)len + 8; break;
	case M_EOF: return false;
	case M_WELCOME_ZERO_PAGES: u.w.npages = 0; break;
	case M_FDS_0: nfds = 0; break;
	case M_FDS_1: nfds = 1; break;
	case M_FDS_3: nfds = 3; break;
	case M_FDS_SWAPPED: fds[0] = a->table_fd; fds[1] = a->region_fd; break;
	case M_FDS_SAME: fds[1] = a->region_fd; break;
	case M_TABLE_PIPE:
		ck_assert_int_eq(pipe2(sp, O_CLOEXEC), 0);
		fds[1] = sp[0];
		break;
	case M_REGION_SOCKET:
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
		fds[0] = sp[0];
		break;
	case M_W_NPAGES: u.w.npages++; break;
	case M_W_GPA: u.w.gpa_base += PS; break;
	case M_W_SHIFT: u.w.page_shift = 13; break;
	case M_W_REGION_BIG: u.w.region_bytes += PS; break;
	case M_W_REGION_SMALL: u.w.region_bytes = a->lay.region_size - PS; break;
	case M_W_TABLE_SMALL: u.w.table_bytes = tb - 4; break;
	case M_W_TABLE_BIG: u.w.table_bytes = tb + PS; break;
	case M_W_SLOT_60: u.w.slot = 60; break;
	case M_W_SLOT_1023: u.w.slot = 1023; break;
	case M_R_MAGIC: case M_R_MAJOR: case M_R_LAYOUT: case M_R_NPAGES:
		fds[0] = made[0] = bad_region(a, c->m);
		break;
	case M_T_NSLOTS_SMALL:
		u.w.slot = 5;
		/* fall through */
	case M_T_MAGIC: case M_T_VERSION: case M_T_HSIZE: case M_T_NPAGES: case M_T_GPA:
	case M_T_SHIFT: case M_T_NSLOTS_0: case M_T_NSLOTS_61:
		fds[1] = made[1] = bad_table(a, c->m, tb);
		break;
	case M_T_SHORT_FILE:
		fds[1] = made[1] = bad_table(a, c->m, tb - 4);
		u.w.table_bytes = tb - 4;
		break;
	default:
		break;
	}
	send_fds(fd, u.raw, len, fds, nfds);
	for (int i = 0; i < 2; i++) {
		if (made[i] >= 0)
			close(made[i]);
		if (sp[i] >= 0)
			close(sp[i]);
	}
	return false;	/* then hang up */
}

START_TEST(bad_answers_refused_without_leaks)
{
	struct agent *a = agent_start();
	unsigned int served = 0;
	size_t n = sizeof(bad_cases) / sizeof(bad_cases[0]);

	ck_assert_uint_eq(n, M_COUNT - 1);	/* every mutation has its case */
	for (size_t i = 0; i < n; i++) {
		const struct bad_case *c = &bad_cases[i];
		struct dirty_guest *g = (struct dirty_guest *)0x1;
		int fds0, maps0, err;

		agent_wait_served(a, served);
		fds0 = count_fds();
		maps0 = count_memfd_maps();
		agent_set_reply(a, reply_bad, c);
		err = dirty_guest_connect(a->path, &g);
		agent_wait_served(a, ++served);
		printf("  %-32s -> %d: %s\n", c->name, err, dirty_guest_last_error());
		ck_assert_msg(err == c->err, "%s: dirty_guest_connect returned %d, want %d (%s)",
			      c->name, err, c->err, dirty_guest_last_error());
		ck_assert_msg(g == (struct dirty_guest *)0x1, "%s: *out written on failure", c->name);
		if (c->msg)
			ck_assert_msg(strstr(dirty_guest_last_error(), c->msg),
				      "%s: message \"%s\" lacks \"%s\"", c->name,
				      dirty_guest_last_error(), c->msg);
		ck_assert_msg(count_fds() == fds0, "%s: %d fds before, %d after", c->name, fds0,
			      count_fds());
		ck_assert_msg(count_memfd_maps() == maps0, "%s: %d memfd mappings before, %d after",
			      c->name, maps0, count_memfd_maps());
	}
	ck_assert_uint_eq(agent_bad_hellos(a), 0);
	/* And the agent still admits a good client afterwards. */
	{
		struct dirty_guest *g;

		agent_set_reply(a, reply_welcome, NULL);
		ck_assert_int_eq(dirty_guest_connect(a->path, &g), 0);
		dirty_guest_close(g);
	}
	assert_guest_words_untouched(a);
	agent_stop(a);
}
END_TEST

static bool reply_never(struct agent *a, int fd, const void *arg)
{
	(void)arg;
	pthread_mutex_lock(&a->lock);
	a->open_extra[a->nextra++] = fd;
	pthread_mutex_unlock(&a->lock);
	return true;
}

START_TEST(connect_errors)
{
	struct agent *a = agent_start();
	struct dirty_guest *g = NULL;
	char path[200], lng[200];
	struct stat st;
	double t0;
	int fd, fds0 = count_fds();

	if (stat(DIRTY_AGENT_SOCKET, &st) < 0) {
		ck_assert_int_eq(dirty_guest_connect(NULL, &g), -ENOENT);
		ck_assert_msg(strstr(dirty_guest_last_error(), DIRTY_AGENT_SOCKET) &&
			      strstr(dirty_guest_last_error(), "is the daemon running"),
			      "message: %s", dirty_guest_last_error());
	} else {
		printf("  %s exists: the default path is not checked for -ENOENT\n", DIRTY_AGENT_SOCKET);
	}
	snprintf(path, sizeof(path), "%s/none.sock", a->dir);
	ck_assert_int_eq(dirty_guest_connect(path, &g), -ENOENT);
	snprintf(path, sizeof(path), "%s/file", a->dir);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	close(fd);
	ck_assert_int_eq(dirty_guest_connect(path, &g), -ECONNREFUSED);
	unlink(path);
	memset(lng, 'a', sizeof(lng) - 1);
	lng[sizeof(lng) - 1] = 0;
	ck_assert_int_eq(dirty_guest_connect(lng, &g), -ENAMETOOLONG);
	ck_assert_int_eq(dirty_guest_connect(a->path, NULL), -EINVAL);
	ck_assert_ptr_null(g);
	ck_assert_int_eq(count_fds(), fds0);

	/* An agent that takes HELLO and never answers. */
	agent_set_reply(a, reply_never, NULL);
	t0 = test_now_s();
	ck_assert_int_eq(dirty_guest_connect(a->path, &g), -ETIMEDOUT);
	ck_assert_double_ge(test_now_s() - t0, 9.5);
	ck_assert_msg(strstr(dirty_guest_last_error(), "did not answer HELLO"), "message: %s",
		      dirty_guest_last_error());
	ck_assert_int_eq(count_fds(), fds0 + 1);	/* the agent's end, kept open */
	agent_stop(a);
}
END_TEST

/* ---- concurrent clients ----------------------------------------------------- */

#define HOT 8

struct stress {
	const char *path;
	struct agent *a;	/* NULL in a forked client: pins through its own mapping */
	uint64_t *pin;		/* the region's pin bitmap, as this client sees it */
	uint64_t iters;
	_Atomic uint64_t seed, violations, maps;
	_Atomic int failed;
	_Atomic uint32_t slots_used;
};

/* Map a hot page, check the pin while holding it, unmap. */
static void stress_client(struct stress *s, uint64_t seed)
{
	struct dirty_guest *g;
	uint8_t *reg;
	uint64_t *pin;
	struct dirty_proto_layout l;

	if (dirty_guest_connect(s->path, &g)) {
		atomic_store(&s->failed, 1);
		return;
	}
	/* The client's own view of the pin bits: a mapping of the region it got. */
	dirty_proto_layout(NPAGES, &l);
	reg = s->pin ? NULL : mmap(NULL, l.region_size, PROT_READ, MAP_SHARED,
				   dirty_gp_fd(s->a->gp), 0);
	pin = s->pin ? s->pin : (uint64_t *)(reg + l.pin_off);
	for (uint64_t i = 0; i < s->iters; i++) {
		uint64_t p = test_rnd(&seed) % HOT, n = 1 + test_rnd(&seed) % 2;
		int dir = 1 + (int)(test_rnd(&seed) % 3);

		if (p + n > HOT)
			n = 1;
		if (dirty_guest_map(g, pgpa(p), n * PS, dir)) {
			atomic_store(&s->failed, 2);
			break;
		}
		for (int k = 0; k < 3; k++) {
			for (uint64_t q = p; q < p + n; q++)
				if (!bit(pin, q))
					atomic_fetch_add(&s->violations, 1);
			if (test_rnd(&seed) & 1)
				sched_yield();
		}
		if (dirty_guest_unmap(g, pgpa(p), n * PS, dir)) {
			atomic_store(&s->failed, 3);
			break;
		}
		atomic_fetch_add_explicit(&s->maps, 1, memory_order_relaxed);
	}
	if (reg)
		munmap(reg, l.region_size);
	dirty_guest_close(g);
}

static void *stress_thread(void *arg)
{
	struct stress *s = arg;

	stress_client(s, atomic_fetch_add(&s->seed, 0x9e3779b97f4a7c15ull));
	return NULL;
}

#ifndef __SANITIZE_THREAD__
static void stress_proc(void *arg)
{
	struct stress *s = arg;

	stress_client(s, atomic_load(&s->seed) + (uint64_t)getpid());
	_exit(atomic_load(&s->failed));
}
#endif

static void stress_check_end(struct agent *a, struct stress *s, int nclients)
{
	printf("  %lu maps by %d clients, %lu reads of a held page's pin bit clear\n",
	       (unsigned long)atomic_load(&s->maps), nclients,
	       (unsigned long)atomic_load(&s->violations));
	ck_assert_int_eq(atomic_load(&s->failed), 0);
	ck_assert_uint_eq(atomic_load(&s->maps), s->iters * (uint64_t)nclients);
	ck_assert_msg(atomic_load(&s->violations) == 0,
		      "%lu times a page's pin bit read clear while a client held it mapped",
		      (unsigned long)atomic_load(&s->violations));
	for (uint64_t p = 0; p < HOT; p++) {
		ck_assert_msg(count_word(a, p) == 0, "page %lu count %#x at the end", p, count_word(a, p));
		ck_assert(!bit(a->pin, p));
	}
	for (uint32_t k = 0; k < PINTABLE_SLOTS; k++)
		ck_assert_uint_eq(slot_refs(a, k), 0);
	ck_assert_uint_eq(__atomic_load_n(&a->hdr->guest.pin_conflicts, __ATOMIC_RELAXED), 0);
}

START_TEST(concurrent_clients_never_lose_a_held_pin_threads)
{
	struct agent *a = agent_start();
	struct stress s = { .path = a->path, .a = a, .pin = a->pin,
			    .iters = test_scaled(20000, 500), .seed = 42 };
	pthread_t t[4];

	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, stress_thread, &s), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	stress_check_end(a, &s, 4);
	agent_stop(a);
}
END_TEST

#ifndef __SANITIZE_THREAD__
START_TEST(concurrent_clients_never_lose_a_held_pin_procs)
{
	struct agent *a = agent_start();
	struct stress *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pids[3];

	ck_assert(s != MAP_FAILED);
	memset(s, 0, sizeof(*s));
	s->path = a->path;
	s->a = a;
	s->iters = test_scaled(20000, 500);
	atomic_store(&s->seed, 7);
	for (int i = 0; i < 3; i++)
		pids[i] = fork_wrapped(stress_proc, s);
	for (int i = 0; i < 3; i++)
		reap(pids[i], 0);
	stress_check_end(a, s, 3);
	munmap(s, sizeof(*s));
	agent_stop(a);
}
END_TEST
#endif

int main(void)
{
	Suite *s = suite_create("guest_connect");
	TCase *tc = tcase_create("client");

	signal(SIGPIPE, SIG_IGN);
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_add_test(tc, connect_attaches_and_leaves_guest_words_alone);
	tcase_add_test(tc, standalone_handles_lose_pin_control);
	tcase_add_test(tc, slot_refs_follow_each_call);
	tcase_add_test(tc, grace_done_waits_for_reader);
	tcase_add_test(tc, server_goes_silent_on_bad_agent);
	tcase_add_test(tc, bad_answers_refused_without_leaks);
	tcase_add_test(tc, connect_errors);
	tcase_add_test(tc, concurrent_clients_never_lose_a_held_pin_threads);
#ifndef __SANITIZE_THREAD__
	/* fork: not under TSAN */
	tcase_add_test(tc, shared_pin_survives_first_unmap_procs);
	tcase_add_test(tc, killed_client_keeps_its_pins);
	tcase_add_test(tc, concurrent_clients_never_lose_a_held_pin_procs);
	tcase_add_test(tc, child_close_of_inherited_handle_is_harmless);
#endif
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
