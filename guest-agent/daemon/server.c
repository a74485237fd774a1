/* SPDX-License-Identifier: MIT */
/*
 * server.c - the serving agent: one thread, one io_uring.
 *
 * In flight on the ring at any time: one ACCEPT on the listening socket;
 * one RECVMSG per connection; the heartbeat TIMEOUT; a READ of the
 * signalfd (SIGTERM, SIGINT, SIGHUP); one POLL per DMA client's pidfd
 * (its process's exit); and, while a BUSY scan runs, its TIMEOUT. Sends
 * (WELCOME with the fds, GRACE, REFUSED, STATUS_TEXT) are synchronous and
 * non-blocking: a client whose socket is full gets its GRACE again at the
 * next tick, and counts as not answering meanwhile.
 *
 * The handshake (DESIGN section 3, "across processes"): when host.track_gen
 * moves, every connected client gets GRACE{gen}; each answers GRACE_DONE
 * after an RCU grace period in its process; once every client that was
 * connected when the generation was seen has answered, or is gone, the
 * agent stores guest.ack_gen (release). A client admitted later needs no
 * grace period: its WELCOME was sent after the agent read the generation
 * (acquire), so everything it does reads the host's new flag. A client
 * that has not answered in --grace-timeout-ms is logged and named in
 * guest.waiting_pid, and the acknowledgement keeps waiting for it: never
 * early. A process that exited runs no operation and is not waited for.
 *
 * Slots (pintable.h): a DMA client holds one from HELLO until its process
 * is gone or it said BYE. A client that leaves without BYE while its
 * process lives (it hung up, or was dropped for a protocol error) keeps
 * the table mapped and may still be inside an operation: its slot stays,
 * as an ORPHAN, and every handshake waits for it until the process exits
 * (its pidfd says so; /proc where pidfds are missing). On exit, the
 * references it held (slot.refs) are reported as leaks - those pages stay
 * pinned for good - and the table is scanned for count words it left
 * BUSY, which are repaired as pinned. Nothing here ever clears a pin bit.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "state.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

enum { K_ACCEPT = 1, K_RECV, K_TICK, K_SIGNAL, K_PIDFD, K_SCAN, K_IGNORE };

#define UD(k, i, s) (((uint64_t)(k) << 56) | ((uint64_t)(uint16_t)(i) << 32) | (uint32_t)(s))
#define UD_KIND(u) ((int)((u) >> 56))
#define UD_IDX(u) ((int)(((u) >> 32) & 0xffff))
#define UD_SER(u) ((uint32_t)(u))

#define G(st, f) (&(st)->r->hdr->guest.f)
#define SLOT(st, s) (&(st)->t->hdr->slot[s])

static void dma_left(struct agent_state *st, struct client *c, const char *how);
static void slot_died(struct agent_state *st, int s, const char *how);

/* ---- the ring ---------------------------------------------------------- */

static struct io_uring_sqe *sqe_get(struct agent_state *st)
{
	struct io_uring_sqe *s = io_uring_get_sqe(&st->ring);

	if (!s) {
		io_uring_submit(&st->ring);
		s = io_uring_get_sqe(&st->ring);
	}
	if (!s) {
		/* The kernel took every entry we had: it cannot happen with 512. */
		log_err("io_uring submission queue full; stopping");
		abort();
	}
	return s;
}

static void post_accept(struct agent_state *st)
{
	struct io_uring_sqe *s = sqe_get(st);

	io_uring_prep_accept(s, st->lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(s, UD(K_ACCEPT, 0, 0));
}

static void post_recv(struct agent_state *st, struct client *c)
{
	struct io_uring_sqe *s = sqe_get(st);

	c->iov.iov_base = c->buf;
	c->iov.iov_len = sizeof(c->buf);
	memset(&c->mh, 0, sizeof(c->mh));
	c->mh.msg_iov = &c->iov;
	c->mh.msg_iovlen = 1;
	/*
	 * No control buffer: fds a client sends are closed by the kernel.
	 * MSG_TRUNC: the result is the message's real length, so a message
	 * longer than the buffer is seen as such.
	 */
	io_uring_prep_recvmsg(s, c->fd, &c->mh, MSG_TRUNC);
	io_uring_sqe_set_data64(s, UD(K_RECV, c - st->clients, c->serial));
	c->recv_inflight = true;
}

static void post_tick(struct agent_state *st)
{
	struct io_uring_sqe *s = sqe_get(st);

	st->tick_ts.tv_sec = st->o->heartbeat_ms / 1000;
	st->tick_ts.tv_nsec = (long long)(st->o->heartbeat_ms % 1000) * 1000000LL;
	io_uring_prep_timeout(s, &st->tick_ts, 0, 0);
	io_uring_sqe_set_data64(s, UD(K_TICK, 0, 0));
}

static void post_signal(struct agent_state *st)
{
	struct io_uring_sqe *s = sqe_get(st);

	io_uring_prep_read(s, st->sigfd, &st->siginfo, sizeof(st->siginfo), 0);
	io_uring_sqe_set_data64(s, UD(K_SIGNAL, 0, 0));
}

static void post_scan_timer(struct agent_state *st, unsigned int ms)
{
	struct io_uring_sqe *s;

	if (st->scan_timer_inflight)
		return;
	s = sqe_get(st);
	st->scan_ts.tv_sec = ms / 1000;
	st->scan_ts.tv_nsec = (long long)(ms % 1000) * 1000000LL;
	io_uring_prep_timeout(s, &st->scan_ts, 0, 0);
	io_uring_sqe_set_data64(s, UD(K_SCAN, 0, 0));
	st->scan_timer_inflight = true;
}

static void post_pidfd(struct agent_state *st, int slot)
{
	struct slotinfo *si = &st->slots[slot];
	struct io_uring_sqe *s;

	if (si->pidfd < 0 || si->poll_inflight)
		return;
	s = sqe_get(st);
	io_uring_prep_poll_add(s, si->pidfd, POLLIN);
	io_uring_sqe_set_data64(s, UD(K_PIDFD, slot, si->serial));
	si->poll_inflight = true;
}

static void cancel_pidfd(struct agent_state *st, int slot)
{
	struct slotinfo *si = &st->slots[slot];
	struct io_uring_sqe *s;

	if (!si->poll_inflight)
		return;
	s = sqe_get(st);
	io_uring_prep_poll_remove(s, UD(K_PIDFD, slot, si->serial));
	io_uring_sqe_set_data64(s, UD(K_IGNORE, 0, 0));
	si->poll_inflight = false;
}

/* ---- processes --------------------------------------------------------- */

/* /proc/<pid>/stat's state letter, or 0 when there is no such process. */
static char proc_state(pid_t pid)
{
	char path[64], buf[512], *rp;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	rp = strrchr(buf, ')');
	return rp && rp[1] == ' ' ? rp[2] : '?';
}

/* Has the slot's process exited? Its pidfd says, else /proc. */
static bool slot_exited(const struct slotinfo *si)
{
	if (si->pidfd >= 0) {
		struct pollfd p = { .fd = si->pidfd, .events = POLLIN };

		return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR));
	}
	switch (proc_state(si->pid)) {
	case 0:
	case 'Z':
	case 'X':
		return true;
	default:
		return false;
	}
}

