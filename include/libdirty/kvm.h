/* SPDX-License-Identifier: MIT */
/*
 * libdirty/kvm.h - the KVM source: dirty bitmap, clear-log and dirty rings of a VM
 * the caller owns.
 */
#ifndef LIBDIRTY_KVM_H
#define LIBDIRTY_KVM_H

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- KVM adapter -------------------------------------------------------- */

/*
 * A source fed by KVM's dirty log for a VM the caller (the VMM) owns: it
 * gets the VM fd, the memslot layout and the vCPU fds from the caller and
 * creates no hidden kernel state. Capabilities that must be enabled before
 * memslots and vCPUs exist are enabled by the VMM, with
 * dirty_kvm_enable() or its own KVM_ENABLE_CAP.
 */
struct dirty_kvm;

enum dirty_kvm_mode {
	DIRTY_KVM_AUTO = 0,	/* ring if supported, else clear-log, else bitmap */
	DIRTY_KVM_BITMAP,	/* KVM_GET_DIRTY_LOG (reads and re-protects) */
	DIRTY_KVM_CLEAR_LOG,	/* MANUAL_DIRTY_LOG_PROTECT2: re-protect per claimed batch */
	DIRTY_KVM_RING,		/* per-vCPU dirty rings */
};

struct dirty_kvm_caps {
	int manual_protect2;	/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 value */
	int ring;		/* KVM_CAP_DIRTY_LOG_RING: max ring bytes, 0 = none */
	int ring_acq_rel;	/* KVM_CAP_DIRTY_LOG_RING_ACQ_REL */
	int ring_with_bitmap;	/* KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP */
};

/* Probe once (fd: /dev/kvm or a VM fd); never fails on a missing cap. */
int dirty_kvm_probe(int fd, struct dirty_kvm_caps *caps);
/* The mode AUTO resolves to for these caps. */
enum dirty_kvm_mode dirty_kvm_pick_mode(const struct dirty_kvm_caps *caps);
const char *dirty_kvm_mode_name(enum dirty_kvm_mode mode);
/*
 * Enable what `mode` needs on a fresh VM (before memslots and vCPUs):
 * MANUAL_PROTECT_ENABLE for clear-log (never INITIALLY_SET), the ring
 * (ACQ_REL when available) of ring_bytes for the ring. A missing
 * capability is -EOPNOTSUPP with its name in dirty_last_error().
 */
int dirty_kvm_enable(int vm_fd, enum dirty_kvm_mode mode, uint32_t ring_bytes);

struct dirty_kvm_config {
	int vm_fd;
	enum dirty_kvm_mode mode;	/* as enabled on the VM; not AUTO */
	uint32_t ring_bytes;	/* ring mode: the size enabled */
	uint64_t clear_chunk_pages;	/* clear-log: pages per clear ioctl, a multiple
					   of 64; 0 = 262144 (1 GiB, as QEMU's default) */
};

int dirty_kvm_create(struct dirty_view *view, const struct dirty_kvm_config *cfg,
		     struct dirty_kvm **out);
void dirty_kvm_destroy(struct dirty_kvm *kvm);
struct dirty_source *dirty_kvm_source(struct dirty_kvm *kvm);

/*
 * Memslots, as the VMM registered them (slot = as_id << 16 | id, logging
 * enabled). Adding one while tracking marks all its pages dirty: their
 * first round. Removing one harvests it one last time first.
 */
int dirty_kvm_add_slot(struct dirty_kvm *kvm, uint32_t slot, uint64_t gpa,
		       uint64_t size);
int dirty_kvm_remove_slot(struct dirty_kvm *kvm, uint32_t slot);
/* Ring mode: map vCPU fd's ring; returns the vCPU's index. */
int dirty_kvm_add_vcpu(struct dirty_kvm *kvm, int vcpu_fd);
/*
 * Ring mode: the VMM calls this on KVM_EXIT_DIRTY_RING_FULL from the vCPU
 * thread; it harvests every ring and resets them, so KVM_RUN can resume.
 */
int dirty_kvm_ring_full(struct dirty_kvm *kvm);
/* Ring mode: a thread that harvests every interval_us, taking no VMM lock. */
int dirty_kvm_reaper_start(struct dirty_kvm *kvm, unsigned int interval_us);
void dirty_kvm_reaper_stop(struct dirty_kvm *kvm);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_KVM_H */
