/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * ldtest-regs.h - the register interface of ldtest, libdirty's TEST DMA
 * device (tests/vm/mdev/ldtest.c). Shared by the kernel module and the
 * guest programs, so it holds plain #defines only (no types, no includes).
 *
 * Region 0 of the VFIO device (read and written with pread/pwrite on the
 * device fd at the region's offset from VFIO_DEVICE_GET_REGION_INFO) holds
 * the registers below. Accesses are 4 or 8 bytes, naturally aligned,
 * little-endian; anything else fails with EINVAL. An 8-byte write is
 * accepted only on the 64-bit registers (IOVA, PATTERN). Writing CMD runs
 * the command synchronously; the write itself succeeds, the outcome is in
 * STATUS (0 or a positive errno) and DONE.
 */
#ifndef LIBDIRTY_TESTS_VM_LDTEST_REGS_H
#define LIBDIRTY_TESTS_VM_LDTEST_REGS_H

#define LDTEST_MDEV_TYPE_NAME "libdirty-test-dma"  /* the type's "name" in sysfs */
#define LDTEST_MAGIC          0x3154444cu          /* "LDT1" */
#define LDTEST_VERSION        1u
#define LDTEST_REGION_SIZE    0x100u
#define LDTEST_PAGE_SIZE      4096u                /* DMA and logging granule */
#define LDTEST_MAX_PAGES      512u                 /* per command: one vfio_pin_pages() */

/* Offsets in region 0. RO = read-only, RW = read-write, WO = reads 0. */
#define LDTEST_REG_MAGIC          0x00  /* u32 RO  LDTEST_MAGIC */
#define LDTEST_REG_VERSION        0x04  /* u32 RO  LDTEST_VERSION */
#define LDTEST_REG_IOVA           0x08  /* u64 RW  first page of the command (page aligned) */
#define LDTEST_REG_NPAGES         0x10  /* u32 RW  pages, 1..LDTEST_MAX_PAGES */
#define LDTEST_REG_FLAGS          0x14  /* u32 RW  LDTEST_F_* */
#define LDTEST_REG_PATTERN        0x18  /* u64 RW  stamp seed, see LDTEST_STAMP */
#define LDTEST_REG_CMD            0x20  /* u32 WO  doorbell: LDTEST_CMD_* */
#define LDTEST_REG_STATUS         0x24  /* u32 RO  0 or the positive errno of the last command */
#define LDTEST_REG_DONE           0x28  /* u32 RO  pages the last command wrote (UNPIN: unpinned) */
#define LDTEST_REG_PINNED         0x2c  /* u32 RO  page pins held for KEEP_PINNED now */
#define LDTEST_REG_LOG_PGSIZE     0x30  /* u64 RO  page size of the DMA log */
#define LDTEST_REG_LOG_MAX_RANGES 0x38  /* u32 RO  most ranges DMA_LOGGING_START accepts */
#define LDTEST_REG_LOG_RANGES     0x3c  /* u32 RO  ranges being logged; 0 = logging off */
#define LDTEST_REG_PAGES_WRITTEN  0x40  /* u64 RO  pages written since open */
#define LDTEST_REG_MAX_PAGES      0x48  /* u32 RO  LDTEST_MAX_PAGES */
#define LDTEST_REG_UNMAP_CALLS    0x4c  /* u32 RO  dma_unmap callbacks since open */
#define LDTEST_REG_LOG_DIRTY      0x50  /* u32 RO  pages in the DMA log not yet reported */

/* Commands (written to LDTEST_REG_CMD). */
#define LDTEST_CMD_WRITE      1u  /* stamp NPAGES pages from IOVA (see FLAGS) */
#define LDTEST_CMD_UNPIN      2u  /* drop the KEEP_PINNED pins in [IOVA, IOVA + NPAGES pages) */
#define LDTEST_CMD_UNPIN_ALL  3u  /* drop every KEEP_PINNED pin */

/* WRITE flags. Default: pin, write each page with vfio_dma_rw, unpin. */
#define LDTEST_F_KEEP_PINNED  (1u << 0)  /* keep the pins until UNPIN/dma_unmap/close */
#define LDTEST_F_NO_PIN       (1u << 1)  /* vfio_dma_rw only, no pin (alone) */
#define LDTEST_F_NO_DATA      (1u << 2)  /* pin (and unpin) but write nothing */
#define LDTEST_F_KMAP         (1u << 3)  /* write through the pinned page, not vfio_dma_rw */
#define LDTEST_F_ALL          0xfu

/* Every 8-byte word of the page at IOVA page_iova gets this value, so a
 * test can check any page whichever command wrote it. */
#define LDTEST_STAMP(pattern, page_iova) ((pattern) ^ (page_iova))

#endif
