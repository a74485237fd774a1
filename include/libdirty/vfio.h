/* SPDX-License-Identifier: MIT */
/*
 * libdirty/vfio.h - the VFIO sources: dirty pages of a type1 container the
 * VMM owns (VFIO_IOMMU_DIRTY_PAGES) and of a device that logs its own DMA
 * (VFIO device DMA logging, at the end of this file), translated from IOVA
 * to guest-physical addresses and marked into a view.
 *
 * What type1 can tell: "dirtied or potentially dirtied". It cannot see DMA,
 * so with a vfio-pci device in the container it reports every mapped page
 * on every query; only when every device pins what it touches (mdev vendor
 * drivers) is it exact. The source is therefore DIRTY_COARSE, and the way
 * to precise bits is dirty_source_cover(): a healthy guest-protocol source
 * over the same guest memory stands in for it, and its bits count again
 * whenever the guest is not trusted (judged at every round, the final one
 * included).
 *
 * Like the KVM adapter, it takes the container fd and the VMM's mappings
 * and creates no kernel state of its own beyond dirty tracking itself:
 * START when the view starts, STOP when it stops. One source per container:
 * START and STOP are container-wide, so two users would stop each other.
 *
 * Facts of the kernel this is built on (read in include/uapi/linux/vfio.h
 * and drivers/vfio/vfio_iommu_type1.c; all but the second one checked on
 * Debian's 6.1 and 6.12 by tests/vm/t_vm_type1.sh):
 *  - GET_BITMAP wants the smallest IOMMU page size (the migration
 *    capability's pgsize_bitmap), an IOVA range that splits none of the
 *    container's mappings (else EINVAL), and a zeroed bitmap of the page
 *    count rounded up to 64 bits, at most max_dirty_bitmap_size bytes
 *    (256 MiB). A range may hold several whole mappings and holes between
 *    them; a hole reads as clean, and so does a range with no mapping at
 *    all (no error: nothing can DMA there).
 *  - Each GET_BITMAP returns what happened since the previous one.
 *  - An unmap with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP returns a mapping's
 *    last bits; it is refused (EINVAL) while tracking is off, and after a
 *    plain unmap those bits are gone for good.
 *  - GET_BITMAP before START or after STOP: EINVAL. START and STOP twice: 0.
 * So a mapping is never harvested in parts: pieces are runs of whole
 * mappings, and a mapping whose bitmap exceeds the kernel's maximum cannot
 * be tracked at all (dirty_vfio_type1_add_mapping refuses it).
 *
 * Threads: every call may come from any thread. One mutex per source
 * serialises its mapping table, its ioctls and its statistics (the marks
 * themselves are the view's lock-free ones), so an unmap and a harvest
 * never interleave: a page's last bits land in whichever runs first, and
 * the other no longer sees the mapping.
 *
 * All functions return 0 or -errno with a message in dirty_last_error().
 */
#ifndef LIBDIRTY_VFIO_H
#define LIBDIRTY_VFIO_H

#include <stdint.h>

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dirty_vfio_type1;

/* What a container's VFIO_IOMMU_GET_INFO says about dirty tracking. */
struct dirty_vfio_type1_caps {
	int migration;		/* 1: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION present */
	uint32_t flags;		/* the capability's flags (none defined in 6.1) */
	uint64_t pgsize_bitmap;	/* page sizes the dirty bitmap may use */
	uint64_t pgsize;	/* the one GET_BITMAP accepts: the smallest */
	uint64_t max_bitmap_bytes;	/* largest bitmap one call may return */
	uint64_t max_pages;	/* pages that bitmap holds: the largest piece */
};

/*
 * Ask a container (after VFIO_SET_IOMMU with a type1v2 IOMMU: the caps
 * belong to the IOMMU). A missing migration capability is not an error:
 * caps->migration says so. -errno only if the container cannot be asked.
 */
int dirty_vfio_type1_probe(int container_fd, struct dirty_vfio_type1_caps *caps);