static int open_pidfd(pid_t pid)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);

	if (fd < 0) {
		log_debug("pidfd_open(%d): %s; its exit is polled through /proc", (int)pid, strerror(errno));
		return -1;
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	return fd;
}

/* ---- region words ------------------------------------------------------ */

static void set_waiting_pid(struct agent_state *st, uint64_t pid)
{
	if (st->waiting_pid == pid)
		return;
	st->waiting_pid = pid;
	__atomic_store_n(G(st, waiting_pid), pid, __ATOMIC_RELEASE);
}

static void set_clients_word(struct agent_state *st)
{
	__atomic_store_n(G(st, clients), (uint64_t)st->ndma, __ATOMIC_RELEASE);
}

/* The agent's words, as it writes them at start and keeps them. */
static void claim_words(struct agent_state *st, bool check)
{
	struct dirty_proto_guest *g = &st->r->hdr->guest;

	if (check && __atomic_load_n(&g->state, __ATOMIC_RELAXED) == DIRTY_PROTO_GUEST_RUNNING &&
	    __atomic_load_n(&g->major, __ATOMIC_RELAXED) == DIRTY_PROTO_MAJOR &&
	    __atomic_load_n(&g->minor, __ATOMIC_RELAXED) == DIRTY_PROTO_MINOR)
		return;
	if (check && !st->words_warned) {
		log_warn("the region's guest state or version changed behind the agent (state %u, v%u.%u): "
			 "is a process using the region with dirty_guest_open_* instead of dirty_guest_connect? Restored",
			 __atomic_load_n(&g->state, __ATOMIC_RELAXED), __atomic_load_n(&g->major, __ATOMIC_RELAXED),
			 __atomic_load_n(&g->minor, __ATOMIC_RELAXED));
		st->words_warned = true;
	}
	__atomic_store_n(&g->major, DIRTY_PROTO_MAJOR, __ATOMIC_RELAXED);
	__atomic_store_n(&g->minor, DIRTY_PROTO_MINOR, __ATOMIC_RELAXED);
	/* Release: a host that reads RUNNING reads our version. */
	__atomic_store_n(&g->state, DIRTY_PROTO_GUEST_RUNNING, __ATOMIC_RELEASE);
}

/* ---- clients ----------------------------------------------------------- */

static struct client *client_alloc(struct agent_state *st)
{
	for (int i = 0; i < st->nclients_max; i++) {
		struct client *c = &st->clients[i];

		if (c->state == C_FREE) {
			uint32_t serial = c->serial + 1;

			memset(c, 0, sizeof(*c));
			c->serial = serial;
			c->fd = -1;
			c->slot = -1;
			return c;
		}
	}
	return NULL;
}

static void client_free(struct client *c)
{
	c->state = C_FREE;
	c->serial++;
}

/* Close the connection; the entry is reused once its receive completed. */
static void client_close(struct agent_state *st, struct client *c)
{
	if (c->state == C_FREE || c->state == C_CLOSING)
		return;
	if (c->state == C_DMA)
		st->ndma--;
	st->nconn--;
	c->waiting = false;
	/* Wakes the pending receive (with 0) so the entry comes back soon. */
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	if (c->recv_inflight)
		c->state = C_CLOSING;
	else
		client_free(c);
	set_clients_word(st);
}

static int send_msg(struct client *c, const void *m, size_t len)
{
	ssize_t n = send(c->fd, m, len, MSG_NOSIGNAL | MSG_DONTWAIT);

	return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

static void send_refused(struct client *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void send_refused(struct client *c, int err, const char *fmt, ...)
{
	struct agent_refused m;
	va_list ap;

	memset(&m, 0, sizeof(m));
	agent_wire_hdr(&m.h, AGENT_REFUSED, sizeof(m));
	m.err = err;
	va_start(ap, fmt);
	vsnprintf(m.text, sizeof(m.text), fmt, ap);
	va_end(ap);
	send_msg(c, &m, sizeof(m));	/* best effort: the connection ends anyway */
}

static const char *who(const struct client *c, char *buf, size_t len)
{
	if (c->slot >= 0)
		snprintf(buf, len, "client pid %d (uid %u, slot %d)", (int)c->pid, (unsigned int)c->uid, c->slot);
	else
		snprintf(buf, len, "client pid %d (uid %u)", (int)c->pid, (unsigned int)c->uid);
	return buf;
}

/* Root, the agent's own uid, --allow-uid, or a group of --allow-gid. */
static bool allowed(const struct agent_state *st, const struct client *c)
{
	const struct agent_opts *o = st->o;
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	if (c->uid == 0 || c->uid == geteuid())
		return true;
	for (int i = 0; i < o->nallow_uid; i++)
		if (o->allow_uid[i] == c->uid)
			return true;
	if (!o->nallow_gid)
		return false;
	for (int i = 0; i < o->nallow_gid; i++)
		if (o->allow_gid[i] == c->gid)
			return true;
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t k = 0; k < len / sizeof(gid_t); k++)
		for (int i = 0; i < o->nallow_gid; i++)
			if (o->allow_gid[i] == groups[k])
				return true;
	return false;
}

static void protocol_error(struct agent_state *st, struct client *c, const char *why)
{
	char w[96];

	st->protocol_errors++;
	log_warn("%s: protocol error: %s; dropped%s", who(c, w, sizeof(w)), why,
		 c->state == C_DMA ? " (its pins stay)" : "");
	if (c->state == C_DMA) {
		/* Its library stops answering on anything but GRACE: send nothing. */
		dma_left(st, c, "dropped for a protocol error");
		return;
	}
	send_refused(c, -EPROTO, "protocol error: %s", why);
	client_close(st, c);
}

static void on_accept(struct agent_state *st, int res)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct client *c;

	if (res < 0) {
		if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
			/* Out of fds or memory: try again at the next tick, not in a loop. */
			log_warn("accept: %s; retrying at the next heartbeat", strerror(-res));
			st->accept_paused = true;
			return;
		}
		if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
			log_warn("accept: %s; retrying at the next heartbeat", strerror(-res));
			st->accept_paused = true;
			return;
		}
		post_accept(st);
		return;
	}
	post_accept(st);
	c = st->nconn < (int)st->o->max_conns ? client_alloc(st) : NULL;
	if (!c) {
		struct client tmp = { .fd = res };

		st->refused++;
		send_refused(&tmp, -EMFILE, "too many connections (%u): try again later", st->o->max_conns);
		/* At most one line a second: a flood must not flood the log. */
		if (agent_now_ms() - st->refuse_logged_ms > 1000) {
			log_warn("connection refused: %u connections already open (%llu refused so far)",
				 st->o->max_conns, (unsigned long long)st->refused);
			st->refuse_logged_ms = agent_now_ms();
		}
		close(res);
		return;
	}
	c->fd = res;
	c->state = C_NEW;
	c->since_ms = agent_now_ms();
	st->nconn++;
	st->connects++;
	if (getsockopt(res, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->gid = cred.gid;
	} else {
		c->uid = (uid_t)-1;
		c->gid = (gid_t)-1;
	}
	post_recv(st, c);
}

