// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * ldtest.c - libdirty's TEST DMA device. THIS IS A TEST DEVICE: it drives
 * no hardware and exists only so that libdirty's VM test tier
 * (tests/vm/t_vm_mdev.sh) can make a guest kernel's VFIO stack see device
 * DMA it fully controls. Never load it on a machine that matters.
 *
 * It is a mediated device (mdev): the module creates a parent device
 * "ldtest" with one mdev type, "<class>-1" named "libdirty-test-dma". Each
 * instance created through sysfs
 *
 *   echo $UUID > /sys/class/mdev_bus/ldtest/mdev_supported_types/ldtest-1/create
 *
 * is a VFIO device registered with vfio_register_emulated_iommu_dev(), so
 * it gets its own IOMMU group and joins a VFIO type1 container. It "DMAs"
 * the way mediated devices do: vfio_pin_pages() on the container's IOVAs,
 * then vfio_dma_rw() (or a write through the pinned page). Region 0 holds
 * the command registers of ldtest-regs.h.
 *
 * It also implements VFIO device DMA logging (struct vfio_log_ops, the
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT ioctls): it records the
 * pages it writes inside the ranges given at START, at 4 KiB, and reports
 * them read-and-clear.
 *
 * Built out of tree against the Debian 6.1 headers by tests/vm/mdev/build.sh
 * (6.12 builds too, but there the DMA-logging bitmap helpers are stubs, so
 * REPORT fails with EOPNOTSUPP in the VFIO core).
 */
#include <linux/device.h>
#include <linux/highmem.h>
#include <linux/interval_tree.h>
#include <linux/iova_bitmap.h>
#include <linux/mdev.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vfio.h>
#include <linux/xarray.h>

#include "ldtest-regs.h"

#define LDTEST_NAME "ldtest"
#define LDTEST_MAX_INSTANCES 4
/* Region index in the top bits of the file offset, as vfio-pci does, so
 * that userspace must use the offset GET_REGION_INFO reports. */
#define LDTEST_OFFSET_SHIFT 40
#define LDTEST_OFFSET_MASK ((1ull << LDTEST_OFFSET_SHIFT) - 1)
/* Bounds the pins userspace can make us hold (each is a type1 vfio_pfn). */
#define LDTEST_MAX_KEPT_PINS (1u << 16)
/* The VFIO core refuses more ranges than fit a page (LOG_MAX_RANGES in
 * vfio_main.c) and its uapi promises that many to userspace. */
#define LDTEST_CORE_MAX_RANGES \
	(PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range))

static_assert(LDTEST_PAGE_SIZE == PAGE_SIZE);
static_assert(LDTEST_MAX_PAGES <= VFIO_PIN_PAGES_MAX_ENTRIES);
/* IOVAs are u64 in the registers, dma_addr_t in VFIO and page indexes
 * (iova >> PAGE_SHIFT) are xarray keys: all must hold any IOVA. */
static_assert(sizeof(dma_addr_t) == sizeof(u64) && sizeof(unsigned long) == sizeof(u64));

/* Writable at run time so a test can play a device with a small range
 * table; values outside 1..LDTEST_CORE_MAX_RANGES are clamped at START. */
static unsigned int log_max_ranges = LDTEST_CORE_MAX_RANGES;
module_param(log_max_ranges, uint, 0644);
MODULE_PARM_DESC(log_max_ranges,
		 "most ranges DMA_LOGGING_START accepts (default and maximum: one page of ranges, 256)");

struct ldtest_range {
	u64 start;
	u64 last;	/* inclusive, as in the core's interval tree */
};

struct ldtest {
	struct vfio_device vdev;	/* first: vfio_alloc_device() wants it so */
	/* Serializes register access, commands, dma_unmap and the log ops. */
	struct mutex lock;
	bool open;

	u64 iova;
	u32 npages;
	u32 flags;
	u64 pattern;
	u32 status;
	u32 done;
	u64 pages_written;
	u32 unmap_calls;

	/* KEEP_PINNED pins: page index (iova >> PAGE_SHIFT) -> pin count. */
	struct xarray pins;
	u32 npinned;

	/* DMA logging: on while nranges != 0. The core frees its range
	 * nodes when log_start returns, so they are copied. */
	struct ldtest_range *ranges;
	u32 nranges;
	struct xarray dirty;		/* page index -> 1: written, unreported */
	u32 ndirty;
	bool log_lost;			/* a page could not be recorded */

