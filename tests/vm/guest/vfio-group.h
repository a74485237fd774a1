/* vfio-group.h - what the guest-side device helpers share (vfio-edu.c for
 * PCI functions on vfio-pci, mdev-dev.c for mediated devices): small sysfs
 * files, and a device's IOMMU group in a new VFIO type1v2 container.
 *
 * Functions returning int return 0 or a negative errno. The sysfs helpers
 * print nothing (callers know what a failure means); the VFIO ones print
 * what failed as their caller (who).
 */
#ifndef LIBDIRTY_TESTS_VM_VFIO_GROUP_H
#define LIBDIRTY_TESTS_VM_VFIO_GROUP_H

#include <dirent.h>
#include <stddef.h>

/* Print "who: <message>: <strerror(err)>" to stderr; returns -err (-EIO for err <= 0). */
__attribute__((format(printf, 3, 4)))
int vm_dev_fail(const char *who, int err, const char *fmt, ...);

/* A small sysfs file into buf, NUL-terminated, trailing newlines and blanks cut. */
int sysfs_read_text(const char *path, char *buf, size_t len);
int sysfs_write_text(const char *path, const char *text);
/* scandir filter: every entry but . and .. (and hidden ones). */
int sysfs_no_dot(const struct dirent *d);

/* The number of the IOMMU group the iommu_group link at path names;
 * missing: what to say when there is no link. */
int vfio_group_of_link(const char *who, const char *path, const char *missing, int *group_id);

/*
 * Open /dev/vfio/vfio into *container and group group_id into *group, set
 * the group's container and VFIO_TYPE1v2_IOMMU, and get the fd of device
 * name into *device. not_viable is added to the message when the group is
 * not viable. On failure the fds opened so far stay in *container, *group
 * for the caller to close.
 */
int vfio_group_attach(const char *who, int group_id, const char *not_viable, const char *name,
		      int *container, int *group, int *device);

#endif
