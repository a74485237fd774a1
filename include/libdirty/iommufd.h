/* SPDX-License-Identifier: MIT */
/*
 * libdirty/iommufd.h - the iommufd source: IOPTE dirty bits of a hardware
 * page table (HWPT) the VMM allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING
 * on /dev/iommu (Linux 6.7+, an IOMMU whose page tables have hardware
 * dirty bits), translated from IOVA to guest-physical addresses
 * and marked into a view. PRECISE: the IOMMU sets a dirty bit in the
 * IOPTE a device write went through, so a page is reported only when a
 * device wrote it, at IOPTE size (a 2 MiB IOPTE reports all its 512 pages).
 *
 * Like the other adapters it takes the VMM's iommufd, HWPT and IOAS ids
 * and mappings and creates no kernel state beyond tracking itself:
 * IOMMU_HWPT_SET_DIRTY_TRACKING on at the view's start (the kernel clears
 * stale IOPTE bits then) and off at its stop; IOMMU_HWPT_GET_DIRTY_BITMAP
 * (read and clear) at every sync and final.
 *
 * Facts of the kernel this is built on (include/uapi/linux/iommufd.h,
 * drivers/iommu/iommufd/io_pagetable.c and hw_pagetable.c; no kernel here
 * enables CONFIG_IOMMUFD, so tests/test_iommufd.c checks the adapter
 * against a fake backend that emulates exactly these):
 *  - GET_DIRTY_BITMAP's iova and iova + length must be aligned to the
 *    IOAS's IOVA alignment and to page_size (else EINVAL), and the range
 *    must be one run of contiguous mapped areas: a hole is EINVAL. Bits
 *    are only set, never cleared (the caller zeroes the bitmap). Unknown
 *    flags: EOPNOTSUPP; an unknown HWPT: ENOENT; tracking off: the
 *    IOMMU drivers answer EINVAL.
 *  - A dirty IOPTE is reported for its whole size within the window and
 *    its bit is cleared whole: a window that cut a huge IOPTE would lose
 *    the part left outside. An IOPTE never spans two IOMMU_IOAS_MAP
 *    calls, so the source reads whole registered mappings only.
 *  - IOMMU_IOAS_UNMAP destroys the IOPTEs and their dirty bits, and
 *    refuses a range that splits an area (ENOENT). So the unmap helper
 *    reads with IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR first (no IOTLB flush
 *    for a clear the unmap makes pointless), then unmaps.
 *
 * All functions return 0 or -errno with a message in dirty_last_error().
 * Threads and locking as for the type1 source: one mutex per source over
 * its table, its ioctls and its statistics.
 */
#ifndef LIBDIRTY_IOMMUFD_H
#define LIBDIRTY_IOMMUFD_H

#include <stdint.h>

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dirty_iommufd;

struct dirty_iommufd_config {
	int iommufd;		/* the VMM's /dev/iommu fd; stays the VMM's */
	uint32_t hwpt_id;	/* a paging HWPT allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING */
	uint32_t ioas_id;	/* the IOAS the mappings are in (for IOMMU_IOAS_UNMAP) */
	/* Bitmap granularity: a power of two >= 4096 (0: 4096); mappings are aligned to it. */
	uint64_t page_size;
	/*
	 * Largest run of adjacent mappings read by one GET_DIRTY_BITMAP, in
	 * pages (0: 1 << 21, a 256 KiB bitmap). A single larger mapping is
	 * still read whole: splitting it could cut a huge IOPTE.
	 */
	uint64_t piece_pages;
	/*
	 * Every ioctl on iommufd goes through this (NULL: ioctl(2)); it
	 * returns >= 0 or -errno. It exists so tests can answer the ioctls
	 * themselves (tests/test_iommufd.c: a fake backend, compiled into
	 * that test only). Called with the source's lock held; it must not
	 * call back into this source.
	 */
	int (*ioctl)(void *ctx, int fd, unsigned long request, void *arg);
	void *ioctl_ctx;
};

