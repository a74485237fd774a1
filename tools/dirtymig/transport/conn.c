/* SPDX-License-Identifier: MIT */
/*
 * conn.c - TCP sockets driven through one io_uring per connection:
 * sendmsg / recvmsg SQEs, one at a time, short transfers resumed, so
 * callers see whole transfers or an error. One asynchronous send may be
 * in flight (the source fills its next batch meanwhile); it is completed
 * before anything else goes out, so the byte stream keeps its order.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "conn.h"

/* ---- addresses and sockets ------------------------------------------ */

/* "host:port", "[v6]:port" or ":port" into host (may be empty) and port. */
static int split_addr(const char *addr, char *host, size_t hl, char *port, size_t pl)
{
	const char *colon;
	size_t n;

	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		n = (size_t)(end - addr - 1);
		colon = end + 1;
		if (n >= hl)
			return -EINVAL;
		memcpy(host, addr + 1, n);
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		n = (size_t)(colon - addr);
		if (n >= hl)
			return -EINVAL;
		memcpy(host, addr, n);
	}
	host[n] = 0;
	if (!colon[1] || strlen(colon + 1) >= pl)
		return -EINVAL;
	strcpy(port, colon + 1);
	return 0;
}

static int resolve(const char *addr, bool passive, struct addrinfo **res,
		   char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = passive ? AI_PASSIVE : 0 };
	char host[256], port[32];
	int rc;

	if (split_addr(addr, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "bad address '%s' (expected HOST:PORT or [IPV6]:PORT)", addr);
		return -EINVAL;
	}
	rc = getaddrinfo(*host ? host : NULL, port, &hints, res);
	if (rc) {
		snprintf(err, errlen, "cannot resolve '%s': %s", addr, gai_strerror(rc));
		return -EINVAL;
	}
	return 0;
}

/* Acks are 16 bytes and downtime waits for the last one: no Nagle delay. */
static void tune(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/*
 * A socket for the first address of addr that works: bound and listening
 * (passive) or connected. Returns the fd, or -errno with err set.
 */
static int open_first(const char *addr, bool passive, char *err, size_t errlen)
{
	struct addrinfo *res, *ai;
	int fd = -1, e = 0, one = 1;

	if ((e = resolve(addr, passive, &res, err, errlen)))
		return e;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			e = -errno;
			continue;
		}
		if (passive)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (passive ? !bind(fd, ai->ai_addr, ai->ai_addrlen) && !listen(fd, 8) :
			      !connect(fd, ai->ai_addr, ai->ai_addrlen))
			break;
		e = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0)
		return fd;
	snprintf(err, errlen, "cannot %s %s: %s", passive ? "listen on" : "connect to", addr, strerror(-e));
	return e ? e : passive ? -EADDRNOTAVAIL : -EHOSTUNREACH;
}

int dm_listen(const char *addr, int *out, char *bound, size_t boundlen, char *err, size_t errlen)
{
	int fd = open_first(addr, true, err, errlen);

	if (fd < 0)
		return fd;
	if (bound) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char h[INET6_ADDRSTRLEN] = "?";
		unsigned int port = 0;

		getsockname(fd, (struct sockaddr *)&ss, &sl);
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &s4->sin_addr, h, sizeof(h));
			port = ntohs(s4->sin_port);
			snprintf(bound, boundlen, "%s:%u", h, port);
		} else {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &s6->sin6_addr, h, sizeof(h));
			port = ntohs(s6->sin6_port);
			snprintf(bound, boundlen, "[%s]:%u", h, port);
		}
	}
	*out = fd;
	return 0;
}

int dm_accept(int lfd, int *out)
{
	int fd;

	do
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return -errno;
	tune(fd);
	*out = fd;
	return 0;
}

int dm_connect(const char *addr, int *out, char *err, size_t errlen)
{
	int fd = open_first(addr, false, err, errlen);

	if (fd < 0)
		return fd;
	tune(fd);
	*out = fd;
	return 0;
}

/* ---- one connection through io_uring --------------------------------- */

static bool want_zc(int fd)
{
	const char *env = getenv("DIRTYMIG_ZC");
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (env)
		return atoi(env) != 0;
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	if (ss.ss_family == AF_INET)
		return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) != 127;
	if (ss.ss_family == AF_INET6)
		return !IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr) &&
		       !IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&ss)->sin6_addr);
	return false;
}

int dm_conn_init(struct dm_conn *c, int fd)
{
	int err;

	memset(c, 0, sizeof(*c));
	c->fd = fd;
	err = io_uring_queue_init(4, &c->ring, 0);
	if (err)
		return err;
	c->ring_ok = true;
	/*
	 * Zero-copy send where the kernel has it (6.1+) and the peer is not
	 * on this host: the pages go to the NIC without a copy into socket
	 * buffers. On loopback the kernel copies anyway and the completion
	 * notification waits for the receiver, which measured 40 ms more
	 * downtime on the quick demo. DIRTYMIG_ZC=0/1 overrides; a socket
	 * that refuses it falls back by itself.
	 */
	if (want_zc(fd)) {
		struct io_uring_probe *p = io_uring_get_probe_ring(&c->ring);

		c->zc = p && io_uring_opcode_supported(p, IORING_OP_SENDMSG_ZC);
		if (p)
			io_uring_free_probe(p);
	}
	return 0;
}