	void *stamp;			/* one page being written */
	struct page **pages;		/* LDTEST_MAX_PAGES */
};

static struct ldtest *to_ldtest(struct vfio_device *vdev)
{
	return container_of(vdev, struct ldtest, vdev);
}

/* ---- DMA log ---------------------------------------------------------- */

/* Ranges may be unaligned (the core checks them only against the hinted
 * page size, which may be 1), so a page counts if it touches a range. */
static bool ldtest_logged(const struct ldtest *ld, u64 page_iova)
{
	u64 page_last = page_iova + PAGE_SIZE - 1;
	u32 i;

	for (i = 0; i < ld->nranges; i++)
		if (page_iova <= ld->ranges[i].last && page_last >= ld->ranges[i].start)
			return true;
	return false;
}

static void ldtest_log_page(struct ldtest *ld, u64 page_iova)
{
	unsigned long idx = page_iova >> PAGE_SHIFT;
	void *old;

	if (!ld->nranges || !ldtest_logged(ld, page_iova))
		return;
	if (xa_load(&ld->dirty, idx))
		return;
	old = xa_store(&ld->dirty, idx, xa_mk_value(1), GFP_KERNEL);
	if (xa_is_err(old)) {
		/* Losing a dirty page silently is the one thing a dirty log
		 * must never do: REPORT fails from now on, and userspace
		 * treats everything as dirty. */
		ld->log_lost = true;
		return;
	}
	ld->ndirty++;
}

static void ldtest_log_reset(struct ldtest *ld)
{
	kfree(ld->ranges);
	ld->ranges = NULL;
	ld->nranges = 0;
	xa_destroy(&ld->dirty);
	ld->ndirty = 0;
	ld->log_lost = false;
}

static int ldtest_log_start(struct vfio_device *vdev, struct rb_root_cached *ranges,
			    u32 nnodes, u64 *page_size)
{
	struct ldtest *ld = to_ldtest(vdev);
	unsigned int max = clamp_t(unsigned int, READ_ONCE(log_max_ranges), 1,
				   LDTEST_CORE_MAX_RANGES);
	struct ldtest_range *copy;
	struct rb_node *node;
	u32 n = 0;
	int ret = 0;

	mutex_lock(&ld->lock);
	/* The core keeps no logging state: a second START is ours to refuse. */
	if (ld->nranges) {
		ret = -EBUSY;
		goto out;
	}
	if (!nnodes || nnodes > max) {
		ret = nnodes ? -E2BIG : -EINVAL;
		goto out;
	}
	copy = kcalloc(nnodes, sizeof(*copy), GFP_KERNEL);
	if (!copy) {
		ret = -ENOMEM;
		goto out;
	}
	/* In-order walk: the copy is sorted by start address. */
	for (node = rb_first_cached(ranges); node && n < nnodes; node = rb_next(node)) {
		struct interval_tree_node *it = rb_entry(node, struct interval_tree_node, rb);

		copy[n].start = it->start;
		copy[n].last = it->last;
		n++;
	}
	if (n != nnodes || node) {
		kfree(copy);
		ret = -EINVAL;
		goto out;
	}
	xa_destroy(&ld->dirty);
	ld->ndirty = 0;
	ld->log_lost = false;
	ld->ranges = copy;
	ld->nranges = nnodes;
	/* The hint is only a hint (uapi): this device logs 4 KiB pages,
	 * and REPORT converts to whatever page size it is asked for. */
	*page_size = PAGE_SIZE;
out:
	mutex_unlock(&ld->lock);
	return ret;
}

static int ldtest_log_stop(struct vfio_device *vdev)
{
	struct ldtest *ld = to_ldtest(vdev);

	/* STOP without START is harmless (vfio_log_ops asks for grace). */
	mutex_lock(&ld->lock);
	ldtest_log_reset(ld);
	mutex_unlock(&ld->lock);
	return 0;
}

