/* mdev-dev.c - guest-side helpers for mdev VFIO devices; see mdev-dev.h. */
#include "mdev-dev.h"

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

/* Print "mdev-dev: <message>: <strerror(err)>" and return -err. */
__attribute__((format(printf, 2, 3)))
static int fail(int err, const char *fmt, ...)
{
	va_list ap;

	if (err <= 0)
		err = EIO;
	fputs("mdev-dev: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(err));
	return -err;
}

static int read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;
	int err;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return 0;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t len = strlen(text);
	ssize_t n;
	int err;

	if (fd < 0)
		return -errno;
	n = write(fd, text, len);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	return (size_t)n == len ? 0 : -EIO;
}

static int dot_filter(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int mdev_find_type(const char *name, char *type_dir, size_t len)
{
	struct dirent **parents;
	int np, rc = -ENODEV;

	np = scandir(MDEV_BUS_CLASS, &parents, dot_filter, alphasort);
	if (np < 0)
		return fail(errno, "cannot list " MDEV_BUS_CLASS " (is the mdev module loaded?)");
	for (int i = 0; i < np; i++) {
		char types[PATH_MAX];
		struct dirent **t;
		int nt;

		snprintf(types, sizeof(types), MDEV_BUS_CLASS "/%s/mdev_supported_types",
			 parents[i]->d_name);
		nt = rc == -ENODEV ? scandir(types, &t, dot_filter, alphasort) : -1;
		for (int j = 0; j < nt; j++) {
			char path[PATH_MAX], val[128];

			if (rc == -ENODEV &&
			    snprintf(path, sizeof(path), "%s/%s/name", types, t[j]->d_name) <
				    (int)sizeof(path) &&
			    !read_text(path, val, sizeof(val)) && !strcmp(val, name)) {
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
	rc = read_text("/proc/sys/kernel/random/uuid", id, sizeof(id));
	if (rc)
		return fail(-rc, "cannot read /proc/sys/kernel/random/uuid (is /proc mounted?)");
	if (strlen(id) != 36)
		return fail(EINVAL, "odd UUID '%s'", id);
	snprintf(path, sizeof(path), "%s/create", type_dir);
	rc = write_text(path, id);
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
	rc = write_text(path, "1");
	if (rc)
		return fail(-rc, "cannot remove mdev %s (%s)", uuid, path);
	return 0;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* devtmpfs creates /dev/vfio/N asynchronously after the device appears. */
static int open_retry(const char *path, int flags, long timeout_ms)
{
	long waited = 0;
	int fd;

	for (;;) {
		fd = open(path, flags | O_CLOEXEC);
		if (fd >= 0 || errno != ENOENT || waited >= timeout_ms)
			return fd;
		sleep_ms(10);
		waited += 10;
	}
}

static int mdev_group_of(const char *uuid, int *group_id)
{
	char path[PATH_MAX], target[PATH_MAX], *base, *end;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/bus/mdev/devices/%s/iommu_group", uuid);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return fail(errno, "mdev %s has no IOMMU group (%s)", uuid, path);
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	errno = 0;
	*group_id = (int)strtol(base, &end, 10);
	if (errno || end == base || *end)
		return fail(EINVAL, "odd IOMMU group link %s -> %s", path, target);
	return 0;
}

int mdev_dev_open(struct mdev_dev *m, const char *type_name)
{
	struct vfio_group_status status = { .argsz = sizeof(status) };
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_region_info reg = { .argsz = sizeof(reg), .index = 0 };
	char path[64];
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

	m->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (m->container < 0) {
		rc = fail(errno, "cannot open /dev/vfio/vfio (is the vfio module loaded?)");
		goto out;
	}
	if (ioctl(m->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
		rc = fail(EINVAL, "VFIO API version is not %d", VFIO_API_VERSION);
		goto out;
	}
	if (ioctl(m->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
		rc = fail(ENOTSUP, "no VFIO_TYPE1v2_IOMMU (is vfio_iommu_type1 loaded?)");
		goto out;
	}
	snprintf(path, sizeof(path), "/dev/vfio/%d", m->group_id);
	m->group = open_retry(path, O_RDWR, 2000);
	if (m->group < 0) {
		rc = fail(errno, "cannot open %s", path);
		goto out;
	}
	if (ioctl(m->group, VFIO_GROUP_GET_STATUS, &status)) {
		rc = fail(errno, "VFIO_GROUP_GET_STATUS");
		goto out;
	}
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		rc = fail(EBUSY, "IOMMU group %d is not viable", m->group_id);
		goto out;
	}
	if (ioctl(m->group, VFIO_GROUP_SET_CONTAINER, &m->container)) {
		rc = fail(errno, "VFIO_GROUP_SET_CONTAINER");
		goto out;
	}
	if (ioctl(m->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) {
		rc = fail(errno, "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)");
		goto out;
	}
	m->device = ioctl(m->group, VFIO_GROUP_GET_DEVICE_FD, m->uuid);
	if (m->device < 0) {
		rc = fail(errno, "VFIO_GROUP_GET_DEVICE_FD(%s)", m->uuid);
		goto out;
	}
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
