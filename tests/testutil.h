/* SPDX-License-Identifier: MIT */
/*
 * testutil.h - shared by the Check suites: the runner main(), skipping
 * with exit 77, and a scale knob so sanitizer builds run shorter.
 */
#ifndef LIBDIRTY_TESTUTIL_H
#define LIBDIRTY_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TEST_SKIP 77

/* Skip the whole binary, saying exactly what is missing. */
#define TEST_REQUIRE(cond, ...)                                              \
	do {                                                                  \
		if (!(cond)) {                                                \
			printf("SKIP: ");                                     \
			printf(__VA_ARGS__);                                  \
			printf("\n");                                         \
			exit(TEST_SKIP);                                      \
		}                                                             \
	} while (0)

/*
 * Work multiplier: 1 normally; sanitizer runs set DIRTY_TEST_SCALE to a
 * fraction (e.g. 0.25) so the same suites fit the time budget.
 */
static inline double test_scale(void)
{
	const char *s = getenv("DIRTY_TEST_SCALE");
	double v = s ? atof(s) : 1.0;

	return v > 0 ? v : 1.0;
}

/* splitmix64: reproducible from a printed seed. */
static inline uint64_t test_rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A number in [0, n). */
static inline uint64_t test_below(uint64_t *s, uint64_t n)
{
	return n ? test_rnd(s) % n : 0;
}

static inline double test_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* base scaled by test_scale(), at least min. */
static inline uint64_t test_scaled(double base, uint64_t min)
{
	double v = base * test_scale();

	return v < (double)min ? min : (uint64_t)v;
}

/*
 * Run one suite without forking (sanitizers and liburcu prefer one
 * process; the runner isolates binaries). Returns the process exit code.
 */
static inline int test_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif /* LIBDIRTY_TESTUTIL_H */
