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

/*
 * include/uapi/linux/iommufd.h (Linux 6.7: dirty tracking; 6.2: the
 * rest). Debian 12's 6.1 headers have no linux/iommufd.h at all, so it
 * is included only when present; then each group below is defined only
 * if that header lacks it (its ioctl number is the guard; the structs
 * and flags come with it in the same kernel release). The ioctl numbers
 * are _IO(';', IOMMUFD_CMD_*) with IOMMUFD_CMD_BASE = 0x80 and the
 * commands counted in the header's enum order: IOAS_UNMAP is 0x86,
 * HWPT_SET_DIRTY_TRACKING 0x8b, HWPT_GET_DIRTY_BITMAP 0x8c.
 */
#if defined(__has_include)
#if __has_include(<linux/iommufd.h>)
#include <linux/iommufd.h>
#endif
#endif

#ifndef IOMMUFD_TYPE
#define IOMMUFD_TYPE (';')
#endif

#ifndef IOMMU_IOAS_UNMAP
/* Unmap whole areas inside [iova, iova + length); length returns the bytes unmapped. */
struct iommu_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length;
};
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#endif

#ifndef IOMMU_HWPT_SET_DIRTY_TRACKING
/* Turn IOPTE dirty tracking of a HWPT on (flag set) or off. */
struct iommu_hwpt_set_dirty_tracking {
	__u32 size;
	__u32 flags;
	__u32 hwpt_id;
	__u32 __reserved;
};
#define IOMMU_HWPT_DIRTY_TRACKING_ENABLE 1
/* iommu_hwpt_alloc.flags: the HWPT must support dirty tracking. */
#define IOMMU_HWPT_ALLOC_DIRTY_TRACKING (1 << 1)
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, 0x8b)
#endif

#ifndef IOMMU_HWPT_GET_DIRTY_BITMAP
/*
 * Set a bit in data for every page_size page of [iova, iova + length)
 * whose IOPTE is dirty, and clear the IOPTE's dirty bit unless NO_CLEAR.
 * Bit i is the page at iova + i * page_size; bits are only ever set.
 */
struct iommu_hwpt_get_dirty_bitmap {
	__u32 size;
	__u32 hwpt_id;
	__u32 flags;
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;
	__aligned_u64 page_size;
	__aligned_u64 data;
};
#define IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR 1
#define IOMMU_HWPT_GET_DIRTY_BITMAP _IO(IOMMUFD_TYPE, 0x8c)
#endif

#endif /* LIBDIRTY_COMPAT_H */
