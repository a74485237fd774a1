/* SPDX-License-Identifier: MIT */
/*
 * workload.h - the guest a migration moves: guest RAM (a memfd mapped
 * twice: the CPU mapping, and a "DMA" mapping only the device writes,
 * invisible to CPU-side tracking as real DMA is), vCPUs dirtying pages at
 * a set rate (a KVM guest, vcpu_kvm.c, tracked by the KVM adapter; or host
 * threads writing the CPU mapping, tracked by the uffd source), and a
 * simulated pass-through NIC (nic.c) whose guest driver reports its DMA
 * mappings through the guest bitmap protocol.
 *
 * Guest-physical layout: the NIC owns [nic_base, nic_base + nic_bytes):
 * its RX descriptor ring, then its buffer pool (nic_base is 0 with vCPU
 * threads, 1 MiB with a KVM guest, above the payload's own pages); the
 * vCPUs write the rest. The NIC sits low so a migration's first pass (in
 * address order) sends its pool early and the device keeps writing it for
 * the rest of the pass.
 */
#ifndef DIRTYMIG_WORKLOAD_H
#define DIRTYMIG_WORKLOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "libdirty/guest.h"

#define WL_PAGE 4096ull
#define WL_MAX_VCPUS 64

struct wl_config {
	uint64_t mem_bytes;	/* guest RAM */
	unsigned int vcpus;	/* writer threads */
	double dirty_rate;	/* pages per second, per vCPU */
	double pkt_rate;	/* packets per second received by the NIC */
	unsigned int pkt_size;	/* bytes the device writes per packet (<= 4096) */
	unsigned int ring;	/* RX descriptors */
	uint64_t pool_bytes;	/* RX buffer pool the driver cycles through */
	uint64_t seed;
	int vcpu_kind;		/* WL_VCPU_*: AUTO is resolved before wl_create */
	int kvm_mode;		/* enum dirty_kvm_mode; AUTO: ring, else clear-log, else bitmap */
	int nic_completion;	/* WL_NIC_*: how the driver finishes with a buffer */
};
/* The driver syncs the buffer for the CPU, then unmaps it (either dirties). */
#define WL_NIC_SYNC_UNMAP 0
/* The driver unmaps the buffer, then reads it (dma_unmap_single alone). */
#define WL_NIC_UNMAP 1
/*
 * The driver syncs the buffer for the CPU and recycles it still mapped (a
 * page pool): buffers are mapped once, on first use, and never unmapped.
 */
#define WL_NIC_SYNC 2
const char *wl_nic_completion_name(int c);
#define WL_VCPU_AUTO 0
#define WL_VCPU_THREADS 1
#define WL_VCPU_KVM 2
/* KVM mode: the payload's GDT, command blocks, stacks, lists and image. */
#define WL_KVM_LOW (1ull << 20)

/* One RX descriptor, in guest memory (device and driver share it). */
struct nic_desc {
	uint64_t gpa;		/* buffer, one page; written by the driver */
	uint32_t len;		/* written by the device */
	uint32_t flags;		/* NIC_DESC_* */
};
#define NIC_DESC_READY 1u	/* posted by the driver: the device may fill it */
#define NIC_DESC_DONE 2u	/* filled by the device: the driver may take it */

struct workload;

struct nic {
	struct workload *w;
	struct dirty_guest *g;	/* the guest driver's protocol handle */
	uint64_t desc_gpa, desc_bytes;
	uint64_t pool_gpa, pool_pages;
	unsigned int ring;
	/* Device state (its registers: host memory, not guest memory). */
	unsigned int dev_next;
	uint64_t seq;
	/* Driver state. */
	unsigned int drv_next;
	uint64_t pool_next;
	uint8_t *pool_mapped;	/* WL_NIC_SYNC: pool pages mapped so far */
	pthread_t dev_thread, drv_thread;
	_Atomic bool dev_stop, drv_stop;
	bool dev_running, drv_running;
	_Atomic uint64_t packets;	/* DMA-written by the device */
	_Atomic uint64_t drops;		/* arrived with no buffer posted */
	_Atomic uint64_t completed;	/* taken by the driver */
	_Atomic uint64_t bad;		/* packets that read back wrong, failed calls */
	char err[200];			/* the first failure */
};

