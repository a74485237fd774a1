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

#include "clock.h"
#include "rng.h"

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

/* The support generator and clock under the names the suites use. */
static inline uint64_t test_rnd(uint64_t *s) { return splitmix64(s); }
static inline uint64_t test_below(uint64_t *s, uint64_t n) { return rng_below(s, n); }
static inline double test_now_s(void) { return now_s(); }

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
