/* vfio-group.c - the device helpers' shared part; see vfio-group.h. */
#include "vfio-group.h"
#include "vm-time.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/vfio.h>

int vm_dev_fail(const char *who, int err, const char *fmt, ...)
{
	va_list ap;

	if (err <= 0)
		err = EIO;
	fprintf(stderr, "%s: ", who);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(err));
	return -err;
}

int sysfs_read_text(const char *path, char *buf, size_t len)
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

int sysfs_write_text(const char *path, const char *text)
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

int sysfs_no_dot(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int vfio_group_of_link(const char *who, const char *path, const char *missing, int *group_id)
{
	char target[PATH_MAX], *base, *end;
	ssize_t n;

	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return vm_dev_fail(who, errno, "%s", missing);
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	errno = 0;
	*group_id = (int)strtol(base, &end, 10);
	if (errno || end == base || *end)
		return vm_dev_fail(who, EINVAL, "odd IOMMU group link %s -> %s", path, target);
	return 0;
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

int vfio_group_attach(const char *who, int group_id, const char *not_viable, const char *name,
		      int *container, int *group, int *device)
{
	struct vfio_group_status status = { .argsz = sizeof(status) };
	char path[64];

	*container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (*container < 0)
		return vm_dev_fail(who, errno, "cannot open /dev/vfio/vfio (is the vfio module loaded?)");
	if (ioctl(*container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		return vm_dev_fail(who, EINVAL, "VFIO API version is not %d", VFIO_API_VERSION);
	if (ioctl(*container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
		return vm_dev_fail(who, ENOTSUP, "no VFIO_TYPE1v2_IOMMU (is vfio_iommu_type1 loaded?)");
	snprintf(path, sizeof(path), "/dev/vfio/%d", group_id);
	*group = open_retry(path, O_RDWR, 2000);
	if (*group < 0)
		return vm_dev_fail(who, errno, "cannot open %s", path);
	if (ioctl(*group, VFIO_GROUP_GET_STATUS, &status))
		return vm_dev_fail(who, errno, "VFIO_GROUP_GET_STATUS");
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		return vm_dev_fail(who, EBUSY, "IOMMU group %d is not viable%s", group_id, not_viable);
	if (ioctl(*group, VFIO_GROUP_SET_CONTAINER, container))
		return vm_dev_fail(who, errno, "VFIO_GROUP_SET_CONTAINER");
	if (ioctl(*container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		return vm_dev_fail(who, errno, "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)");
	*device = ioctl(*group, VFIO_GROUP_GET_DEVICE_FD, name);
	if (*device < 0)
		return vm_dev_fail(who, errno, "VFIO_GROUP_GET_DEVICE_FD(%s)", name);
	return 0;
}
