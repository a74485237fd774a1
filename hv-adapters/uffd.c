/* SPDX-License-Identifier: MIT */
/*
 * uffd.c - the userfaultfd source: memory written by this process's own
 * threads (emulated devices, vhost-user back ends, software vCPUs),
 * tracked with userfaultfd write-protection in asynchronous mode and
 * harvested with the PAGEMAP_SCAN ioctl of /proc/self/pagemap.
 *
 * How the kernel does it (Linux 6.7+; Documentation/admin-guide/mm/
 * pagemap.rst and include/uapi/linux/userfaultfd.h):
 *  - UFFD_FEATURE_WP_ASYNC: a write to a write-protected page is resolved
 *    by the kernel itself, which drops the page's uffd-wp bit and lets the
 *    write go on; no message is queued, no thread handles faults. It
 *    implies UFFD_FEATURE_WP_UNPOPULATED, so UFFDIO_WRITEPROTECT also arms
 *    pages never populated in this mapping (pte markers), and their first
 *    write is seen too.
 *  - PAGEMAP_SCAN with category_mask = return_mask = PAGE_IS_WRITTEN and
 *    PM_SCAN_WP_MATCHING returns the runs of pages whose uffd-wp bit is
 *    clear ("written since protected") and sets it again, page table lock
 *    held per table, TLB flushed before the ioctl returns. A write that
 *    races with the scan either cleared the bit before the scan read it
 *    (this harvest) or faults on the new protection (the next one).
 *    PM_SCAN_CHECK_WPASYNC makes the scan fail with EPERM, instead of
 *    reporting nothing, on a range that is no longer registered in
 *    WP-async mode (unmapped and mapped again, say).
 *  - Only this mapping is tracked: the uffd-wp bit lives in its page
 *    tables. A second mapping of the same memfd (the harness's "DMA"
 *    view) writes the same pages without a fault here, as real DMA does.
 *
 * Granularity: 4 KiB pages for anonymous and shmem/memfd memory (an
 * anonymous THP is split on its first write-fault), the huge page for
 * hugetlbfs. Reporting follows the page tables: a write of the same value
 * is reported, and so is a private page dropped with MADV_DONTNEED (it
 * reads as zeros now; a whole dropped THP too, on kernels with "fix
 * PAGEMAP_SCAN written state for PMD holes").
 *
 * Errors follow the view's rule: a failed ioctl marks every page of every
 * range dirty before the error is returned, so nothing reads as clean.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "compat.h"
#include "core.h"
#include "fault.h"
#include "libdirty/uffd.h"

#define UFFD_PAGE 4096ull
#define UFFD_VEC_LEN 4096	/* output runs per PAGEMAP_SCAN call */

/* What the source needs; WP_HUGETLBFS_SHMEM is asked for when offered. */
#define UFFD_NEED (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)

struct urange {
	uint64_t hva, len, gpa;
};

struct dirty_uffd {
	struct dirty_source *src;
	int uffd;
	int pagemap;		/* /proc/self/pagemap, for PAGEMAP_SCAN */
	pthread_mutex_t lock;	/* ranges, tracking, vec, marks */
	struct urange *ranges;
	size_t nranges;
	bool tracking;
	struct page_region *vec;	/* PAGEMAP_SCAN output */
	struct dirty_range *marks;	/* the same runs as guest-physical ranges */
};

static const char *kernel_release(char *buf, size_t len)
{
	struct utsname u;

	if (uname(&u) < 0)
		snprintf(buf, len, "unknown");
	else
		snprintf(buf, len, "%s", u.release);
	return buf;
}

/*
 * A userfaultfd: the system call (privileged, then user-mode-only, which
 * vm.unprivileged_userfaultfd=0 still allows), else /dev/userfaultfd.
 * User-mode-only is enough here: in WP-async mode no fault is ever handed
 * to userspace, from user or kernel mode. Returns the fd or -errno.
 */
static int open_uffd(void)
{
	int fd, dev, err;

	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	err = errno;
	if (err == ENOSYS)
		return -ENOSYS;
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd >= 0)
		return fd;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
		if (fd >= 0)
			return fd;
	}
	return -err;
}

/*
 * Open a userfaultfd with WP-async enabled and /proc/self/pagemap with a
 * working PAGEMAP_SCAN. On failure: -errno with the reason recorded.
 */
