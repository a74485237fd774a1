/* SPDX-License-Identifier: MIT */
/*
 * agent_wire.h - the messages between dirty-agent and its clients, on a
 * UNIX SOCK_SEQPACKET socket: one message per datagram, host byte order
 * (both ends run in the same guest), fixed sizes per type. Shared by the
 * daemon (guest-agent/daemon/) and the library (dirty_guest_connect).
 *
 *   client                              agent
 *   HELLO {flags}                  ->
 *                                  <-   WELCOME {slot, geometry} + fds
 *                                       [region, pin table] (SCM_RIGHTS),
 *                                       or REFUSED {err, text}, then EOF
 *   ... map/unmap in shared memory, no messages ...
 *                                  <-   GRACE {gen}   (host raised gen)
 *   GRACE_DONE {gen}               ->   after an RCU grace period: no
 *                                       operation that read tracking off
 *                                       is still running in the client
 *   BYE                            ->   closing; references still held
 *                                       stay (pins set) and are reported
 *
 *   STATUS {flags} from a HELLO with AGENT_HELLO_STATUS (no slot, no
 *   fds) is answered by one STATUS_TEXT (human or JSON).
 *
 * Everything a peer sends is checked by agent_wire_parse() before use:
 * magic, version, a length that is exactly the type's, zero reserved
 * fields, a NUL-terminated text. A message that fails is a protocol error
 * and the agent drops that client (its pins stay).
 */
#ifndef LIBDIRTY_AGENT_WIRE_H
#define LIBDIRTY_AGENT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define AGENT_WIRE_MAGIC 0x4741444cu	/* "LDAG" in memory */
#define AGENT_WIRE_VERSION 1u
#define AGENT_TEXT_MAX 65000u		/* STATUS_TEXT payload, NUL included */
#define AGENT_REFUSED_TEXT 240u

enum agent_msg_type {
	AGENT_HELLO = 1,	/* client -> agent */
	AGENT_WELCOME = 2,	/* agent -> client, with 2 fds */
	AGENT_REFUSED = 3,	/* agent -> client, then the agent hangs up */
	AGENT_GRACE = 4,	/* agent -> client */
	AGENT_GRACE_DONE = 5,	/* client -> agent */
	AGENT_BYE = 6,		/* client -> agent */
	AGENT_STATUS = 7,	/* status client -> agent */
	AGENT_STATUS_TEXT = 8,	/* agent -> status client */
};

struct agent_hdr {
	uint32_t magic;		/* AGENT_WIRE_MAGIC */
	uint16_t version;	/* AGENT_WIRE_VERSION */
	uint16_t type;		/* enum agent_msg_type */
	uint32_t len;		/* bytes of the whole message */
	uint32_t reserved;	/* 0 */
};

#define AGENT_HELLO_STATUS 0x1u	/* a status query, not a DMA client: no slot */

struct agent_hello {
	struct agent_hdr h;
	uint32_t flags;		/* AGENT_HELLO_* */
	uint32_t reserved;
};

struct agent_welcome {
	struct agent_hdr h;
	uint32_t slot;		/* this client's pintable slot */
	uint32_t page_shift;
	uint64_t gpa_base, npages;
	uint64_t region_bytes;	/* bytes to map of the region fd (>= the region) */
	uint64_t table_bytes;	/* bytes of the pin table fd */
};

struct agent_refused {
	struct agent_hdr h;
	int32_t err;		/* a -errno */
	uint32_t reserved;
	char text[AGENT_REFUSED_TEXT];	/* NUL-terminated: why, and what to do */
};

struct agent_gen {		/* GRACE and GRACE_DONE */
	struct agent_hdr h;
	uint64_t gen;
};

struct agent_bye {
	struct agent_hdr h;
};

#define AGENT_STATUS_JSON 0x1u

struct agent_status {
	struct agent_hdr h;
	uint32_t flags;		/* AGENT_STATUS_* */
	uint32_t reserved;
};

struct agent_text {		/* STATUS_TEXT: the header, then text, NUL-terminated */
	struct agent_hdr h;
	char text[];
};

/* The largest message either side sends or accepts. */
#define AGENT_MSG_MAX (sizeof(struct agent_hdr) + AGENT_TEXT_MAX)

/* A parsed message: which type, and its fields. */
struct agent_msg {
	enum agent_msg_type type;
	union {
		struct agent_hello hello;
		struct agent_welcome welcome;
		struct agent_refused refused;
		struct agent_gen gen;
		struct agent_status status;
	} u;
	const char *text;	/* STATUS_TEXT: inside the caller's buffer */
	size_t text_len;	/* without the NUL */
};

/*
 * Check buf[0, len) as one message and fill *out. Returns the type (> 0),
 * or -EBADMSG / -EPROTO with why[] saying what was wrong (why may be NULL).
 */
int agent_wire_parse(const void *buf, size_t len, struct agent_msg *out,
		     char *why, size_t whylen);

/* Fill the header of a message of this type and size. */
void agent_wire_hdr(struct agent_hdr *h, enum agent_msg_type type, size_t len);

#endif /* LIBDIRTY_AGENT_WIRE_H */
