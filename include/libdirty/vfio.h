/* SPDX-License-Identifier: MIT */
/*
 * libdirty/vfio.h - the VFIO type1 source: dirty pages of a type1 container
 * the VMM owns (VFIO_IOMMU_DIRTY_PAGES), translated from IOVA to
 * guest-physical addresses and marked into a view.
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

#include <libdirty.h>

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

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_VFIO_H */
