/* SPDX-License-Identifier: MIT */
/*
 * stream.c - the records of stream.h in wire order, and the source's side
 * of a stream: pages batched into PAGES records with one send in flight
 * while the next batch fills, round markers answered by ACKs, and the
 * link model (a token bucket that makes every byte cost 1 / rate of link
 * time, so a loopback connection behaves like a NIC of the configured
 * speed).
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "stream.h"

int dm_send_rec(struct dm_conn *c, uint32_t type, uint32_t count, uint64_t arg)
{
	struct dm_rec r = { htole32(type), htole32(count), htole64(arg) };

	return dm_send(c, &r, sizeof(r));
}

int dm_recv_rec(struct dm_conn *c, struct dm_rec *r)
{
	int err = dm_recv(c, r, sizeof(*r));

	if (err)
		return err;
	r->type = le32toh(r->type);
	r->count = le32toh(r->count);
	r->arg = le64toh(r->arg);
	return 0;
}

/* ---- the source's stream ---------------------------------------------- */

static int tx_fail(struct dm_tx *tx, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tx->err, sizeof(tx->err), fmt, ap);
	va_end(ap);
	return err;
}

static const char *conn_err(int err)
{
	switch (err) {
	case -ENODATA:
	case -ECONNRESET:
		return "the destination closed the connection";
	case -EPIPE:
		return "the connection to the destination is gone (broken pipe)";
	default:
		return strerror(-err);
	}
}

/* Account len bytes of link time: they leave once the link is free. */
static void link_take(struct dm_tx *tx, size_t len)
{
	uint64_t now = now_ns();

	if (tx->rate <= 0)
		return;
	if (tx->link_free_ns < now)
		tx->link_free_ns = now;	/* an idle link banks no credit */
	tx->link_free_ns += (uint64_t)((double)len / tx->rate * 1e9);
}

