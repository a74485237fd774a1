/* SPDX-License-Identifier: MIT */
/*
 * guest_priv.h - what the guest library's own files share: the export
 * macro, the error message and the handle itself (guest.c opens regions
 * and runs the DMA calls on it; guest_connect.c attaches it to the
 * dirty-agent daemon's shared pin table). The guest library
 * (libdirty-guest) is built apart from the host library and uses none of
 * it: a guest kernel or VM image ships it alone. Nothing here is
 * installed.
 */
#ifndef LIBDIRTY_GUEST_PRIV_H
#define LIBDIRTY_GUEST_PRIV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "libdirty/proto.h"
#include "pintable.h"

#define GUEST_API __attribute__((visibility("default")))

/* Record a message for dirty_guest_last_error() and return err (a -errno). */
int __dirty_guest_err(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

struct dirty_guest {
	uint8_t *base;			/* the region as mapped */
	uint64_t map_size;
	bool unmap_on_close;
	struct dirty_proto_header *hdr;
	uint64_t *dirty, *summary, *pin;
	struct dirty_proto_layout lay;
	/* Geometry: checked once at open, never read back from the region. */
	uint64_t gpa_base, npages;
	unsigned int page_shift;
	uint16_t host_major, host_minor;
	/*
	 * The pin table's count words (pintable.h), one per page: private
	 * (an anonymous MAP_NORESERVE mapping, dirty_guest_open_*) or the
	 * shared table's (dirty_guest_connect). pin_map/pin_map_len is what
	 * close unmaps: the counts alone, or the whole shared table.
	 */
	_Atomic uint32_t *pincnt;
	void *pin_map;
	uint64_t pin_map_len;
	_Atomic uint64_t npinned;	/* relaxed: statistics (private table only) */
	/*
	 * Connected only (NULL otherwise): this client's slot.refs in the
	 * shared table; map adds, unmap subtracts, one relaxed add per call.
	 */
	_Atomic uint64_t *refs;
	/* Standalone: the agent thread of dirty_guest_agent_start(). */
	pthread_mutex_t poll_lock;
	uint64_t acked_gen;		/* under poll_lock */
	pthread_t agent;
	bool agent_running;
	_Atomic bool agent_stop;
	unsigned int agent_interval_ms;
	/* Connected (dirty_guest_connect): guest_connect.c. */
	bool connected;
	/*
	 * Set with connected: stops the server thread, says BYE, unmaps the
	 * table. A pointer the connecting layer fills in, so the handle's own
	 * code (this layer) never calls up into guest_connect.c.
	 */
	void (*disconnect)(struct dirty_guest *g);
	int sock;			/* to the agent; -1 when not connected */
	uint32_t slot;
	struct pintable_header *tbl;	/* the shared table, = pin_map */
	pthread_t server;		/* answers GRACE with GRACE_DONE */
	bool server_running;
	pid_t owner;			/* the process that connected (and runs server) */
};

/*
 * Check the region at base (size bytes mapped) and fill g's geometry and
 * bitmap pointers. Writes nothing into the region. 0 or -errno with the
 * message set.
 */
int __dirty_guest_attach(struct dirty_guest *g, void *base, uint64_t size);

#endif /* LIBDIRTY_GUEST_PRIV_H */
