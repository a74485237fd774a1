/* SPDX-License-Identifier: MIT */
/*
 * gproto_state.h - the host side of the guest bitmap protocol, shared by its
 * three files: gproto.c (the region, its configuration, the source's
 * ops), gproto_harvest.c (dirty bits, pins and carried pages into the
 * view) and gproto_trust.c (tracking generations and whether the guest is
 * trusted).
 * Nothing here is installed.
 *
 * Trust: the guest may write anything anywhere in the region. Geometry
 * (layout, page count, range) lives in struct dirty_gp and is never read
 * back from the region; every index is bounded by it.
 */
#ifndef LIBDIRTY_GPROTO_PRIV_H
#define LIBDIRTY_GPROTO_PRIV_H

#include <pthread.h>
#include <stdatomic.h>

#include "core.h"
#include "libdirty/gproto.h"
#include "hbm_mark.h"
#include "libdirty/proto.h"

/* Guest words are read with acquire (LDA) or seq_cst (LDX); see gproto_harvest.c. */
#define LDA(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LDX(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)

struct dirty_gp {
	int fd;
	uint8_t *base;
	uint64_t file_size;		/* what QEMU is told: >= lay.region_size */
	char *path;			/* kept only to unlink at destroy */
	struct dirty_proto_header *hdr;	/* shared: untrusted */
	struct dirty_proto_header expect;	/* what the host wrote */
	struct dirty_proto_layout lay;
	uint64_t *dirty, *summary, *pin;
	uint64_t gpa, npages, page_size;
	unsigned int shift;
	struct dirty_gp_config cfg;
	struct dirty_source *src;

	struct hbm carried;	/* DEFER: pages kept back, host-private */
	/*
	 * DEFER: claims keep pinned pages back into `carried` until final
	 * begins; both sides take carry_lock, so a page kept back either
	 * lands before final releases every carried page, or is not kept.
	 */
	pthread_mutex_t carry_lock;
	bool final_started;	/* under carry_lock */

	/* Trust (gproto_trust.c), all under lock. */
	pthread_mutex_t lock;
	enum dirty_gp_state state;
	char reason[160];
	char waiting[64];	/* waiting_on()'s words */
	char loss_reason[160];	/* why trust was last lost */
	uint64_t gen;		/* the host's tracking generation */
	bool tracking;
	double track_time;	/* tracking last turned on */
	double gen_time;	/* gen last raised */
	bool alive;		/* the guest showed life since tracking turned on */
	uint64_t last_hb;
	double last_hb_change;
	uint64_t trust_gained, trust_lost;

	_Atomic uint64_t harvested, pinned_sent, carried_sent, kept_back;	/* relaxed: statistics */
};

/* gproto_trust.c */
/*
 * Judge the guest now (with gp->lock held) and return its state. Gaining
 * trust marks the whole range dirty: nothing the guest did while it was
 * not trusted can be vouched for.
 */
enum dirty_gp_state __gp_judge(struct dirty_gp *gp);
/* Raise the tracking generation (with gp->lock held). */
void __gp_raise_gen(struct dirty_gp *gp);
int __gp_ready(struct dirty_source *src);
int __gp_healthy(struct dirty_source *src);

/* gproto_harvest.c */
int __gp_sync(struct dirty_source *src);
int __gp_final(struct dirty_source *src);
int __gp_prepare_read(struct dirty_source *src, struct dirty_run *runs,
		      size_t *n, size_t max);
uint64_t __gp_held_bytes(struct dirty_source *src);
/* Valid bits of dirty (or pin) word w: the last one may be short. */
uint64_t __gp_word_mask(const struct dirty_gp *gp, uint64_t w);

#endif /* LIBDIRTY_GPROTO_PRIV_H */
