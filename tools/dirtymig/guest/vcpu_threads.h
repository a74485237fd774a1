/* SPDX-License-Identifier: MIT */
/*
 * vcpu_threads.h - --vcpu=threads: host threads standing in for vCPUs.
 * Each writes random pages of guest RAM through the CPU mapping at a set
 * rate, so the userfaultfd source sees them as KVM's dirty log would see a
 * vCPU's writes.
 */
#ifndef DIRTYMIG_VCPU_THREADS_H
#define DIRTYMIG_VCPU_THREADS_H

#include <stdatomic.h>
#include <stdint.h>

#include "worker.h"

#define VTHREADS_MAX 64

struct vthreads_config {
	uint8_t *ram;		/* guest RAM, the CPU mapping */
	uint64_t first_page;	/* the vCPUs write pages [first_page, +pages) */
	uint64_t pages;
	unsigned int count;	/* threads */
	double rate;		/* pages per second, per thread */
	uint64_t seed;
};

struct vthreads;
struct vthread {
	struct vthreads *set;
	unsigned int id;
	uint64_t seed, stamp;
	struct worker w;
};

struct vthreads {
	struct vthreads_config cfg;
	struct vthread t[VTHREADS_MAX];
	_Atomic uint64_t writes;	/* pages written, all threads */
};

/* Seeds are fixed here, so every restart continues the same sequence. */
void vthreads_init(struct vthreads *s, const struct vthreads_config *cfg);
/* Starts the threads not running; 0 or -errno. */
int vthreads_start(struct vthreads *s);
/* Returns once no thread writes any more. */
void vthreads_stop(struct vthreads *s);

#endif /* DIRTYMIG_VCPU_THREADS_H */