static int ldtest_log_read_and_clear(struct vfio_device *vdev, unsigned long iova,
				     unsigned long length, struct iova_bitmap *dirty)
{
	struct ldtest *ld = to_ldtest(vdev);
	unsigned long last, idx;
	void *entry;
	int ret = 0;

	mutex_lock(&ld->lock);
	if (!ld->nranges) {
		ret = -EINVAL;
		goto out;
	}
	if (ld->log_lost) {
		ret = -EIO;
		goto out;
	}
	if (!length)
		goto out;
	if (check_add_overflow(iova, length - 1, &last))
		last = ULONG_MAX;

	xa_for_each_range(&ld->dirty, idx, entry, iova >> PAGE_SHIFT, last >> PAGE_SHIFT) {
		unsigned long pstart = idx << PAGE_SHIFT;
		unsigned long plast = pstart + PAGE_SIZE - 1;
		unsigned long s = max(pstart, iova);
		unsigned long e = min(plast, last);

		/* iova_bitmap_set() must stay inside this window. */
		iova_bitmap_set(dirty, s, e - s + 1);
		/* A page only partly inside the window (unaligned REPORT)
		 * stays dirty: reported twice is safe, once too few is not. */
		if (pstart >= iova && plast <= last) {
			xa_erase(&ld->dirty, idx);
			ld->ndirty--;
		}
	}
out:
	mutex_unlock(&ld->lock);
	return ret;
}

static const struct vfio_log_ops ldtest_log_ops = {
	.log_start = ldtest_log_start,
	.log_stop = ldtest_log_stop,
	.log_read_and_clear = ldtest_log_read_and_clear,
};

/* ---- pins ------------------------------------------------------------- */

/* Drop the kept pins of pages [first, last] (page indexes). */
static u32 ldtest_unpin_range(struct ldtest *ld, unsigned long first, unsigned long last)
{
	unsigned long idx, count;
	void *entry;
	u32 dropped = 0;

	xa_for_each_range(&ld->pins, idx, entry, first, last) {
		/* type1 counts pins per page: one unpin per pin. */
		for (count = xa_to_value(entry); count; count--) {
			vfio_unpin_pages(&ld->vdev, (dma_addr_t)idx << PAGE_SHIFT, 1);
			dropped++;
		}
		xa_erase(&ld->pins, idx);
	}
	ld->npinned -= min(dropped, ld->npinned);
	return dropped;
}

static int ldtest_keep_pin(struct ldtest *ld, u64 page_iova)
{
	unsigned long idx = page_iova >> PAGE_SHIFT;
	void *entry = xa_load(&ld->pins, idx);
	unsigned long count = entry ? xa_to_value(entry) : 0;

	entry = xa_store(&ld->pins, idx, xa_mk_value(count + 1), GFP_KERNEL);
	if (xa_is_err(entry))
		return xa_err(entry);
	ld->npinned++;
	return 0;
}

/* ---- commands --------------------------------------------------------- */

static void ldtest_fill_stamp(struct ldtest *ld, u64 page_iova)
{
	u64 *w = ld->stamp;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / sizeof(*w); i++)
		w[i] = cpu_to_le64(LDTEST_STAMP(ld->pattern, page_iova));
}

static int ldtest_check_span(u64 iova, u32 npages, u64 *end)
{
	if (!npages)
		return -EINVAL;
	if (npages > LDTEST_MAX_PAGES)
		return -E2BIG;
	if (!PAGE_ALIGNED(iova))
		return -EINVAL;
	/* *end is exclusive, so the last page below 2^64 is out of reach. */
	if (check_add_overflow(iova, (u64)npages << PAGE_SHIFT, end))
		return -EOVERFLOW;
	return 0;
}

