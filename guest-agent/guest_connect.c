/* SPDX-License-Identifier: MIT */
/*
 * guest_connect.c - dirty_guest_connect(): a guest process becomes a
 * client of the dirty-agent daemon (guest-agent/daemon/), over the
 * messages of agent_wire.h on a UNIX SOCK_SEQPACKET socket.
 *
 *   HELLO ->  <- WELCOME + [region fd, pin table fd]   (or REFUSED)
 *   then, for the life of the handle, one library thread:
 *   <- GRACE{gen}   urcu_bp_synchronize_rcu()   GRACE_DONE{gen} ->
 *   and at close: BYE ->
 *
 * Owns the connected handle's setup and teardown: it maps the region and
 * the region's shared pin table (pintable.h) the agent passes, checks
 * every byte of both that it will rely on against the region it maps
 * itself (nothing the agent says is used unchecked: a WELCOME's geometry
 * must be the region's, the table's header must name the same region,
 * the slot must be one of the table's), and on any failure keeps nothing
 * (no fd, no mapping, no thread). Map and unmap on the handle are
 * guest.c's, unchanged, on the shared count words.
 *
 * Writes into shared memory: none here. The pin table's count words and
 * this client's slot.refs are written by guest.c's map/unmap; the
 * region's guest-owned control words (heartbeat, ack_gen, state,
 * version, pin_leaks) are the agent's and a connected handle never
 * writes them; it still counts pin_conflicts and bad_ranges (guest.c,
 * relaxed adds), as any client does.
 * Reads: the table header once, at connect, magic with acquire (the agent
 * writes it last, with release), the rest relaxed into a private copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <urcu/urcu-bp.h>

#include "agent_wire.h"
#include "guest_priv.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "pintable.h"

/* How long connect waits for the agent's answer to HELLO. */
#define HANDSHAKE_MS 10000
/* Room for any message a client accepts (WELCOME, REFUSED, GRACE). */
#define RECV_MAX 512
/* fds taken from one datagram; any beyond are closed. */
#define MAX_FDS 4

/*
 * One datagram (flags: 0 or MSG_DONTWAIT) and every fd that came with
 * it: up to max kept in fds[], the rest closed at once, *nfds the number
 * that came (so a caller that wanted 2 sees 3). Returns its length, 0 at
 * EOF, -EMSGSIZE if it did not fit (or its fds did not), or -errno.
 */
static ssize_t recv_one(int sock, int flags, void *buf, size_t cap, int *fds, int max, int *nfds)
{
	union {
		struct cmsghdr align;
		char b[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.b, .msg_controllen = sizeof(ctl.b),
	};
	ssize_t n;

	*nfds = 0;
	do
		n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			if (*nfds < max)
				fds[*nfds] = fd;
			else
				close(fd);
			++*nfds;
		}
	}
	/* Truncated: the kernel closed the fds that did not fit. */
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		return -EMSGSIZE;
	return n;
}

