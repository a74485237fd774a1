/* mdev-dev.c - guest-side helpers for mdev VFIO devices; see mdev-dev.h. */
#include "mdev-dev.h"
#include "vfio-group.h"

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
#include <time.h>
#include <unistd.h>

/* "mdev-dev: <message>: <strerror(err)>" on stderr; returns -err. */
#define fail(...) vm_dev_fail("mdev-dev", __VA_ARGS__)

int mdev_find_type(const char *name, char *type_dir, size_t len)
{
	struct dirent **parents;
	int np, rc = -ENODEV;

	np = scandir(MDEV_BUS_CLASS, &parents, sysfs_no_dot, alphasort);
	if (np < 0)
		return fail(errno, "cannot list " MDEV_BUS_CLASS " (is the mdev module loaded?)");
	for (int i = 0; i < np; i++) {
		char types[PATH_MAX];
		struct dirent **t;
		int nt;

		snprintf(types, sizeof(types), MDEV_BUS_CLASS "/%s/mdev_supported_types",
			 parents[i]->d_name);
		nt = rc == -ENODEV ? scandir(types, &t, sysfs_no_dot, alphasort) : -1;
		for (int j = 0; j < nt; j++) {
			char path[PATH_MAX], val[128];

			if (rc == -ENODEV &&
			    snprintf(path, sizeof(path), "%s/%s/name", types, t[j]->d_name) <
				    (int)sizeof(path) &&
			    !sysfs_read_text(path, val, sizeof(val)) && !strcmp(val, name)) {
				if ((size_t)snprintf(type_dir, len, "%s/%s", types, t[j]->d_name) >= len)
					rc = -ENAMETOOLONG;
				else
					rc = 0;
			}
			free(t[j]);
		}
		if (nt >= 0)
			free(t);
		free(parents[i]);
	}
	free(parents);
	if (rc == -ENODEV)
		fprintf(stderr, "mdev-dev: no mdev type named '%s' under " MDEV_BUS_CLASS
			"/*/mdev_supported_types (is its driver loaded?)\n", name);
	return rc;
}

int mdev_create(const char *type_dir, char *uuid, size_t len)
{
	char path[PATH_MAX], id[64];
	int rc;

	if (len < 37)
		return -EINVAL;
	rc = sysfs_read_text("/proc/sys/kernel/random/uuid", id, sizeof(id));
	if (rc)
		return fail(-rc, "cannot read /proc/sys/kernel/random/uuid (is /proc mounted?)");
	if (strlen(id) != 36)
		return fail(EINVAL, "odd UUID '%s'", id);
	snprintf(path, sizeof(path), "%s/create", type_dir);
	rc = sysfs_write_text(path, id);
	if (rc)
		return fail(-rc, "cannot create an mdev: echo %s > %s", id, path);
	memcpy(uuid, id, 37);
	return 0;
}

int mdev_remove(const char *uuid)
{
	char path[PATH_MAX];
	int rc;

	snprintf(path, sizeof(path), "/sys/bus/mdev/devices/%s/remove", uuid);
	rc = sysfs_write_text(path, "1");
	if (rc)
		return fail(-rc, "cannot remove mdev %s (%s)", uuid, path);
	return 0;
}

static int mdev_group_of(const char *uuid, int *group_id)
{
	char path[PATH_MAX], missing[PATH_MAX + 64];

	snprintf(path, sizeof(path), "/sys/bus/mdev/devices/%s/iommu_group", uuid);
	snprintf(missing, sizeof(missing), "mdev %s has no IOMMU group (%s)", uuid, path);
	return vfio_group_of_link("mdev-dev", path, missing, group_id);
}

int mdev_dev_open(struct mdev_dev *m, const char *type_name)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_region_info reg = { .argsz = sizeof(reg), .index = 0 };
	int rc;

	memset(m, 0, sizeof(*m));
	m->container = m->group = m->device = -1;
	rc = mdev_find_type(type_name, m->type_dir, sizeof(m->type_dir));
	if (rc)
		return rc;
	rc = mdev_create(m->type_dir, m->uuid, sizeof(m->uuid));
	if (rc)
		return rc;
	rc = mdev_group_of(m->uuid, &m->group_id);
	if (rc)
		goto out;

	rc = vfio_group_attach("mdev-dev", m->group_id, "", m->uuid, &m->container, &m->group,
			       &m->device);
	if (rc)
		goto out;
	if (ioctl(m->device, VFIO_DEVICE_GET_INFO, &info)) {
		rc = fail(errno, "VFIO_DEVICE_GET_INFO");
		goto out;
	}
	m->num_regions = info.num_regions;
	m->device_flags = info.flags;
	if (info.num_regions < 1) {
		rc = fail(ENODEV, "mdev %s has no regions", m->uuid);
		goto out;
	}
	if (ioctl(m->device, VFIO_DEVICE_GET_REGION_INFO, &reg)) {
		rc = fail(errno, "VFIO_DEVICE_GET_REGION_INFO(0)");
		goto out;
	}
	if (!(reg.flags & VFIO_REGION_INFO_FLAG_READ) || !(reg.flags & VFIO_REGION_INFO_FLAG_WRITE) ||
	    reg.size == 0) {
		rc = fail(ENOTSUP, "region 0 is not read-write (flags %#x, size %llu)", reg.flags,
			  (unsigned long long)reg.size);
		goto out;
	}
	m->region_offset = reg.offset;
	m->region_size = reg.size;
	return 0;
