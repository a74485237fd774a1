/* SPDX-License-Identifier: MIT */
/*
 * guest_pagemap.c - dirty_guest_pieces(): a userspace driver's virtual buffer
 * as the guest-physical pieces the protocol speaks, from
 * /proc/self/pagemap (Documentation/admin-guide/mm/pagemap.rst: one
 * 64-bit entry per virtual page; bit 63 present, bits 0-54 the frame
 * number, reported as 0 to a reader without CAP_SYS_ADMIN).
 *
 * Inside a guest a frame number is a guest-physical page: that is the
 * address the guest protocol (and the device, without a vIOMMU) uses.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "guest_priv.h"
#include "libdirty/guest.h"

#define PM_PRESENT (1ull << 63)
#define PM_PFN_MASK ((1ull << 55) - 1)
#define BATCH 512	/* entries read per pread */

GUEST_API ssize_t dirty_guest_pieces(const void *va, size_t len,
				     struct dirty_dma_piece *out, size_t max)
{
	uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE), start = (uint64_t)(uintptr_t)va;
	uint64_t first = start / ps, last, ent[BATCH], prev_end = 0;
	size_t n = 0;
	int fd, err = 0;

	if (!len)
		return 0;
	if (!va || start + len < start || (max && !out))
		return __dirty_guest_err(-EINVAL, "dirty_guest_pieces: bad buffer or output");
	last = (start + len - 1) / ps;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return __dirty_guest_err(-errno, "cannot open /proc/self/pagemap: %s", strerror(errno));
	for (uint64_t vp = first; vp <= last && !err;) {
		uint64_t k = last - vp + 1 < BATCH ? last - vp + 1 : BATCH;
		ssize_t got = pread(fd, ent, k * 8, (off_t)(vp * 8));

		if (got < (ssize_t)8) {
			err = __dirty_guest_err(got < 0 ? -errno : -EIO, "reading /proc/self/pagemap at %#llx: %s",
					  (unsigned long long)(vp * ps), got < 0 ? strerror(errno) : "short read");
			break;
		}
		k = (uint64_t)got / 8;
		for (uint64_t i = 0; i < k; i++, vp++) {
			uint64_t pfn = ent[i] & PM_PFN_MASK, a, e, gpa;

			if (!(ent[i] & PM_PRESENT)) {
				err = __dirty_guest_err(-EFAULT, "page at %#llx is not resident: DMA-map or mlock() the buffer before asking for its pieces",
						  (unsigned long long)(vp * ps));
				break;
			}
			if (!pfn) {
				err = __dirty_guest_err(-EPERM, "/proc/self/pagemap shows frame numbers as 0: reading them needs CAP_SYS_ADMIN (run the driver as root)");
				break;
			}
			a = vp == first ? start : vp * ps;
			e = vp == last ? start + len : (vp + 1) * ps;
			gpa = pfn * ps + (a - vp * ps);
			/* Physically contiguous with the piece before: join it. */
			if (n && gpa == prev_end) {
				if (n <= max)
					out[n - 1].len += e - a;
			} else {
				if (n < max) {
					out[n].gpa = gpa;
					out[n].len = e - a;
				}
				n++;
			}
			prev_end = gpa + (e - a);
		}
	}
	close(fd);
	return err ? err : (ssize_t)n;
}