static void close_fds(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static int send_msg(int sock, const void *m, size_t len)
{
	ssize_t n;

	do
		n = send(sock, m, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

/*
 * The server thread: answers each GRACE{gen} after an RCU grace period,
 * so no operation of this process that read tracking off is still running
 * when the agent counts this client done. Anything else (EOF, an error, a
 * message that fails agent_wire_parse or is not a GRACE, fds) ends it: the
 * client then never answers again, the agent cannot acknowledge, and the
 * host sees the guest unhealthy - the safe side.
 */
static void *serve(void *arg)
{
	struct dirty_guest *g = arg;
	char buf[RECV_MAX];
	struct agent_msg m;
	int nfds;

	for (;;) {
		ssize_t n = recv_one(g->sock, 0, buf, sizeof(buf), NULL, 0, &nfds);
		struct agent_gen done = { 0 };

		if (n <= 0 || nfds ||
		    agent_wire_parse(buf, (size_t)n, &m, NULL, 0) != AGENT_GRACE)
			break;
		urcu_bp_synchronize_rcu();
		agent_wire_hdr(&done.h, AGENT_GRACE_DONE, sizeof(done));
		done.gen = m.u.gen.gen;
		if (send_msg(g->sock, &done, sizeof(done)))
			break;
	}
	return NULL;
}

/* An error about what the agent sent: -EPROTO, and where it came from. */
#define bad_agent(path, fmt, ...) \
	__dirty_guest_err(-EPROTO, "dirty-agent at %s: " fmt, path, ##__VA_ARGS__)

/* Check the pin table's header (a private copy of it) against the region. */
static int check_table(struct dirty_guest *g, const char *path,
		       const struct pintable_header *t, const struct agent_welcome *w)
{
	/* Acquire: the agent stores the magic last, with release. */
	uint64_t magic = __atomic_load_n(&t->magic, __ATOMIC_ACQUIRE);
	/* Relaxed: each field read once; only these copies are used. */
#define RD(f) __atomic_load_n(&t->f, __ATOMIC_RELAXED)
	uint32_t version = RD(version), hsize = RD(header_size), shift = RD(page_shift);
	uint32_t nslots = RD(nslots);
	uint64_t npages = RD(npages), gpa = RD(gpa_base);
#undef RD

	if (magic != PINTABLE_MAGIC)
		return bad_agent(path, "the pin table is not one (magic %#llx, want %#llx)",
				 (unsigned long long)magic, (unsigned long long)PINTABLE_MAGIC);
	if (version != PINTABLE_VERSION || hsize != PINTABLE_HEADER_SIZE)
		return bad_agent(path, "pin table version %u with a %u-byte header; this library reads "
				 "version %u with %u: are the daemon and libdirty-guest from the same release?",
				 version, hsize, PINTABLE_VERSION, PINTABLE_HEADER_SIZE);
	if (npages != g->npages || gpa != g->gpa_base || shift != g->page_shift)
		return bad_agent(path, "the pin table is for another region (%llu pages of 2^%u at %#llx; "
				 "the region has %llu of 2^%u at %#llx)",
				 (unsigned long long)npages, shift, (unsigned long long)gpa,
				 (unsigned long long)g->npages, g->page_shift,
				 (unsigned long long)g->gpa_base);
	if (nslots == 0 || nslots > PINTABLE_SLOTS || w->slot >= nslots)
		return bad_agent(path, "slot %u is not one of the pin table's %u (at most %u)",
				 w->slot, nslots, PINTABLE_SLOTS);
	return 0;
}

/*
 * Map the region and the table the agent passed, check both, and make
 * them g's. On failure nothing stays mapped; the caller closes the fds.
 */
static int attach(struct dirty_guest *g, const char *path, int rfd, int tfd,
		  const struct agent_welcome *w)
{
	struct stat rst, tst;
	uint64_t tbytes;
	void *base, *tbl;
	int err;

	if (fstat(rfd, &rst) < 0 || fstat(tfd, &tst) < 0)
		return __dirty_guest_err(-errno, "dirty-agent at %s: cannot stat the fds it passed: %s",
					 path, strerror(errno));
	/* A region is a file or a memfd, or a device (a BAR's resource file). */
	if (!S_ISREG(rst.st_mode) && !S_ISCHR(rst.st_mode))
		return bad_agent(path, "the region fd is not a file or a device (mode %#o)",
				 (unsigned int)rst.st_mode);
	if (w->region_bytes > SIZE_MAX ||
	    (S_ISREG(rst.st_mode) && (uint64_t)rst.st_size < w->region_bytes))
		return bad_agent(path, "WELCOME says to map %llu bytes of the region, the file has %lld",
				 (unsigned long long)w->region_bytes, (long long)rst.st_size);
	base = mmap(NULL, (size_t)w->region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rfd, 0);
	if (base == MAP_FAILED)
		return __dirty_guest_err(-errno, "dirty-agent at %s: cannot map the region it passed (%llu bytes): %s",
					 path, (unsigned long long)w->region_bytes, strerror(errno));
	/* The same checks as dirty_guest_open_fd; no write into the region. */
	err = __dirty_guest_attach(g, base, w->region_bytes);
	if (err) {
		char why[400];

		snprintf(why, sizeof(why), "%s", dirty_guest_last_error());
		err = bad_agent(path, "the region it passed is refused: %s", why);
		goto unmap_region;
	}
	if (w->gpa_base != g->gpa_base || w->npages != g->npages || w->page_shift != g->page_shift) {
		err = bad_agent(path, "WELCOME describes %llu pages of 2^%u at %#llx, the region it passed "
				"%llu pages of 2^%u at %#llx",
				(unsigned long long)w->npages, w->page_shift,
				(unsigned long long)w->gpa_base, (unsigned long long)g->npages,
				g->page_shift, (unsigned long long)g->gpa_base);
		goto unmap_region;
	}
	/* npages <= 2^50 (dirty_proto_layout): no overflow. */
	tbytes = pintable_bytes(g->npages);
	if (!S_ISREG(tst.st_mode) || w->table_bytes < tbytes ||
	    (uint64_t)tst.st_size < w->table_bytes || tbytes > SIZE_MAX) {
		err = bad_agent(path, "the pin table fd (%s, %lld bytes; WELCOME says %llu) cannot hold "
				"%llu pages: it needs %llu bytes",
				S_ISREG(tst.st_mode) ? "a file" : "not a file", (long long)tst.st_size,
				(unsigned long long)w->table_bytes, (unsigned long long)g->npages,
				(unsigned long long)tbytes);
		goto unmap_region;
	}
	tbl = mmap(NULL, (size_t)tbytes, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, 0);
	if (tbl == MAP_FAILED) {
		err = __dirty_guest_err(-errno, "dirty-agent at %s: cannot map the pin table (%llu bytes): %s",
					path, (unsigned long long)tbytes, strerror(errno));
		goto unmap_region;
	}
	if ((err = check_table(g, path, tbl, w))) {
		munmap(tbl, (size_t)tbytes);
		goto unmap_region;
	}
	g->unmap_on_close = true;
	g->tbl = tbl;
	g->pin_map = tbl;
	g->pin_map_len = tbytes;
	g->pincnt = (_Atomic uint32_t *)((uint8_t *)tbl + PINTABLE_HEADER_SIZE);
	g->slot = w->slot;
	g->refs = &g->tbl->slot[w->slot].refs;
	return 0;

unmap_region:
	munmap(base, (size_t)w->region_bytes);
	return err;
}

/* Printable copy of the agent's reason (its bytes are not ours to trust). */
static void clean_text(char *dst, const char *src, size_t cap)
{
	size_t i;

	for (i = 0; i + 1 < cap && src[i]; i++)
		dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? '?' : src[i];
	dst[i] = 0;
}

/* HELLO, then WELCOME (handled by attach) or REFUSED. */
static int handshake(struct dirty_guest *g, const char *path)
{
	struct agent_hello hello = { 0 };
	struct pollfd pfd = { .fd = g->sock, .events = POLLIN };
	char buf[RECV_MAX], why[160];
	struct agent_msg m;
	int fds[MAX_FDS], came = 0, nfds, type, err, r;
	ssize_t n;

	agent_wire_hdr(&hello.h, AGENT_HELLO, sizeof(hello));
	if ((err = send_msg(g->sock, &hello, sizeof(hello))))
		return __dirty_guest_err(err, "dirty-agent at %s: cannot send HELLO: %s", path, strerror(-err));
	do
		r = poll(&pfd, 1, HANDSHAKE_MS);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return __dirty_guest_err(-errno, "dirty-agent at %s: poll: %s", path, strerror(errno));
	if (r == 0)
		return __dirty_guest_err(-ETIMEDOUT, "dirty-agent at %s did not answer HELLO within %d s; is it stuck?",
					 path, HANDSHAKE_MS / 1000);
	n = recv_one(g->sock, 0, buf, sizeof(buf), fds, MAX_FDS, &came);
	nfds = came < MAX_FDS ? came : MAX_FDS;	/* the rest are closed already */
	if (n == 0) {
		err = __dirty_guest_err(-ECONNRESET, "dirty-agent at %s hung up without answering HELLO", path);
		goto out;
	}
	if (n == -EMSGSIZE) {
		err = bad_agent(path, "its answer to HELLO is longer than any WELCOME or REFUSED "
				"(or came with more than %d fds)", MAX_FDS);
		goto out;
	}
	if (n < 0) {
		err = __dirty_guest_err((int)n, "dirty-agent at %s: receiving its answer to HELLO: %s",
					path, strerror((int)-n));
		goto out;
	}
	type = agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why));
	if (type < 0) {
		err = bad_agent(path, "malformed answer to HELLO: %s", why);
		goto out;
	}
	if (type == AGENT_REFUSED && came == 0) {
		char text[AGENT_REFUSED_TEXT];

		clean_text(text, m.u.refused.text, sizeof(text));
		return __dirty_guest_err(m.u.refused.err, "dirty-agent at %s refused this client: %s",
					 path, text);
	}
	if (type != AGENT_WELCOME || came != 2) {
		err = bad_agent(path, "answered HELLO with message type %d and %d fds, want WELCOME "
				"with 2 (region, pin table) or REFUSED with none", type, came);
		goto out;
	}
	err = attach(g, path, fds[0], fds[1], &m.u.welcome);
out:
	close_fds(fds, nfds);	/* attached or not: the mappings keep what they need */
	return err;
}

/* Stop the server thread, say BYE, unmap the table (g->disconnect). */
static void disconnect(struct dirty_guest *g)
{
	struct agent_bye bye = { 0 };
	char buf[RECV_MAX];
	int nfds;

	/*
	 * A child that inherited the handle across fork() has neither the
	 * thread nor the connection of its own: closing the fd is all it may
	 * do (a shutdown or a BYE would end its parent's connection).
	 */
	if (getpid() != g->owner) {
		close(g->sock);
		g->sock = -1;
		return;
	}
	if (g->server_running) {
		/*
		 * Wakes the thread's recv with EOF (and the agent can send no
		 * more); an answer the thread is writing still goes out.
		 */
		shutdown(g->sock, SHUT_RD);
		pthread_join(g->server, NULL);
		g->server_running = false;
	}
	/*
	 * Read what the thread left unread (a GRACE after it stopped, fds
	 * closed on the way): a UNIX socket closed with unread messages
	 * makes the peer's next recv fail with ECONNRESET instead of reading
	 * our BYE.
	 */
	for (;;) {
		ssize_t n = recv_one(g->sock, MSG_DONTWAIT, buf, sizeof(buf), NULL, 0, &nfds);

		if (n <= 0 && n != -EMSGSIZE)
			break;
	}
	agent_wire_hdr(&bye.h, AGENT_BYE, sizeof(bye));
	send_msg(g->sock, &bye, sizeof(bye));	/* an agent already gone needs no BYE */
	close(g->sock);
	g->sock = -1;
}

GUEST_API int dirty_guest_connect(const char *socket_path, struct dirty_guest **out)
{
	const char *path = socket_path ? socket_path : DIRTY_AGENT_SOCKET;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	sigset_t all, old;
	struct dirty_guest *g;
	int err;

	if (!out)
		return __dirty_guest_err(-EINVAL, "dirty_guest_connect: NULL out");
	if (strlen(path) >= sizeof(sa.sun_path))
		return __dirty_guest_err(-ENAMETOOLONG, "dirty_guest_connect: socket path %s is longer than %zu bytes",
					 path, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	g = calloc(1, sizeof(*g));
	if (!g)
		return __dirty_guest_err(-ENOMEM, "dirty_guest_connect: out of memory");
	g->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (g->sock < 0) {
		err = __dirty_guest_err(-errno, "dirty_guest_connect: socket: %s", strerror(errno));
		goto free_g;
	}
	if (connect(g->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = __dirty_guest_err(-errno, "cannot connect to dirty-agent at %s: %s (is the daemon running?)",
					path, strerror(errno));
		goto close_sock;
	}
	if ((err = handshake(g, path)))
		goto close_sock;	/* nothing mapped */
	g->connected = true;
	g->disconnect = disconnect;
	pthread_mutex_init(&g->poll_lock, NULL);
	/* The thread takes no signal meant for the application's threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&g->server, NULL, serve, g);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		__dirty_guest_err(err, "dirty_guest_connect: cannot start its thread: %s", strerror(-err));
		pthread_mutex_destroy(&g->poll_lock);
		munmap(g->pin_map, g->pin_map_len);
		munmap(g->base, g->map_size);
		goto close_sock;
	}
	g->server_running = true;
	g->owner = getpid();
	*out = g;
	return 0;

close_sock:
	close(g->sock);
free_g:
	free(g);
	return err;
}
