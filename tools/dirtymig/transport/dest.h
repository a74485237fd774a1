/* SPDX-License-Identifier: MIT */
/*
 * dest.h - the destination of a migration: receives a stream (stream.h)
 * into its own copy of guest memory, acknowledges rounds, answers with
 * page hashes, and refuses anything malformed.
 */
#ifndef DIRTYMIG_DEST_H
#define DIRTYMIG_DEST_H

#include <stdbool.h>

struct dm_dest_opts {
	bool keep_going;	/* after a bad stream, serve the next connection */
	bool quiet;		/* no line per migration received */
	unsigned int max;	/* migrations to serve; 0: until one flagged LAST */
	uint64_t drop_after_pages;	/* test only: drop the first connection after
					   receiving this many pages; 0: never */
};

/*
 * Serve migrations on a listening socket, one connection each. Returns 0
 * when every stream was good, 1 when one was refused (the reason is on
 * stderr, prefixed "dirtymig dest: ") or the socket failed.
 */
int dm_dest_serve(int lfd, const struct dm_dest_opts *o);

#endif /* DIRTYMIG_DEST_H */