static int ldtest_cmd_write(struct ldtest *ld)
{
	u32 flags = ld->flags, n = ld->npages, i, pinned = 0;
	bool pin = !(flags & LDTEST_F_NO_PIN);
	u64 iova = ld->iova, end;
	int ret;

	if (flags & ~LDTEST_F_ALL)
		return -EINVAL;
	if ((flags & LDTEST_F_NO_PIN) &&
	    (flags & (LDTEST_F_KEEP_PINNED | LDTEST_F_NO_DATA | LDTEST_F_KMAP)))
		return -EINVAL;
	if ((flags & LDTEST_F_NO_DATA) && (flags & LDTEST_F_KMAP))
		return -EINVAL;
	ret = ldtest_check_span(iova, n, &end);
	if (ret)
		return ret;
	if ((flags & LDTEST_F_KEEP_PINNED) && n > LDTEST_MAX_KEPT_PINS - ld->npinned)
		return -ENOSPC;

	if (pin) {
		ret = vfio_pin_pages(&ld->vdev, iova, n, IOMMU_READ | IOMMU_WRITE, ld->pages);
		if (ret < 0)
			return ret;
		pinned = ret;
		if (pinned != n) {
			/* type1 pins all or nothing; be safe with others. */
			ret = -EFAULT;
			goto unpin;
		}
	}

	ret = 0;
	for (i = 0; i < n && !(flags & LDTEST_F_NO_DATA); i++) {
		u64 page_iova = iova + ((u64)i << PAGE_SHIFT);

		ldtest_fill_stamp(ld, page_iova);
		if (flags & LDTEST_F_KMAP) {
			void *va = kmap_local_page(ld->pages[i]);

			memcpy(va, ld->stamp, PAGE_SIZE);
			kunmap_local(va);
		} else {
			ret = vfio_dma_rw(&ld->vdev, page_iova, ld->stamp, PAGE_SIZE, true);
			if (ret)
				break;
		}
		ld->done++;
		ld->pages_written++;
		ldtest_log_page(ld, page_iova);
	}

	if (!ret && (flags & LDTEST_F_KEEP_PINNED)) {
		for (i = 0; i < n; i++) {
			ret = ldtest_keep_pin(ld, iova + ((u64)i << PAGE_SHIFT));
			if (ret) {
				/* Pins not recorded must not be held. */
				vfio_unpin_pages(&ld->vdev, iova + ((u64)i << PAGE_SHIFT), n - i);
				return ret;
			}
		}
		return 0;
	}
unpin:
	if (pinned)
		vfio_unpin_pages(&ld->vdev, iova, pinned);
	return ret;
}

static int ldtest_cmd_unpin(struct ldtest *ld)
{
	u64 end;
	int ret = ldtest_check_span(ld->iova, ld->npages, &end);

	if (ret)
		return ret;
	ld->done = ldtest_unpin_range(ld, ld->iova >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT);
	return ld->done ? 0 : -ENOENT;
}

static void ldtest_doorbell(struct ldtest *ld, u32 cmd)
{
	int ret;

	ld->done = 0;
	if (!ld->open) {
		ret = -ENODEV;
	} else {
		switch (cmd) {
		case LDTEST_CMD_WRITE:
			ret = ldtest_cmd_write(ld);
			break;
		case LDTEST_CMD_UNPIN:
			ret = ldtest_cmd_unpin(ld);
			break;
		case LDTEST_CMD_UNPIN_ALL:
			ld->done = ldtest_unpin_range(ld, 0, ULONG_MAX);
			ret = 0;
			break;
		default:
			ret = -EINVAL;
			break;
		}
	}
	ld->status = ret < 0 ? (u32)-ret : 0;
}

/* ---- registers -------------------------------------------------------- */

static u32 ldtest_reg_read32(struct ldtest *ld, u32 off)
{
	switch (off) {
	case LDTEST_REG_MAGIC: return LDTEST_MAGIC;
	case LDTEST_REG_VERSION: return LDTEST_VERSION;
	case LDTEST_REG_IOVA: return lower_32_bits(ld->iova);
	case LDTEST_REG_IOVA + 4: return upper_32_bits(ld->iova);
	case LDTEST_REG_NPAGES: return ld->npages;
	case LDTEST_REG_FLAGS: return ld->flags;
	case LDTEST_REG_PATTERN: return lower_32_bits(ld->pattern);
	case LDTEST_REG_PATTERN + 4: return upper_32_bits(ld->pattern);
	case LDTEST_REG_STATUS: return ld->status;
	case LDTEST_REG_DONE: return ld->done;
	case LDTEST_REG_PINNED: return ld->npinned;
	case LDTEST_REG_LOG_PGSIZE: return PAGE_SIZE;
	case LDTEST_REG_LOG_MAX_RANGES:
		return clamp_t(unsigned int, READ_ONCE(log_max_ranges), 1, LDTEST_CORE_MAX_RANGES);
	case LDTEST_REG_LOG_RANGES: return ld->nranges;
	case LDTEST_REG_PAGES_WRITTEN: return lower_32_bits(ld->pages_written);
	case LDTEST_REG_PAGES_WRITTEN + 4: return upper_32_bits(ld->pages_written);
	case LDTEST_REG_MAX_PAGES: return LDTEST_MAX_PAGES;
	case LDTEST_REG_UNMAP_CALLS: return ld->unmap_calls;
	case LDTEST_REG_LOG_DIRTY: return ld->ndirty;
	default: return 0;	/* CMD and unused space read as zero */
	}
}

