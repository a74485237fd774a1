/* SPDX-License-Identifier: MIT */
/*
 * nic.c - a simulated pass-through NIC and its guest driver (nic.h).
 *
 * The device (one thread) receives packets at a set rate: it takes the
 * next descriptor the driver posted, writes the packet into that buffer
 * and marks the descriptor done, all through the DMA mapping of guest
 * RAM, so no CPU-side tracking sees it. No buffer posted: the packet is
 * dropped, as a real NIC does.
 *
 * The driver (one thread, part of "the VM") uses the guest bitmap
 * protocol the way a Linux driver uses the DMA API: the descriptor ring
 * is mapped BIDIRECTIONAL for good (a coherent allocation: pinned), each
 * RX buffer is mapped FROM_DEVICE when posted; it posts pages from its
 * pool in turn. How it finishes with a received buffer is the workload's
 * choice (NIC_*), because each path reports the DMA differently:
 *   sync+unmap  sync_for_cpu (dirties), check the packet, unmap (dirties);
 *   unmap       unmap (dirties), then check the packet;
 *   sync        sync_for_cpu (dirties), check, and recycle the buffer
 *               still mapped (sync_for_device when posted again), as a
 *               page pool does: its pins never drop.
 * Its own descriptor writes go through the CPU mapping.
 *
 * Descriptor words are accessed with atomics from both mappings: the
 * release store of `flags` publishes the rest, as a doorbell would.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nic.h"
#include "pacer.h"

#define PKT_K 0x9e3779b97f4a7c15ull

const char *nic_completion_name(int c)
{
	return c == NIC_UNMAP ? "unmap" : c == NIC_SYNC ? "sync" : "sync+unmap";
}

uint64_t nic_area_bytes(unsigned int ring, uint64_t pool_bytes)
{
	uint64_t desc = (ring * sizeof(struct nic_desc) + NIC_PAGE - 1) / NIC_PAGE * NIC_PAGE;

	return desc + pool_bytes / NIC_PAGE * NIC_PAGE;
}

static struct nic_desc *desc_at(struct nic *n, uint8_t *map, unsigned int i)
{
	return (struct nic_desc *)(map + n->desc_gpa) + i;
}

static void nic_error(struct nic *n, const char *what, int err)
{
	if (atomic_fetch_add(&n->bad, 1) == 0)
		snprintf(n->err, sizeof(n->err), "%s: %s (%s)", what, strerror(-err),
			 dirty_guest_last_error());
}

/* Post the next pool page in descriptor i: hand it to the device, then publish. */
static int post(struct nic *n, unsigned int i)
{
	struct nic_desc *d = desc_at(n, n->cfg.cpu, i);
	uint64_t k = n->pool_next++ % n->pool_pages, gpa = n->pool_gpa + k * NIC_PAGE;
	int err;

	if (n->pool_mapped && n->pool_mapped[k]) {
		err = dirty_guest_sync_for_device(n->g, gpa, NIC_PAGE, DIRTY_FROM_DEVICE);
	} else {
		err = dirty_guest_map(n->g, gpa, NIC_PAGE, DIRTY_FROM_DEVICE);
		if (!err && n->pool_mapped)
			n->pool_mapped[k] = 1;
	}
	if (err)
		return err;
	__atomic_store_n(&d->gpa, gpa, __ATOMIC_RELAXED);
	__atomic_store_n(&d->len, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&d->flags, NIC_DESC_READY, __ATOMIC_RELEASE);
	return 0;
}

int nic_init(struct nic *n, const struct nic_config *cfg, int gp_fd, char *err, size_t errlen)
{
	int e;

	memset(n, 0, sizeof(*n));
	n->cfg = *cfg;
	n->desc_gpa = cfg->base;
	n->desc_bytes = (n->cfg.ring * sizeof(struct nic_desc) + NIC_PAGE - 1) / NIC_PAGE * NIC_PAGE;
	n->pool_gpa = n->desc_gpa + n->desc_bytes;
	n->pool_pages = (cfg->base + cfg->bytes - n->pool_gpa) / NIC_PAGE;
	if (cfg->completion == NIC_SYNC && !(n->pool_mapped = calloc(n->pool_pages, 1))) {
		snprintf(err, errlen, "NIC driver: out of memory");
		return -ENOMEM;
	}
	if ((e = dirty_guest_open_fd(gp_fd, &n->g)) ||
	    (e = dirty_guest_agent_start(n->g, 1)) ||
	    (e = dirty_guest_map(n->g, n->desc_gpa, n->desc_bytes, DIRTY_BIDIRECTIONAL))) {
		snprintf(err, errlen, "NIC driver: %s", dirty_guest_last_error());
		goto fail;
	}
	memset(cfg->cpu + n->desc_gpa, 0, n->desc_bytes);
	for (unsigned int i = 0; i < n->cfg.ring; i++)
		if ((e = post(n, i))) {
			snprintf(err, errlen, "NIC driver: posting RX buffer %u: %s", i, dirty_guest_last_error());
			goto fail;
		}
	return 0;
fail:
	nic_fini(n);
	return e;
}

int nic_silence_agent(struct nic *n)
{
	return n->g ? dirty_guest_agent_stop(n->g) : -EINVAL;
}

void nic_fini(struct nic *n)
{
	nic_stop_device(n);
	nic_stop_driver(n);
	/* Buffers still mapped keep their pins (counted as leaks): harmless now. */
	if (n->g)
		dirty_guest_close(n->g);
	n->g = NULL;
	free(n->pool_mapped);
	n->pool_mapped = NULL;
}

