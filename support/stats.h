/* SPDX-License-Identifier: MIT */
/*
 * support/stats.h - the median of repeated measurements, for benchmarks.
 * Header-only.
 */
#ifndef LIBDIRTY_SUPPORT_STATS_H
#define LIBDIRTY_SUPPORT_STATS_H

#include <stdlib.h>

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median of n values; sorts v. */
static inline double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif /* LIBDIRTY_SUPPORT_STATS_H */