static int open_both(int *uffd_out, int *pagemap_out)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	struct pm_scan_arg probe = { .size = sizeof(probe) };
	char rel[128];
	uint64_t have;
	int fd, pm, err;

	/* First ask what the kernel offers: UFFDIO_API can be set only once. */
	fd = open_uffd();
	if (fd == -ENOSYS)
		return __dirty_err(-EOPNOTSUPP, "userfaultfd is not available: kernel %s was built without CONFIG_USERFAULTFD",
				   kernel_release(rel, sizeof(rel)));
	if (fd < 0)
		return __dirty_err(fd, "cannot create a userfaultfd: %s (needs CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1, or access to /dev/userfaultfd)",
				   strerror(-fd));
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		err = -errno;
		close(fd);
		return __dirty_err(err, "UFFDIO_API failed: %s", strerror(-err));
	}
	close(fd);
	have = api.features;
	if ((have & UFFD_NEED) != UFFD_NEED)
		return __dirty_err(-EOPNOTSUPP, "kernel %s lacks userfaultfd %s (write-protect in async mode needs Linux 6.7 or later)",
				   kernel_release(rel, sizeof(rel)),
				   !(have & UFFD_FEATURE_WP_ASYNC) ?
				   "UFFD_FEATURE_WP_ASYNC" : "UFFD_FEATURE_WP_UNPOPULATED");

	fd = open_uffd();
	if (fd < 0)
		return __dirty_err(fd, "cannot create a userfaultfd: %s", strerror(-fd));
	api = (struct uffdio_api){
		.api = UFFD_API,
		.features = UFFD_NEED | (have & UFFD_FEATURE_WP_HUGETLBFS_SHMEM),
	};
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		err = -errno;
		close(fd);
		return __dirty_err(err, "UFFDIO_API with WP_ASYNC failed: %s", strerror(-err));
	}

	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0) {
		err = -errno;
		close(fd);
		return __dirty_err(err, "cannot open /proc/self/pagemap: %s (is /proc mounted?)",
				   strerror(-err));
	}
	/* An empty range: 0 where PAGEMAP_SCAN exists, ENOTTY before 6.7. */
	if (ioctl(pm, PAGEMAP_SCAN, &probe) < 0) {
		err = errno;
		close(pm);
		close(fd);
		return __dirty_err(-EOPNOTSUPP, "kernel %s lacks the PAGEMAP_SCAN ioctl on /proc/self/pagemap (%s; Linux 6.7 or later)",
				   kernel_release(rel, sizeof(rel)), strerror(err));
	}
	*uffd_out = fd;
	*pagemap_out = pm;
	return 0;
}

DIRTY_API int dirty_uffd_probe(void)
{
	int fd, pm, err = open_both(&fd, &pm);

	if (err) {
		char why[256];

		/* Whatever stops it (no feature, no permission): not usable here. */
		snprintf(why, sizeof(why), "%s", dirty_last_error());
		return __dirty_err(-EOPNOTSUPP, "%s", why);
	}
	close(fd);
	close(pm);
	return 0;
}

/* Error rule: every page of every range is dirty. Called with u->lock. */
static void mark_all_ranges(struct dirty_uffd *u)
{
	for (size_t i = 0; i < u->nranges; i++)
		dirty_source_mark(u->src, u->ranges[i].gpa, u->ranges[i].len);
}

/* UFFDIO_WRITEPROTECT over r: on (every page clean again) or off. */
static int protect(struct dirty_uffd *u, const struct urange *r, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = r->hva, .len = r->len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	int e;

	if (ioctl(u->uffd, UFFDIO_WRITEPROTECT, &wp) == 0)
		return 0;
	e = errno;
	return __dirty_err(-e, "UFFDIO_WRITEPROTECT(%s) of [%#llx, +%#llx) failed: %s",
			   on ? "on" : "off", (unsigned long long)r->hva,
			   (unsigned long long)r->len, strerror(e));
}

/*
 * Report every page of r written since it was last protected, and
 * protect it again: one PAGEMAP_SCAN per UFFD_VEC_LEN runs, resumed at
 * walk_end until the whole range is walked. Called with u->lock.
 */
static int harvest(struct dirty_uffd *u, const struct urange *r)
{
	uint64_t cur = r->hva, end = r->hva + r->len;

	while (cur < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
			.start = cur,
			.end = end,
			.vec = (uint64_t)(uintptr_t)u->vec,
			.vec_len = UFFD_VEC_LEN,
			.category_mask = PAGE_IS_WRITTEN,
			.return_mask = PAGE_IS_WRITTEN,
		};
		int injected = DIRTY_FAULT("uffd.scan");
		long n = injected ? -1 : ioctl(u->pagemap, PAGEMAP_SCAN, &arg);
		int e = injected ? -injected : errno;

		if (n < 0)
			return __dirty_err(-e, "PAGEMAP_SCAN of [%#llx, %#llx) failed: %s%s",
					   (unsigned long long)cur, (unsigned long long)end,
					   strerror(e), e == EPERM ?
					   " (the range is no longer registered for write-protect: unmapped or replaced?)" : "");
		if (n > UFFD_VEC_LEN)
			return __dirty_err(-EIO, "PAGEMAP_SCAN returned %ld runs for room for %d",
					   n, UFFD_VEC_LEN);
		for (long i = 0; i < n; i++) {
			const struct page_region *pr = &u->vec[i];

			if (pr->start < r->hva || pr->end > end || pr->end <= pr->start)
				return __dirty_err(-EIO, "PAGEMAP_SCAN returned [%#llx, %#llx), outside [%#llx, %#llx)",
						   (unsigned long long)pr->start,
						   (unsigned long long)pr->end,
						   (unsigned long long)r->hva,
						   (unsigned long long)end);
			u->marks[i].gpa = r->gpa + (pr->start - r->hva);
			u->marks[i].len = pr->end - pr->start;
		}
		/* One RCU read section per batch. */
		dirty_source_mark_ranges(u->src, u->marks, (size_t)n);
		if (arg.walk_end <= cur || arg.walk_end > end)
			return __dirty_err(-EIO, "PAGEMAP_SCAN of [%#llx, %#llx) stopped at %#llx",
					   (unsigned long long)cur, (unsigned long long)end,
					   (unsigned long long)arg.walk_end);
		cur = arg.walk_end;
	}
	return 0;
}

