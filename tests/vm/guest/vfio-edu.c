/* vfio-edu.c - guest-side helpers of the VM test tier; see vfio-edu.h. */
#include "vfio-edu.h"
#include "vfio-group.h"
#include "vm-time.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

#define SYSFS_PCI "/sys/bus/pci"

/* "vfio-edu: <message>: <strerror(err)>" on stderr; returns -err. */
#define fail(...) vm_dev_fail("vfio-edu", __VA_ARGS__)

/* Copy src into dst[len]; -ENAMETOOLONG when it does not fit. */
static int copy_str(char *dst, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (n >= len)
		return -ENAMETOOLONG;
	memcpy(dst, src, n + 1);
	return 0;
}

static int read_hex(const char *bdf, const char *attr, unsigned long *val)
{
	char path[PATH_MAX], buf[32], *end;
	int rc;

	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/%s", bdf, attr);
	rc = sysfs_read_text(path, buf, sizeof(buf));
	if (rc)
		return rc;
	errno = 0;
	*val = strtoul(buf, &end, 16);
	return errno || end == buf ? -EINVAL : 0;
}

/* The name of the driver bound to bdf into name ("" when none). */
static int current_driver(const char *bdf, char *name, size_t len)
{
	char path[PATH_MAX], target[PATH_MAX];
	const char *base;
	ssize_t n;

	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/driver", bdf);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		if (errno != ENOENT)
			return -errno;
		name[0] = '\0';
		return 0;
	}
	target[n] = '\0';
	base = strrchr(target, '/');
	return copy_str(name, len, base ? base + 1 : target);
}

int vm_pci_find(uint16_t vendor, uint16_t device, unsigned index, char *bdf, size_t len)
{
	struct dirent **names;
	int n, i, rc = -ENODEV;
	unsigned seen = 0;

	n = scandir(SYSFS_PCI "/devices", &names, sysfs_no_dot, alphasort);
	if (n < 0)
		return fail(errno, "cannot list " SYSFS_PCI "/devices (is sysfs mounted?)");
	for (i = 0; i < n; i++) {
		unsigned long v, d;

		if (rc == -ENODEV && !read_hex(names[i]->d_name, "vendor", &v) &&
		    !read_hex(names[i]->d_name, "device", &d) && v == vendor && d == device &&
		    seen++ == index) {
			rc = copy_str(bdf, len, names[i]->d_name);
		}
		free(names[i]);
	}
	free(names);
	if (rc == -ENODEV)
		fprintf(stderr, "vfio-edu: no PCI device %04x:%04x (#%u) in " SYSFS_PCI "/devices\n",
			vendor, device, index);
	return rc;
}

int vm_pci_bind(const char *bdf, const char *driver)
{
	char path[PATH_MAX], cur[64];
	int rc;

	rc = current_driver(bdf, cur, sizeof(cur));
	if (rc)
		return fail(-rc, "cannot read the driver of %s", bdf);
	if (!strcmp(cur, driver))
		return 0;
	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/driver_override", bdf);
	rc = sysfs_write_text(path, driver);
	if (rc)
		return fail(-rc, "cannot write %s to %s", driver, path);
	if (cur[0]) {
		snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/driver/unbind", bdf);
		rc = sysfs_write_text(path, bdf);
		if (rc)
			return fail(-rc, "cannot unbind %s from %s", bdf, cur);
	}
	rc = sysfs_write_text(SYSFS_PCI "/drivers_probe", bdf);
	if (rc)
		return fail(-rc, "drivers_probe of %s failed (is the %s module loaded?)", bdf, driver);
	rc = current_driver(bdf, cur, sizeof(cur));
	if (rc)
		return fail(-rc, "cannot read the driver of %s", bdf);
	if (strcmp(cur, driver))
		return fail(ENODEV, "%s is bound to '%s', not %s, after drivers_probe", bdf, cur, driver);
	return 0;
}

