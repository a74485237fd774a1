/* SPDX-License-Identifier: MIT */
/*
 * libdirty/gproto.h - the guest bitmap protocol's host side: the shared region a guest
 * reports its DMA through, as a PRECISE source (wire layout: proto.h; guest
 * API: guest.h).
 */
#ifndef LIBDIRTY_GPROTO_H
#define LIBDIRTY_GPROTO_H

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the guest bitmap protocol: host side ------------------------------ */

/*
 * The host creates the shared region (libdirty/proto.h), hands its fd to
 * the VMM (QEMU ivshmem-plain with a memory-backend-file, or any shared
 * mapping) and attaches it to the view as a PRECISE source. Geometry is
 * the host's own: nothing the guest writes into the region is trusted for
 * an address or a length.
 */
struct dirty_gp;

enum dirty_gp_pinned {
	/* Pinned pages are marked dirty every sync (resent each round). */
	DIRTY_GP_PINNED_SEND = 0,
	/*
	 * Pinned pages are left to the final round: a claim keeps back the
	 * pinned pages it took (the source's prepare_read) and the source
	 * carries them until they are unpinned (then marked) or until final.
	 * Saves resending buffers the device keeps writing.
	 */
	DIRTY_GP_PINNED_DEFER = 1,
};

enum dirty_gp_fallback {
	/* Unhealthy guest at final: every covered page is marked dirty. */
	DIRTY_GP_FALLBACK_ALL_DIRTY = 0,
	/* Unhealthy guest at final: final fails (-EHOSTDOWN), so the caller aborts. */
	DIRTY_GP_FALLBACK_ABORT = 1,
};

/* How big the region's file is (dirty_gp_config.size). */
enum dirty_gp_size {
	/* A power of two when the region is a file (a PCI BAR), else exact. */
	DIRTY_GP_SIZE_AUTO = 0,
	DIRTY_GP_SIZE_EXACT,	/* the protocol's own length */
	/*
	 * The next power of two >= that length (and >= 4 KiB): what QEMU's
	 * ivshmem-plain needs, a BAR over a file of exactly its size.
	 */
	DIRTY_GP_SIZE_POW2,
};

/* dirty_gp_config.flags */
/* Remove the file at cfg.path in dirty_gp_destroy() (and on a failed create). */
#define DIRTY_GP_UNLINK 0x1u

struct dirty_gp_config {
	uint64_t gpa, len;	/* guest-physical range the guest reports on */
	uint64_t page_size;	/* 0: 4 KiB */
	/*
	 * Create this file (it must not exist; O_EXCL): e.g. /dev/shm/NAME for
	 * QEMU's memory-backend-file. It belongs to the caller, who removes
	 * it, unless DIRTY_GP_UNLINK is set. NULL: an anonymous memfd.
	 */
	const char *path;
	unsigned int pinned;	/* enum dirty_gp_pinned */
	unsigned int fallback;	/* enum dirty_gp_fallback */
	/*
	 * The agent is silent once its heartbeat has not moved for this long
	 * while tracking is on and after it first showed life; 0: never.
	 */
	unsigned int heartbeat_timeout_ms;
	/* A live guest acknowledges a generation within this; 0: 1000. */
	unsigned int ack_timeout_ms;
	unsigned int size;	/* enum dirty_gp_size */
	unsigned int flags;	/* DIRTY_GP_UNLINK */
};

int dirty_gp_create(struct dirty_view *view, const struct dirty_gp_config *cfg,
		    struct dirty_gp **out);
/* Detach and free; the view frees it too if it goes first. */
void dirty_gp_destroy(struct dirty_gp *gp);
int dirty_gp_fd(const struct dirty_gp *gp);
/*
 * Bytes of the region's file: what QEMU must be told (ivshmem's
 * memory-backend-file size=). A guest may map more than the protocol uses.
 */
uint64_t dirty_gp_size(const struct dirty_gp *gp);
struct dirty_source *dirty_gp_source(struct dirty_gp *gp);

/*
 * Ask guests to start (on) or stop setting dirty bits: raises the tracking
 * generation. The source's start and stop callbacks do this, and
 * dirty_view_start() waits for a running guest's acknowledgement (the
 * source's ready callback) before it returns, so the first pass never
 * starts early.
 */
int dirty_gp_track(struct dirty_gp *gp, int on);
/* 1: acknowledged; 0: not yet; -ETIMEDOUT: past ack_timeout_ms. */
int dirty_gp_acked(struct dirty_gp *gp);
/*
 * Rewrite the host's part of the region header (after something
 * overwrote it: DIRTY_GP_BROKEN) and raise a fresh generation; the guest
 * is trusted again once it acknowledges that generation.
 */
int dirty_gp_restore(struct dirty_gp *gp);

/* 1 if the guest holds gpa's page pinned, 0 if not, -ERANGE outside. */
int dirty_gp_pinned(struct dirty_gp *gp, uint64_t gpa);

/*
 * Whether the guest's bits can stand for its DMA right now. TRUSTED
 * ("healthy") means all of: tracking is on; every host-owned header field
 * is as the host wrote it; the guest's own words are sane; the current
 * tracking generation was acknowledged (after a grace period in every
 * client); and the agent's heartbeat moved within heartbeat_timeout_ms.
 * "Healthy at final" is exactly TRUSTED when the final round judges it;
 * otherwise the final round applies the fallback.
 *
 * Trust follows the guest's life: silence before the guest first showed
 * life, or while tracking is off, is no fault (WAITING, IDLE); trust lost
 * (UNTRUSTED: silence, a missing acknowledgement, insane guest words)
 * comes back when the guest acknowledges a fresh generation, raised by
 * the loss; and every time trust is gained the source marks its whole
 * range dirty, a new first pass, so nothing from an untrusted window is
 * missed. A header overwritten (BROKEN) stays so until dirty_gp_restore().
 */
enum dirty_gp_state {
	DIRTY_GP_IDLE = 0,	/* tracking off */
	DIRTY_GP_WAITING,	/* no acknowledgement of the generation yet: not a fault */
	DIRTY_GP_TRUSTED,
	DIRTY_GP_UNTRUSTED,	/* trust lost; back with a fresh acknowledgement */
	DIRTY_GP_BROKEN,	/* header overwritten; dirty_gp_restore() */
};

struct dirty_gp_health {
	int healthy;		/* state == DIRTY_GP_TRUSTED */
	int state;		/* enum dirty_gp_state */
	char reason[160];	/* why not trusted, for a user */
	uint64_t heartbeat_age_ms;	/* since the guest's heartbeat last moved (0: never) */
	uint64_t generation, acked_generation;
	uint64_t trust_gained, trust_lost;	/* times, since create */
	uint32_t guest_state;	/* DIRTY_PROTO_GUEST_* */
	uint64_t pin_conflicts, pin_leaks, bad_ranges;	/* guest-reported */
	uint64_t pages_harvested;	/* dirty bits moved into the view */
	uint64_t pages_pinned_sent;	/* pinned pages marked (SEND, final) */
	uint64_t pages_kept_back;	/* pinned pages claims kept back (DEFER) */
	uint64_t pages_carried;		/* carried over right now (DEFER) */
	uint64_t pages_carried_sent;	/* carried pages marked once unpinned */
	char last_loss[160];	/* why trust was last lost ("" if never) */
};
int dirty_gp_health(struct dirty_gp *gp, struct dirty_gp_health *h);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_GPROTO_H */
