/* SPDX-License-Identifier: MIT */
/*
 * support/clock.h - the monotonic clock tests, benchmarks and tools read
 * (never the library: it has its own). Header-only.
 */
#ifndef LIBDIRTY_SUPPORT_CLOCK_H
#define LIBDIRTY_SUPPORT_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double now_ms(void)
{
	return (double)now_ns() * 1e-6;
}

static inline double now_s(void)
{
	return (double)now_ns() * 1e-9;
}

#endif /* LIBDIRTY_SUPPORT_CLOCK_H */