/* A slot for pid: its own orphaned one back, else a free one; -1 if none. */
static int slot_for(struct agent_state *st, pid_t pid, bool *reused)
{
	*reused = false;
	for (int s = 0; s < NSLOTS; s++)
		if (st->slots[s].kind == S_ORPHAN && st->slots[s].pid == pid) {
			*reused = true;
			return s;
		}
	for (int s = 0; s < NSLOTS; s++)
		if (st->slots[s].kind == S_FREE)
			return s;
	return -1;
}

static void slot_free(struct agent_state *st, int s)
{
	struct slotinfo *si = &st->slots[s];
	struct pintable_slot *ps = SLOT(st, s);

	atomic_store_explicit(&ps->refs, 0, memory_order_relaxed);
	atomic_store_explicit(&ps->pid, 0, memory_order_release);
	cancel_pidfd(st, s);
	if (si->pidfd >= 0)
		close(si->pidfd);
	if (si->kind == S_ORPHAN)
		st->norphans--;
	si->pidfd = -1;
	si->kind = S_FREE;
	si->client = -1;
	si->waiting = false;
	si->pid = 0;
	si->serial++;
}

static int send_welcome(struct agent_state *st, struct client *c)
{
	struct agent_welcome w;
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	int fds[2] = { st->r->fd, st->t->fd };
	struct iovec iov = { .iov_base = &w, .iov_len = sizeof(w) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.b, .msg_controllen = sizeof(ctl.b),
	};
	struct cmsghdr *cm;
	ssize_t n;

	memset(&w, 0, sizeof(w));
	memset(&ctl, 0, sizeof(ctl));
	agent_wire_hdr(&w.h, AGENT_WELCOME, sizeof(w));
	w.slot = (uint32_t)c->slot;
	w.page_shift = st->r->page_shift;
	w.gpa_base = st->r->gpa_base;
	w.npages = st->r->npages;
	w.region_bytes = st->r->map_size;
	w.table_bytes = st->t->bytes;
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	return n == (ssize_t)sizeof(w) ? 0 : n < 0 ? -errno : -EIO;
}

static void send_grace(struct agent_state *st, struct client *c)
{
	struct agent_gen m;
	int err;

	memset(&m, 0, sizeof(m));
	agent_wire_hdr(&m.h, AGENT_GRACE, sizeof(m));
	m.gen = st->pending_gen;
	err = send_msg(c, &m, sizeof(m));
	if (err == -EAGAIN || err == -EWOULDBLOCK) {
		c->grace_unsent = true;	/* its socket is full: again at the next tick */
		return;
	}
	if (err) {
		dma_left(st, c, "hung up");
		return;
	}
	c->grace_unsent = false;
	c->sent_gen[c->nsent++ % GRACE_HIST] = m.gen;
	c->answers_due++;
}

static void admit(struct agent_state *st, struct client *c)
{
	char w[96];
	bool reused;
	int s = slot_for(st, c->pid, &reused), err;
	struct slotinfo *si;

	if (c->pid <= 0) {
		st->refused++;
		send_refused(c, -ESRCH, "the agent cannot tell which process this is (no peer pid): "
			     "connect from the guest's own pid namespace");
		client_close(st, c);
		return;
	}
	if (s < 0) {
		st->refused++;
		log_warn("%s refused: all %u client slots are in use", who(c, w, sizeof(w)), PINTABLE_SLOTS);
		send_refused(c, -EBUSY, "all %u client slots of the pin table are in use "
			     "(see dirty-agent status); try again when a client has exited", PINTABLE_SLOTS);
		client_close(st, c);
		return;
	}
	si = &st->slots[s];
	c->slot = s;
	if (reused) {
		st->norphans--;
		log_info("%s reconnected: it gets its slot back with its %llu reference(s)",
			 who(c, w, sizeof(w)),
			 (unsigned long long)atomic_load_explicit(&SLOT(st, s)->refs, memory_order_relaxed));
	} else {
		struct pintable_slot *ps = SLOT(st, s);

		atomic_store_explicit(&ps->refs, 0, memory_order_relaxed);
		/* Release: the slot's refs are zero for whoever sees this pid. */
		atomic_store_explicit(&ps->pid, (uint32_t)c->pid, memory_order_release);
		si->pid = c->pid;
		si->uid = c->uid;
		si->pidfd = open_pidfd(c->pid);
		si->poll_inflight = false;
	}
	si->kind = S_CLIENT;
	si->client = (int)(c - st->clients);
	si->uid = c->uid;
	c->state = C_DMA;
	st->ndma++;
	err = send_welcome(st, c);
	if (err) {
		/* It never got the fds: it cannot have mapped anything. */
		log_warn("%s: cannot send WELCOME: %s; dropped", who(c, w, sizeof(w)), strerror(-err));
		c->slot = -1;
		if (!reused)
			slot_free(st, s);
		else {
			si->kind = S_ORPHAN;
			si->client = -1;
			st->norphans++;
		}
		client_close(st, c);
		return;
	}
	post_pidfd(st, s);
	set_clients_word(st);
	log_info("%s connected: slot %d, %d client(s)", who(c, w, sizeof(w)), s, st->ndma);
	/*
	 * A process that was waited on as an orphan still owes the pending
	 * generation (it may be inside an operation that read tracking off).
	 */
	if (reused && si->waiting && st->pending) {
		si->waiting = false;
		c->waiting = true;
		c->grace_sent_ms = agent_now_ms();
		send_grace(st, c);
	}
}

