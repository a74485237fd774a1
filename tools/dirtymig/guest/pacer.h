/* SPDX-License-Identifier: MIT */
/*
 * pacer.h - events at a set rate, for the simulated guest's threads (vCPU
 * writes, received packets): absolute 1 ms ticks and the work owed per
 * tick, so a slow tick is caught up without drifting.
 */
#ifndef DIRTYMIG_PACER_H
#define DIRTYMIG_PACER_H

#include <stdint.h>

struct pacer {
	double rate;		/* events per second */
	double owed;
	uint64_t next_ns, last_ns;
};

void pacer_init(struct pacer *p, double rate);
/* Sleep to the next tick; returns how many events are due now. */
uint64_t pacer_tick(struct pacer *p);

#endif /* DIRTYMIG_PACER_H */
