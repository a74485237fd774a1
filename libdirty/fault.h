/* SPDX-License-Identifier: MIT */
/*
 * fault.h - fault injection for the reliability tests, compiled in only
 * with -DDIRTY_FAULT_INJECTION (make FAULT=1, as tests/t_faults.sh
 * builds it in build/fault); in every other build DIRTY_FAULT(site) is
 * the constant 0 and nothing below exists.
 *
 * Sites are named strings at the calls that can fail for real (an ioctl,
 * an allocation). LIBDIRTY_FAULTS chooses which fail, and when:
 *
 *   LIBDIRTY_FAULTS="site:ERRNO:nth[:count][,...]"
 *
 * fails the nth call at the site (1-based) and the count-1 after it
 * (count 0: every call from the nth on) with -ERRNO (a name such as EIO,
 * ENOMEM, EFAULT, or a number). Each injection is said on stderr once.
 */
#ifndef LIBDIRTY_FAULT_H
#define LIBDIRTY_FAULT_H

#ifdef DIRTY_FAULT_INJECTION
/* 0, or the -errno the site must fail with now. */
int __dirty_fault(const char *site);
#define DIRTY_FAULT(site) __dirty_fault(site)
#else
#define DIRTY_FAULT(site) 0
#endif

#endif /* LIBDIRTY_FAULT_H */
