/* SPDX-License-Identifier: MIT */
/*
 * pacer.c - the rate keeper of pacer.h.
 */
#include <errno.h>
#include <time.h>

#include "clock.h"
#include "pacer.h"

#define TICK_NS 1000000ull

void pacer_init(struct pacer *p, double rate)
{
	p->rate = rate;
	p->owed = 0;
	p->last_ns = now_ns();
	p->next_ns = p->last_ns + TICK_NS;
}

uint64_t pacer_tick(struct pacer *p)
{
	struct timespec ts = { (time_t)(p->next_ns / 1000000000ull), (long)(p->next_ns % 1000000000ull) };
	uint64_t now, due;

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
	now = now_ns();
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