static int ldtest_reg_write32(struct ldtest *ld, u32 off, u32 val)
{
	switch (off) {
	case LDTEST_REG_IOVA: ld->iova = (ld->iova & ~0xffffffffull) | val; return 0;
	case LDTEST_REG_IOVA + 4: ld->iova = (ld->iova & 0xffffffffull) | (u64)val << 32; return 0;
	case LDTEST_REG_NPAGES: ld->npages = val; return 0;
	case LDTEST_REG_FLAGS: ld->flags = val; return 0;
	case LDTEST_REG_PATTERN: ld->pattern = (ld->pattern & ~0xffffffffull) | val; return 0;
	case LDTEST_REG_PATTERN + 4:
		ld->pattern = (ld->pattern & 0xffffffffull) | (u64)val << 32;
		return 0;
	case LDTEST_REG_CMD: ldtest_doorbell(ld, val); return 0;
	default: return -EINVAL;	/* read-only or unused */
	}
}

/* The region offset of *ppos for an access of count bytes, or -EINVAL. */
static long ldtest_access_offset(loff_t pos, size_t count)
{
	u64 off = (u64)pos & LDTEST_OFFSET_MASK;

	if (pos < 0 || ((u64)pos >> LDTEST_OFFSET_SHIFT) != 0)
		return -EINVAL;
	if ((count != 4 && count != 8) || off % count || off + count > LDTEST_REGION_SIZE)
		return -EINVAL;
	return (long)off;
}

static ssize_t ldtest_read(struct vfio_device *vdev, char __user *buf, size_t count,
			   loff_t *ppos)
{
	struct ldtest *ld = to_ldtest(vdev);
	long off = ldtest_access_offset(*ppos, count);
	u64 val;

	if (off < 0)
		return off;
	mutex_lock(&ld->lock);
	val = ldtest_reg_read32(ld, off);
	if (count == 8)
		val |= (u64)ldtest_reg_read32(ld, off + 4) << 32;
	mutex_unlock(&ld->lock);
	if (count == 8) {
		__le64 v = cpu_to_le64(val);

		if (copy_to_user(buf, &v, 8))
			return -EFAULT;
	} else {
		__le32 v = cpu_to_le32((u32)val);

		if (copy_to_user(buf, &v, 4))
			return -EFAULT;
	}
	return count;
}

static ssize_t ldtest_write(struct vfio_device *vdev, const char __user *buf, size_t count,
			    loff_t *ppos)
{
	struct ldtest *ld = to_ldtest(vdev);
	long off = ldtest_access_offset(*ppos, count);
	u64 val;
	int ret;

	if (off < 0)
		return off;
	if (count == 8) {
		__le64 v;

		if (off != LDTEST_REG_IOVA && off != LDTEST_REG_PATTERN)
			return -EINVAL;
		if (copy_from_user(&v, buf, 8))
			return -EFAULT;
		val = le64_to_cpu(v);
	} else {
		__le32 v;

		if (copy_from_user(&v, buf, 4))
			return -EFAULT;
		val = le32_to_cpu(v);
	}
	mutex_lock(&ld->lock);
	ret = ldtest_reg_write32(ld, off, lower_32_bits(val));
	if (!ret && count == 8)
		ret = ldtest_reg_write32(ld, off + 4, upper_32_bits(val));
	mutex_unlock(&ld->lock);
	return ret ? ret : (ssize_t)count;
}

/* ---- vfio_device_ops -------------------------------------------------- */

static void ldtest_reset_regs(struct ldtest *ld)
{
	ld->iova = 0;
	ld->npages = 0;
	ld->flags = 0;
	ld->pattern = 0;
	ld->status = 0;
	ld->done = 0;
}