static void leak(struct agent_state *st, int s, uint64_t refs, const char *how)
{
	struct slotinfo *si = &st->slots[s];
	struct leak *l = &st->leaks[st->nleaks % MAX_LEAKS];

	__atomic_fetch_add(G(st, pin_leaks), refs, __ATOMIC_RELAXED);
	l->pid = si->pid;
	l->uid = si->uid;
	l->slot = s;
	l->refs = refs;
	l->at_ms = agent_now_ms();
	snprintf(l->how, sizeof(l->how), "%s", how);
	st->nleaks++;
	st->leaked_refs += refs;
	if (si->uid == (uid_t)-1)
		log_warn("client pid %d (slot %d) %s holding %llu page reference(s); those pages stay pinned",
			 (int)si->pid, s, how, (unsigned long long)refs);
	else
		log_warn("client pid %d (uid %u, slot %d) %s holding %llu page reference(s); those pages stay pinned",
			 (int)si->pid, (unsigned int)si->uid, s, how, (unsigned long long)refs);
}

static void scan_schedule(struct agent_state *st)
{
	st->scan_active = true;
	st->scan_round = 0;
	st->scan_postponed_logged = false;
	post_scan_timer(st, SCAN_PERIOD_MS);
}

/* The slot's process is gone: report what it left, free the slot, scan. */
static void slot_died(struct agent_state *st, int s, const char *how)
{
	struct slotinfo *si = &st->slots[s];
	uint64_t refs;

	/* Its connection, if still open (dma_left closed it already). */
	if (si->kind == S_CLIENT && si->client >= 0) {
		struct client *c = &st->clients[si->client];

		c->slot = -1;
		client_close(st, c);
	}
	refs = atomic_load_explicit(&SLOT(st, s)->refs, memory_order_relaxed);
	if (refs)
		leak(st, s, refs, how);
	else
		log_info("client pid %d (slot %d) %s holding no page reference", (int)si->pid, s, how);
	slot_free(st, s);
	/* It may have died between claiming a count word and publishing it. */
	scan_schedule(st);
}

/*
 * A DMA client's connection ended (EOF, a receive error, a protocol
 * error). Its process decides what happens to its slot.
 */
static void dma_left(struct agent_state *st, struct client *c, const char *how)
{
	int s = c->slot;
	bool was_waiting = c->waiting;
	struct slotinfo *si;
	uint64_t refs;
	char w[96];

	who(c, w, sizeof(w));
	c->slot = -1;
	client_close(st, c);
	if (s < 0)
		return;
	si = &st->slots[s];
	si->client = -1;
	if (slot_exited(si)) {
		slot_died(st, s, "exited");
		return;
	}
	refs = atomic_load_explicit(&SLOT(st, s)->refs, memory_order_relaxed);
	if (c->bye) {
		if (refs)
			leak(st, s, refs, "closed its handle");
		else
			log_info("%s closed (BYE)", w);
		slot_free(st, s);
		return;
	}
	/* Alive, no BYE: it may still use the table. Keep the slot, wait for it. */
	si->kind = S_ORPHAN;
	st->norphans++;
	si->since_ms = agent_now_ms();
	si->waiting = st->pending && was_waiting;
	si->late_logged = false;
	snprintf(si->why, sizeof(si->why), "%s", how);
	log_warn("%s %s without BYE while its process lives: its slot and %llu reference(s) are kept, "
		 "and every handshake waits for it until it exits", w, how, (unsigned long long)refs);
	post_pidfd(st, s);
}

/* ---- the handshake ----------------------------------------------------- */

static void begin_handshake(struct agent_state *st, uint64_t gen)
{
	int n = 0, no = 0;

	st->pending = true;
	st->pending_gen = gen;
	st->pending_since_ms = agent_now_ms();
	for (int s = 0; s < NSLOTS; s++)
		if (st->slots[s].kind == S_ORPHAN) {
			st->slots[s].waiting = true;
			st->slots[s].late_logged = false;
			no++;
		}
	for (int i = 0; i < st->nclients_max; i++) {
		struct client *c = &st->clients[i];

		if (c->state != C_DMA)
			continue;
		c->waiting = true;
		c->late_logged = false;
		c->grace_sent_ms = st->pending_since_ms;
		n++;
		send_grace(st, c);
	}
	log_debug("host raised tracking generation %llu (tracking %s): GRACE to %d client(s), %d orphaned slot(s) to wait for",
		  (unsigned long long)gen,
		  __atomic_load_n(&st->r->hdr->host.flags, __ATOMIC_ACQUIRE) & DIRTY_PROTO_HOST_TRACKING ? "on" : "off",
		  n, no);
}

static void ack(struct agent_state *st)
{
	double took = agent_now_ms() - st->pending_since_ms;

	/* Release: the host that reads the ack reads everything before it. */
	__atomic_store_n(G(st, ack_gen), st->pending_gen, __ATOMIC_RELEASE);
	st->acked = st->pending_gen;
	st->pending = false;
	st->acks++;
	st->last_ack_ms = took;
	set_waiting_pid(st, 0);
	if (took > st->o->grace_timeout_ms)
		log_info("acknowledged tracking generation %llu after %.0f ms", (unsigned long long)st->acked, took);
	else
		log_debug("acknowledged tracking generation %llu after %.1f ms (%d client(s))",
			  (unsigned long long)st->acked, took, st->ndma);
}

