/* SPDX-License-Identifier: MIT */
/*
 * fault.c - the LIBDIRTY_FAULTS plan of fault.h: parsed once, then one
 * atomic call counter per planned site. Empty unless DIRTY_FAULT_INJECTION.
 */
#ifdef DIRTY_FAULT_INJECTION
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"

#define MAX_PLANS 16

struct plan {
	char site[48];
	int err;			/* a positive errno */
	unsigned long nth, count;	/* count 0: forever */
	_Atomic unsigned long calls;
	_Atomic bool said;
};

static struct plan plans[MAX_PLANS];
static int nplans;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int errno_of(const char *s)
{
	static const struct { const char *n; int e; } names[] = {
		{ "EIO", EIO }, { "ENOMEM", ENOMEM }, { "EFAULT", EFAULT }, { "EINVAL", EINVAL },
		{ "EBUSY", EBUSY }, { "EAGAIN", EAGAIN }, { "ENOSPC", ENOSPC }, { "EPERM", EPERM },
		{ "EOPNOTSUPP", EOPNOTSUPP }, { "EPROTO", EPROTO }, { "ENODEV", ENODEV },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i].n))
			return names[i].e;
	return atoi(s) > 0 ? atoi(s) : EIO;
}

static void parse(void)
{
	const char *env = getenv("LIBDIRTY_FAULTS");
	char buf[1024], *save = NULL;

	if (!env)
		return;
	snprintf(buf, sizeof(buf), "%s", env);
	for (char *t = strtok_r(buf, ",", &save); t && nplans < MAX_PLANS; t = strtok_r(NULL, ",", &save)) {
		struct plan *p = &plans[nplans];
		char *f[4] = { 0 }, *s2 = NULL;
		int k = 0;

		for (char *x = strtok_r(t, ":", &s2); x && k < 4; x = strtok_r(NULL, ":", &s2))
			f[k++] = x;
		if (k < 3) {
			fprintf(stderr, "libdirty: LIBDIRTY_FAULTS entry '%s' is not site:ERRNO:nth[:count]\n", t);
			continue;
		}
		snprintf(p->site, sizeof(p->site), "%s", f[0]);
		p->err = errno_of(f[1]);
		p->nth = strtoul(f[2], NULL, 10);
		p->count = f[3] ? strtoul(f[3], NULL, 10) : 1;
		nplans++;
	}
}

int __dirty_fault(const char *site)
{
	pthread_once(&once, parse);
	for (int i = 0; i < nplans; i++) {
		struct plan *p = &plans[i];
		unsigned long n;

		if (strcmp(p->site, site))
			continue;
		n = atomic_fetch_add_explicit(&p->calls, 1, memory_order_relaxed) + 1;
		if (n < p->nth || (p->count && n >= p->nth + p->count))
			return 0;
		if (!atomic_exchange_explicit(&p->said, true, memory_order_relaxed))
			fprintf(stderr, "libdirty: fault injected at %s (call %lu): %s\n", site, n,
				strerror(p->err));
		return -p->err;
	}
	return 0;
}
#else
/* ISO C wants a translation unit to declare something. */
typedef int dirty_fault_unused;
#endif