static long ldtest_ioctl(struct vfio_device *vdev, unsigned int cmd, unsigned long arg)
{
	struct ldtest *ld = to_ldtest(vdev);
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VFIO_DEVICE_GET_INFO: {
		unsigned long minsz = offsetofend(struct vfio_device_info, num_irqs);
		struct vfio_device_info info;

		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		/* Not PCI: a platform-style device, one region, no IRQs. */
		info.flags = VFIO_DEVICE_FLAGS_PLATFORM | VFIO_DEVICE_FLAGS_RESET;
		info.num_regions = 1;
		info.num_irqs = 0;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_REGION_INFO: {
		unsigned long minsz = offsetofend(struct vfio_region_info, offset);
		struct vfio_region_info info;

		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz || info.index != 0)
			return -EINVAL;
		info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
		info.cap_offset = 0;
		info.size = LDTEST_REGION_SIZE;
		info.offset = (u64)info.index << LDTEST_OFFSET_SHIFT;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_IRQ_INFO:
	case VFIO_DEVICE_SET_IRQS:
		return -EINVAL;
	case VFIO_DEVICE_RESET:
		/* A reset device holds nothing: its pins go, the log stays
		 * (logging belongs to the migration, not to the device state). */
		mutex_lock(&ld->lock);
		ldtest_unpin_range(ld, 0, ULONG_MAX);
		ldtest_reset_regs(ld);
		mutex_unlock(&ld->lock);
		return 0;
	default:
		return -ENOTTY;
	}
}

/* Every driver that pins must drop its pins in an unmapped range: type1
 * calls this until the mapping has none left (and BUG()s after 10 tries). */
static void ldtest_dma_unmap(struct vfio_device *vdev, u64 iova, u64 length)
{
	struct ldtest *ld = to_ldtest(vdev);
	u64 last;

	if (!length)
		return;
	if (check_add_overflow(iova, length - 1, &last))
		last = U64_MAX;
	mutex_lock(&ld->lock);
	ld->unmap_calls++;
	ldtest_unpin_range(ld, iova >> PAGE_SHIFT, last >> PAGE_SHIFT);
	mutex_unlock(&ld->lock);
}

static int ldtest_open_device(struct vfio_device *vdev)
{
	struct ldtest *ld = to_ldtest(vdev);

	mutex_lock(&ld->lock);
	ldtest_reset_regs(ld);
	ld->pages_written = 0;
	ld->unmap_calls = 0;
	ld->open = true;
	mutex_unlock(&ld->lock);
	return 0;
}

static void ldtest_close_device(struct vfio_device *vdev)
{
	struct ldtest *ld = to_ldtest(vdev);

	/* Pins must go while the container is still attached. */
	mutex_lock(&ld->lock);
	ldtest_unpin_range(ld, 0, ULONG_MAX);
	ldtest_log_reset(ld);
	ld->open = false;
	mutex_unlock(&ld->lock);
}

static int ldtest_init_dev(struct vfio_device *vdev)
{
	struct ldtest *ld = to_ldtest(vdev);

	mutex_init(&ld->lock);
	xa_init(&ld->pins);
	xa_init(&ld->dirty);
	ld->stamp = kmalloc(PAGE_SIZE, GFP_KERNEL);
	ld->pages = kcalloc(LDTEST_MAX_PAGES, sizeof(*ld->pages), GFP_KERNEL);
	if (!ld->stamp || !ld->pages) {
		/* The core calls no release when init fails. */
		kfree(ld->stamp);
		kfree(ld->pages);
		mutex_destroy(&ld->lock);
		return -ENOMEM;
	}
	return 0;
}

static void ldtest_release_dev(struct vfio_device *vdev)
{
	struct ldtest *ld = to_ldtest(vdev);

	xa_destroy(&ld->pins);
	xa_destroy(&ld->dirty);
	kfree(ld->ranges);
	kfree(ld->stamp);
	kfree(ld->pages);
	mutex_destroy(&ld->lock);
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
	/* 6.1's core leaves the free to the driver (vfio_device_release). */
	vfio_free_device(vdev);
#endif
}

static const struct vfio_device_ops ldtest_dev_ops = {
	.name = "ldtest",
	.init = ldtest_init_dev,
	.release = ldtest_release_dev,
	.open_device = ldtest_open_device,
	.close_device = ldtest_close_device,
	.read = ldtest_read,
	.write = ldtest_write,
	.ioctl = ldtest_ioctl,
	.dma_unmap = ldtest_dma_unmap,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	/* NULL when the kernel has no iommufd (Debian's 6.12). */
	.bind_iommufd = vfio_iommufd_emulated_bind,
	.unbind_iommufd = vfio_iommufd_emulated_unbind,
	.attach_ioas = vfio_iommufd_emulated_attach_ioas,
	.detach_ioas = vfio_iommufd_emulated_detach_ioas,
#endif
};