struct vcpu {
	struct workload *w;
	unsigned int id;
	uint64_t seed, stamp;
	pthread_t thread;
	bool running;
};

struct workload {
	struct wl_config cfg;
	int memfd;
	uint8_t *cpu;		/* vCPU view: tracked by the uffd source */
	uint8_t *dma;		/* device view: tracked by nothing */
	uint64_t bytes, npages;
	uint64_t nic_base;	/* 0, or WL_KVM_LOW under a KVM guest (payload below) */
	uint64_t nic_bytes;	/* the NIC owns [nic_base, +nic_bytes), vCPUs the rest */
	struct wl_kvm *kvm;	/* --vcpu=kvm: the VM (vcpu_kvm.c), else NULL */
	struct vcpu vcpu[WL_MAX_VCPUS];
	_Atomic bool vcpu_stop;
	_Atomic uint64_t vcpu_writes;
	struct nic nic;
};

/* 0 if cfg describes a guest that can be built; else -EINVAL and why. */
int wl_check(const struct wl_config *cfg, char *err, size_t errlen);
/* Guest RAM with its initial contents (the same for the same seed). */
int wl_create(struct workload *w, const struct wl_config *cfg, char *err, size_t errlen);
void wl_destroy(struct workload *w);

/* The NIC's driver opens the protocol region the host created (gp_fd). */
int wl_nic_attach(struct workload *w, int gp_fd, char *err, size_t errlen);

/* Run / stop the guest: vCPUs and driver are "the VM", the device is apart. */
int wl_start(struct workload *w);
int wl_stop_device(struct workload *w);
int wl_stop_vcpus(struct workload *w);

/* Copy one page out of guest RAM while the guest may be writing it. */
void wl_read_page(const struct workload *w, uint64_t gpa, void *dst);

/* vcpu_kvm.c: a real KVM guest whose one vCPU stamps pages (WRITE_PAGES). */
struct dirty_view;
struct dirty_kvm;
/* 0 if /dev/kvm opens and KVM_CREATE_VM works, else -errno and why. */
int wl_kvm_usable(char *why, size_t len);
/*
 * 0 if this kernel can track in `mode` (enum dirty_kvm_mode) as the
 * harness uses it, else -EOPNOTSUPP naming the missing capability.
 */
int wl_kvm_mode_supported(int mode, char *why, size_t len);
int wl_kvm_create(struct workload *w, char *err, size_t errlen);
void wl_kvm_destroy(struct workload *w);
/* The KVM adapter as the view's CPU-side source (and its reaper in ring mode). */
int wl_kvm_attach(struct workload *w, struct dirty_view *view, struct dirty_kvm **out);
void wl_kvm_detach(struct workload *w);
int wl_kvm_start(struct workload *w);
void wl_kvm_stop(struct workload *w);
const char *wl_kvm_mode(const struct workload *w);

/* nic.c */
int nic_init(struct nic *n, struct workload *w, int gp_fd, char *err, size_t errlen);
void nic_fini(struct nic *n);
int nic_start_device(struct nic *n);
void nic_stop_device(struct nic *n);
int nic_start_driver(struct nic *n);
void nic_stop_driver(struct nic *n);

/* Shared by the guest's threads: absolute 1 ms ticks, work owed per tick. */
struct pacer {
	double rate;		/* events per second */
	double owed;
	uint64_t next_ns, last_ns;
};
void pacer_init(struct pacer *p, double rate);
/* Sleep to the next tick; returns how many events are due now. */
uint64_t pacer_tick(struct pacer *p);

#endif /* DIRTYMIG_WORKLOAD_H */
