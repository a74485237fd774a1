/* SPDX-License-Identifier: MIT */
/*
 * modes.h - what a migration trusts to know which pages changed:
 *
 * The CPU-side source is the KVM adapter with a KVM vCPU (--vcpu=kvm),
 * or the uffd source with vCPU threads (--vcpu=threads).
 *
 *   libdirty    the merged view: the CPU-side source (vCPU writes) and
 *               the guest bitmap protocol (DMA the driver mapped)
 *   cpu-only    the CPU-side source alone, as a VMM trusting KVM's dirty
 *               log alone: DMA writes are lost
 *   all-mapped  the CPU-side source plus a source that reports every
 *               DMA-mappable page (all guest RAM) dirty at every sync and
 *               final, as VFIO type1 does without a vIOMMU (QEMU's
 *               fallback): nothing is lost, pre-copy never converges
 *
 * The guest is the same in every mode: its driver always speaks the
 * protocol; in the modes that ignore it, the region belongs to a second
 * view the migration never reads.
 */
#ifndef DIRTYMIG_MODES_H
#define DIRTYMIG_MODES_H

#include "libdirty.h"
#include "workload.h"

enum dm_mode {
	DM_MODE_LIBDIRTY,
	DM_MODE_CPU_ONLY,
	DM_MODE_ALL_MAPPED,
	DM_NMODES
};

const char *dm_mode_name(enum dm_mode m);
/* "libdirty", "cpu-only", "all-mapped": 0 and *m, or -EINVAL. */
int dm_mode_parse(const char *s, enum dm_mode *m);

struct tracking {
	enum dm_mode mode;
	struct dirty_view *view;	/* what the migration drains */
	struct dirty_view *decoy;	/* holds the protocol region when ignored */
	struct dirty_uffd *uffd;	/* --vcpu=threads */
	struct dirty_kvm *kvm;		/* --vcpu=kvm, instead of uffd */
	struct workload *w;		/* with kvm: whose VM */
	struct dirty_gp *gp;		/* always exists: the guest driver uses it */
	bool gp_in_view;
	struct dirty_source *all_mapped;
};

/*
 * Build the view and sources of mode m over w's RAM (gpa 0); pinned is the
 * guest protocol's policy for pinned pages (enum dirty_gp_pinned).
 */
int tracking_create(struct tracking *t, enum dm_mode m, struct workload *w,
		    unsigned int pinned, char *err, size_t errlen);
/* Frees the views and every source in them (the workload's NIC first). */
void tracking_destroy(struct tracking *t);

#endif /* DIRTYMIG_MODES_H */