out:
	mdev_dev_close(m);
	return rc;
}

int mdev_dev_close(struct mdev_dev *m)
{
	int rc = 0;

	if (m->device >= 0)
		close(m->device);
	if (m->group >= 0)
		close(m->group);
	if (m->container >= 0)
		close(m->container);
	m->device = m->group = m->container = -1;
	if (m->uuid[0]) {
		rc = mdev_remove(m->uuid);
		m->uuid[0] = '\0';
	}
	return rc;
}

int mdev_access(const struct mdev_dev *m, int write, uint64_t off, void *buf, size_t len)
{
	ssize_t n;

	if (off > (uint64_t)INT64_MAX - m->region_offset)
		return -EINVAL;
	if (write)
		n = pwrite(m->device, buf, len, (off_t)(m->region_offset + off));
	else
		n = pread(m->device, buf, len, (off_t)(m->region_offset + off));
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

int mdev_read32(const struct mdev_dev *m, uint32_t reg, uint32_t *val)
{
	return mdev_access(m, 0, reg, val, sizeof(*val));
}

int mdev_read64(const struct mdev_dev *m, uint32_t reg, uint64_t *val)
{
	return mdev_access(m, 0, reg, val, sizeof(*val));
}

int mdev_write32(const struct mdev_dev *m, uint32_t reg, uint32_t val)
{
	return mdev_access(m, 1, reg, &val, sizeof(val));
}

int mdev_write64(const struct mdev_dev *m, uint32_t reg, uint64_t val)
{
	return mdev_access(m, 1, reg, &val, sizeof(val));
}

/* ---- VFIO device DMA logging ---- */

/* One VFIO_DEVICE_FEATURE ioctl with payload (copied in and out). */
static int device_feature(int device, uint32_t flags, void *payload, size_t len)
{
	size_t argsz = sizeof(struct vfio_device_feature) + len;
	struct vfio_device_feature *f = calloc(1, argsz);
	int rc = 0;

	if (!f)
		return -ENOMEM;
	f->argsz = (uint32_t)argsz;
	f->flags = flags;
	if (len)
		memcpy(f->data, payload, len);
	if (ioctl(device, VFIO_DEVICE_FEATURE, f))
		rc = -errno;
	else if (len)
		memcpy(payload, f->data, len);
	free(f);
	return rc;
}

int vfio_feature_probe(int device, uint32_t feature, uint32_t get_set)
{
	return device_feature(device, VFIO_DEVICE_FEATURE_PROBE | get_set | feature, NULL, 0);
}

int vfio_dma_logging_start(int device, const struct vfio_device_feature_dma_logging_range *ranges,
			   uint32_t n, uint64_t *page_size)
{
	struct vfio_device_feature_dma_logging_control ctl = {
		.page_size = *page_size,
		.num_ranges = n,
		.ranges = (uint64_t)(uintptr_t)ranges,
	};
	int rc = device_feature(device, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
				&ctl, sizeof(ctl));

	if (!rc)
		*page_size = ctl.page_size;
	return rc;
}

int vfio_dma_logging_stop(int device)
{
	return device_feature(device, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
			      NULL, 0);
}

int vfio_dma_logging_report(int device, uint64_t iova, uint64_t length, uint64_t page_size,
			    uint64_t *bitmap)
{
	struct vfio_device_feature_dma_logging_report rep = {
		.iova = iova,
		.length = length,
		.page_size = page_size,
		.bitmap = (uint64_t)(uintptr_t)bitmap,
	};

	return device_feature(device, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
			      &rep, sizeof(rep));
}

int vfio_type1_unmap_dma_dirty(int container, uint64_t iova, uint64_t size, uint64_t pgsize,
			       uint64_t *bitmap, size_t bitmap_bytes, uint64_t *unmapped)
{
	size_t argsz = sizeof(struct vfio_iommu_type1_dma_unmap) + sizeof(struct vfio_bitmap);
	struct vfio_iommu_type1_dma_unmap *u = calloc(1, argsz);
	struct vfio_bitmap bm = {
		.pgsize = pgsize,
		.size = bitmap_bytes,
		.data = (__u64 *)bitmap,
	};
	int rc = 0;

	if (!u)
		return -ENOMEM;
	memset(bitmap, 0, bitmap_bytes);
	u->argsz = (uint32_t)argsz;
	u->flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	u->iova = iova;
	u->size = size;
	memcpy(u->data, &bm, sizeof(bm));
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, u))
		rc = -errno;
	if (unmapped)
		*unmapped = u->size;
	free(u);
	return rc;
}