/* A PRECISE source attached to view. Nothing is asked of the kernel yet. */
int dirty_iommufd_create(struct dirty_view *view, const struct dirty_iommufd_config *cfg,
			 struct dirty_iommufd **out);
/* Detach (tracking off if on) and free; the view frees it too if it goes first. */
void dirty_iommufd_destroy(struct dirty_iommufd *f);
struct dirty_source *dirty_iommufd_source(struct dirty_iommufd *f);

/*
 * Register one IOMMU_IOAS_MAP the VMM made: IOVA [iova, iova + len) is
 * GPA [gpa, + len) (behind a vIOMMU IOVA is not GPA). Register exactly
 * what was mapped, once per IOMMU_IOAS_MAP: reads never split a
 * registration, and that is what keeps them from cutting a huge IOPTE.
 * Aligned to page_size; IOVA ranges may not overlap (-EEXIST); at most
 * 2^33 pages (a 1 GiB bitmap; -E2BIG). A mapping made while tracking is
 * tracked from its first IOPTE: nothing to mark.
 */
int dirty_iommufd_add_mapping(struct dirty_iommufd *f, uint64_t iova, uint64_t gpa,
			      uint64_t len);
/*
 * The VMM's unmap: call this instead of its own IOMMU_IOAS_UNMAP. While
 * tracking, it reads the registrations inside with NO_CLEAR, marks their
 * bits at their GPAs, then unmaps [iova, iova + len) (holes allowed, a
 * split registration is -EINVAL). *unmapped (may be NULL) gets the bytes
 * the kernel unmapped.
 *
 * The window: a device write between that read and the unmap is lost with
 * its IOPTE; the kernel has no unmap-and-read. This is the race the
 * kernel's authors accepted for NO_CLEAR ("the VM can't tell if we threw
 * it away because the DMA was blocked or because we failed to copy the
 * DRAM", Joao Martins' IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR commit): the
 * guest unmapped the IOVA in its vIOMMU first, so to the guest a DMA
 * racing it may as well have faulted. A caller that unmaps an IOVA the
 * device may still be using on purpose marks the range itself with
 * dirty_view_mark() after this returns.
 *
 * A failed read does not stop the unmap: every registered page is marked
 * after it and the error returned (*unmapped still says what the kernel
 * unmapped). A failed unmap marks every registered page and keeps the
 * registrations (the kernel may have unmapped part: forget those with
 * dirty_iommufd_remove_mapping); the kernel unmapping more than is
 * registered there while tracking is -EPROTO with everything marked.
 */
int dirty_iommufd_unmap(struct dirty_iommufd *f, uint64_t iova, uint64_t len,
			uint64_t *unmapped);
/*
 * Forget the registration [iova, iova + len) without unmapping it (the
 * kernel dropped it another way). Its bits are gone, so while tracking
 * its pages are marked. -ENOENT unless a registration is exactly that.
 */
int dirty_iommufd_remove_mapping(struct dirty_iommufd *f, uint64_t iova, uint64_t len);
/* The guest-physical address of iova (-ENOENT: no registration holds it). */
int dirty_iommufd_translate(struct dirty_iommufd *f, uint64_t iova, uint64_t *gpa);

struct dirty_iommufd_stats {
	uint64_t mappings;		/* registered now */
	uint64_t mapped_bytes;
	uint64_t get_bitmap_calls;	/* GET_DIRTY_BITMAP, reads that clear */
	uint64_t no_clear_calls;	/* GET_DIRTY_BITMAP with NO_CLEAR, before unmaps */
	uint64_t unmap_calls;		/* IOMMU_IOAS_UNMAP */
	uint64_t pages_reported;	/* bits the kernel set (pages of page_size) */
	uint64_t errors;		/* failed calls: everything was marked */
};
int dirty_iommufd_stats(struct dirty_iommufd *f, struct dirty_iommufd_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_IOMMUFD_H */
