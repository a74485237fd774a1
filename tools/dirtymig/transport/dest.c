/* SPDX-License-Identifier: MIT */
/*
 * dest.c - the destination: validates a stream record by record, writes
 * pages straight from the socket into its guest memory (recvmsg with one
 * iovec per page, no staging copy), acknowledges each round marker in
 * order, and hashes every page on request so the source can tell which
 * pages arrived stale. Nothing the stream says is trusted: sizes, counts,
 * addresses and round numbers are all bounded before use.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "dest.h"
#include "stream.h"

struct dest {
	struct dm_conn c;
	bool alive;		/* the connection can still carry an ERR */
	uint8_t *mem;
	uint64_t bytes, npages;
	unsigned int round;	/* the next END_ROUND expected */
	bool final;
	uint64_t pages_rx;
	enum dm_drop drop;	/* test: where to drop this connection */
	uint64_t drop_arg;
	uint64_t max_bytes;	/* largest guest accepted */
	bool dropped;
	char mode[17];
	uint64_t gpa[DM_BATCH_MAX];
	struct iovec iov[DM_BATCH_MAX];
	char err[400];
};

static int fail(struct dest *d, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(d->err, sizeof(d->err), fmt, ap);
	va_end(ap);
	return -EPROTO;
}

/* Where we are, for messages about a broken stream. */
static const char *where(struct dest *d, char *buf, size_t len)
{
	snprintf(buf, len, "in round %u, after %" PRIu64 " pages and %" PRIu64 " bytes",
		 d->round, d->pages_rx, d->c.bytes_in);
	return buf;
}

/* A receive error while reading `what`: truncation or a socket error. */
static int recv_fail(struct dest *d, int err, const char *what)
{
	char w[120];

	if (err == -ENODATA || err == -ECONNRESET) {
		d->alive = false;
		return fail(d, "truncated stream: the connection closed in the middle of %s (%s)",
			    what, where(d, w, sizeof(w)));
	}
	return fail(d, "receiving %s: %s", what, strerror(-err));
}

