/* SPDX-License-Identifier: MIT */
/*
 * support/rng.h - the seeded generator of tests, benchmarks and tools:
 * splitmix64, fast, and the same sequence from the same seed everywhere,
 * so a printed seed replays a run. Header-only.
 */
#ifndef LIBDIRTY_SUPPORT_RNG_H
#define LIBDIRTY_SUPPORT_RNG_H

#include <stdint.h>

static inline uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A number in [0, n) (0 if n is 0). */
static inline uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return n ? splitmix64(s) % n : 0;
}

#endif /* LIBDIRTY_SUPPORT_RNG_H */