static void on_grace_done(struct agent_state *st, struct client *c, uint64_t gen)
{
	char why[160], w[96];
	bool sent = false;

	for (unsigned int i = 0; i < GRACE_HIST && i < c->nsent; i++)
		sent |= c->sent_gen[i] == gen;
	if (c->answers_due <= 0 || !sent) {
		snprintf(why, sizeof(why), "GRACE_DONE %llu answers no GRACE the agent sent it",
			 (unsigned long long)gen);
		protocol_error(st, c, why);
		return;
	}
	c->answers_due--;
	c->done_gen = gen;
	c->answered = true;
	if (!st->pending || gen != st->pending_gen || !c->waiting)
		return;	/* an older generation's answer */
	c->waiting = false;
	if (c->late_logged)
		log_info("%s answered generation %llu after %.0f ms", who(c, w, sizeof(w)),
			 (unsigned long long)gen, agent_now_ms() - c->grace_sent_ms);
	/* A grace period covers the whole process: its orphaned slot too. */
	for (int s = 0; s < NSLOTS; s++)
		if (st->slots[s].kind == S_ORPHAN && st->slots[s].pid == c->pid)
			st->slots[s].waiting = false;
}

/* Who holds the acknowledgement back past the timeout (the oldest wait). */
static void check_handshake(struct agent_state *st)
{
	double now = agent_now_ms(), oldest = 0;
	uint64_t late_pid = 0;
	int waiting = 0;
	char w[96];

	if (!st->pending)
		return;
	for (int i = 0; i < st->nclients_max; i++) {
		struct client *c = &st->clients[i];

		if (c->state != C_DMA || !c->waiting)
			continue;
		if (c->grace_unsent)
			send_grace(st, c);
		if (c->state != C_DMA)
			continue;	/* it hung up */
		waiting++;
		if (now - c->grace_sent_ms < st->o->grace_timeout_ms)
			continue;
		if (!c->late_logged) {
			log_warn("%s has not answered GRACE for tracking generation %llu in %.0f ms: "
				 "the acknowledgement waits for it (the host will report the guest unhealthy, naming pid %d)",
				 who(c, w, sizeof(w)), (unsigned long long)st->pending_gen,
				 now - c->grace_sent_ms, (int)c->pid);
			c->late_logged = true;
		}
		if (!late_pid || c->grace_sent_ms < oldest) {
			late_pid = (uint64_t)c->pid;
			oldest = c->grace_sent_ms;
		}
	}
	for (int s = 0; s < NSLOTS; s++) {
		struct slotinfo *si = &st->slots[s];
		double since;

		if (si->kind != S_ORPHAN || !si->waiting)
			continue;
		waiting++;
		since = si->since_ms > st->pending_since_ms ? si->since_ms : st->pending_since_ms;
		if (now - since < st->o->grace_timeout_ms)
			continue;
		if (!si->late_logged) {
			log_warn("orphaned client pid %d (slot %d, %s) cannot be asked for a grace period for "
				 "generation %llu: the acknowledgement waits until it exits",
				 (int)si->pid, s, si->why, (unsigned long long)st->pending_gen);
			si->late_logged = true;
		}
		if (!late_pid || since < oldest) {
			late_pid = (uint64_t)si->pid;
			oldest = since;
		}
	}
	if (!waiting)
		ack(st);
	else
		set_waiting_pid(st, late_pid);
}

static void housekeeping(struct agent_state *st)
{
	uint64_t gen = __atomic_load_n(&st->r->hdr->host.track_gen, __ATOMIC_ACQUIRE);

	if (gen == st->acked) {
		st->pending = false;
		set_waiting_pid(st, 0);
	} else if (!st->pending || gen != st->pending_gen)
		begin_handshake(st, gen);
	check_handshake(st);
}

/* ---- messages ---------------------------------------------------------- */

static void on_status(struct agent_state *st, struct client *c, bool json)
{
	struct agent_hdr *h = (struct agent_hdr *)st->text_msg;
	struct sbuf b;
	int err;

	sb_init(&b, (char *)st->text_msg + sizeof(*h), AGENT_TEXT_MAX);
	status_render(st, json, &b);
	agent_wire_hdr(h, AGENT_STATUS_TEXT, sizeof(*h) + b.len + 1);
	err = send_msg(c, st->text_msg, sizeof(*h) + b.len + 1);
	if (err)
		log_debug("status reply to pid %d: %s", (int)c->pid, strerror(-err));
	st->status_queries++;
	client_close(st, c);
}

static void on_message(struct agent_state *st, struct client *c, size_t len)
{
	struct agent_msg m;
	char why[200], w[96];
	int type;

	c->msgs++;
	type = agent_wire_parse(c->buf, len, &m, why, sizeof(why));
	if (type < 0) {
		protocol_error(st, c, why);
		return;
	}
	switch (c->state) {
	case C_NEW:
		if (type != AGENT_HELLO) {
			snprintf(why, sizeof(why), "message type %d before HELLO", type);
			protocol_error(st, c, why);
			return;
		}
		if (!allowed(st, c)) {
			st->refused++;
			log_warn("%s refused: not root and not allowed by --allow-uid/--allow-gid", who(c, w, sizeof(w)));
			send_refused(c, -EACCES, "uid %u is not allowed to use dirty-agent: start it with "
				     "--allow-uid %u, or --allow-gid with one of this process's groups",
				     (unsigned int)c->uid, (unsigned int)c->uid);
			client_close(st, c);
			return;
		}
		if (m.u.hello.flags & AGENT_HELLO_STATUS) {
			c->state = C_STATUS;
			break;
		}
		admit(st, c);
		return;
	case C_STATUS:
		if (type != AGENT_STATUS) {
			snprintf(why, sizeof(why), "message type %d on a status connection (want STATUS)", type);
			protocol_error(st, c, why);
			return;
		}
		on_status(st, c, m.u.status.flags & AGENT_STATUS_JSON);
		return;
	case C_DMA:
		if (c->bye) {
			protocol_error(st, c, "a message after BYE");
			return;
		}
		if (type == AGENT_GRACE_DONE) {
			on_grace_done(st, c, m.u.gen.gen);
			return;
		}
		if (type == AGENT_BYE) {
			c->bye = true;
			return;
		}
		snprintf(why, sizeof(why), "message type %d from a DMA client (it may send GRACE_DONE or BYE)", type);
		protocol_error(st, c, why);
		return;
	default:
		return;
	}
}

