/* SPDX-License-Identifier: MIT */
/*
 * conn.h - the transport under a dirtymig stream: TCP sockets (listen,
 * accept, connect by "HOST:PORT") and one io_uring per connection that
 * carries every send and receive, whole (short transfers are resumed).
 */
#ifndef DIRTYMIG_CONN_H
#define DIRTYMIG_CONN_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct dm_conn {
	int fd;
	struct io_uring ring;
	bool ring_ok;
	bool sending;		/* an asynchronous send is in flight */
	bool zc;		/* sends use IORING_OP_SENDMSG_ZC */
	struct iovec iov[4];	/* what it sends (advanced on short sends) */
	int iovcnt;
	struct msghdr msg;
	uint64_t bytes_out, bytes_in;
};

/* Parse "HOST:PORT" or "[V6]:PORT" and listen (port 0: any); *bound gets "ip:port". */
int dm_listen(const char *addr, int *fd, char *bound, size_t boundlen, char *err, size_t errlen);
int dm_accept(int lfd, int *fd);
int dm_connect(const char *addr, int *fd, char *err, size_t errlen);

/* Takes fd (closed by dm_conn_close). 0 or -errno (io_uring unavailable). */
int dm_conn_init(struct dm_conn *c, int fd);
void dm_conn_close(struct dm_conn *c);
/*
 * Send or receive every byte of iov (consumed: advanced in place; n at
 * most IOV_MAX). Receive: -ENODATA if the peer closed before the first
 * byte, -ECONNRESET if it closed in the middle.
 */
int dm_send_iov(struct dm_conn *c, struct iovec *iov, int n);
int dm_recv_iov(struct dm_conn *c, struct iovec *iov, int n);
int dm_send(struct dm_conn *c, const void *buf, size_t len);
int dm_recv(struct dm_conn *c, void *buf, size_t len);
/* Start a send and return; dm_send_wait() completes it (one at a time). */
int dm_send_start(struct dm_conn *c, const struct iovec *iov, int n);
int dm_send_wait(struct dm_conn *c);

#endif /* DIRTYMIG_CONN_H */