static int harvest_all(struct dirty_uffd *u)
{
	for (size_t i = 0; i < u->nranges; i++) {
		int err = harvest(u, &u->ranges[i]);

		if (err)
			return err;
	}
	return 0;
}

static int uffd_sync(struct dirty_source *src)
{
	struct dirty_uffd *u = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&u->lock);
	/* Not started (or stopped): nothing is protected, nothing to read. */
	if (u->tracking) {
		err = harvest_all(u);
		if (err)
			mark_all_ranges(u);
	}
	pthread_mutex_unlock(&u->lock);
	return err;
}

/*
 * Start: protect every range, then mark it all dirty (the first round).
 * A write before the protection is covered by the mark, which comes
 * after it; a write after it faults and is in the next harvest.
 */
static int uffd_start(struct dirty_source *src)
{
	struct dirty_uffd *u = dirty_source_priv(src);
	int err = 0;
	size_t i;

	pthread_mutex_lock(&u->lock);
	for (i = 0; i < u->nranges && !err; i++)
		err = protect(u, &u->ranges[i], true);
	mark_all_ranges(u);
	u->tracking = !err;
	if (err) {
		char why[256];

		/* Not started: leave no protection behind (best effort). */
		snprintf(why, sizeof(why), "%s", dirty_last_error());
		while (i-- > 1)
			protect(u, &u->ranges[i - 1], false);
		__dirty_err(err, "%s", why);
	}
	pthread_mutex_unlock(&u->lock);
	return err;
}

/*
 * Stop: drop the protection, so writers stop faulting. A range whose
 * memory was unmapped meanwhile (ENOENT) has nothing left to unprotect.
 */
static int uffd_stop(struct dirty_source *src)
{
	struct dirty_uffd *u = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&u->lock);
	u->tracking = false;
	for (size_t i = 0; i < u->nranges; i++) {
		int e = protect(u, &u->ranges[i], false);

		if (e && e != -ENOENT && !err)
			err = e;
	}
	pthread_mutex_unlock(&u->lock);
	return err;
}

static void unregister(struct dirty_uffd *u, const struct urange *r)
{
	struct uffdio_range ur = { .start = r->hva, .len = r->len };

	ioctl(u->uffd, UFFDIO_UNREGISTER, &ur);
}

static void uffd_destroy(struct dirty_source *src)
{
	struct dirty_uffd *u = dirty_source_priv(src);

	for (size_t i = 0; i < u->nranges; i++)
		unregister(u, &u->ranges[i]);
	close(u->pagemap);
	close(u->uffd);	/* also drops any registration left */
	free(u->ranges);
	free(u->vec);
	free(u->marks);
	pthread_mutex_destroy(&u->lock);
	free(u);
}

static const struct dirty_source_ops uffd_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "uffd",
	.start = uffd_start,
	.stop = uffd_stop,
	.sync = uffd_sync,
	.final = uffd_sync,	/* writers stopped: the same harvest is complete */
	.destroy = uffd_destroy,
};

DIRTY_API int dirty_uffd_create(struct dirty_view *view, struct dirty_uffd **out)
{
	struct dirty_uffd *u;
	int err;

	if (!view || !out)
		return __dirty_err(-EINVAL, "dirty_uffd_create: needs a view and an out pointer");
	u = calloc(1, sizeof(*u));
	if (!u)
		return __dirty_err(-ENOMEM, "dirty_uffd_create: out of memory");
	u->vec = calloc(UFFD_VEC_LEN, sizeof(*u->vec));
	u->marks = calloc(UFFD_VEC_LEN, sizeof(*u->marks));
	if (!u->vec || !u->marks) {
		free(u->vec);
		free(u->marks);
		free(u);
		return __dirty_err(-ENOMEM, "dirty_uffd_create: out of memory");
	}
	err = open_both(&u->uffd, &u->pagemap);
	if (err) {
		free(u->vec);
		free(u->marks);
		free(u);
		return err;
	}
	pthread_mutex_init(&u->lock, NULL);
	/* No fixed ranges: the adapter marks its own ranges on error. */
	err = dirty_source_attach(view, &uffd_ops, u, NULL, 0, &u->src);
	if (err) {
		close(u->pagemap);
		close(u->uffd);
		pthread_mutex_destroy(&u->lock);
		free(u->vec);
		free(u->marks);
		free(u);
		return err;
	}
	*out = u;
	return 0;
}