/* Wait until the modelled link has carried everything taken so far. */
static void link_drain(struct dm_tx *tx)
{
	struct timespec ts;

	if (tx->rate <= 0 || tx->link_free_ns <= now_ns())
		return;
	ts.tv_sec = (time_t)(tx->link_free_ns / 1000000000ull);
	ts.tv_nsec = (long)(tx->link_free_ns % 1000000000ull);
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* ERR from the destination: its message into tx->err. */
static int read_err(struct dm_tx *tx, const struct dm_rec *r)
{
	char msg[DM_ERR_MAX + 1];
	uint32_t n = r->count < DM_ERR_MAX ? r->count : DM_ERR_MAX;

	if (dm_recv(&tx->c, msg, n))
		n = 0;
	msg[n] = 0;
	return tx_fail(tx, -EPROTO, "the destination refused the stream: %s", n ? msg : "(no message)");
}

int dm_tx_open(struct dm_tx *tx, const char *addr, double link_bytes_per_s,
	       uint64_t guest_bytes, const char *mode, uint32_t flags)
{
	struct dm_hello h = { .major = htole16(DM_VERSION_MAJOR),
			      .minor = htole16(DM_VERSION_MINOR),
			      .page_size = htole32(DM_PAGE),
			      .guest_bytes = htole64(guest_bytes),
			      .flags = htole32(flags) };
	struct dm_rec r;
	int fd, err;

	memset(tx, 0, sizeof(*tx));
	tx->c.fd = -1;
	tx->rate = link_bytes_per_s;
	tx->npages = guest_bytes / DM_PAGE;
	for (int i = 0; i < 2; i++) {
		tx->b[i].data = mmap(NULL, (size_t)DM_BATCH * DM_PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (tx->b[i].data == MAP_FAILED) {
			tx->b[i].data = NULL;
			return tx_fail(tx, -ENOMEM, "out of memory for send buffers");
		}
	}
	memcpy(h.magic, DM_MAGIC, 8);
	strncpy(h.mode, mode, sizeof(h.mode) - 1);
	if ((err = dm_connect(addr, &fd, tx->err, sizeof(tx->err))))
		return err;
	if ((err = dm_conn_init(&tx->c, fd))) {
		close(fd);
		tx->c.fd = -1;
		return tx_fail(tx, err, "io_uring is not available: %s", strerror(-err));
	}
	tx->connected = true;
	if ((err = dm_send(&tx->c, &h, sizeof(h))) || (err = dm_recv_rec(&tx->c, &r)))
		return tx_fail(tx, err, "handshake with %s failed: %s", addr, conn_err(err));
	if (r.type == DM_ERR)
		return read_err(tx, &r);
	if (r.type != DM_HELLO_OK)
		return tx_fail(tx, -EPROTO, "handshake with %s: unexpected reply type %#x (is it a dirtymig destination?)",
			       addr, r.type);
	return 0;
}

/* Put the current batch on the wire; the previous one must be done first. */
static int flush(struct dm_tx *tx)
{
	struct dm_batch *b = &tx->b[tx->cur];
	struct iovec iov[2];
	int err;

	if (!b->n)
		return 0;
	if ((err = dm_send_wait(&tx->c)))
		return tx_fail(tx, err, "sending pages: %s", conn_err(err));
	link_drain(tx);
	b->hdr.type = htole32(DM_PAGES);
	b->hdr.count = htole32(b->n);
	b->hdr.arg = 0;
	iov[0].iov_base = &b->hdr;	/* hdr and gpa[] are contiguous */
	iov[0].iov_len = sizeof(b->hdr) + b->n * sizeof(b->gpa[0]);
	iov[1].iov_base = b->data;
	iov[1].iov_len = (size_t)b->n * DM_PAGE;
	link_take(tx, iov[0].iov_len + iov[1].iov_len);
	if ((err = dm_send_start(&tx->c, iov, 2)))
		return tx_fail(tx, err, "sending pages: %s", conn_err(err));
	tx->cur ^= 1;
	tx->b[tx->cur].n = 0;
	return 0;
}

int dm_tx_page(struct dm_tx *tx, uint64_t gpa, void **slot)
{
	struct dm_batch *b = &tx->b[tx->cur];
	int err;

	if (b->n == DM_BATCH) {
		if ((err = flush(tx)))
			return err;
		b = &tx->b[tx->cur];
	}
	b->gpa[b->n] = htole64(gpa);
	*slot = b->data + (size_t)b->n * DM_PAGE;
	b->n++;
	return 0;
}

int dm_tx_end_round(struct dm_tx *tx, unsigned int round, int final)
{
	struct dm_rec r;
	int err;

	if ((err = flush(tx)))
		return err;
	if ((err = dm_send_wait(&tx->c)))
		return tx_fail(tx, err, "sending pages: %s", conn_err(err));
	link_take(tx, sizeof(r));
	link_drain(tx);
	if ((err = dm_send_rec(&tx->c, final ? DM_FINAL : DM_END_ROUND, 0, round)) ||
	    (err = dm_recv_rec(&tx->c, &r)))
		return tx_fail(tx, err, "ending round %u: %s", round, conn_err(err));
	if (r.type == DM_ERR)
		return read_err(tx, &r);
	if (r.type != DM_ACK || r.arg != round)
		return tx_fail(tx, -EPROTO, "ending round %u: expected its ACK, got type %#x arg %llu",
			       round, r.type, (unsigned long long)r.arg);
	return 0;
}

int dm_tx_hashes(struct dm_tx *tx, uint64_t *out, uint64_t npages)
{
	struct dm_rec r;
	int err;

	if ((err = dm_send_rec(&tx->c, DM_HASH_REQ, 0, 0)) || (err = dm_recv_rec(&tx->c, &r)))
		return tx_fail(tx, err, "asking for page hashes: %s", conn_err(err));
	if (r.type == DM_ERR)
		return read_err(tx, &r);
	if (r.type != DM_HASHES || r.arg != npages)
		return tx_fail(tx, -EPROTO, "expected %llu page hashes, got type %#x arg %llu",
			       (unsigned long long)npages, r.type, (unsigned long long)r.arg);
	if ((err = dm_recv(&tx->c, out, npages * sizeof(*out))))
		return tx_fail(tx, err, "receiving page hashes: %s", conn_err(err));
	for (uint64_t i = 0; i < npages; i++)
		out[i] = le64toh(out[i]);
	return 0;
}

int dm_tx_bye(struct dm_tx *tx)
{
	int err = dm_send_rec(&tx->c, DM_BYE, 0, 0);

	return err ? tx_fail(tx, err, "closing the stream: %s", conn_err(err)) : 0;
}

void dm_tx_close(struct dm_tx *tx)
{
	if (tx->connected)
		dm_conn_close(&tx->c);
	else if (tx->c.fd >= 0)
		close(tx->c.fd);
	tx->connected = false;
	tx->c.fd = -1;
	for (int i = 0; i < 2; i++)
		if (tx->b[i].data)
			munmap(tx->b[i].data, (size_t)DM_BATCH * DM_PAGE);
	tx->b[0].data = tx->b[1].data = NULL;
}