struct dirty_vfio_type1_config {
	int container_fd;	/* the VMM's, type1v2; stays the VMM's */
	/*
	 * Largest run of mappings harvested by one GET_BITMAP, in pages;
	 * 0 = what the kernel allows (caps.max_pages). Smaller pieces cost
	 * more calls and less bitmap memory; a single mapping larger than
	 * this is still harvested whole, because type1 refuses a range that
	 * splits a mapping.
	 */
	uint64_t piece_pages;
	/*
	 * Every ioctl the source issues on container_fd after create's probe
	 * (DIRTY_PAGES, UNMAP_DMA) goes through this (NULL: ioctl(2)): for a
	 * VMM that forwards them, and for tests that act between two of them.
	 * It returns >= 0 or -errno, is called with the source's lock held
	 * and must not call back into this source.
	 */
	int (*ioctl)(void *ctx, int fd, unsigned long request, void *arg);
	void *ioctl_ctx;
};

/*
 * A COARSE source attached to view. Fails with -EOPNOTSUPP (and says why)
 * when the container has no migration capability.
 */
int dirty_vfio_type1_create(struct dirty_view *view,
			    const struct dirty_vfio_type1_config *cfg,
			    struct dirty_vfio_type1 **out);
/* Detach (STOP if tracking) and free; the view frees it too if it goes first. */
void dirty_vfio_type1_destroy(struct dirty_vfio_type1 *t);
struct dirty_source *dirty_vfio_type1_source(struct dirty_vfio_type1 *t);
/* The caps found at create. */
int dirty_vfio_type1_caps(struct dirty_vfio_type1 *t, struct dirty_vfio_type1_caps *caps);

/*
 * Register one VFIO_IOMMU_MAP_DMA the VMM made: device addresses [iova,
 * iova + len) are guest-physical [gpa, gpa + len). Behind a vIOMMU IOVA
 * is not GPA, and only the VMM knows the translation (it built the
 * mapping from the guest's IOMMU tables), hence the table. Register
 * exactly what was mapped, once per MAP_DMA: type1 harvests and unmaps
 * whole mappings only, and a registration that splits one makes every
 * harvest fail (and mark everything). Aligned to caps.pgsize; IOVA ranges
 * may not overlap (-EEXIST); GPA ranges may (two IOVAs for one page).
 * Registered while tracking: all its pages are dirty (its first round).
 * -E2BIG when its bitmap would exceed caps.max_bitmap_bytes: type1 could
 * never report it; map such memory in smaller MAP_DMA calls.
 */
int dirty_vfio_type1_add_mapping(struct dirty_vfio_type1 *t, uint64_t iova,
				 uint64_t gpa, uint64_t len);

/*
 * (Under dirty_source_cover() every mark of this source, the error rule's
 * included, is dropped inside the covering range while the guest protocol
 * is trusted: its exact bits stand for the DMA then.)
 *
 * The VMM's unmap: call this instead of its own VFIO_IOMMU_UNMAP_DMA.
 * While tracking, it unmaps with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP and
 * marks the returned bits at their guest-physical pages, so a mapping
 * removed mid-migration loses none; a plain unmap would drop them in the
 * kernel for good. The library cannot do this on its own: only the VMM
 * knows when it unmaps. Not tracking: a plain unmap. Either way the
 * registrations inside [iova, iova + len) are dropped.
 *
 * The range is the VMM's, as for VFIO_IOMMU_UNMAP_DMA: holes are allowed
 * (unmapped without a bitmap: nothing registered lies there), splitting a
 * registered mapping is not (-EINVAL, nothing done; type1 refuses it too).
 * *unmapped (may be NULL) gets the bytes the kernel unmapped. A failed
 * ioctl marks every registered page dirty and keeps the registrations of
 * the part not unmapped. While tracking, the kernel unmapping something in
 * a hole (a MAP_DMA never registered here) is an error too (-EPROTO, all
 * marked): its last bits and its guest-physical pages are unknown.
 */
int dirty_vfio_type1_unmap(struct dirty_vfio_type1 *t, uint64_t iova,
			   uint64_t len, uint64_t *unmapped);

/*
 * Forget the registration [iova, iova + len) without unmapping it: for a
 * mapping the kernel dropped another way (the container closed, the VMM
 * unmapped it itself) or a registration made in error. Its last bits can
 * no longer be read, so while tracking all its pages are marked dirty.
 * -ENOENT unless a registration is exactly that range.
 */
int dirty_vfio_type1_remove_mapping(struct dirty_vfio_type1 *t, uint64_t iova,
				    uint64_t len);

/* The guest-physical address of iova (-ENOENT: no registration holds it). */
int dirty_vfio_type1_translate(struct dirty_vfio_type1 *t, uint64_t iova,
			       uint64_t *gpa);