DIRTY_API void dirty_uffd_destroy(struct dirty_uffd *u)
{
	if (u)
		dirty_source_detach(u->src);
}

DIRTY_API struct dirty_source *dirty_uffd_source(struct dirty_uffd *u)
{
	return u->src;
}

static struct urange *find_range(struct dirty_uffd *u, uint64_t hva)
{
	for (size_t i = 0; i < u->nranges; i++)
		if (u->ranges[i].hva == hva)
			return &u->ranges[i];
	return NULL;
}

DIRTY_API int dirty_uffd_add_range(struct dirty_uffd *u, void *hva, uint64_t len,
				   uint64_t gpa)
{
	struct urange r = { .hva = (uint64_t)(uintptr_t)hva, .len = len, .gpa = gpa }, *n;
	struct uffdio_register reg = {
		.range = { .start = r.hva, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	int err;

	if (!len || (r.hva | len | gpa) & (UFFD_PAGE - 1) || r.hva + len < r.hva ||
	    gpa + len < gpa)
		return __dirty_err(-EINVAL, "uffd range %p +%#llx (gpa %#llx) must be non-empty and 4 KiB aligned",
				   hva, (unsigned long long)len, (unsigned long long)gpa);
	pthread_mutex_lock(&u->lock);
	for (size_t i = 0; i < u->nranges; i++) {
		const struct urange *o = &u->ranges[i];

		if (r.hva < o->hva + o->len && o->hva < r.hva + len) {
			pthread_mutex_unlock(&u->lock);
			return __dirty_err(-EEXIST, "uffd range %p +%#llx overlaps the tracked range %#llx +%#llx",
					   hva, (unsigned long long)len,
					   (unsigned long long)o->hva, (unsigned long long)o->len);
		}
	}
	n = realloc(u->ranges, (u->nranges + 1) * sizeof(*n));
	if (!n) {
		pthread_mutex_unlock(&u->lock);
		return __dirty_err(-ENOMEM, "dirty_uffd_add_range: out of memory");
	}
	u->ranges = n;
	if (ioctl(u->uffd, UFFDIO_REGISTER, &reg) < 0) {
		err = errno;
		pthread_mutex_unlock(&u->lock);
		return __dirty_err(-err, "UFFDIO_REGISTER (write-protect) of %p +%#llx failed: %s (%s)",
				   hva, (unsigned long long)len, strerror(err),
				   err == EINVAL ? "the whole range must be mapped: anonymous, shmem/memfd or hugetlbfs memory, hugetlbfs aligned to its huge page size" :
				   err == EBUSY ? "already registered with another userfaultfd" :
				   "is it all mapped?");
	}
	if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT))) {
		unregister(u, &r);
		pthread_mutex_unlock(&u->lock);
		return __dirty_err(-EOPNOTSUPP, "the memory at %p +%#llx cannot be write-protected by userfaultfd on this kernel (file-backed other than shmem?)",
				   hva, (unsigned long long)len);
	}
	/* Added mid-migration: never sent, so its first round starts now. */
	if (u->tracking) {
		err = protect(u, &r, true);
		if (err) {
			unregister(u, &r);
			pthread_mutex_unlock(&u->lock);
			return err;
		}
		dirty_source_mark(u->src, gpa, len);
	}
	u->ranges[u->nranges++] = r;
	pthread_mutex_unlock(&u->lock);
	return 0;
}

DIRTY_API int dirty_uffd_remove_range(struct dirty_uffd *u, void *hva)
{
	struct urange *r;
	int err = 0;

	pthread_mutex_lock(&u->lock);
	r = find_range(u, (uint64_t)(uintptr_t)hva);
	if (!r) {
		pthread_mutex_unlock(&u->lock);
		return __dirty_err(-ENOENT, "no uffd range starts at %p", hva);
	}
	/* Its last writes, while it is still registered. */
	if (u->tracking) {
		err = harvest(u, r);
		if (err)
			dirty_source_mark(u->src, r->gpa, r->len);
	}
	unregister(u, r);
	*r = u->ranges[--u->nranges];
	pthread_mutex_unlock(&u->lock);
	return err;
}
