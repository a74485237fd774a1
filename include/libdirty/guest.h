/* SPDX-License-Identifier: MIT */
/*
 * libdirty/guest.h - guest-side API of the bitmap protocol: what a guest
 * driver (or the guest agent) calls around DMA.
 *
 *   map            before the device may touch [gpa, gpa + len): pins pages
 *   sync_for_cpu   the device finished writing, the CPU will look: dirties
 *   sync_for_device the CPU is handing the buffer back to the device
 *   unmap          the device is done with the mapping: dirties, then unpins
 *
 * FROM_DEVICE and BIDIRECTIONAL dirty on sync_for_cpu and unmap; TO_DEVICE
 * never dirties. A page's pin bit stays set while any mapping of it exists
 * among the clients of one pin table (a reference count per page):
 *  - connected to the dirty-agent daemon (dirty_guest_connect), the table
 *    is one per region, shared by every client of the agent: any number
 *    of guest processes may map the same page, and its pin bit stays set
 *    until the last of them unmaps it;
 *  - opened alone (dirty_guest_open_*), the table is this process's: a
 *    pin bit found set by another process is never cleared by this one
 *    (counted in the region's pin_conflicts), and the process that set a
 *    bit clears it at its own last unmap, whoever else still maps the
 *    page. Use the agent when more than one process maps DMA buffers.
 * All calls are thread-safe and return 0 or -errno; the calling thread's
 * message is in dirty_guest_last_error().
 *
 * This is libdirty-guest, a library of its own (pkg-config libdirty-guest):
 * it needs nothing of the host library, only liburcu-bp.
 */
#ifndef LIBDIRTY_GUEST_H
#define LIBDIRTY_GUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dirty_guest;

/* Message for the calling thread's most recent failed guest call ("" if none). */
const char *dirty_guest_last_error(void);

enum dirty_dma_dir {
	DIRTY_TO_DEVICE = 1,
	DIRTY_FROM_DEVICE = 2,
	DIRTY_BIDIRECTIONAL = 3,
};

/*
 * Open a region the host created: a /dev/shm file, a memfd, or a PCI BAR
 * resource file (ivshmem). The mapping may be larger than the region (a
 * BAR is a power of two). Refuses, with a message saying why, a region
 * that is not version 1 or whose geometry is inconsistent.
 */
int dirty_guest_open_fd(int fd, struct dirty_guest **out);
int dirty_guest_open_path(const char *path, struct dirty_guest **out);
/* Memory already mapped by the caller (a bare payload, a test). */
int dirty_guest_open_mem(void *base, uint64_t size, struct dirty_guest **out);

/* Where dirty-agent listens unless told otherwise (dirty_guest_connect(NULL)). */
#define DIRTY_AGENT_SOCKET "/run/dirty-agent/agent.sock"

/*
 * Become a client of the dirty-agent daemon listening on socket_path
 * (NULL: DIRTY_AGENT_SOCKET): it passes the region and the region's shared
 * pin table, which map and unmap then use directly, with no message per
 * call. Everything the agent sends is checked: the region as
 * dirty_guest_open_fd checks it, the table against the region, the slot
 * it assigns. Errors: what connect(2) says about the socket (-ENOENT,
 * -ECONNREFUSED, -EACCES: is the daemon running?), the agent's own
 * refusal (its -errno, its message), -ETIMEDOUT when it does not answer
 * within 10 s, -ECONNRESET when it hangs up first, -EPROTO for anything
 * malformed or inconsistent (nothing is kept: no fd, no mapping).
 *
 * A connected handle runs one library thread that answers the agent's
 * grace-period requests (an RCU grace period, as dirty_guest_poll does);
 * the agent acknowledges a tracking generation once every client
 * answered, and owns the region's heartbeat, ack_gen, state and version:
 * dirty_guest_poll() does nothing (returns 0) and
 * dirty_guest_agent_start() returns -EINVAL. If the agent sends anything
 * malformed, or goes away, the thread stops answering for good (the host
 * then sees the guest unhealthy through the agent: safe). A handle
 * belongs to the process that connected it: a child after fork() must
 * not map or unmap through it (the agent's grace periods do not cover
 * the child) but connect its own; its dirty_guest_close() of the
 * inherited handle only releases the child's copy.
 */