struct dirty_vfio_type1_stats {
	uint64_t mappings;		/* registered now */
	uint64_t mapped_bytes;
	uint64_t get_bitmap_calls;	/* GET_BITMAP ioctls (pieces) */
	uint64_t unmap_bitmap_calls;	/* unmaps with GET_DIRTY_BITMAP */
	/*
	 * Pages type1 reported (harvests and unmaps), before any cover
	 * drops them: compare with the view's own counts.
	 */
	uint64_t pages_reported;
	uint64_t errors;		/* failed calls: everything was marked */
};
int dirty_vfio_type1_stats(struct dirty_vfio_type1 *t,
			   struct dirty_vfio_type1_stats *st);

/* ---- VFIO device DMA logging ------------------------------------------------ */

/*
 * A PRECISE source per VFIO device fd: the device records the pages it
 * writes by DMA (VFIO_DEVICE_FEATURE_DMA_LOGGING_START / REPORT / STOP,
 * mlx5 and pds today, ldtest in the VM tier) and REPORT reads and clears
 * them. Like the type1 source it takes the VMM's mappings as (IOVA, GPA,
 * length) and marks each reported page at its guest-physical address.
 *
 * Facts this is built on (include/uapi/linux/vfio.h; measured on Debian
 * 6.1 with ldtest by tests/vm/t_vm_mdev.sh and t_vm_devlog.sh):
 *  - START takes 1..256 IOVA ranges (a page of them; a driver may take
 *    fewer: E2BIG), not overlapping, each aligned to the page-size hint;
 *    the driver answers with the page size it chose, which may differ.
 *  - START while logging is the driver's to refuse (ldtest, mlx5: EBUSY):
 *    to change the ranges, STOP and START again. STOP drops the log, and
 *    REPORT after STOP fails (ldtest: EINVAL).
 *  - REPORT of [iova, +length) at any power-of-two page size >= 4 KiB
 *    only sets bits in the caller's bitmap and clears what it reported.
 *    Any error means "the log is corrupt: treat all as dirty, restart".
 *    Debian's 6.12 (IOMMUFD_DRIVER off) fails every REPORT (EOPNOTSUPP).
 *
 * Ranges: the registered mappings rounded out to range_align (and to the
 * page size), touching ones joined; over the device's limit the nearest
 * neighbours are joined (smallest gap first). A larger logged range only
 * adds IOVA nobody maps, so it can only add pages, never lose one.
 *
 * Mapping changes mid-migration. An unmap never needs new ranges:
 * dirty_vfio_devlog_unmapped() reports the unmapped IOVAs one last time
 * (after the kernel unmap, so nothing can be written there any more) and
 * marks them at their old GPAs. A mapping outside the logged ranges
 * needs new ranges, and re-arming opens a window: STOP drops everything
 * the device logged since the last REPORT, and writes until the new
 * START returns are logged nowhere. Nothing can narrow it down (the
 * device's writes are known only to its log), so the re-arm marks every
 * page of every registered mapping (all the device can reach), and marks
 * them after START returned: a page marked earlier could be claimed and
 * sent inside the window and then written, and that write would be lost.
 * One re-arm therefore costs one pass over the device's mapped memory;
 * range_align keeps them rare (a vIOMMU's IOVA space logged as a few
 * large ranges needs none). With DIRTY_VFIO_DEVLOG_REARM_MANUAL a mapping
 * outside the ranges is marked whole at every sync instead (COARSE for
 * that mapping only) until dirty_vfio_devlog_rearm().
 *
 * Errors: a failed START, STOP or REPORT, or a reported bit no mapping
 * holds, marks every page of every registered mapping dirty and returns
 * the error; the log is then restarted (a re-arm) at the next sync, as
 * the uapi asks. On a kernel whose REPORT always fails (Debian 6.12)
 * every sync therefore marks everything and returns the error: correct,
 * never precise.
 *
 * Threads and locking as for the type1 source: one mutex per source over
 * its table, its ioctls and its statistics.
 */
struct dirty_vfio_devlog;

enum dirty_vfio_devlog_rearm {
	/* A mapping outside the logged ranges re-arms at the next sync. */
	DIRTY_VFIO_DEVLOG_REARM_AUTO = 0,
	/*
	 * It is marked whole at every sync (and final) until the caller
	 * calls dirty_vfio_devlog_rearm(): for a VMM whose new mappings are
	 * small and short-lived, where resending them beats resending all.
	 */
	DIRTY_VFIO_DEVLOG_REARM_MANUAL = 1,
};

