/* SPDX-License-Identifier: MIT */
/*
 * dest.h - the destination of a migration: receives a stream (stream.h)
 * into its own copy of guest memory, acknowledges rounds, answers with
 * page hashes, and refuses anything malformed.
 */
#ifndef DIRTYMIG_DEST_H
#define DIRTYMIG_DEST_H

#include <stdbool.h>
#include <stdint.h>

/* Test faults: where the destination resets its first connection. */
enum dm_drop {
	DM_DROP_NONE,
	DM_DROP_PAGES,		/* once drop_arg pages arrived */
	DM_DROP_ROUND,		/* at the END_ROUND marker of round drop_arg, unacknowledged */
	DM_DROP_FINAL,		/* at the FINAL marker, unacknowledged (the vCPUs are stopped) */
};

struct dm_dest_opts {
	bool keep_going;	/* after a bad stream, serve the next connection */
	bool quiet;		/* no line per migration received */
	unsigned int max;	/* migrations to serve; 0: until one flagged LAST */
	enum dm_drop drop;	/* test only: reset the first connection there */
	uint64_t drop_arg;
	uint64_t max_guest_bytes;	/* largest guest accepted; 0: DM_GUEST_MAX */
};

/* "pages:N", "round:N" or "final" into o->drop / o->drop_arg; -EINVAL if not. */
int dm_dest_parse_drop(const char *s, struct dm_dest_opts *o);

/*
 * Serve migrations on a listening socket, one connection each. Returns 0
 * when every stream was good, 1 when one was refused (the reason is on
 * stderr, prefixed "dirtymig dest: ") or the socket failed.
 */
int dm_dest_serve(int lfd, const struct dm_dest_opts *o);
/*
 * One stream on a connected socket (taken, closed on return): 0 good, 1
 * good and flagged LAST, 2 dropped on purpose, -errno refused. What the
 * fuzzer drives (tests/fuzz/fuzz_dest_stream.c).
 */
int dm_dest_serve_fd(int fd, const struct dm_dest_opts *o);

#endif /* DIRTYMIG_DEST_H */
