/* SPDX-License-Identifier: MIT */
/*
 * support/opts.c - the option table parser of support/opts.h.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"

int opts_number(const char *s, double lo, double hi, bool whole, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (*end || errno || !(v >= lo && v <= hi) || (whole && v != floor(v)))
		return -EINVAL;
	*out = v;
	return 0;
}

static int bad(const char *prog, const char *arg, const struct opt *o, void (*usage)(FILE *))
{
	fprintf(stderr, "%s: bad argument '%s'", prog, arg);
	if (o && o->kind == OPT_NUM)
		fprintf(stderr, " (%s needs %s%g..%g)", o->name, o->whole ? "a whole number " : "",
			o->lo, o->hi);
	else if (o)
		fprintf(stderr, " (%s needs a value)", o->name);
	fputs("\n\n", stderr);
	usage(stderr);
	return OPTS_BAD;
}

int opts_parse(const char *prog, int argc, char **argv, int first,
	       const struct opt *opts, size_t n, void (*usage)(FILE *))
{
	for (int i = first; i < argc; i++) {
		const char *a = argv[i], *eq = strchr(a, '='), *v;
		size_t len = eq ? (size_t)(eq - a) : strlen(a);
		const struct opt *o = NULL;

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return OPTS_HELP;
		}
		for (size_t k = 0; k < n && !o; k++)
			if (strlen(opts[k].name) == len && !strncmp(opts[k].name, a, len))
				o = &opts[k];
		if (!o)
			return bad(prog, a, NULL, usage);
		if (o->given)
			*o->given = true;
		if (o->kind == OPT_FLAG) {
			if (eq)
				return bad(prog, a, NULL, usage);
			*(bool *)o->dst = true;
			continue;
		}
		/* Not the next word when it is missing: `--opt` alone is an error. */
		v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
		if (!v)
			return bad(prog, a, o, usage);
		if (o->kind == OPT_STR)
			*(const char **)o->dst = v;
		else if (opts_number(v, o->lo, o->hi, o->whole, (double *)o->dst))
			return bad(prog, v, o, usage);
	}
	return 0;
}
