/* SPDX-License-Identifier: MIT */
/*
 * workload.c - guest RAM (one memfd, two mappings) and the parts that
 * write it, started and stopped as the migration driver asks.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rng.h"
#include "workload.h"

int wl_check(const struct wl_config *cfg, char *err, size_t errlen)
{
	uint64_t pool = cfg->pool_bytes / WL_PAGE, nic = nic_area_bytes(cfg->ring, cfg->pool_bytes);

	if (pool <= cfg->ring) {
		snprintf(err, errlen, "the RX buffer pool (%llu pages) must be larger than the ring (%u descriptors)",
			 (unsigned long long)pool, cfg->ring);
		return -EINVAL;
	}
	if (cfg->vcpu_kind == WL_VCPU_KVM)
		nic += VKVM_LOW;
	if (cfg->mem_bytes % WL_PAGE || nic + (1ull << 20) > cfg->mem_bytes) {
		snprintf(err, errlen, "guest RAM of %llu MiB leaves under 1 MiB for the vCPUs beside the NIC's %.1f MiB "
			 "of ring and buffer pool", (unsigned long long)(cfg->mem_bytes >> 20), (double)nic / (1 << 20));
		return -EINVAL;
	}
	if (cfg->vcpus > WL_MAX_VCPUS || cfg->pkt_size < 64 || cfg->pkt_size > WL_PAGE) {
		snprintf(err, errlen, "at most %d vCPUs and packets of 64..4096 bytes", WL_MAX_VCPUS);
		return -EINVAL;
	}
	return 0;
}

static int create_vcpus(struct workload *w, char *err, size_t errlen)
{
	const struct wl_config *c = &w->cfg;
	uint64_t first = (w->nic_base + w->nic_bytes) / WL_PAGE;

	if (c->vcpu_kind == WL_VCPU_KVM) {
		/* One vCPU runs what the threads would, so every mode writes as much. */
		struct vkvm_config kc = {
			.memfd = w->memfd, .bytes = w->bytes, .first_page = first, .pages = w->npages - first,
			.rate = c->dirty_rate * (c->vcpus ? c->vcpus : 1), .seed = c->seed ^ 0x4b564d5f76637075ull,
			.mode = c->kvm_mode,
		};

		return vkvm_create(&kc, &w->kvm, err, errlen);
	}
	vthreads_init(&w->threads, &(struct vthreads_config){
		.ram = w->cpu, .first_page = first, .pages = w->npages - first,
		.count = c->vcpus, .rate = c->dirty_rate, .seed = c->seed });
	return 0;
}

int wl_create(struct workload *w, const struct wl_config *cfg, char *err, size_t errlen)
{
	uint64_t s = cfg->seed;
	int e;

	memset(w, 0, sizeof(*w));
	w->memfd = -1;
	w->cfg = *cfg;
	w->bytes = cfg->mem_bytes;
	w->npages = w->bytes / WL_PAGE;
	if ((e = wl_check(cfg, err, errlen)))
		return e;
	w->nic_bytes = nic_area_bytes(cfg->ring, cfg->pool_bytes);
	w->nic_base = cfg->vcpu_kind == WL_VCPU_KVM ? VKVM_LOW : 0;
	w->memfd = memfd_create("dirtymig-guest-ram", MFD_CLOEXEC);
	if (w->memfd < 0 || ftruncate(w->memfd, (off_t)w->bytes) < 0) {
		snprintf(err, errlen, "cannot create %llu MiB of guest RAM (memfd): %s",
			 (unsigned long long)(w->bytes >> 20), strerror(errno));
		return -errno;
	}
	w->cpu = mmap(NULL, w->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, w->memfd, 0);
	w->dma = mmap(NULL, w->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, w->memfd, 0);
	if (w->cpu == MAP_FAILED || w->dma == MAP_FAILED) {
		snprintf(err, errlen, "cannot map guest RAM: %s", strerror(errno));
		return -errno;
	}
	/* Every page populated and distinct, as a booted guest's would be. */
	for (uint64_t p = 0; p < w->npages; p++) {
		uint64_t *pg = (uint64_t *)(w->cpu + p * WL_PAGE);

		pg[0] = p;
		pg[1] = splitmix64(&s);
	}
	return create_vcpus(w, err, errlen);
}

void wl_destroy(struct workload *w)
{
	wl_stop_device(w);
	wl_stop_vcpus(w);
	if (w->nic_ready)
		nic_fini(&w->nic);
	vkvm_destroy(w->kvm);
	if (w->cpu && w->cpu != MAP_FAILED)
		munmap(w->cpu, w->bytes);
	if (w->dma && w->dma != MAP_FAILED)
		munmap(w->dma, w->bytes);
	if (w->memfd >= 0)
		close(w->memfd);
	memset(w, 0, sizeof(*w));
	w->memfd = -1;
}

int wl_nic_attach(struct workload *w, int gp_fd, char *err, size_t errlen)
{
	struct nic_config nc = {
		.cpu = w->cpu, .dma = w->dma, .base = w->nic_base, .bytes = w->nic_bytes,
		.ring = w->cfg.ring, .pkt_rate = w->cfg.pkt_rate, .pkt_size = w->cfg.pkt_size,
		.completion = w->cfg.nic_completion,
	};
	int e = nic_init(&w->nic, &nc, gp_fd, err, errlen);

	w->nic_ready = e == 0;
	return e;
}

int wl_start(struct workload *w)
{
	int err = w->kvm ? vkvm_start(w->kvm) : vthreads_start(&w->threads);

	if (err || (err = nic_start_driver(&w->nic)))
		return err;
	return nic_start_device(&w->nic);
}

int wl_stop_device(struct workload *w)
{
	if (w->nic_ready)
		nic_stop_device(&w->nic);
	return 0;
}

int wl_stop_vcpus(struct workload *w)
{
	if (w->kvm)
		vkvm_stop(w->kvm);
	else
		vthreads_stop(&w->threads);
	if (w->nic_ready)
		nic_stop_driver(&w->nic);	/* the driver runs on the guest's vCPUs */
	return 0;
}

uint64_t wl_vcpu_writes(const struct workload *w)
{
	return w->kvm ? vkvm_writes(w->kvm) : atomic_load_explicit(&w->threads.writes, memory_order_relaxed);
}

/*
 * Word by word with relaxed atomics: a vCPU or the device may be writing
 * the page right now. A torn copy is fine (the write that tore it marked
 * the page dirty again); a data race in C terms is not.
 */
void wl_read_page(const struct workload *w, uint64_t gpa, void *dst)
{
	const uint64_t *s = (const uint64_t *)(w->cpu + gpa);
	uint64_t *d = dst;

	for (unsigned int i = 0; i < WL_PAGE / 8; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}