static void on_recv(struct agent_state *st, int idx, uint32_t serial, int res)
{
	struct client *c;
	char why[128];

	if (idx >= st->nclients_max)
		return;
	c = &st->clients[idx];
	if (c->serial != serial)
		return;
	c->recv_inflight = false;
	if (c->state == C_CLOSING) {
		client_free(c);
		return;
	}
	if (c->state == C_FREE)
		return;
	if (res <= 0) {
		if (res < 0 && res != -ECONNRESET)
			log_debug("receive from pid %d: %s", (int)c->pid, strerror(-res));
		if (c->state == C_DMA)
			dma_left(st, c, "hung up");
		else
			client_close(st, c);
		return;
	}
	if ((size_t)res > sizeof(c->buf)) {
		snprintf(why, sizeof(why), "a message of %d bytes (no client message is longer than %zu)",
			 res, sizeof(struct agent_status));
		protocol_error(st, c, why);
		return;
	}
	on_message(st, c, (size_t)res);
	if (c->state == C_NEW || c->state == C_STATUS || c->state == C_DMA)
		if (!c->recv_inflight)
			post_recv(st, c);
}

/* ---- the BUSY scan ----------------------------------------------------- */

/* A live client stopped (SIGSTOP, a debugger) may hold a word BUSY. */
static pid_t stopped_client(const struct agent_state *st)
{
	for (int s = 0; s < NSLOTS; s++) {
		const struct slotinfo *si = &st->slots[s];
		char state;

		if (si->kind == S_FREE)
			continue;
		state = proc_state(si->pid);
		if (state == 'T' || state == 't')
			return si->pid;
	}
	return 0;
}

static void scan_step(struct agent_state *st)
{
	uint64_t k = 0;
	pid_t stopped;

	if (!st->scan_active)
		return;
	if (st->scan_round == 0) {
		st->scan_total = table_scan_busy(st->t, st->scan_idx, SCAN_MAX);
		st->scan_n = st->scan_total < SCAN_MAX ? st->scan_total : SCAN_MAX;
		for (uint64_t i = 0; i < st->scan_n; i++)
			st->scan_val[i] = atomic_load_explicit(&st->t->count[st->scan_idx[i]], memory_order_relaxed);
		if (!st->scan_n) {
			st->scan_active = false;
			log_debug("BUSY scan: no count word is BUSY");
			return;
		}
		log_debug("BUSY scan: %llu count word(s) BUSY; looking again in %d ms",
			  (unsigned long long)st->scan_total, SCAN_PERIOD_MS);
		st->scan_round = 1;
		post_scan_timer(st, SCAN_PERIOD_MS);
		return;
	}
	for (uint64_t i = 0; i < st->scan_n; i++) {
		uint32_t v = atomic_load_explicit(&st->t->count[st->scan_idx[i]], memory_order_relaxed);

		if (v == st->scan_val[i]) {
			st->scan_idx[k] = st->scan_idx[i];
			st->scan_val[k++] = v;
		}
	}
	st->scan_n = k;
	if (!k) {
		st->scan_active = false;
		log_debug("BUSY scan: the BUSY words moved on (live clients)");
		return;
	}
	if (++st->scan_round < SCAN_ROUNDS) {
		post_scan_timer(st, SCAN_PERIOD_MS);
		return;
	}
	stopped = stopped_client(st);
	if (stopped) {
		if (!st->scan_postponed_logged)
			log_warn("%llu count word(s) stuck BUSY, but client pid %d is stopped and may be the one "
				 "holding them: repair postponed until it runs or exits",
				 (unsigned long long)k, (int)stopped);
		st->scan_postponed_logged = true;
		st->scan_round = SCAN_ROUNDS - 1;
		post_scan_timer(st, 4 * SCAN_PERIOD_MS);
		return;
	}
	for (uint64_t i = 0; i < k; i++) {
		uint64_t p = st->scan_idx[i];

		if (!table_repair(st->t, st->r, p, st->scan_val[i]))
			continue;
		st->repairs++;
		log_warn("page %llu (gpa %#llx): its count word was left BUSY by a client that died mid-operation; "
			 "repaired as pinned (count 1, OWNED): it stays pinned", (unsigned long long)p,
			 (unsigned long long)(st->r->gpa_base + (p << st->r->page_shift)));
	}
	st->scan_active = false;
	if (st->scan_total > SCAN_MAX)
		scan_schedule(st);	/* the ones beyond this pass */
}

/* ---- ticks and signals ------------------------------------------------- */

static void on_tick(struct agent_state *st)
{
	double now = agent_now_ms();

	__atomic_fetch_add(G(st, heartbeat), 1, __ATOMIC_RELEASE);
	st->beats++;
	claim_words(st, true);
	for (int s = 0; s < NSLOTS; s++) {
		struct slotinfo *si = &st->slots[s];

		/* Without a pidfd, an orphan's exit is seen here. */
		if (si->kind == S_ORPHAN && si->pidfd < 0 && slot_exited(si))
			slot_died(st, s, "exited");
	}
	for (int i = 0; i < st->nclients_max; i++) {
		struct client *c = &st->clients[i];

		/* A connection that never says HELLO (or, for a status query, STATUS). */
		if ((c->state == C_NEW || c->state == C_STATUS) && now - c->since_ms > st->o->hello_timeout_ms) {
			log_debug("connection from pid %d sent no %s in %u ms; closed", (int)c->pid,
				  c->state == C_NEW ? "HELLO" : "STATUS", st->o->hello_timeout_ms);
			st->drops++;
			client_close(st, c);
		}
	}
	if (st->accept_paused) {
		st->accept_paused = false;
		post_accept(st);
	}
	post_tick(st);
}

