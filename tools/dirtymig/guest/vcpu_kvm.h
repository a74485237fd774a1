/* SPDX-License-Identifier: MIT */
/*
 * vcpu_kvm.h - --vcpu=kvm: the vCPU is a real KVM guest (support/kvm's
 * VMM and payload), so the CPU side of tracking is KVM's dirty log through
 * libdirty's KVM adapter, not userfaultfd.
 *
 * Guest RAM (the caller's memfd) is memslot 0 at GPA 0. The payload's own
 * pages (GDT, command blocks, stacks, image) take [0, VKVM_LOW) of it and
 * are ordinary, migrated RAM.
 */
#ifndef DIRTYMIG_VCPU_KVM_H
#define DIRTYMIG_VCPU_KVM_H

#include <stddef.h>
#include <stdint.h>

#define VKVM_LOW (1ull << 20)

struct vkvm_config {
	int memfd;		/* guest RAM */
	uint64_t bytes;
	uint64_t first_page;	/* the vCPU writes pages [first_page, +pages) */
	uint64_t pages;
	double rate;		/* pages per second */
	uint64_t seed;
	int mode;		/* enum dirty_kvm_mode; AUTO: ring, else clear-log, else bitmap */
};

struct vkvm;
struct dirty_view;
struct dirty_kvm;

/* 0 if /dev/kvm opens and KVM_CREATE_VM works, else -errno and why. */
int vkvm_usable(char *why, size_t len);
/* 0 if this kernel can track in `mode` as the harness uses it, else -EOPNOTSUPP naming the capability. */
int vkvm_mode_supported(int mode, char *why, size_t len);

int vkvm_create(const struct vkvm_config *cfg, struct vkvm **out, char *err, size_t errlen);
void vkvm_destroy(struct vkvm *k);
const char *vkvm_mode_name(const struct vkvm *k);

/* The KVM adapter as the view's CPU-side source (and its reaper in ring mode). */
int vkvm_attach(struct vkvm *k, struct dirty_view *view, struct dirty_kvm **out);
/* Before the view goes: stops the vCPU, the reaper and the ring-full callback. */
void vkvm_detach(struct vkvm *k);

int vkvm_start(struct vkvm *k);
/* Returns with no command in flight: the guest is quiet. */
void vkvm_stop(struct vkvm *k);
uint64_t vkvm_writes(const struct vkvm *k);

#endif /* DIRTYMIG_VCPU_KVM_H */
