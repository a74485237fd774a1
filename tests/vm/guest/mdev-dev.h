/* mdev-dev.h - guest-side helpers of the VM test tier for mediated (mdev)
 * VFIO devices, above all ldtest, libdirty's TEST DMA device
 * (tests/vm/mdev/ldtest.c, registers in tests/vm/mdev/ldtest-regs.h).
 *
 * Inside the guest booted by tests/vm/run-vm.sh: find an mdev type through
 * /sys/class/mdev_bus (never a fixed path), create an instance, put its
 * IOMMU group in a new type1v2 container, open the device and its region
 * 0; drive VFIO device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*) and
 * type1's unmap-with-dirty-bitmap. The type1 map/unmap/dirty helpers of
 * vfio-edu.h work on the container opened here.
 *
 * Functions returning int return 0 or a negative errno. The setup functions
 * print what failed to stderr; the DMA-logging and unmap helpers print
 * nothing, because tests call them expecting errors too. Built with the
 * installed 6.1 uapi <linux/vfio.h>.
 */
#ifndef LIBDIRTY_TESTS_VM_MDEV_DEV_H
#define LIBDIRTY_TESTS_VM_MDEV_DEV_H

#include <stddef.h>
#include <stdint.h>

#include <linux/vfio.h>

#define MDEV_BUS_CLASS "/sys/class/mdev_bus"

struct mdev_dev {
	char uuid[40];
	char type_dir[512];	/* .../mdev_supported_types/<type> used */
	int group_id;
	int container;		/* /dev/vfio/vfio, VFIO_TYPE1v2_IOMMU set */
	int group;
	int device;
	uint64_t region_offset;	/* region 0 in the device fd */
	uint64_t region_size;
	uint32_t num_regions;
	uint32_t device_flags;	/* VFIO_DEVICE_FLAGS_* */
};

/* The sysfs folder of the first mdev type (parents and types in sorted
 * order) whose "name" attribute is name; -ENODEV if none. */
int mdev_find_type(const char *name, char *type_dir, size_t len);

/* Create an instance of the type (a fresh UUID into uuid[len >= 37]) and
 * remove it again. */
int mdev_create(const char *type_dir, char *uuid, size_t len);
int mdev_remove(const char *uuid);

/* Find the type named type_name, create an instance, open its group in a
 * new type1v2 container, get the device fd and region 0's info. On failure
 * everything done is undone. */
int mdev_dev_open(struct mdev_dev *m, const char *type_name);
/* Close the fds and remove the instance; returns mdev_remove's result. */
int mdev_dev_close(struct mdev_dev *m);

/* Region 0 accesses at byte offset reg: pread/pwrite of 4 or 8 bytes.
 * The read functions return 0 or -errno and store the value. */
int mdev_read32(const struct mdev_dev *m, uint32_t reg, uint32_t *val);
int mdev_read64(const struct mdev_dev *m, uint32_t reg, uint64_t *val);
int mdev_write32(const struct mdev_dev *m, uint32_t reg, uint32_t val);
int mdev_write64(const struct mdev_dev *m, uint32_t reg, uint64_t val);
/* A raw access of len bytes at region offset off (for bounds tests). */
int mdev_access(const struct mdev_dev *m, int write, uint64_t off, void *buf, size_t len);

/* ---- VFIO device DMA logging (6.1 uapi) ---- */

/* VFIO_DEVICE_FEATURE with VFIO_DEVICE_FEATURE_PROBE | SET or GET of feature. */
int vfio_feature_probe(int device, uint32_t feature, uint32_t get_set);
/* DMA_LOGGING_START of n ranges; *page_size is the hint in and the page
 * size the driver chose out. */
int vfio_dma_logging_start(int device, const struct vfio_device_feature_dma_logging_range *ranges,
			   uint32_t n, uint64_t *page_size);
int vfio_dma_logging_stop(int device);
/* DMA_LOGGING_REPORT of [iova, iova + length) at page_size into bitmap.
 * The kernel only sets bits: the caller clears the bitmap (or not). */
int vfio_dma_logging_report(int device, uint64_t iova, uint64_t length, uint64_t page_size,
			    uint64_t *bitmap);

/* VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: unmap
 * [iova, iova + size) and get its dirty bits (one per pgsize page) into
 * bitmap (bitmap_bytes, zeroed here). *unmapped gets the bytes unmapped. */
int vfio_type1_unmap_dma_dirty(int container, uint64_t iova, uint64_t size, uint64_t pgsize,
			       uint64_t *bitmap, size_t bitmap_bytes, uint64_t *unmapped);

#endif
