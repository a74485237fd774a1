/* SPDX-License-Identifier: MIT */
/*
 * support/opts.h - command-line options of the benchmarks and tools, from
 * one table each: flags, numbers in a range, strings; "--opt value" and
 * "--opt=value"; --help; a message naming the bad argument and its range.
 */
#ifndef LIBDIRTY_SUPPORT_OPTS_H
#define LIBDIRTY_SUPPORT_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum opt_kind {
	OPT_FLAG,	/* sets *(bool *)dst */
	OPT_NUM,	/* *(double *)dst, in [lo, hi]; whole if asked */
	OPT_STR,	/* *(const char **)dst, the argument itself */
};

struct opt {
	const char *name;	/* "--reps" */
	enum opt_kind kind;
	void *dst;
	double lo, hi;		/* OPT_NUM */
	bool whole;		/* OPT_NUM: an integer */
	bool *given;		/* if set: true once the option was seen */
};

/* Table entries. */
#define OPT_FLAG_(n, d) { .name = (n), .kind = OPT_FLAG, .dst = (d) }
#define OPT_NUM_(n, d, l, h, w) { .name = (n), .kind = OPT_NUM, .dst = (d), .lo = (l), .hi = (h), .whole = (w) }
#define OPT_STR_(n, d) { .name = (n), .kind = OPT_STR, .dst = (d) }

/*
 * Parse argv[first .. argc) against opts[0 .. n). Returns 0, or OPTS_HELP
 * after printing usage to stdout (--help), or OPTS_BAD after printing the
 * bad argument and usage to stderr; the caller exits 0 or 2.
 */
#define OPTS_HELP 1
#define OPTS_BAD 2
int opts_parse(const char *prog, int argc, char **argv, int first,
	       const struct opt *opts, size_t n, void (*usage)(FILE *));

/* A number in [lo, hi] (whole if asked), or -EINVAL. */
int opts_number(const char *s, double lo, double hi, bool whole, double *out);

#endif /* LIBDIRTY_SUPPORT_OPTS_H */