int vm_pci_map_bar(const char *bdf, int bar, volatile void **addr, size_t *len)
{
	char path[PATH_MAX];
	struct stat st;
	uint16_t cmd;
	void *p;
	int fd, rc;

	/* Memory decoding: firmware usually enables it; if not, ask the kernel. */
	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/config", bdf);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(errno, "cannot open %s", path);
	if (pread(fd, &cmd, sizeof(cmd), PCI_COMMAND) != (ssize_t)sizeof(cmd)) {
		rc = errno ? errno : EIO;
		close(fd);
		return fail(rc, "cannot read the command register of %s", bdf);
	}
	close(fd);
	if (!(cmd & PCI_COMMAND_MEMORY)) {
		snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/enable", bdf);
		rc = sysfs_write_text(path, "1");
		if (rc)
			return fail(-rc, "cannot enable %s", bdf);
	}

	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/resource%d", bdf, bar);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return fail(errno, "cannot open %s", path);
	if (fstat(fd, &st) || st.st_size <= 0) {
		rc = errno ? errno : ENXIO;
		close(fd);
		return fail(rc, "%s has no size", path);
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	rc = errno;
	close(fd);
	if (p == MAP_FAILED)
		return fail(rc, "cannot mmap %s", path);
	*addr = p;
	*len = (size_t)st.st_size;
	return 0;
}

void vm_pci_unmap_bar(volatile void *addr, size_t len)
{
	if (addr)
		munmap((void *)addr, len);
}

/* ---- edu through VFIO ---- */

static int group_of(const char *bdf, int *group_id)
{
	char path[PATH_MAX], missing[128];

	snprintf(path, sizeof(path), SYSFS_PCI "/devices/%s/iommu_group", bdf);
	snprintf(missing, sizeof(missing),
		 "%s has no IOMMU group (boot with intel_iommu=on and -device intel-iommu)", bdf);
	return vfio_group_of_link("vfio-edu", path, missing, group_id);
}

static int region_info(int device, uint32_t index, struct vfio_region_info *info)
{
	memset(info, 0, sizeof(*info));
	info->argsz = sizeof(*info);
	info->index = index;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, info))
		return fail(errno, "VFIO_DEVICE_GET_REGION_INFO(%u)", index);
	return 0;
}