void dm_conn_close(struct dm_conn *c)
{
	if (c->sending)
		dm_send_wait(c);
	if (c->ring_ok)
		io_uring_queue_exit(&c->ring);
	c->ring_ok = false;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int submit_msg(struct dm_conn *c, bool send, struct msghdr *msg)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
	int err;

	if (!sqe)
		return -EBUSY;
	if (send && c->zc)
		io_uring_prep_sendmsg_zc(sqe, c->fd, msg, MSG_NOSIGNAL);
	else if (send)
		io_uring_prep_sendmsg(sqe, c->fd, msg, MSG_NOSIGNAL);
	else
		io_uring_prep_recvmsg(sqe, c->fd, msg, MSG_WAITALL);
	err = io_uring_submit(&c->ring);
	return err < 0 ? err : 0;
}

static int wait_cqe(struct dm_conn *c, struct io_uring_cqe **cqe)
{
	int err;

	do
		err = io_uring_wait_cqe(&c->ring, cqe);
	while (err == -EINTR);
	return err;
}

/*
 * The result of the one operation in flight. A zero-copy send completes
 * twice: its result (flagged MORE), then a notification once the kernel
 * no longer reads the buffer; only then may the caller reuse it.
 */
static int reap(struct dm_conn *c)
{
	struct io_uring_cqe *cqe;
	bool more;
	int err, res;

	err = wait_cqe(c, &cqe);
	if (err)
		return err;
	res = cqe->res;
	more = cqe->flags & IORING_CQE_F_MORE;
	io_uring_cqe_seen(&c->ring, cqe);
	if (more) {
		err = wait_cqe(c, &cqe);
		if (err)
			return err;
		io_uring_cqe_seen(&c->ring, cqe);
	}
	return res;
}

static size_t iov_len(const struct iovec *iov, int n)
{
	size_t t = 0;

	for (int i = 0; i < n; i++)
		t += iov[i].iov_len;
	return t;
}

/* Drop done bytes from the front of *iov / *n. */
static void iov_advance(struct iovec **iov, int *n, size_t done)
{
	while (*n && done >= (*iov)->iov_len) {
		done -= (*iov)->iov_len;
		(*iov)++;
		(*n)--;
	}
	if (*n && done) {
		(*iov)->iov_base = (char *)(*iov)->iov_base + done;
		(*iov)->iov_len -= done;
	}
}

static int xfer(struct dm_conn *c, bool send, struct iovec *iov, int n)
{
	bool any = false;

	while (n && iov_len(iov, n)) {
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		int res = submit_msg(c, send, &msg);

		if (!res)
			res = reap(c);
		if (res == -EINTR || res == -EAGAIN)
			continue;
		if (send && c->zc && (res == -EOPNOTSUPP || res == -EINVAL)) {
			c->zc = false;	/* this socket takes plain sends only */
			continue;
		}
		if (res < 0)
			return res;
		if (res == 0)	/* orderly close by the peer */
			return send ? -EPIPE : any ? -ECONNRESET : -ENODATA;
		any = true;
		if (send)
			c->bytes_out += (uint64_t)res;
		else
			c->bytes_in += (uint64_t)res;
		iov_advance(&iov, &n, (size_t)res);
	}
	return 0;
}

int dm_send_iov(struct dm_conn *c, struct iovec *iov, int n)
{
	return xfer(c, true, iov, n);
}

int dm_recv_iov(struct dm_conn *c, struct iovec *iov, int n)
{
	return xfer(c, false, iov, n);
}

int dm_send(struct dm_conn *c, const void *buf, size_t len)
{
	struct iovec iov = { (void *)buf, len };

	return xfer(c, true, &iov, 1);
}

int dm_recv(struct dm_conn *c, void *buf, size_t len)
{
	struct iovec iov = { buf, len };

	return xfer(c, false, &iov, 1);
}

int dm_send_start(struct dm_conn *c, const struct iovec *iov, int n)
{
	int err;

	if (c->sending || n > (int)(sizeof(c->iov) / sizeof(c->iov[0])))
		return -EBUSY;
	memcpy(c->iov, iov, (size_t)n * sizeof(*iov));
	c->iovcnt = n;
	memset(&c->msg, 0, sizeof(c->msg));
	c->msg.msg_iov = c->iov;
	c->msg.msg_iovlen = (size_t)n;
	err = submit_msg(c, true, &c->msg);
	if (!err)
		c->sending = true;
	return err;
}

int dm_send_wait(struct dm_conn *c)
{
	struct iovec *iov = c->iov;
	int n = c->iovcnt, res;

	if (!c->sending)
		return 0;
	c->sending = false;
	res = reap(c);
	if (c->zc && (res == -EOPNOTSUPP || res == -EINVAL)) {
		c->zc = false;	/* nothing was sent: resend it plainly below */
		res = -EAGAIN;
	}
	if (res < 0 && res != -EINTR && res != -EAGAIN)
		return res;
	if (res == 0 && iov_len(iov, n))
		return -EPIPE;
	if (res > 0) {
		c->bytes_out += (uint64_t)res;
		iov_advance(&iov, &n, (size_t)res);
	}
	/* A short send: the rest, synchronously, before anything else goes out. */
	return xfer(c, true, iov, n);
}