/* ---- the device ---------------------------------------------------------- */

static void dma_packet(struct nic *n, uint64_t gpa, uint64_t seq)
{
	uint64_t *p = (uint64_t *)(n->cfg.dma + gpa);
	unsigned int words = n->cfg.pkt_size / 8;

	__atomic_store_n(&p[0], seq, __ATOMIC_RELAXED);
	__atomic_store_n(&p[1], gpa, __ATOMIC_RELAXED);
	for (unsigned int i = 2; i < words; i++)
		__atomic_store_n(&p[i], seq ^ (i * PKT_K), __ATOMIC_RELAXED);
}

static void *device_main(void *arg)
{
	struct nic *n = arg;
	struct pacer pc;

	pacer_init(&pc, n->cfg.pkt_rate);
	while (!worker_stopping(&n->dev)) {
		uint64_t due = pacer_tick(&pc);

		for (uint64_t k = 0; k < due; k++) {
			struct nic_desc *d = desc_at(n, n->cfg.dma, n->dev_next % n->cfg.ring);
			uint64_t gpa;

			if (__atomic_load_n(&d->flags, __ATOMIC_ACQUIRE) != NIC_DESC_READY) {
				atomic_fetch_add_explicit(&n->drops, 1, memory_order_relaxed);
				continue;
			}
			gpa = __atomic_load_n(&d->gpa, __ATOMIC_RELAXED);
			/* Never trust a descriptor: a wild one would scribble over RAM. */
			if (gpa < n->pool_gpa || gpa % NIC_PAGE ||
			    (gpa - n->pool_gpa) / NIC_PAGE >= n->pool_pages) {
				nic_error(n, "device: descriptor points outside the buffer pool", -EFAULT);
				__atomic_store_n(&d->len, 0, __ATOMIC_RELAXED);
			} else {
				dma_packet(n, gpa, ++n->seq);
				__atomic_store_n(&d->len, n->cfg.pkt_size, __ATOMIC_RELAXED);
				atomic_fetch_add_explicit(&n->packets, 1, memory_order_relaxed);
			}
			__atomic_store_n(&d->flags, NIC_DESC_DONE, __ATOMIC_RELEASE);
			n->dev_next++;
		}
	}
	return NULL;
}

int nic_start_device(struct nic *n)
{
	return n->g ? worker_start(&n->dev, device_main, n) : 0;
}

void nic_stop_device(struct nic *n)
{
	worker_stop(&n->dev);
}

/* ---- the guest driver -------------------------------------------------- */

/* Take one completed descriptor: finish the buffer, check it, post the next. */
static void complete(struct nic *n, struct nic_desc *d, unsigned int i)
{
	uint64_t gpa = __atomic_load_n(&d->gpa, __ATOMIC_RELAXED);
	uint32_t len = __atomic_load_n(&d->len, __ATOMIC_RELAXED);
	const uint64_t *p = (const uint64_t *)(n->cfg.cpu + gpa);
	int how = n->cfg.completion, err;

	if (how != NIC_UNMAP &&
	    (err = dirty_guest_sync_for_cpu(n->g, gpa, NIC_PAGE, DIRTY_FROM_DEVICE))) {
		nic_error(n, "driver: sync_for_cpu", err);
		return;
	}
	if (how == NIC_UNMAP && (err = dirty_guest_unmap(n->g, gpa, NIC_PAGE, DIRTY_FROM_DEVICE))) {
		nic_error(n, "driver: unmap", err);
		return;
	}
	/* The CPU reads the packet: it must be the one the device wrote here. */
	if (len && (__atomic_load_n(&p[1], __ATOMIC_RELAXED) != gpa ||
		    __atomic_load_n(&p[2], __ATOMIC_RELAXED) !=
			    (__atomic_load_n(&p[0], __ATOMIC_RELAXED) ^ (2 * PKT_K))))
		nic_error(n, "driver: a received packet reads back wrong", -EIO);
	if (how == NIC_SYNC_UNMAP && (err = dirty_guest_unmap(n->g, gpa, NIC_PAGE, DIRTY_FROM_DEVICE)))
		nic_error(n, "driver: unmap", err);
	if ((err = post(n, i)))
		nic_error(n, "driver: posting a fresh buffer", err);
	atomic_fetch_add_explicit(&n->completed, 1, memory_order_relaxed);
}

static void *driver_main(void *arg)
{
	struct nic *n = arg;
	struct timespec idle = { 0, 200000 };	/* interrupt moderation: 200 us */

	while (!worker_stopping(&n->drv)) {
		unsigned int took = 0;

		while (took < n->cfg.ring) {
			unsigned int i = n->drv_next % n->cfg.ring;
			struct nic_desc *d = desc_at(n, n->cfg.cpu, i);
			int err;

			if (__atomic_load_n(&d->flags, __ATOMIC_ACQUIRE) != NIC_DESC_DONE)
				break;
			/* Completion entries were DMA-written: make them the CPU's. */
			if (!took && (err = dirty_guest_sync_for_cpu(n->g, n->desc_gpa, n->desc_bytes,
								     DIRTY_BIDIRECTIONAL)))
				nic_error(n, "driver: sync_for_cpu of the ring", err);
			complete(n, d, i);
			n->drv_next++;
			took++;
		}
		if (!took)
			nanosleep(&idle, NULL);
	}
	return NULL;
}

int nic_start_driver(struct nic *n)
{
	return n->g ? worker_start(&n->drv, driver_main, n) : 0;
}

void nic_stop_driver(struct nic *n)
{
	worker_stop(&n->drv);
}
