/* SPDX-License-Identifier: MIT */
/*
 * util.c - what every file of the core shares and owns nothing else:
 * the per-thread error message, the monotonic clock, and the RCU wrappers
 * (liburcu-bp) with the happens-before they imply made visible to
 * ThreadSanitizer (internal.h says why).
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "internal.h"

static _Thread_local char errbuf[512];

int __dirty_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
	return err;
}

DIRTY_API const char *dirty_last_error(void)
{
	return errbuf;
}

double __dirty_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#ifdef DIRTY_TSAN
/* Every read-side unlock releases it; every grace period acquires it. */
static _Atomic uint64_t tsan_rcu;
#endif

void __dirty_rcu_unlock(void)
{
#ifdef DIRTY_TSAN
	atomic_fetch_add_explicit(&tsan_rcu, 1, memory_order_release);
#endif
	urcu_bp_read_unlock();
}

void __dirty_rcu_acquire(void)
{
#ifdef DIRTY_TSAN
	(void)atomic_load_explicit(&tsan_rcu, memory_order_acquire);
#endif
}

void __dirty_rcu_synchronize(void)
{
	urcu_bp_synchronize_rcu();
	__dirty_rcu_acquire();
}