struct dirty_vfio_devlog_config {
	int device_fd;		/* the VMM's VFIO device fd; stays the VMM's */
	uint64_t page_size;	/* START's hint: a power of two >= 4096; 0: 4096 */
	/*
	 * Round every logged range out to this (a power of two >= the page
	 * size; 0: the page size): larger values log IOVA around the mappings
	 * too, so later mappings nearby need no re-arm.
	 */
	uint64_t range_align;
	uint32_t max_ranges;	/* at most this many ranges; 0: 256 (the uapi's minimum) */
	unsigned int rearm;	/* enum dirty_vfio_devlog_rearm */
	/*
	 * Every ioctl on device_fd goes through this (NULL: ioctl(2)). It
	 * returns >= 0 or -errno. Tests use it to act between two of the
	 * source's ioctls; it is called with the source's lock held and must
	 * not call back into this source.
	 */
	int (*ioctl)(void *ctx, int fd, unsigned long request, void *arg);
	void *ioctl_ctx;
};

/* 0 if the device supports DMA logging (a PROBE of START); else -errno, said why. */
int dirty_vfio_devlog_probe(int device_fd);

/*
 * A PRECISE source attached to view. START happens at the view's start
 * (all registered pages are marked: the first round), STOP at its stop.
 * -EOPNOTSUPP (with the reason) when the device cannot log DMA.
 */
int dirty_vfio_devlog_create(struct dirty_view *view,
			     const struct dirty_vfio_devlog_config *cfg,
			     struct dirty_vfio_devlog **out);
/* Detach (STOP if logging) and free; the view frees it too if it goes first. */
void dirty_vfio_devlog_destroy(struct dirty_vfio_devlog *d);
struct dirty_source *dirty_vfio_devlog_source(struct dirty_vfio_devlog *d);

/*
 * Register a DMA mapping of the device's container or IOAS: IOVA [iova,
 * iova + len) is GPA [gpa, + len). Aligned to 4096; IOVA ranges may not
 * overlap (-EEXIST). Register every mapping the device can reach, before
 * the device uses it: a reported bit no registration holds is an error
 * (everything is marked). While logging, a mapping inside the logged
 * ranges is logged at once; one outside waits for a re-arm (see above).
 */
int dirty_vfio_devlog_add_mapping(struct dirty_vfio_devlog *d, uint64_t iova,
				  uint64_t gpa, uint64_t len);
/*
 * The VMM unmapped [iova, iova + len) in the kernel (VFIO_IOMMU_UNMAP_DMA,
 * dirty_vfio_type1_unmap() or IOMMU_IOAS_UNMAP): call this after that and
 * before the IOVAs are mapped again. While logging it REPORTs the
 * registrations inside one last time and marks their bits at the old
 * GPAs (a bit left in the log would be read later as the next mapping's),
 * then drops them. Holes are fine; splitting a registration is -EINVAL.
 */
int dirty_vfio_devlog_unmapped(struct dirty_vfio_devlog *d, uint64_t iova,
			       uint64_t len);
/*
 * Re-arm now with ranges for every registered mapping (STOP, START, then
 * every mapped page marked: see the window above). 0 without effect when
 * not tracking. The view's sync calls it by itself under REARM_AUTO.
 */
int dirty_vfio_devlog_rearm(struct dirty_vfio_devlog *d);
/* The guest-physical address of iova (-ENOENT: no registration holds it). */
int dirty_vfio_devlog_translate(struct dirty_vfio_devlog *d, uint64_t iova,
				uint64_t *gpa);

struct dirty_vfio_devlog_stats {
	uint64_t mappings;		/* registered now */
	uint64_t mapped_bytes;
	uint64_t unlogged;		/* registered mappings outside the logged ranges */
	uint64_t ranges;		/* logged now (0: not logging) */
	uint64_t page_size;		/* the driver's, while logging */
	uint64_t max_ranges;		/* the limit in force (lowered when START said E2BIG) */
	uint64_t starts, stops, reports;	/* ioctls issued */
	uint64_t rearms;		/* STOP + START with new ranges while tracking */
	uint64_t pages_reported;	/* bits REPORT set (pages of page_size) */
	uint64_t window_pages;		/* pages marked to cover re-arm windows */
	uint64_t errors;		/* failed calls: everything was marked */
};
int dirty_vfio_devlog_stats(struct dirty_vfio_devlog *d,
			    struct dirty_vfio_devlog_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_VFIO_H */