static int hello(struct dest *d)
{
	struct dm_hello h;
	int err = dm_recv(&d->c, &h, sizeof(h));
	uint16_t major, minor;
	uint32_t ps;

	if (err == -ENODATA) {
		d->alive = false;
		return fail(d, "truncated stream: the connection closed before the stream header");
	}
	if (err)
		return recv_fail(d, err, "the stream header");
	if (memcmp(h.magic, DM_MAGIC, 8))
		return fail(d, "not a dirtymig stream: the header does not start with \"%s\"", DM_MAGIC);
	major = le16toh(h.major);
	minor = le16toh(h.minor);
	if (major != DM_VERSION_MAJOR)
		return fail(d, "unsupported stream version %u.%u: this destination speaks version %u.x",
			    major, minor, DM_VERSION_MAJOR);
	ps = le32toh(h.page_size);
	if (ps != DM_PAGE)
		return fail(d, "stream page size %u is not supported (only %u)", ps, DM_PAGE);
	d->bytes = le64toh(h.guest_bytes);
	if (!d->bytes || d->bytes % DM_PAGE || d->bytes > d->max_bytes)
		return fail(d, "stream guest size %" PRIu64 " bytes is not a page multiple in (0, %llu]",
			    d->bytes, (unsigned long long)d->max_bytes);
	d->npages = d->bytes / DM_PAGE;
	memcpy(d->mode, h.mode, 16);
	d->mode[16] = 0;
	for (char *p = d->mode; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			*p = '?';
	d->mem = mmap(NULL, d->bytes, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (d->mem == MAP_FAILED) {
		d->mem = NULL;
		return fail(d, "cannot allocate %" PRIu64 " bytes of guest memory: %s", d->bytes,
			    strerror(errno));
	}
	if ((err = dm_send_rec(&d->c, DM_HELLO_OK, 0, 0)))
		return fail(d, "answering the header: %s", strerror(-err));
	return le32toh(h.flags) & DM_HELLO_LAST ? 1 : 0;
}

static int pages(struct dest *d, const struct dm_rec *r)
{
	uint32_t n = r->count;
	char w[120];
	int err;

	if (d->final)
		return fail(d, "malformed stream: a page record after the final marker");
	if (!n || n > DM_BATCH_MAX)
		return fail(d, "malformed stream: a page record of %u pages (1..%u allowed) %s",
			    n, DM_BATCH_MAX, where(d, w, sizeof(w)));
	if ((err = dm_recv(&d->c, d->gpa, n * sizeof(d->gpa[0]))))
		return recv_fail(d, err, "a page record's addresses");
	for (uint32_t i = 0; i < n; i++) {
		uint64_t gpa = le64toh(d->gpa[i]);

		if (gpa % DM_PAGE || gpa >= d->bytes)
			return fail(d, "malformed stream: page address %#" PRIx64 " is %s the %" PRIu64
				    "-byte guest (%s)", gpa, gpa % DM_PAGE ? "not page aligned in" : "outside",
				    d->bytes, where(d, w, sizeof(w)));
		d->iov[i].iov_base = d->mem + gpa;
		d->iov[i].iov_len = DM_PAGE;
	}
	if ((err = dm_recv_iov(&d->c, d->iov, (int)n)))
		return recv_fail(d, err, "a page record's data");
	d->pages_rx += n;
	if (d->drop == DM_DROP_PAGES && d->pages_rx >= d->drop_arg) {
		d->dropped = true;
		return -ECONNABORTED;
	}
	return 0;
}

static int hashes(struct dest *d)
{
	uint64_t *h;
	int err;

	if (!d->final)
		return fail(d, "malformed stream: hashes requested before the final marker");
	h = malloc(d->npages * sizeof(*h));
	if (!h)
		return fail(d, "out of memory for %" PRIu64 " page hashes", d->npages);
	for (uint64_t p = 0; p < d->npages; p++)
		h[p] = htole64(dm_page_hash(d->mem + p * DM_PAGE));
	err = dm_send_rec(&d->c, DM_HASHES, 0, d->npages);
	if (!err)
		err = dm_send(&d->c, h, d->npages * sizeof(*h));
	free(h);
	return err ? fail(d, "sending page hashes: %s", strerror(-err)) : 0;
}

/* The record loop of one migration; 0 after BYE (or a close after FINAL). */
static int records(struct dest *d)
{
	char w[120];

	for (;;) {
		struct dm_rec r;
		int err = dm_recv_rec(&d->c, &r);

		if (err == -ENODATA && d->final)
			return 0;	/* all was acknowledged; the source just left */
		if (err == -ENODATA) {
			d->alive = false;
			return fail(d, "truncated stream: the connection closed before the final marker (%s)",
				    where(d, w, sizeof(w)));
		}
		if (err)
			return recv_fail(d, err, "a record header");
		switch (r.type) {
		case DM_PAGES:
			if ((err = pages(d, &r)))
				return err;
			break;
		case DM_END_ROUND:
		case DM_FINAL:
			if (d->final)
				return fail(d, "malformed stream: a round marker after the final marker");
			if (r.arg != d->round)
				return fail(d, "malformed stream: %s marker for round %" PRIu64 ", expected round %u",
					    r.type == DM_FINAL ? "final" : "round", r.arg, d->round);
			if ((r.type == DM_FINAL && d->drop == DM_DROP_FINAL) ||
			    (r.type == DM_END_ROUND && d->drop == DM_DROP_ROUND && r.arg == d->drop_arg)) {
				d->dropped = true;
				return -ECONNABORTED;
			}
			if ((err = dm_send_rec(&d->c, DM_ACK, 0, r.arg)))
				return fail(d, "acknowledging round %u: %s", d->round, strerror(-err));
			if (r.type == DM_FINAL)
				d->final = true;
			else
				d->round++;
			break;
		case DM_HASH_REQ:
			if ((err = hashes(d)))
				return err;
			break;
		case DM_BYE:
			if (!d->final)
				return fail(d, "malformed stream: the source said goodbye before the final marker (%s)",
					    where(d, w, sizeof(w)));
			return 0;
		default:
			return fail(d, "malformed stream: unknown record type %#x (%s)", r.type,
				    where(d, w, sizeof(w)));
		}
	}
}

/* One connection. 1: it was flagged LAST; 0: more may follow; <0: refused. */
/* 2: dropped on purpose (a test fault); the source may come back. */
static int serve_one(int fd, const struct dm_dest_opts *o, enum dm_drop drop)
{
	struct dest *d = calloc(1, sizeof(*d));
	int err, last = 0;

	if (!d) {
		close(fd);
		fprintf(stderr, "dirtymig dest: out of memory\n");
		return -ENOMEM;
	}
	err = dm_conn_init(&d->c, fd);
	if (err) {
		close(fd);
		fprintf(stderr, "dirtymig dest: io_uring is not available: %s\n", strerror(-err));
		free(d);
		return err;
	}
	d->alive = true;
	d->drop = drop;
	d->drop_arg = o->drop_arg;
	d->max_bytes = o->max_guest_bytes ? o->max_guest_bytes : DM_GUEST_MAX;
	err = hello(d);
	if (err >= 0) {
		last = err;
		err = records(d);
	}
	if (d->dropped) {
		fprintf(stderr, "dirtymig dest: dropping the connection in round %u after %" PRIu64
			" pages of '%s', as --drop-at asked; waiting for a new one\n",
			d->round, d->pages_rx, d->mode);
		/* Reset, not a graceful close: as a crashed peer or a cut link looks. */
		setsockopt(d->c.fd, SOL_SOCKET, SO_LINGER, &(struct linger){ 1, 0 },
			   sizeof(struct linger));
		err = 2;
	} else if (err) {
		size_t n = strlen(d->err) < DM_ERR_MAX ? strlen(d->err) : DM_ERR_MAX;

		fprintf(stderr, "dirtymig dest: %s\n", d->err);
		/* Best effort: tell the source why, if it still listens. */
		if (d->alive && !dm_send_rec(&d->c, DM_ERR, (uint32_t)n, 0))
			dm_send(&d->c, d->err, n);
	} else if (!o->quiet) {
		printf("dirtymig dest: migration '%s' received: %u pre-copy rounds and the final one, "
		       "%" PRIu64 " pages (%.1f MiB), every round acknowledged\n", d->mode, d->round,
		       d->pages_rx, (double)d->pages_rx * DM_PAGE / (1 << 20));
		fflush(stdout);
	}
	dm_conn_close(&d->c);
	if (d->mem)
		munmap(d->mem, d->bytes);
	free(d);
	return err ? err : last;
}

int dm_dest_serve_fd(int fd, const struct dm_dest_opts *o)
{
	return serve_one(fd, o, o->drop);
}

int dm_dest_parse_drop(const char *s, struct dm_dest_opts *o)
{
	char *end;

	if (!strcmp(s, "final")) {
		o->drop = DM_DROP_FINAL;
		return 0;
	}
	if (!strncmp(s, "pages:", 6) || !strncmp(s, "round:", 6)) {
		errno = 0;
		o->drop_arg = strtoull(s + 6, &end, 10);
		if (errno || end == s + 6 || *end || (s[0] == 'p' && !o->drop_arg))
			return -EINVAL;
		o->drop = s[0] == 'p' ? DM_DROP_PAGES : DM_DROP_ROUND;
		return 0;
	}
	return -EINVAL;
}

int dm_dest_serve(int lfd, const struct dm_dest_opts *o)
{
	enum dm_drop drop = o->drop;	/* the first session only */
	unsigned int done = 0;
	int bad = 0;

	for (;;) {
		int fd, rc, err = dm_accept(lfd, &fd);

		if (err) {
			fprintf(stderr, "dirtymig dest: accept: %s\n", strerror(-err));
			return 1;
		}
		rc = serve_one(fd, o, drop);
		if (rc == 2) {
			drop = DM_DROP_NONE;
			continue;
		}
		if (rc < 0) {
			bad = 1;
			if (!o->keep_going)
				return 1;
			continue;
		}
		done++;
		if (rc == 1 || (o->max && done >= o->max))
			return bad;
	}
}
