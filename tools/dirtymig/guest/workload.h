/* SPDX-License-Identifier: MIT */
/*
 * workload.h - the guest a migration moves: guest RAM (a memfd mapped
 * twice: the CPU mapping, and a "DMA" mapping only the device writes,
 * invisible to CPU-side tracking as real DMA is), vCPUs dirtying pages at
 * a set rate (a real KVM guest, vcpu_kvm.h, or host threads, vcpu_threads.h),
 * and a simulated pass-through NIC (nic.h) whose guest driver reports its
 * DMA mappings through the guest bitmap protocol.
 *
 * Guest-physical layout: the NIC owns [nic_base, nic_base + nic_bytes)
 * (nic_base is 0 with vCPU threads, VKVM_LOW under a KVM guest, above the
 * payload's own pages); the vCPUs write the rest. The NIC sits low so a
 * migration's first pass (in address order) sends its pool early and the
 * device keeps writing it for the rest of the pass.
 */
#ifndef DIRTYMIG_WORKLOAD_H
#define DIRTYMIG_WORKLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nic.h"
#include "vcpu_kvm.h"
#include "vcpu_threads.h"

#define WL_PAGE 4096ull
#define WL_MAX_VCPUS VTHREADS_MAX

#define WL_VCPU_AUTO 0
#define WL_VCPU_THREADS 1
#define WL_VCPU_KVM 2

struct wl_config {
	uint64_t mem_bytes;	/* guest RAM */
	unsigned int vcpus;	/* vCPUs (threads; a KVM guest runs their total rate on one) */
	double dirty_rate;	/* pages per second, per vCPU */
	double pkt_rate;	/* packets per second received by the NIC */
	unsigned int pkt_size;	/* bytes the device writes per packet (64..4096) */
	unsigned int ring;	/* RX descriptors */
	uint64_t pool_bytes;	/* RX buffer pool the driver cycles through */
	uint64_t seed;
	int vcpu_kind;		/* WL_VCPU_*: AUTO is resolved before wl_create */
	int kvm_mode;		/* enum dirty_kvm_mode, for WL_VCPU_KVM */
	int nic_completion;	/* NIC_*: how the driver finishes with a buffer */
};

struct workload {
	struct wl_config cfg;
	int memfd;
	uint8_t *cpu;		/* vCPU view: tracked by the uffd source or KVM */
	uint8_t *dma;		/* device view: tracked by nothing */
	uint64_t bytes, npages;
	uint64_t nic_base, nic_bytes;
	struct vkvm *kvm;	/* WL_VCPU_KVM, else NULL */
	struct vthreads threads;	/* WL_VCPU_THREADS */
	struct nic nic;
	bool nic_ready;
};

/* 0 if cfg describes a guest that can be built; else -EINVAL and why. */
int wl_check(const struct wl_config *cfg, char *err, size_t errlen);
/* Guest RAM with its initial contents (the same for the same seed), and its vCPUs. */
int wl_create(struct workload *w, const struct wl_config *cfg, char *err, size_t errlen);
void wl_destroy(struct workload *w);

/* The NIC's driver opens the protocol region the host created (gp_fd). */
int wl_nic_attach(struct workload *w, int gp_fd, char *err, size_t errlen);

/* Run / stop the guest: vCPUs and driver are "the VM", the device is apart. */
int wl_start(struct workload *w);
int wl_stop_device(struct workload *w);
int wl_stop_vcpus(struct workload *w);

/* Pages the vCPUs have written so far. */
uint64_t wl_vcpu_writes(const struct workload *w);

/* Copy one page out of guest RAM while the guest may be writing it. */
void wl_read_page(const struct workload *w, uint64_t gpa, void *dst);

#endif /* DIRTYMIG_WORKLOAD_H */