/* ---- mdev ------------------------------------------------------------- */

static int ldtest_probe(struct mdev_device *mdev)
{
	struct ldtest *ld;
	int ret;

	ld = vfio_alloc_device(ldtest, vdev, &mdev->dev, &ldtest_dev_ops);
	if (IS_ERR(ld))
		return PTR_ERR(ld);
	/* log_ops must be set before registration (struct vfio_device). */
	ld->vdev.log_ops = &ldtest_log_ops;
	ret = vfio_register_emulated_iommu_dev(&ld->vdev);
	if (ret) {
		vfio_put_device(&ld->vdev);
		return ret;
	}
	dev_set_drvdata(&mdev->dev, ld);
	return 0;
}

static void ldtest_remove(struct mdev_device *mdev)
{
	struct ldtest *ld = dev_get_drvdata(&mdev->dev);

	vfio_unregister_group_dev(&ld->vdev);
	vfio_put_device(&ld->vdev);
}

static ssize_t ldtest_show_description(struct mdev_type *mtype, char *buf)
{
	return sysfs_emit(buf, "libdirty TEST DMA device (pins + vfio_dma_rw, DMA logging); not hardware\n");
}

static struct mdev_type ldtest_type = {
	.sysfs_name = "1",
	.pretty_name = LDTEST_MDEV_TYPE_NAME,
};

static struct mdev_type *ldtest_types[] = { &ldtest_type };

static struct mdev_driver ldtest_driver = {
	.device_api = VFIO_DEVICE_API_PLATFORM_STRING,
	.max_instances = LDTEST_MAX_INSTANCES,
	.driver = {
		.name = LDTEST_NAME,
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
	},
	.probe = ldtest_probe,
	.remove = ldtest_remove,
	.show_description = ldtest_show_description,
};

/* The type directory is named "<parent's class>-1": the class gives it a
 * readable name (a device without class or bus would give "-1"). */
static struct class ldtest_class = {
	.name = LDTEST_NAME,
};

struct ldtest_parent {
	struct device dev;
	struct mdev_parent parent;
};

static struct ldtest_parent *ldtest_parent;

static void ldtest_parent_release(struct device *dev)
{
	kfree(container_of(dev, struct ldtest_parent, dev));
}

static int __init ldtest_init(void)
{
	struct ldtest_parent *p;
	int ret;

	ret = class_register(&ldtest_class);
	if (ret)
		return ret;
	ret = mdev_register_driver(&ldtest_driver);
	if (ret)
		goto err_class;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p) {
		ret = -ENOMEM;
		goto err_driver;
	}
	p->dev.class = &ldtest_class;
	p->dev.release = ldtest_parent_release;
	dev_set_name(&p->dev, "%s", LDTEST_NAME);
	ret = device_register(&p->dev);
	if (ret) {
		put_device(&p->dev);
		goto err_driver;
	}
	ret = mdev_register_parent(&p->parent, &p->dev, &ldtest_driver, ldtest_types,
				   ARRAY_SIZE(ldtest_types));
	if (ret) {
		device_unregister(&p->dev);
		goto err_driver;
	}
	ldtest_parent = p;
	pr_info("ldtest: libdirty TEST DMA device loaded (mdev parent %s)\n", LDTEST_NAME);
	return 0;

err_driver:
	mdev_unregister_driver(&ldtest_driver);
err_class:
	class_unregister(&ldtest_class);
	return ret;
}

static void __exit ldtest_exit(void)
{
	mdev_unregister_parent(&ldtest_parent->parent);
	device_unregister(&ldtest_parent->dev);
	mdev_unregister_driver(&ldtest_driver);
	class_unregister(&ldtest_class);
}

module_init(ldtest_init);
module_exit(ldtest_exit);

MODULE_LICENSE("Dual MIT/GPL");
MODULE_DESCRIPTION("libdirty TEST DMA device (mdev + VFIO DMA logging); for tests only");
MODULE_AUTHOR("libdirty");
