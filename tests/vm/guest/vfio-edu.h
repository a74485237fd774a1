/* vfio-edu.h - guest-side helpers of the VM test tier (tests/vm/).
 *
 * Inside the QEMU guest booted by tests/vm/run-vm.sh: find PCI devices
 * through sysfs (never by a fixed address), hand QEMU's edu device
 * (1234:11e8) to vfio-pci, drive it through a VFIO type1 container, run edu
 * DMAs, query type1 dirty tracking, and map a device BAR from sysfs (the
 * ivshmem region, 1af4:1110, BAR 2).
 *
 * Every function returning int returns 0 or a negative errno, and prints
 * what failed to stderr. Built with the kernel's 6.1 uapi <linux/vfio.h>.
 */
#ifndef LIBDIRTY_TESTS_VM_VFIO_EDU_H
#define LIBDIRTY_TESTS_VM_VFIO_EDU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110

/* edu's MMIO registers (BAR 0), from QEMU's docs/specs/edu.rst. */
#define EDU_REG_IDENT   0x00  /* 0xRRrr00ed */
#define EDU_REG_LIVE    0x04  /* reads back the inverse of what was written */
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_CNT 0x90
#define EDU_REG_DMA_CMD 0x98
#define EDU_DMA_START   0x1
#define EDU_DMA_TO_RAM  0x2   /* direction: 0 = RAM to edu, 1 = edu to RAM */

/* edu's one DMA buffer, as a device address. */
#define EDU_BUF_ADDR 0x40000u
#define EDU_BUF_SIZE 4096u
/* QEMU 7.2 aborts (hw_error) on a transfer that reaches the buffer's last
 * byte, so at most 4095 bytes, ending before EDU_BUF_ADDR + 4095. */
#define EDU_DMA_MAX 4095u
/* edu's default DMA mask is 28 bits: IOVAs must stay below this. */
#define EDU_IOVA_LIMIT (1ull << 28)

/* ---- PCI through sysfs ---- */

/* The index-th (0-based, in address order) PCI function with this vendor
 * and device ID: its address ("0000:00:03.0") into bdf. -ENODEV if none. */
int vm_pci_find(uint16_t vendor, uint16_t device, unsigned index, char *bdf, size_t len);

/* Bind the function to driver (e.g. "vfio-pci") with driver_override and
 * drivers_probe, unbinding its current driver first. */
int vm_pci_bind(const char *bdf, const char *driver);

/* mmap BAR bar of the function through sysfs resource<bar>, read-write and
 * shared; enables the device's memory decoding first if it is off. */
int vm_pci_map_bar(const char *bdf, int bar, volatile void **addr, size_t *len);
void vm_pci_unmap_bar(volatile void *addr, size_t len);

/* ---- edu through VFIO ---- */

struct vfio_edu {
	char bdf[32];
	int group_id;
	int container;   /* /dev/vfio/vfio, VFIO_TYPE1v2_IOMMU set */
	int group;       /* /dev/vfio/<group_id> */
	int device;      /* the device fd */
	volatile uint8_t *bar0;
	size_t bar0_size;
};

/* Find the first edu, bind it to vfio-pci, open its group in a new type1v2
 * container, get the device, enable bus mastering through the VFIO config
 * region and mmap BAR 0. On failure everything opened is closed again. */
int vfio_edu_open(struct vfio_edu *e);
void vfio_edu_close(struct vfio_edu *e);

uint32_t edu_read32(const struct vfio_edu *e, uint32_t reg);
void edu_write32(const struct vfio_edu *e, uint32_t reg, uint32_t val);
void edu_write64(const struct vfio_edu *e, uint32_t reg, uint64_t val);

/* One edu DMA and wait (up to 5 s) for it: count bytes from guest IOVA iova
 * into edu's buffer at buf_off (to_ram false), or from the buffer into iova
 * (to_ram true). buf_off + count <= EDU_DMA_MAX, iova + count within
 * EDU_IOVA_LIMIT, else -EINVAL (QEMU would abort). */
int edu_dma(const struct vfio_edu *e, bool to_ram, uint64_t iova, uint32_t buf_off, uint32_t count);

/* ---- type1 container ---- */

int vfio_type1_map_dma(int container, void *vaddr, uint64_t iova, uint64_t size);
int vfio_type1_unmap_dma(int container, uint64_t iova, uint64_t size);

/* The page size of type1's dirty bitmaps (its migration capability). */
int vfio_type1_dirty_pgsize(int container, uint64_t *pgsize);
int vfio_type1_dirty_start(int container);
int vfio_type1_dirty_stop(int container);
/* The dirty bitmap of [iova, iova + size), which must cover whole DMA
 * mappings, one bit per pgsize page into bitmap (bitmap_bytes, a multiple
 * of 8 and at least one bit per page rounded up to 64). */
int vfio_type1_dirty_get(int container, uint64_t iova, uint64_t size, uint64_t pgsize,
			 uint64_t *bitmap, size_t bitmap_bytes);

#endif