static void log_status(const struct agent_state *st)
{
	static char mem[AGENT_TEXT_MAX];
	struct sbuf b;
	char *line, *save = NULL;

	sb_init(&b, mem, sizeof(mem));
	status_render(st, false, &b);
	for (line = strtok_r(mem, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		log_info("status: %s", line);
}

static void on_signal(struct agent_state *st, int res)
{
	if (res != (int)sizeof(st->siginfo)) {
		log_err("signalfd read: %s", res < 0 ? strerror(-res) : "short read");
		st->stop = true;
		return;
	}
	switch (st->siginfo.ssi_signo) {
	case SIGTERM:
	case SIGINT:
		st->stop = true;
		st->stop_sig = (int)st->siginfo.ssi_signo;
		return;
	case SIGHUP:
		log_status(st);
		break;
	default:
		break;
	}
	post_signal(st);
}

static void on_pidfd(struct agent_state *st, int s, uint32_t serial, int res)
{
	struct slotinfo *si;

	if (s >= NSLOTS)
		return;
	si = &st->slots[s];
	if (si->serial != serial)
		return;
	si->poll_inflight = false;
	if (res < 0) {
		if (res != -ECANCELED)
			log_debug("pidfd poll of pid %d: %s", (int)si->pid, strerror(-res));
		return;
	}
	if (si->kind != S_FREE)
		slot_died(st, s, "exited");
}

static void dispatch(struct agent_state *st, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);

	switch (UD_KIND(ud)) {
	case K_ACCEPT:
		on_accept(st, cqe->res);
		break;
	case K_RECV:
		on_recv(st, UD_IDX(ud), UD_SER(ud), cqe->res);
		break;
	case K_TICK:
		on_tick(st);
		break;
	case K_SIGNAL:
		on_signal(st, cqe->res);
		break;
	case K_PIDFD:
		on_pidfd(st, UD_IDX(ud), UD_SER(ud), cqe->res);
		break;
	case K_SCAN:
		st->scan_timer_inflight = false;
		scan_step(st);
		break;
	default:
		break;
	}
}

/* ---- the socket -------------------------------------------------------- */

/*
 * Is an agent behind this connected socket? A status query: 1 if anything
 * answers, 0 if the connection is reset or closed unanswered (a killed
 * agent's socket lingers while the kernel tears its io_uring down), -1 if
 * nothing happens within 5 s (an agent that is stopped: not ours to replace).
 */
static int probe_agent(int fd)
{
	struct agent_hello h;
	struct agent_status q;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char buf[64];

	memset(&h, 0, sizeof(h));
	agent_wire_hdr(&h.h, AGENT_HELLO, sizeof(h));
	h.flags = AGENT_HELLO_STATUS;
	memset(&q, 0, sizeof(q));
	agent_wire_hdr(&q.h, AGENT_STATUS, sizeof(q));
	if (send(fd, &h, sizeof(h), MSG_NOSIGNAL) != (ssize_t)sizeof(h) ||
	    send(fd, &q, sizeof(q), MSG_NOSIGNAL) != (ssize_t)sizeof(q))
		return 0;
	if (poll(&p, 1, 5000) != 1)
		return -1;
	return recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0 ? 1 : 0;
}

int agent_listen(const struct agent_opts *o, int *lfd, ino_t *ino)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[PATH_MAX];
	struct stat stb;
	mode_t old;
	int fd, err;

	if (strlen(o->socket) >= sizeof(sa.sun_path)) {
		log_err("--socket %s is longer than the %zu bytes a UNIX socket path may have", o->socket,
			sizeof(sa.sun_path) - 1);
		return AGENT_EXIT_USAGE;
	}
	memcpy(sa.sun_path, o->socket, strlen(o->socket) + 1);
	snprintf(dir, sizeof(dir), "%s", o->socket);
	if ((err = agent_mkdirs(dirname(dir)))) {
		log_err("cannot create the socket's directory for %s: %s", o->socket, strerror(-err));
		return AGENT_EXIT_FAIL;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_err("socket(AF_UNIX, SOCK_SEQPACKET): %s", strerror(errno));
		return AGENT_EXIT_FAIL;
	}
	if (lstat(o->socket, &stb) == 0) {
		if (!S_ISSOCK(stb.st_mode)) {
			log_err("%s exists and is not a socket: remove it or choose another --socket", o->socket);
			close(fd);
			return AGENT_EXIT_FAIL;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			int alive = probe_agent(fd);

			close(fd);
			if (alive) {
				log_err("another dirty-agent is serving %s (%s): stop it first "
					"(systemctl stop dirty-agent), or use another --socket", o->socket,
					alive > 0 ? "it answered" : "it accepts connections but does not answer: stopped?");
				return AGENT_EXIT_RUNNING;
			}
			/* A socket whose owner is gone (a killed agent's ring still closing). */
		} else if (errno != ECONNREFUSED) {
			log_err("%s exists and cannot be probed (%s): remove it if no agent runs", o->socket,
				strerror(errno));
			close(fd);
			return AGENT_EXIT_FAIL;
		}
		/* A socket nobody listens on: a previous agent's. */
		log_debug("removing the stale socket %s", o->socket);
		unlink(o->socket);
		close(fd);
		fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			log_err("socket(AF_UNIX, SOCK_SEQPACKET): %s", strerror(errno));
			return AGENT_EXIT_FAIL;
		}
	}
	old = umask(0177);	/* born 0600, then opened up to --socket-mode */
	err = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? errno : 0;
	umask(old);
	if (err) {
		log_err("cannot bind %s: %s%s", o->socket, strerror(err),
			err == EADDRINUSE ? " (another dirty-agent started at the same time?)" : "");
		close(fd);
		return err == EADDRINUSE ? AGENT_EXIT_RUNNING : AGENT_EXIT_FAIL;
	}
	if (o->nallow_gid && chown(o->socket, (uid_t)-1, o->allow_gid[0]) < 0)
		log_warn("cannot give %s to group %u: %s", o->socket, (unsigned int)o->allow_gid[0], strerror(errno));
	/* listen() comes in agent_serve, once everything is ready for clients. */
	if (chmod(o->socket, o->socket_mode) < 0 || stat(o->socket, &stb) < 0) {
		log_err("cannot set up %s: %s", o->socket, strerror(errno));
		close(fd);
		unlink(o->socket);
		return AGENT_EXIT_FAIL;
	}
	*lfd = fd;
	*ino = stb.st_ino;
	return AGENT_EXIT_OK;
}

/* ---- adoption: the slots a previous agent left ------------------------- */

static void adopt_slots(struct agent_state *st)
{
	for (int s = 0; s < NSLOTS; s++) {
		struct slotinfo *si = &st->slots[s];
		pid_t pid = (pid_t)atomic_load_explicit(&SLOT(st, s)->pid, memory_order_acquire);

		if (!pid)
			continue;
		si->pid = pid;
		si->uid = (uid_t)-1;
		si->kind = S_ORPHAN;
		si->client = -1;
		si->since_ms = agent_now_ms();
		snprintf(si->why, sizeof(si->why), "a client of the previous agent");
		st->norphans++;
		si->pidfd = pid > 0 ? open_pidfd(pid) : -1;
		if (pid < 0 || slot_exited(si)) {
			slot_died(st, s, "exited while no agent ran,");
			continue;
		}
		log_info("client pid %d (slot %d) of the previous agent still lives: its %llu reference(s) are kept, "
			 "and handshakes wait for it until it reconnects or exits", (int)pid, s,
			 (unsigned long long)atomic_load_explicit(&SLOT(st, s)->refs, memory_order_relaxed));
		post_pidfd(st, s);
	}
}

