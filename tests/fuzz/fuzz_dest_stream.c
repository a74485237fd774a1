/* SPDX-License-Identifier: MIT */
/*
 * fuzz_dest_stream.c - libFuzzer target: dirtymig's destination
 * (tools/dirtymig/transport/dest.c) reading a migration stream a hostile
 * or broken source sends: every record type, truncated and oversized
 * counts, addresses outside the guest or unaligned, rounds out of order,
 * hashes before the final marker, a connection that ends anywhere.
 *
 * Per input: a UNIX stream socketpair; a thread writes the input as the
 * source and closes its side, reading whatever the destination answers;
 * the destination serves that one stream (dm_dest_serve_fd) with its
 * guest capped at 64 MiB so one input cannot ask for a terabyte of page
 * hashes. Invariants: no crash, leak or sanitizer report; the stream is
 * refused (< 0) or accepted (0, 1) and never dropped (2: no fault was
 * asked for); an accepted stream carried a whole HELLO and a FINAL.
 *
 * Seeds: tests/fuzz/corpus/fuzz_dest_stream/ (tests/fuzz/gen-dest-corpus.py).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dest.h"
#include "stream.h"

#define CHECK(c)                                                                     \
	do {                                                                         \
		if (!(c)) {                                                          \
			fprintf(stderr, "fuzz_dest_stream: invariant failed at line %d: %s\n", \
				__LINE__, #c);                                       \
			abort();                                                     \
		}                                                                    \
	} while (0)

struct source {
	int fd;
	const uint8_t *data;
	size_t len;
};

/* Write the input, close for writing, then drain the answers to EOF. */
static void *source_main(void *arg)
{
	struct source *s = arg;
	char sink[4096];
	size_t off = 0;

	while (off < s->len) {
		ssize_t n = send(s->fd, s->data + off, s->len - off, MSG_NOSIGNAL);

		if (n <= 0)
			break;	/* the destination gave up and closed */
		off += (size_t)n;
	}
	shutdown(s->fd, SHUT_WR);
	while (recv(s->fd, sink, sizeof(sink), 0) > 0)
		;
	return NULL;
}

/* Does the input hold a FINAL record header anywhere after the HELLO? */
static int has_final(const uint8_t *d, size_t n)
{
	for (size_t i = sizeof(struct dm_hello); i + sizeof(struct dm_rec) <= n; i++) {
		uint32_t t;

		memcpy(&t, d + i, sizeof(t));
		if (t == DM_FINAL)
			return 1;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dm_dest_opts o = { .quiet = true, .max_guest_bytes = 64ull << 20 };
	struct source s = { .data = data, .len = size };
	pthread_t t;
	int sv[2], rc;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return 0;
	s.fd = sv[0];
	if (pthread_create(&t, NULL, source_main, &s)) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	rc = dm_dest_serve_fd(sv[1], &o);	/* takes sv[1] */
	pthread_join(t, NULL);
	close(sv[0]);
	CHECK(rc != 2);
	CHECK(rc <= 1);
	if (rc >= 0)
		CHECK(size >= sizeof(struct dm_hello) + sizeof(struct dm_rec) && has_final(data, size));
	return 0;
}