static int enable_bus_master(struct vfio_edu *e)
{
	struct vfio_region_info cfg;
	uint16_t cmd;
	int rc;

	rc = region_info(e->device, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	if (rc)
		return rc;
	if (pread(e->device, &cmd, sizeof(cmd), (off_t)(cfg.offset + PCI_COMMAND)) != (ssize_t)sizeof(cmd))
		return fail(errno ? errno : EIO, "cannot read the command register through VFIO");
	cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	if (pwrite(e->device, &cmd, sizeof(cmd), (off_t)(cfg.offset + PCI_COMMAND)) != (ssize_t)sizeof(cmd))
		return fail(errno ? errno : EIO, "cannot write the command register through VFIO");
	if (pread(e->device, &cmd, sizeof(cmd), (off_t)(cfg.offset + PCI_COMMAND)) != (ssize_t)sizeof(cmd) ||
	    !(cmd & PCI_COMMAND_MASTER))
		return fail(EIO, "bus mastering did not stick (command register %#x)", cmd);
	return 0;
}

static int map_bar0(struct vfio_edu *e)
{
	struct vfio_region_info bar;
	void *p;
	int rc;

	rc = region_info(e->device, VFIO_PCI_BAR0_REGION_INDEX, &bar);
	if (rc)
		return rc;
	if (!(bar.flags & VFIO_REGION_INFO_FLAG_MMAP) || bar.size == 0)
		return fail(ENOTSUP, "edu BAR 0 cannot be mmapped through VFIO (flags %#x, size %llu)",
			    bar.flags, (unsigned long long)bar.size);
	p = mmap(NULL, (size_t)bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, e->device, (off_t)bar.offset);
	if (p == MAP_FAILED)
		return fail(errno, "cannot mmap edu BAR 0");
	e->bar0 = p;
	e->bar0_size = (size_t)bar.size;
	return 0;
}

int vfio_edu_open(struct vfio_edu *e)
{
	uint32_t ident, probe = 0x5a5aa5a5u;
	int rc;

	memset(e, 0, sizeof(*e));
	e->container = e->group = e->device = -1;
	rc = vm_pci_find(EDU_VENDOR, EDU_DEVICE, 0, e->bdf, sizeof(e->bdf));
	if (rc)
		return rc;
	rc = vm_pci_bind(e->bdf, "vfio-pci");
	if (rc)
		return rc;
	rc = group_of(e->bdf, &e->group_id);
	if (rc)
		return rc;

	rc = vfio_group_attach("vfio-edu", e->group_id, ": bind all its devices to vfio-pci", e->bdf,
			       &e->container, &e->group, &e->device);
	if (rc)
		goto out;
	rc = enable_bus_master(e);
	if (rc)
		goto out;
	rc = map_bar0(e);
	if (rc)
		goto out;

	/* Is this really an edu answering through the mapping? */
	ident = edu_read32(e, EDU_REG_IDENT);
	edu_write32(e, EDU_REG_LIVE, probe);
	if ((ident & 0xff) != 0xed || edu_read32(e, EDU_REG_LIVE) != ~probe) {
		rc = fail(EIO, "BAR 0 of %s does not answer like an edu (ident %#x)", e->bdf, ident);
		goto out;
	}
	return 0;
out:
	vfio_edu_close(e);
	return rc;
}

void vfio_edu_close(struct vfio_edu *e)
{
	if (e->bar0)
		munmap((void *)e->bar0, e->bar0_size);
	if (e->device >= 0)
		close(e->device);
	if (e->group >= 0)
		close(e->group);
	if (e->container >= 0)
		close(e->container);
	e->bar0 = NULL;
	e->device = e->group = e->container = -1;
}

uint32_t edu_read32(const struct vfio_edu *e, uint32_t reg)
{
	return *(volatile uint32_t *)(e->bar0 + reg);
}

void edu_write32(const struct vfio_edu *e, uint32_t reg, uint32_t val)
{
	*(volatile uint32_t *)(e->bar0 + reg) = val;
}

void edu_write64(const struct vfio_edu *e, uint32_t reg, uint64_t val)
{
	*(volatile uint64_t *)(e->bar0 + reg) = val;
}

int edu_dma(const struct vfio_edu *e, bool to_ram, uint64_t iova, uint32_t buf_off, uint32_t count)
{
	uint64_t dev = EDU_BUF_ADDR + (uint64_t)buf_off;
	double deadline;

	if (count == 0 || buf_off > EDU_DMA_MAX || count > EDU_DMA_MAX - buf_off)
		return fail(EINVAL, "edu DMA of %u bytes at buffer offset %u: the buffer allows "
			    "offset + count <= %u", count, buf_off, EDU_DMA_MAX);
	if (iova >= EDU_IOVA_LIMIT || count > EDU_IOVA_LIMIT - iova)
		return fail(EINVAL, "edu DMA at IOVA %#" PRIx64 ": edu reaches only below %#llx",
			    iova, (unsigned long long)EDU_IOVA_LIMIT);
	if (edu_read32(e, EDU_REG_DMA_CMD) & EDU_DMA_START)
		return fail(EBUSY, "edu DMA already running");
	/* The buffer writes and reads of the caller happen before the DMA. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	edu_write64(e, EDU_REG_DMA_SRC, to_ram ? dev : iova);
	edu_write64(e, EDU_REG_DMA_DST, to_ram ? iova : dev);
	edu_write64(e, EDU_REG_DMA_CNT, count);
	edu_write64(e, EDU_REG_DMA_CMD, EDU_DMA_START | (to_ram ? EDU_DMA_TO_RAM : 0));
	/* edu runs the transfer from a timer, ~100 ms of virtual time later. */
	deadline = now_s() + 5.0;
	while (edu_read32(e, EDU_REG_DMA_CMD) & EDU_DMA_START) {
		if (now_s() > deadline)
			return fail(ETIMEDOUT, "edu DMA did not finish within 5 s");
		sleep_ms(1);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

/* ---- type1 container ---- */

int vfio_type1_map_dma(int container, void *vaddr, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uint64_t)(uintptr_t)vaddr,
		.iova = iova,
		.size = size,
	};

	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map))
		return fail(errno, "VFIO_IOMMU_MAP_DMA iova %#" PRIx64 " size %#" PRIx64, iova, size);
	return 0;
}

int vfio_type1_unmap_dma(int container, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap),
		.iova = iova,
		.size = size,
	};

	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap))
		return fail(errno, "VFIO_IOMMU_UNMAP_DMA iova %#" PRIx64 " size %#" PRIx64, iova, size);
	if (unmap.size != size)
		return fail(EIO, "VFIO_IOMMU_UNMAP_DMA unmapped %#llx of %#" PRIx64 " bytes",
			    (unsigned long long)unmap.size, size);
	return 0;
}

