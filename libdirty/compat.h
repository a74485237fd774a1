/* SPDX-License-Identifier: MIT */
/*
 * compat.h - kernel uapi definitions newer than the installed headers
 * (Debian 12 ships 6.1 uapi; the kernels this runs on are newer). Each
 * value is the kernel's own, behind #ifndef so newer headers win. Runtime
 * probes decide whether the running kernel has the feature.
 */
#ifndef LIBDIRTY_COMPAT_H
#define LIBDIRTY_COMPAT_H

#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/kvm.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

/* include/uapi/linux/kvm.h, Linux 6.3 */
#ifndef KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP
#define KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP 225
#endif

/*
 * include/uapi/linux/userfaultfd.h: uffdio_api.features bits.
 * WP_UNPOPULATED (Linux 6.4): write-protecting a range also arms pages
 * that were never populated, so their first write is seen.
 * WP_ASYNC (Linux 6.7): a write to a write-protected page is resolved by
 * the kernel (protection dropped, no message, no handler thread); it
 * implies WP_UNPOPULATED.
 */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/*
 * include/uapi/linux/fs.h, Linux 6.7: the PAGEMAP_SCAN ioctl on
 * /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst). The
 * structures and the ioctl number come as one unit; the flags and
 * categories are guarded one by one.
 */
#ifndef PAGEMAP_SCAN
/* One output run [start, end) of pages sharing the reported categories. */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

/* Argument of PAGEMAP_SCAN; size must be sizeof(struct pm_scan_arg). */
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;		/* written back: where the walk stopped */
	__u64 vec;		/* struct page_region array */
	__u64 vec_len;
	__u64 max_pages;	/* 0: no limit */
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#ifndef PM_SCAN_WP_MATCHING
#define PM_SCAN_WP_MATCHING (1 << 0)	/* write-protect the pages matched */
#endif
#ifndef PM_SCAN_CHECK_WPASYNC
#define PM_SCAN_CHECK_WPASYNC (1 << 1)	/* fail on a range not in WP-async mode */
#endif

#ifndef PAGE_IS_WPALLOWED
#define PAGE_IS_WPALLOWED (1 << 0)
#endif
#ifndef PAGE_IS_WRITTEN
#define PAGE_IS_WRITTEN (1 << 1)
#endif
#ifndef PAGE_IS_FILE
#define PAGE_IS_FILE (1 << 2)
#endif
#ifndef PAGE_IS_PRESENT
#define PAGE_IS_PRESENT (1 << 3)
#endif
#ifndef PAGE_IS_SWAPPED
#define PAGE_IS_SWAPPED (1 << 4)
#endif
#ifndef PAGE_IS_PFNZERO
#define PAGE_IS_PFNZERO (1 << 5)
#endif
#ifndef PAGE_IS_HUGE
#define PAGE_IS_HUGE (1 << 6)
#endif
#ifndef PAGE_IS_SOFT_DIRTY
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#endif

#endif /* LIBDIRTY_COMPAT_H */