/* ---- the loop ---------------------------------------------------------- */

int agent_serve(const struct agent_opts *o, struct region *r, struct table *t, int lfd, ino_t ino)
{
	struct agent_state *st;
	struct io_uring_params p;
	sigset_t mask;
	char status[512];
	struct stat sb;
	int rc = AGENT_EXIT_OK, err;
	bool clients_left;

	st = calloc(1, sizeof(*st));
	if (!st)
		return AGENT_EXIT_FAIL;
	st->o = o;
	st->r = r;
	st->t = t;
	st->lfd = lfd;
	st->sock_ino = ino;
	st->sigfd = -1;
	st->start_ms = agent_now_ms();
	st->nclients_max = (int)o->max_conns;
	st->clients = calloc((size_t)st->nclients_max, sizeof(*st->clients));
	st->scan_idx = malloc(SCAN_MAX * sizeof(*st->scan_idx));
	st->scan_val = malloc(SCAN_MAX * sizeof(*st->scan_val));
	st->text_msg = malloc(sizeof(struct agent_hdr) + AGENT_TEXT_MAX);
	if (!st->clients || !st->scan_idx || !st->scan_val || !st->text_msg) {
		log_err("out of memory");
		rc = AGENT_EXIT_FAIL;
		goto out_free;
	}
	for (int s = 0; s < NSLOTS; s++) {
		st->slots[s].pidfd = -1;
		st->slots[s].client = -1;
	}

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	st->sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (st->sigfd < 0) {
		log_err("signalfd: %s", strerror(errno));
		rc = AGENT_EXIT_FAIL;
		goto out_free;
	}
	memset(&p, 0, sizeof(p));
	err = io_uring_queue_init_params(512, &st->ring, &p);
	if (err) {
		log_err("io_uring is not available (%s): dirty-agent needs Linux 5.6 or later with io_uring "
			"allowed (sysctl kernel.io_uring_disabled = 0; not blocked by seccomp)", strerror(-err));
		rc = AGENT_EXIT_FAIL;
		goto out_free;
	}

	/* The region's guest-owned words are the agent's from now on. */
	claim_words(st, false);
	st->waiting_pid = 0;
	__atomic_store_n(G(st, waiting_pid), 0, __ATOMIC_RELEASE);
	set_clients_word(st);
	__atomic_fetch_add(G(st, heartbeat), 1, __ATOMIC_RELEASE);
	st->acked = __atomic_load_n(G(st, ack_gen), __ATOMIC_ACQUIRE);
	if (t->adopted)
		adopt_slots(st);

	/* Clients may connect from here on: the region and the table are ready. */
	if (listen(st->lfd, 128) < 0) {
		log_err("listen on %s: %s", o->socket, strerror(errno));
		io_uring_queue_exit(&st->ring);
		rc = AGENT_EXIT_FAIL;
		goto out_free;
	}
	post_accept(st);
	post_tick(st);
	post_signal(st);
	housekeeping(st);

	log_info("serving %s (%s): %llu pages of %llu bytes at %#llx, host protocol v%u.%u; socket %s; pin table %s (%s)",
		 r->desc, r->path, (unsigned long long)r->npages, 1ull << r->page_shift,
		 (unsigned long long)r->gpa_base, r->host_major, r->host_minor, o->socket, t->path,
		 t->adopted ? "adopted from a previous agent" : "new");
	if (t->repinned)
		log_warn("%llu counted page(s) had their pin bit clear in the region; set again",
			 (unsigned long long)t->repinned);
	if (t->stray_pins)
		log_warn("%llu page(s) are pinned in the region with no reference in the new pin table "
			 "(left by clients of a table that is gone): they stay pinned", (unsigned long long)t->stray_pins);
	snprintf(status, sizeof(status), "READY=1\nSTATUS=serving %.200s, socket %.200s\nMAINPID=%d", r->desc,
		 o->socket, (int)getpid());
	notify_systemd(status);

	while (!st->stop) {
		struct io_uring_cqe *cqe;
		unsigned int head, n = 0;

		err = io_uring_submit_and_wait(&st->ring, 1);
		if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
			log_err("io_uring_submit_and_wait: %s", strerror(-err));
			rc = AGENT_EXIT_FAIL;
			break;
		}
		io_uring_for_each_cqe(&st->ring, head, cqe) {
			dispatch(st, cqe);
			n++;
		}
		io_uring_cq_advance(&st->ring, n);
		housekeeping(st);
	}

	clients_left = st->ndma || st->norphans;
	if (st->stop_sig)
		log_info("stopping on %s: %d client(s) connected, %d orphaned; every pin stays as it is%s",
			 strsignal(st->stop_sig), st->ndma, st->norphans,
			 clients_left ? " (guest state left RUNNING: clients still hold the table)" : "");
	notify_systemd("STOPPING=1");
	for (int i = 0; i < st->nclients_max; i++)
		if (st->clients[i].state != C_FREE && st->clients[i].state != C_CLOSING)
			client_close(st, &st->clients[i]);
	/*
	 * STOPPED says no client holds the region: only then. With clients
	 * left, the heartbeat stops while the state stays RUNNING, and the
	 * host sees the agent silent (untrusted) after its timeout: the truth.
	 */
	__atomic_store_n(G(st, clients), 0, __ATOMIC_RELEASE);
	__atomic_store_n(G(st, waiting_pid), 0, __ATOMIC_RELEASE);
	if (!clients_left)
		__atomic_store_n(G(st, state), DIRTY_PROTO_GUEST_STOPPED, __ATOMIC_RELEASE);
	if (stat(o->socket, &sb) == 0 && sb.st_ino == st->sock_ino)
		unlink(o->socket);
	for (int s = 0; s < NSLOTS; s++)
		if (st->slots[s].pidfd >= 0)
			close(st->slots[s].pidfd);
	io_uring_queue_exit(&st->ring);
out_free:
	if (st->sigfd >= 0)
		close(st->sigfd);
	close(st->lfd);
	free(st->clients);
	free(st->scan_idx);
	free(st->scan_val);
	free(st->text_msg);
	free(st);
	return rc;
}
