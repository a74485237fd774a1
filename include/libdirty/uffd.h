/* SPDX-License-Identifier: MIT */
/*
 * libdirty/uffd.h - the userfaultfd source: writes of this process's threads to
 * memory it maps (WP-async + PAGEMAP_SCAN).
 */
#ifndef LIBDIRTY_UFFD_H
#define LIBDIRTY_UFFD_H

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- userfaultfd adapter (process memory) ------------------------------ */

/*
 * A source for memory written by host threads (emulated devices, vhost-user
 * backends, a VMM's own writes, software vCPUs): userfaultfd write-protect
 * in async mode (UFFD_FEATURE_WP_ASYNC, no fault-handling thread) harvested
 * with the PAGEMAP_SCAN ioctl, which returns written ranges and re-protects
 * them in one call (Linux 6.7+). It tracks the mapping it is given only: a
 * second mapping of the same memory (a "DMA" view) stays invisible to it.
 */
struct dirty_uffd;

/* 0 if the running kernel supports it; else -EOPNOTSUPP saying what is missing. */
int dirty_uffd_probe(void);
int dirty_uffd_create(struct dirty_view *view, struct dirty_uffd **out);
void dirty_uffd_destroy(struct dirty_uffd *u);
struct dirty_source *dirty_uffd_source(struct dirty_uffd *u);
/*
 * Track [hva, hva + len) of this process, reported as guest-physical
 * [gpa, gpa + len). Page aligned; anonymous shared memory, memfd or
 * hugetlbfs mappings. Registered while tracking: all of it is dirty.
 */
int dirty_uffd_add_range(struct dirty_uffd *u, void *hva, uint64_t len,
			 uint64_t gpa);
int dirty_uffd_remove_range(struct dirty_uffd *u, void *hva);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_UFFD_H */