int vfio_type1_dirty_pgsize(int container, uint64_t *pgsize)
{
	struct vfio_iommu_type1_info *info;
	uint32_t argsz = sizeof(*info), off;
	int rc = 0;

	/* Twice: the first call reports the size the capability chain needs. */
	for (int pass = 0; pass < 2; pass++) {
		info = calloc(1, argsz);
		if (!info)
			return fail(ENOMEM, "VFIO_IOMMU_GET_INFO");
		info->argsz = argsz;
		if (ioctl(container, VFIO_IOMMU_GET_INFO, info)) {
			rc = fail(errno, "VFIO_IOMMU_GET_INFO");
			free(info);
			return rc;
		}
		if (info->argsz <= argsz)
			break;
		argsz = info->argsz;
		free(info);
		info = NULL;
	}
	if (!info)
		return fail(EIO, "VFIO_IOMMU_GET_INFO keeps growing");
	rc = -ENOTSUP;
	if (info->flags & VFIO_IOMMU_INFO_CAPS) {
		for (off = info->cap_offset; off && off + sizeof(struct vfio_info_cap_header) <= argsz;) {
			struct vfio_info_cap_header *h = (void *)((char *)info + off);

			if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION &&
			    off + sizeof(struct vfio_iommu_type1_info_cap_migration) <= argsz) {
				struct vfio_iommu_type1_info_cap_migration *m = (void *)h;

				if (m->pgsize_bitmap) {
					*pgsize = m->pgsize_bitmap & -m->pgsize_bitmap;
					rc = 0;
				}
				break;
			}
			if (h->next <= off)
				break;
			off = h->next;
		}
	}
	free(info);
	if (rc)
		return fail(-rc, "type1 reports no migration capability (no dirty tracking)");
	return 0;
}

static int dirty_ctl(int container, uint32_t flag, const char *what)
{
	struct vfio_iommu_type1_dirty_bitmap db = { .argsz = sizeof(db), .flags = flag };

	if (ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &db))
		return fail(errno, "VFIO_IOMMU_DIRTY_PAGES %s", what);
	return 0;
}

int vfio_type1_dirty_start(int container)
{
	return dirty_ctl(container, VFIO_IOMMU_DIRTY_PAGES_FLAG_START, "START");
}

int vfio_type1_dirty_stop(int container)
{
	return dirty_ctl(container, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, "STOP");
}

int vfio_type1_dirty_get(int container, uint64_t iova, uint64_t size, uint64_t pgsize,
			 uint64_t *bitmap, size_t bitmap_bytes)
{
	size_t argsz = sizeof(struct vfio_iommu_type1_dirty_bitmap) +
		       sizeof(struct vfio_iommu_type1_dirty_bitmap_get);
	struct vfio_iommu_type1_dirty_bitmap *db;
	struct vfio_iommu_type1_dirty_bitmap_get get;
	int rc = 0;

	if (!pgsize || size % pgsize || (size / pgsize + 63) / 64 * 8 > bitmap_bytes)
		return fail(EINVAL, "dirty bitmap of %#" PRIx64 " bytes at page size %" PRIu64
			    " does not fit %zu bytes", size, pgsize, bitmap_bytes);
	db = calloc(1, argsz);
	if (!db)
		return fail(ENOMEM, "VFIO_IOMMU_DIRTY_PAGES GET_BITMAP");
	db->argsz = (uint32_t)argsz;
	db->flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	memset(&get, 0, sizeof(get));
	get.iova = iova;
	get.size = size;
	get.bitmap.pgsize = pgsize;
	get.bitmap.size = bitmap_bytes;
	get.bitmap.data = (__u64 *)bitmap;
	memcpy(db->data, &get, sizeof(get));
	memset(bitmap, 0, bitmap_bytes);
	if (ioctl(container, VFIO_IOMMU_DIRTY_PAGES, db))
		rc = fail(errno, "VFIO_IOMMU_DIRTY_PAGES GET_BITMAP iova %#" PRIx64 " size %#" PRIx64,
			  iova, size);
	free(db);
	return rc;
}
