/* SPDX-License-Identifier: MIT */
/*
 * stream.h - the dirtymig wire format (version 1): what a source sends,
 * what a destination answers, the page hash both sides compute for the
 * final comparison, and the source's side of a stream (batching pages
 * into records over a modelled link). The transport is conn.h.
 *
 * A stream is one TCP connection per migration. Every integer is little
 * endian. The source speaks first:
 *
 *   HELLO       struct dm_hello (48 bytes): magic "DIRTYMIG", version,
 *               page size, guest size, flags, mode name
 *               <- HELLO_OK record, or ERR
 *   PAGES       record {type 1, count n, arg 0}, then n guest-physical
 *               addresses (u64), then n pages of 4096 bytes in that order
 *   END_ROUND   record {type 2, 0, round}   <- ACK {0x82, 0, round}
 *   FINAL       record {type 3, 0, round}   <- ACK {0x82, 0, round}
 *               (the ACK of FINAL is where downtime ends)
 *   HASH_REQ    record {type 4, 0, 0}       <- HASHES {0x84, 0, npages}
 *               then npages u64 page hashes (dm_page_hash)
 *   BYE         record {type 5, 0, 0}; the connection closes
 *
 * A destination that finds anything else (wrong magic or version, an
 * unknown record, a page outside the guest, a round out of order, the
 * connection closing before FINAL) answers ERR {0x8f, length, 0} plus a
 * message of that length, closes, and exits non-zero.
 */
#ifndef DIRTYMIG_STREAM_H
#define DIRTYMIG_STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "conn.h"

#define DM_MAGIC "DIRTYMIG"
#define DM_VERSION_MAJOR 1
#define DM_VERSION_MINOR 0
#define DM_PAGE 4096u
#define DM_BATCH 64		/* pages per PAGES record the source sends */
#define DM_BATCH_MAX 1024	/* the most a destination accepts in one record */
#define DM_GUEST_MAX (1ull << 40)	/* largest guest a destination accepts */
#define DM_ERR_MAX 512		/* longest ERR message */

enum dm_rec_type {
	DM_PAGES = 1,
	DM_END_ROUND = 2,
	DM_FINAL = 3,
	DM_HASH_REQ = 4,
	DM_BYE = 5,
	DM_HELLO_OK = 0x81,
	DM_ACK = 0x82,
	DM_HASHES = 0x84,
	DM_ERR = 0x8f,
};

/* HELLO flags. */
#define DM_HELLO_LAST 0x1u	/* the destination exits after this migration */

struct dm_hello {
	char magic[8];
	uint16_t major, minor;
	uint32_t page_size;
	uint64_t guest_bytes;
	uint32_t flags;
	uint32_t reserved;	/* 0 */
	char mode[16];		/* NUL-padded, informational */
};
_Static_assert(sizeof(struct dm_hello) == 48, "wire layout");

struct dm_rec {
	uint32_t type;
	uint32_t count;
	uint64_t arg;
};
_Static_assert(sizeof(struct dm_rec) == 16, "wire layout");

/*
 * A 64-bit hash of one page: four multiply-rotate lanes, then a
 * splitmix finaliser. Not cryptographic; it only has to make two
 * different pages collide with negligible probability.
 */
static inline uint64_t dm_rotl(uint64_t x, unsigned int r)
{
	return x << r | x >> (64 - r);
}

static inline uint64_t dm_page_hash(const void *page)
{
	const uint64_t k = 0x9e3779b97f4a7c15ull;
	uint64_t a = 1, b = 2, c = 3, d = 4, w[4];
	const unsigned char *p = page;

	for (unsigned int i = 0; i < DM_PAGE; i += 32) {
		memcpy(w, p + i, 32);
		a = dm_rotl((a ^ w[0]) * k, 31);
		b = dm_rotl((b ^ w[1]) * k, 29);
		c = dm_rotl((c ^ w[2]) * k, 27);
		d = dm_rotl((d ^ w[3]) * k, 25);
	}
	a ^= b * 3 + c * 5 + d * 7;
	a = (a ^ (a >> 30)) * 0xbf58476d1ce4e5b9ull;
	a = (a ^ (a >> 27)) * 0x94d049bb133111ebull;
	return a ^ (a >> 31);
}

/* A record header in wire order. */
int dm_send_rec(struct dm_conn *c, uint32_t type, uint32_t count, uint64_t arg);
int dm_recv_rec(struct dm_conn *c, struct dm_rec *r);

/* ---- the source's side of a stream ------------------------------------ */

struct dm_batch {
	struct dm_rec hdr;	/* wire order, filled at flush */
	uint64_t gpa[DM_BATCH];	/* wire order */
	uint8_t *data;		/* DM_BATCH pages */
	uint32_t n;
};

struct dm_tx {
	struct dm_conn c;
	bool connected;
	double rate;		/* link cap, bytes per second; 0: none */
	uint64_t link_free_ns;	/* when the modelled link has sent all so far */
	struct dm_batch b[2];	/* one filling while the other is on the wire */
	int cur;
	uint64_t npages;
	char err[DM_ERR_MAX + 64];
};

/*
 * Connect, send HELLO, wait for HELLO_OK. link_bytes_per_s caps the
 * sending rate (a token bucket: each send takes len / rate of link time,
 * and the sender waits until the link has carried it). On failure
 * tx->err says why.
 */
int dm_tx_open(struct dm_tx *tx, const char *addr, double link_bytes_per_s,
	       uint64_t guest_bytes, const char *mode, uint32_t flags);
/* Room for page gpa in the current batch; the caller copies 4096 bytes there. */
int dm_tx_page(struct dm_tx *tx, uint64_t gpa, void **slot);
/* Flush, send END_ROUND (or FINAL), and wait for the destination's ACK. */
int dm_tx_end_round(struct dm_tx *tx, unsigned int round, int final);
/* Ask for the destination's page hashes (npages of them) into out. */
int dm_tx_hashes(struct dm_tx *tx, uint64_t *out, uint64_t npages);
int dm_tx_bye(struct dm_tx *tx);
void dm_tx_close(struct dm_tx *tx);

#endif /* DIRTYMIG_STREAM_H */
