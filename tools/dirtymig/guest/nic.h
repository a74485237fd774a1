/* SPDX-License-Identifier: MIT */
/*
 * nic.h - a simulated pass-through NIC and its guest driver (nic.c). The
 * device writes received packets through a second mapping of guest RAM
 * (its "DMA", invisible to CPU-side tracking, as real DMA is); the driver
 * reports its mappings through the guest bitmap protocol.
 *
 * Guest-physical layout of the NIC's area [base, base + bytes): its RX
 * descriptor ring, then its buffer pool.
 */
#ifndef DIRTYMIG_NIC_H
#define DIRTYMIG_NIC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libdirty/guest.h"
#include "worker.h"

#define NIC_PAGE 4096ull

/* How the driver finishes with a received buffer (each path reports DMA differently). */
#define NIC_SYNC_UNMAP 0	/* sync_for_cpu, then unmap (either dirties) */
#define NIC_UNMAP 1		/* unmap, then read (dma_unmap_single alone) */
#define NIC_SYNC 2		/* sync_for_cpu and recycle still mapped (a page pool) */
const char *nic_completion_name(int c);

/* One RX descriptor, in guest memory (device and driver share it). */
struct nic_desc {
	uint64_t gpa;		/* buffer, one page; written by the driver */
	uint32_t len;		/* written by the device */
	uint32_t flags;		/* NIC_DESC_* */
};
#define NIC_DESC_READY 1u	/* posted by the driver: the device may fill it */
#define NIC_DESC_DONE 2u	/* filled by the device: the driver may take it */

struct nic_config {
	uint8_t *cpu;		/* guest RAM as the CPU (driver) sees it */
	uint8_t *dma;		/* guest RAM as the device sees it */
	uint64_t base, bytes;	/* the NIC's area: ring, then pool */
	unsigned int ring;	/* RX descriptors */
	double pkt_rate;	/* packets per second */
	unsigned int pkt_size;	/* bytes the device writes per packet (<= 4096) */
	int completion;		/* NIC_* */
};

/* Bytes of the area a ring of that many descriptors and pool need. */
uint64_t nic_area_bytes(unsigned int ring, uint64_t pool_bytes);

struct nic {
	struct nic_config cfg;
	struct dirty_guest *g;	/* the guest driver's protocol handle */
	uint64_t desc_gpa, desc_bytes;
	uint64_t pool_gpa, pool_pages;
	/* Device state (its registers: host memory, not guest memory). */
	unsigned int dev_next;
	uint64_t seq;
	/* Driver state. */
	unsigned int drv_next;
	uint64_t pool_next;
	uint8_t *pool_mapped;	/* NIC_SYNC: pool pages mapped so far */
	struct worker dev, drv;	/* the device's thread, the driver's */
	_Atomic uint64_t packets;	/* DMA-written by the device */
	_Atomic uint64_t drops;		/* arrived with no buffer posted */
	_Atomic uint64_t completed;	/* taken by the driver */
	_Atomic uint64_t bad;		/* packets that read back wrong, failed calls */
	char err[200];			/* the first failure */
};

/* The driver opens the protocol region the host created (gp_fd) and posts its ring; a failure leaves nothing to undo. */
int nic_init(struct nic *n, const struct nic_config *cfg, int gp_fd, char *err, size_t errlen);
void nic_fini(struct nic *n);
int nic_start_device(struct nic *n);
void nic_stop_device(struct nic *n);
int nic_start_driver(struct nic *n);
void nic_stop_driver(struct nic *n);
/* A test fault: the driver's protocol agent stops (no heartbeat, no acknowledgement). */
int nic_silence_agent(struct nic *n);

#endif /* DIRTYMIG_NIC_H */
