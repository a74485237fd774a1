/* SPDX-License-Identifier: MIT */
/*
 * workload.c - guest RAM (one memfd, two mappings) and the vCPU threads
 * that dirty it at a set rate, plus the start/stop hooks the migration
 * driver calls. vCPU writes go through the CPU mapping only, so the uffd
 * source sees them exactly as KVM's dirty log would see a vCPU's.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- pacing ------------------------------------------------------------ */

#define TICK_NS 1000000ull

void pacer_init(struct pacer *p, double rate)
{
	p->rate = rate;
	p->owed = 0;
	p->last_ns = mono_ns();
	p->next_ns = p->last_ns + TICK_NS;
}

uint64_t pacer_tick(struct pacer *p)
{
	struct timespec ts = { (time_t)(p->next_ns / 1000000000ull), (long)(p->next_ns % 1000000000ull) };
	uint64_t now, due;

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
	now = mono_ns();
	/* Far behind (a stopped guest, an overloaded host): no catch-up burst. */
	if (now - p->last_ns > 100 * TICK_NS)
		p->last_ns = now - TICK_NS;
	p->owed += p->rate * (double)(now - p->last_ns) * 1e-9;
	p->last_ns = now;
	p->next_ns += TICK_NS;
	if (p->next_ns < now)
		p->next_ns = now + TICK_NS;
	due = (uint64_t)p->owed;
	p->owed -= (double)due;
	return due;
}

/* ---- guest RAM -------------------------------------------------------- */

/* Bytes the NIC's descriptor ring and buffer pool take. */
static uint64_t nic_layout(const struct wl_config *cfg)
{
	uint64_t desc = (cfg->ring * sizeof(struct nic_desc) + WL_PAGE - 1) / WL_PAGE * WL_PAGE;

	return desc + cfg->pool_bytes / WL_PAGE * WL_PAGE;
}

int wl_check(const struct wl_config *cfg, char *err, size_t errlen)
{
	uint64_t pool = cfg->pool_bytes / WL_PAGE, nic = nic_layout(cfg);

	if (pool <= cfg->ring) {
		snprintf(err, errlen, "the RX buffer pool (%llu pages) must be larger than the ring (%u descriptors)",
			 (unsigned long long)pool, cfg->ring);
		return -EINVAL;
	}
	if (cfg->vcpu_kind == WL_VCPU_KVM)
		nic += WL_KVM_LOW;
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
	/* The NIC's ring and pool sit at the bottom of RAM; the vCPUs get the rest. */
	w->nic_bytes = nic_layout(cfg);
	w->nic_base = cfg->vcpu_kind == WL_VCPU_KVM ? WL_KVM_LOW : 0;
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
		pg[1] = splitmix(&s);
	}
	if (cfg->vcpu_kind == WL_VCPU_KVM)
		return wl_kvm_create(w, err, errlen);
	return 0;
}

void wl_destroy(struct workload *w)
{
	wl_stop_device(w);
	wl_stop_vcpus(w);
	nic_fini(&w->nic);
	wl_kvm_destroy(w);
	if (w->cpu && w->cpu != MAP_FAILED)
		munmap(w->cpu, w->bytes);
	if (w->dma && w->dma != MAP_FAILED)
		munmap(w->dma, w->bytes);
	if (w->memfd >= 0)
		close(w->memfd);
	memset(w, 0, sizeof(*w));
	w->memfd = -1;
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

/* ---- vCPUs -------------------------------------------------------------- */

/*
 * Each write stores a fresh stamp into one random 64-byte line of a
 * random page above the NIC's area: a page's content changes every time
 * it is written, so a write the migration missed shows in the hashes.
 */
static void *vcpu_main(void *arg)
{
	struct vcpu *v = arg;
	struct workload *w = v->w;
	uint64_t first = (w->nic_base + w->nic_bytes) / WL_PAGE, span = w->npages - first;
	struct pacer pc;

	pacer_init(&pc, w->cfg.dirty_rate);
	while (!atomic_load_explicit(&w->vcpu_stop, memory_order_relaxed)) {
		uint64_t due = pacer_tick(&pc);

		for (uint64_t i = 0; i < due; i++) {
			uint64_t r = splitmix(&v->seed);
			uint64_t *line = (uint64_t *)(w->cpu + (first + r % span) * WL_PAGE +
						      ((r >> 40) % (WL_PAGE / 64)) * 64);
			uint64_t stamp = (uint64_t)(v->id + 1) << 48 | ++v->stamp;

			for (unsigned int k = 0; k < 8; k++)
				__atomic_store_n(&line[k], stamp ^ k, __ATOMIC_RELAXED);
		}
		atomic_fetch_add_explicit(&w->vcpu_writes, due, memory_order_relaxed);
	}
	return NULL;
}

int wl_nic_attach(struct workload *w, int gp_fd, char *err, size_t errlen)
{
	return nic_init(&w->nic, w, gp_fd, err, errlen);
}

int wl_start(struct workload *w)
{
	int err;

	atomic_store(&w->vcpu_stop, false);
	if (w->kvm && (err = wl_kvm_start(w)))
		return err;
	for (unsigned int i = 0; !w->kvm && i < w->cfg.vcpus; i++) {
		struct vcpu *v = &w->vcpu[i];

		if (v->running)
			continue;
		if (!v->w) {	/* first start: same seeds, same workload, every mode */
			v->w = w;
			v->id = i;
			v->seed = w->cfg.seed ^ (0x5bd1e995ull * (i + 1));
		}
		if ((err = -pthread_create(&v->thread, NULL, vcpu_main, v)))
			return err;
		v->running = true;
	}
	if ((err = nic_start_driver(&w->nic)))
		return err;
	return nic_start_device(&w->nic);
}

int wl_stop_device(struct workload *w)
{
	nic_stop_device(&w->nic);
	return 0;
}

int wl_stop_vcpus(struct workload *w)
{
	atomic_store(&w->vcpu_stop, true);
	if (w->kvm)
		wl_kvm_stop(w);
	for (unsigned int i = 0; i < w->cfg.vcpus; i++) {
		if (!w->vcpu[i].running)
			continue;
		pthread_join(w->vcpu[i].thread, NULL);
		w->vcpu[i].running = false;
	}
	nic_stop_driver(&w->nic);	/* the driver runs on the guest's vCPUs */
	return 0;
}