int dirty_guest_connect(const char *socket_path, struct dirty_guest **out);

/*
 * Close. Mappings still open keep their pins set: the host then keeps
 * resending those pages, which is safe. Opened alone, they are counted as
 * the region's pin_leaks and the agent state becomes STOPPED; connected,
 * the references stay in the shared table (the agent reports them from
 * this client's slot) and the agent is told BYE.
 */
void dirty_guest_close(struct dirty_guest *g);

int dirty_guest_map(struct dirty_guest *g, uint64_t gpa, uint64_t len,
		    enum dirty_dma_dir dir);
int dirty_guest_unmap(struct dirty_guest *g, uint64_t gpa, uint64_t len,
		      enum dirty_dma_dir dir);
int dirty_guest_sync_for_cpu(struct dirty_guest *g, uint64_t gpa,
			     uint64_t len, enum dirty_dma_dir dir);
int dirty_guest_sync_for_device(struct dirty_guest *g, uint64_t gpa,
				uint64_t len, enum dirty_dma_dir dir);

/* One piece of a scattered buffer: guest-physical bytes, any alignment. */
struct dirty_dma_piece {
	uint64_t gpa;
	uint64_t len;
};

/*
 * The same calls over a scatter-gather list, in one call: every piece is
 * checked against the region first, so a list with a bad piece changes
 * nothing (-ERANGE); map is all or nothing; unmap sets the dirty bits of
 * every piece before it clears any pin.
 */
int dirty_guest_map_v(struct dirty_guest *g, const struct dirty_dma_piece *pieces,
		      size_t n, enum dirty_dma_dir dir);
int dirty_guest_unmap_v(struct dirty_guest *g, const struct dirty_dma_piece *pieces,
			size_t n, enum dirty_dma_dir dir);
int dirty_guest_sync_for_cpu_v(struct dirty_guest *g, const struct dirty_dma_piece *pieces,
			       size_t n, enum dirty_dma_dir dir);

/*
 * The guest-physical pieces of this process's [va, va + len), from
 * /proc/self/pagemap, physically contiguous pages joined: what a
 * userspace driver (VFIO, UIO) passes to the calls above. The buffer must
 * stay resident while it is used, which DMA-mapping it (VFIO_IOMMU_MAP_DMA)
 * or mlock() ensures. Returns the number of pieces; if that is more than
 * max, only max were written: call again with more room. Errors: -EPERM
 * when the kernel hides frame numbers (reading them needs CAP_SYS_ADMIN),
 * -EFAULT when a page is not resident, -errno from pagemap.
 */
ssize_t dirty_guest_pieces(const void *va, size_t len,
			   struct dirty_dma_piece *out, size_t max);

/*
 * Heartbeat and handshake: bump the heartbeat and, if the host raised the
 * tracking generation, wait until no thread of this process can still be
 * inside an operation that saw tracking off (an RCU grace period), then
 * acknowledge. Returns 1 if it acknowledged a new generation, 0 if there
 * was nothing new. Call it periodically, or run dirty_guest_agent_start().
 * On a connected handle both are the agent's job: poll returns 0 and
 * does nothing, agent_start returns -EINVAL.
 */
int dirty_guest_poll(struct dirty_guest *g);
/* A thread that polls every interval_ms until dirty_guest_close(). */
int dirty_guest_agent_start(struct dirty_guest *g, unsigned int interval_ms);
/*
 * Stop that thread (its heartbeat stops: the host judges the guest silent
 * after its timeout). -EINVAL if none runs.
 */
int dirty_guest_agent_stop(struct dirty_guest *g);

struct dirty_guest_info {
	uint64_t gpa_base, npages, page_size;
	uint16_t host_major, host_minor;
	int tracking;		/* the host's tracking flag as last seen */
	/*
	 * Opened alone: pages this process holds pinned. Connected: the
	 * references this client holds (its slot's count: a page mapped
	 * twice counts twice).
	 */
	uint64_t pinned_pages;
	int connected;		/* 1: a client of dirty-agent (dirty_guest_connect) */
	uint32_t slot;		/* connected: this client's slot in the pin table */
};
int dirty_guest_info(struct dirty_guest *g, struct dirty_guest_info *info);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_GUEST_H */
