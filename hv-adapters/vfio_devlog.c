/* SPDX-License-Identifier: MIT */
/*
 * vfio_devlog.c - the VFIO device DMA logging source (include/libdirty/vfio.h):
 * a device that records its own DMA writes, driven through
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_START / REPORT / STOP on the device fd the
 * VMM owns. Touches only that fd (through cfg->ioctl) and the mappings the
 * VMM registers; marks through the view.
 *
 * Citations (include/uapi/linux/vfio.h, drivers/vfio/vfio_main.c; checked
 * on Debian's 6.1 with ldtest by tests/vm/t_vm_mdev.sh): START takes 1..256
 * non-overlapping ranges aligned to the page-size hint and answers with the
 * driver's page size; a second START is refused (EBUSY) until STOP; STOP
 * drops the log and REPORT after it fails; REPORT reads and clears, only
 * sets bits (the caller zeroes), bit i = [iova + i * page_size, + page_size);
 * "if any error is returned userspace should assume that the dirty log is
 * corrupted. Error recovery is to consider all memory dirty and try to
 * restart the dirty tracking" (the uapi's words, which the error rule
 * below is).
 *
 * State. `armed`: a START succeeded and no STOP since, the ranges in
 * d->ranges are logged and every registration with `logged` set lies in
 * one of them. `corrupt`: a log operation failed, so the log cannot be
 * trusted until it is restarted; the next sync re-arms. Registrations
 * added outside the ranges have `logged` clear until a re-arm.
 *
 * The re-arm window (dirty_vfio_devlog_rearm, and sync under REARM_AUTO).
 * The claim: every device write to a mapped page lands in the view. A
 * write at time t is in one of three spans:
 *   a. before the last REPORT of its page: that REPORT returned it, and
 *      it was marked after the REPORT returned;
 *   b. after the last REPORT and before the new START returned (the
 *      window): STOP dropped what the device logged there, and until
 *      START nothing logs at all. The device can only write pages it can
 *      reach, which are the registered mappings (the VMM registers each
 *      before the device uses it). So after START returns, every page of
 *      every registered mapping is marked: the write happened before that
 *      mark, so the claim that takes the mark reads the page after the
 *      write. Marking before START would not do: a sender could claim
 *      and send the page inside the window, before the write, and no
 *      later mark would exist;
 *      A mapping added outside the old ranges was logged by nothing
 *      since its MAP_DMA: all its time before START is window, and the
 *      same marks cover it;
 *   c. after START returned: the new log holds it (its IOVA is inside
 *      the new ranges, which cover every registration) and a later
 *      REPORT returns it; or the device stops first and final reports it.
 * tests/vm/guest/vm_devlog.c part 5 writes in exactly that window (before
 * STOP, after STOP, before START, in old and new mappings, with a sender
 * draining the view just before STOP) and loses nothing; marking before
 * STOP, or not at all, fails it.
 * Reporting the old ranges before STOP would add nothing: span b's mark
 * covers all of them anyway. The window cannot be narrowed: the uapi
 * allows no second START while logging, REPORT after STOP fails, and
 * what the device wrote in between is known to nobody. The marks are the
 * view's seq_cst atomic ORs, issued by this thread after the START ioctl
 * returned, so any claim that clears them runs after the START as well.
 *
 * Unmaps (dirty_vfio_devlog_unmapped) need no re-arm: the kernel unmap
 * already happened, so nothing can write those IOVAs any more; one REPORT
 * of them returns their last bits, marked at the GPAs they had. Without
 * it the bits would stay in the log and be read as the next mapping's.
 *
 * Errors follow the view's rule: a failed ioctl, or a bit no registration
 * holds, marks every registered page dirty before the error is returned.
 *
 * Locking: d->lock guards everything mutable here; the view's sync calls
 * take it inside the view's lock, the VMM's calls take it alone. The
 * ioctl hook runs with d->lock held. Nothing here takes the view's lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/vfio.h>

#include <libdirty/vfio.h>

#include "core.h"
#include "libdirty/vfio.h"
#include "iova_map.h"

#define DEVLOG_MIN_PAGE 4096ull
/* What the uapi promises at least: one kernel page of 16-byte ranges. */
#define DEVLOG_MAX_RANGES 256u
/* Bits per REPORT: 128 KiB of bitmap, 4 GiB of IOVA at 4 KiB pages. */
#define REPORT_MAX_BITS (1ull << 20)
/* iova_reg.flags: inside d->ranges since the last START. */
#define LOGGED 1u

typedef struct vfio_device_feature_dma_logging_range lrange;

struct dirty_vfio_devlog {
	struct dirty_source *src;
	int fd;
	int (*ioctl_fn)(void *ctx, int fd, unsigned long req, void *arg);
	void *ioctl_ctx;
	uint64_t hint;		/* immutable: START's page-size hint */
	uint64_t align;		/* immutable: range rounding, >= hint */
	unsigned int policy;	/* immutable: enum dirty_vfio_devlog_rearm */
	pthread_mutex_t lock;	/* everything below */
	uint32_t max_ranges;	/* lowered when START says E2BIG */
	struct iova_map map;	/* the VMM's mappings; flags: LOGGED */
	lrange *ranges;		/* logged now (armed), sorted, disjoint */
	size_t nranges;
	uint64_t pgsize;	/* the driver's page size (armed) */
	bool tracking;		/* the view started us, no stop since */
	bool armed;
	bool corrupt;
	struct dirty_vfio_devlog_stats st;	/* counters; the rest computed */
	uint64_t bad_iova;	/* first IOVA of a bit no registration holds */
	bool bad;
};

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static int sys_ioctl(void *ctx, int fd, unsigned long req, void *arg)
{
	int r;

	(void)ctx;
	r = ioctl(fd, req, arg);
	return r < 0 ? -errno : r;
}

/* ---- VFIO_DEVICE_FEATURE -------------------------------------------------- */

/*
 * The feature header and its payload in one buffer, aligned for the
 * payload's u64 fields (the header is 8 bytes). The largest payload,
 * the REPORT request, is 32 bytes.
 */
#define FEATURE_PAYLOAD_MAX 32
_Static_assert(sizeof(struct vfio_device_feature) == 8, "feature header is 8 bytes");
_Static_assert(sizeof(struct vfio_device_feature_dma_logging_control) <= FEATURE_PAYLOAD_MAX,
	       "START payload fits");
_Static_assert(sizeof(struct vfio_device_feature_dma_logging_report) <= FEATURE_PAYLOAD_MAX,
	       "REPORT payload fits");

static int feature_fd(int (*fn)(void *, int, unsigned long, void *), void *ctx, int fd,
		      uint32_t flags, void *payload, size_t len)
{
	union {
		struct vfio_device_feature f;
		unsigned char raw[sizeof(struct vfio_device_feature) + FEATURE_PAYLOAD_MAX];
		uint64_t align_;
	} a;
	int rc;

	memset(&a, 0, sizeof(a));
	a.f.argsz = (uint32_t)(sizeof(struct vfio_device_feature) + len);
	a.f.flags = flags;
	if (len)
		memcpy(a.raw + sizeof(struct vfio_device_feature), payload, len);
	rc = fn(ctx, fd, VFIO_DEVICE_FEATURE, &a);
	if (rc < 0)
		return rc;
	if (len)
		memcpy(payload, a.raw + sizeof(struct vfio_device_feature), len);
	return 0;
}

static int feature(struct dirty_vfio_devlog *d, uint32_t flags, void *payload, size_t len)
{
	return feature_fd(d->ioctl_fn, d->ioctl_ctx, d->fd, flags, payload, len);
}

/* ---- the mapping table (d->lock held) ---------------------------------------- */

/* Is [iova, +len) inside one logged range? */
static bool in_ranges(const struct dirty_vfio_devlog *d, uint64_t iova, uint64_t len)
{
	size_t lo = 0, hi = d->nranges;

	if (!d->armed)
		return false;
	while (lo < hi) {	/* first range that ends above iova */
		size_t mid = lo + (hi - lo) / 2;

		if (d->ranges[mid].iova + (d->ranges[mid].length - 1) < iova)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->nranges && d->ranges[lo].iova <= iova &&
	       iova + (len - 1) <= d->ranges[lo].iova + (d->ranges[lo].length - 1);
}

static size_t unlogged_count(const struct dirty_vfio_devlog *d)
{
	size_t n = 0;

	for (size_t i = 0; i < d->map.n; i++)
		n += !(d->map.regs[i].flags & LOGGED);
	return n;
}

/* ---- marking (d->lock held) --------------------------------------------------- */

/* Mark regs[i, j) whole (or only the unlogged ones): mappings whose bits cannot be read. */
static void mark_maps(struct dirty_vfio_devlog *d, size_t i, size_t j, bool unlogged_only)
{
	iova_map_mark(&d->map, d->src, i, j, unlogged_only ? LOGGED : 0);
}

/* The error rule and the window's cover: every registered page. Returns pages. */
static uint64_t mark_all(struct dirty_vfio_devlog *d)
{
	return iova_map_mark_all(&d->map, d->src) / DEVLOG_MIN_PAGE;
}

static int untranslatable(struct dirty_vfio_devlog *d, const char *what)
{
	return __dirty_err(-EPROTO, "device DMA log %s a write at IOVA %#llx that no registered mapping holds: every mapped page was marked dirty (register each mapping before the device uses it)",
			   what, (unsigned long long)d->bad_iova);
}

/* ---- REPORT (d->lock held, armed) --------------------------------------------- */

static const char *report_hint(int e)
{
	switch (e) {
	case EOPNOTSUPP:
		return " (this kernel's VFIO cannot fill DMA-logging bitmaps: Debian's 6.12 is built without IOMMUFD_DRIVER)";
	case EINVAL:
		return " (logging was stopped behind this source's back, or the device lost it)";
	default:
		return "";
	}
}

/*
 * REPORT the IOVA window [w, w + nbits * pgsize) (w aligned to the page
 * size) and mark what it returns. The log is read-and-clear, so every bit
 * is marked before this returns. A bit past the window is the driver
 * breaking the uapi; one over no registration is a write nobody can place
 * (a bit over a hole between two mappings is normal at large page sizes):
 * both are recorded in d->bad, and the other windows are read all the same.
 */
static int report_window(struct dirty_vfio_devlog *d, uint64_t w, uint64_t nbits)
{
	struct vfio_device_feature_dma_logging_report rep;
	unsigned int shift = (unsigned int)__builtin_ctzll(d->pgsize);
	uint64_t *bm = iova_map_bitmap(&d->map, nbits);
	struct iova_bits b = { .bm = bm, .base = w, .nbits = nbits, .shift = shift };
	int rc;

	if (!bm)
		return -ENOMEM;
	memset(&rep, 0, sizeof(rep));
	rep.iova = w;
	rep.length = nbits << shift;
	rep.page_size = d->pgsize;
	rep.bitmap = (uint64_t)(uintptr_t)bm;
	d->st.reports++;
	rc = feature(d, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
		     &rep, sizeof(rep));
	if (rc)
		return __dirty_err(rc, "VFIO DMA_LOGGING_REPORT of IOVA [%#llx, +%#llx) at %#llx-byte pages on device fd %d failed: %s%s; every mapped page was marked dirty",
				   (unsigned long long)w, (unsigned long long)rep.length,
				   (unsigned long long)d->pgsize, d->fd, strerror(-rc),
				   report_hint(-rc));
	rc = iova_map_mark_bits(&d->map, d->src, &b);
	d->st.pages_reported += b.set;
	if (rc && !d->bad) {
		d->bad = true;
		d->bad_iova = b.bad;
	}
	return 0;
}

/*
 * REPORT the logged registrations among regs[i, j): each rounded out to
 * the page size (the ranges are aligned to it, so the window stays in
 * its range), touching ones joined, at most REPORT_MAX_BITS per call.
 * Only registrations are read, never the holes between them: a hole may
 * hold a mapping the VMM made and has not registered yet, whose bits are
 * better left in the log until it has.
 */
static int report_maps(struct dirty_vfio_devlog *d, size_t i, size_t j)
{
	const struct iova_reg *m = d->map.regs;
	uint64_t mask = d->pgsize - 1;
	unsigned int shift = (unsigned int)__builtin_ctzll(d->pgsize);

	while (i < j) {
		uint64_t ws, wl;	/* window start, last byte */

		if (!(m[i].flags & LOGGED)) {
			i++;
			continue;
		}
		ws = m[i].iova & ~mask;
		wl = (m[i].iova + (m[i].len - 1)) | mask;
		/* Touching windows lie in one range: touching ranges were joined. */
		for (i++; i < j && (m[i].flags & LOGGED) && wl != UINT64_MAX &&
		     (m[i].iova & ~mask) <= wl + 1; i++) {
			uint64_t l = (m[i].iova + (m[i].len - 1)) | mask;

			wl = l > wl ? l : wl;
		}
		for (uint64_t pages = ((wl - ws) >> shift) + 1, off = 0; off < pages; ) {
			uint64_t n = pages - off < REPORT_MAX_BITS ? pages - off : REPORT_MAX_BITS;
			int rc = report_window(d, ws + (off << shift), n);

			if (rc)
				return rc;
			off += n;
		}
	}
	return 0;
}

/* ---- ranges, START, STOP (d->lock held) ------------------------------------- */

struct gap {
	uint64_t size;
	size_t at;	/* between ranges at and at + 1 */
};

static int cmp_gap(const void *a, const void *b)
{
	const struct gap *x = a, *y = b;

	if (x->size != y->size)
		return x->size < y->size ? -1 : 1;
	return x->at < y->at ? -1 : x->at > y->at;
}

/*
 * The ranges for the registrations: each rounded out to align, touching
 * or overlapping ones joined, then the smallest gaps closed until at most
 * max remain. Computed with inclusive last bytes, so nothing wraps; a
 * range of the whole 64-bit space cannot be expressed (-EOVERFLOW).
 */
static int plan_ranges(struct dirty_vfio_devlog *d, uint64_t align, size_t max,
		       lrange **out, size_t *nout)
{
	struct { uint64_t s, l; } *r;
	struct gap *g = NULL;
	bool *join = NULL;
	lrange *o = NULL;
	size_t n = 0, k = 0;
	int err = 0;

	r = calloc(d->map.n ? d->map.n : 1, sizeof(*r));
	if (!r)
		return __dirty_err(-ENOMEM, "device DMA log: out of memory planning ranges");
	for (size_t i = 0; i < d->map.n; i++) {
		const struct iova_reg *m = &d->map.regs[i];
		uint64_t s = m->iova & ~(align - 1);
		uint64_t l = (m->iova + (m->len - 1)) | (align - 1);

		if (n && (r[n - 1].l == UINT64_MAX || s <= r[n - 1].l + 1)) {
			r[n - 1].l = l > r[n - 1].l ? l : r[n - 1].l;
			continue;
		}
		r[n].s = s;
		r[n++].l = l;
	}
	if (n > max) {
		g = calloc(n - 1, sizeof(*g));
		join = calloc(n, sizeof(*join));
		if (!g || !join) {
			err = __dirty_err(-ENOMEM, "device DMA log: out of memory planning ranges");
			goto out;
		}
		for (size_t i = 0; i + 1 < n; i++)
			g[i] = (struct gap){ .size = r[i + 1].s - r[i].l - 1, .at = i };
		qsort(g, n - 1, sizeof(*g), cmp_gap);
		/* Close the n - max smallest gaps: n - max joins leave max ranges. */
		for (size_t i = 0; i < n - max; i++)
			join[g[i].at] = true;
		for (size_t i = 0; i < n; i++) {
			if (k && join[i - 1])
				r[k - 1].l = r[i].l;
			else
				r[k++] = r[i];
		}
		n = k;
	}
	o = calloc(n ? n : 1, sizeof(*o));
	if (!o) {
		err = __dirty_err(-ENOMEM, "device DMA log: out of memory planning ranges");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (r[i].s == 0 && r[i].l == UINT64_MAX) {
			err = __dirty_err(-EOVERFLOW, "device DMA log: joining ranges to fit the device's limit gave one range of the whole 64-bit IOVA space, which START cannot express");
			goto out;
		}
		o[i].iova = r[i].s;
		o[i].length = r[i].l - r[i].s + 1;
	}
	*out = o;
	*nout = n;
	o = NULL;
out:
	free(o);
	free(join);
	free(g);
	free(r);
	return err;
}

static int log_stop(struct dirty_vfio_devlog *d)
{
	int rc;

	d->st.stops++;
	rc = feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL, 0);
	if (rc)
		return __dirty_err(rc, "VFIO DMA_LOGGING_STOP on device fd %d failed: %s",
				   d->fd, strerror(-rc));
	return 0;
}

static int log_start(struct dirty_vfio_devlog *d, lrange *r, size_t n, uint64_t *pgsize)
{
	struct vfio_device_feature_dma_logging_control ctl;
	int rc;

	memset(&ctl, 0, sizeof(ctl));
	ctl.page_size = *pgsize;
	ctl.num_ranges = (uint32_t)n;
	ctl.ranges = (uint64_t)(uintptr_t)r;
	d->st.starts++;
	rc = feature(d, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
		     &ctl, sizeof(ctl));
	if (!rc)
		*pgsize = ctl.page_size;
	return rc;
}

/*
 * START with ranges for every registration. The hint is d->hint; ranges
 * are aligned to max(hint, align). START's E2BIG (more ranges than the
 * core or the driver takes) halves the limit and tries again. A driver
 * page size larger than the ranges' alignment would leave REPORT windows
 * that split its pages: then STOP, realign to it and START once more.
 */
static int arm(struct dirty_vfio_devlog *d)
{
	uint64_t align = d->align, hint = d->hint;
	bool realigned = false;
	lrange *r = NULL;
	size_t n = 0;
	int rc;

	for (;;) {
		uint64_t pg = hint;

		free(r);
		r = NULL;
		rc = plan_ranges(d, align, d->max_ranges, &r, &n);
		if (rc)
			return rc;
		rc = log_start(d, r, n, &pg);
		if (rc == -E2BIG && n > 1) {
			d->max_ranges = (uint32_t)(n / 2);
			continue;
		}
		if (rc) {
			rc = __dirty_err(rc, "VFIO DMA_LOGGING_START of %zu range(s) at a %#llx-byte page hint on device fd %d failed: %s%s",
					 n, (unsigned long long)hint, d->fd, strerror(-rc),
					 rc == -EBUSY ? " (the device is already logging: another user started it, or it was never stopped)" :
					 rc == -E2BIG ? " (the device takes no range this large)" :
					 rc == -ENOTTY ? " (the device has no DMA logging)" : "");
			break;
		}
		if (!is_pow2(pg) || pg < DEVLOG_MIN_PAGE || pg > (1ull << 62)) {
			log_stop(d);
			rc = __dirty_err(-EPROTO, "VFIO DMA_LOGGING_START on device fd %d chose page size %#llx, which is not a power of two >= 4096",
					 d->fd, (unsigned long long)pg);
			break;
		}
		if (pg > align) {
			log_stop(d);
			if (realigned) {
				rc = __dirty_err(-EPROTO, "VFIO DMA_LOGGING_START on device fd %d chose page size %#llx after a %#llx hint: it keeps changing",
						 d->fd, (unsigned long long)pg, (unsigned long long)hint);
				break;
			}
			realigned = true;
			align = hint = pg;
			continue;
		}
		free(d->ranges);
		d->ranges = r;
		d->nranges = n;
		d->pgsize = pg;
		d->armed = true;
		for (size_t i = 0; i < d->map.n; i++) {
			struct iova_reg *m = &d->map.regs[i];

			m->flags = in_ranges(d, m->iova, m->len) ? LOGGED : 0;
		}
		return 0;
	}
	free(r);
	return rc;
}

static void disarm(struct dirty_vfio_devlog *d)
{
	d->armed = false;
	free(d->ranges);
	d->ranges = NULL;
	d->nranges = 0;
	for (size_t i = 0; i < d->map.n; i++)
		d->map.regs[i].flags &= ~LOGGED;
}

/*
 * Re-arm: STOP, START with ranges for every registration, then cover the
 * window by marking every registered page, after START returned (the
 * argument is in the header comment of this file). Whatever fails, the
 * marks happen: on failure they are the error rule as well.
 */
static int rearm(struct dirty_vfio_devlog *d)
{
	int err = 0;

	d->st.rearms++;
	if (d->armed) {
		err = log_stop(d);
		disarm(d);
	}
	if (!err && d->map.n)
		err = arm(d);
	d->corrupt = err != 0;
	/* The window closes here: START has returned (or failed). */
	d->st.window_pages += mark_all(d);
	if (err)
		d->st.errors++;
	return err;
}

/* Does the log need restarting before it can be read? */
static bool needs_rearm(const struct dirty_vfio_devlog *d)
{
	if (!d->armed)
		return d->map.n > 0;
	return d->corrupt || (d->policy == DIRTY_VFIO_DEVLOG_REARM_AUTO && unlogged_count(d));
}

/* ---- source ops ------------------------------------------------------------- */

/* REPORT every logged registration; the unlogged ones are marked whole. */
static int harvest(struct dirty_vfio_devlog *d)
{
	int err;

	d->bad = false;
	err = report_maps(d, 0, d->map.n);
	if (!err && d->bad)
		err = untranslatable(d, "reported");
	if (!err)
		mark_maps(d, 0, d->map.n, true);
	return err;
}

/*
 * A read that failed (or found the log not started): the log can no
 * longer be trusted, so every mapped page is dirty and the next sync
 * restarts it. Under d->lock; returns err.
 */
static int read_failed(struct dirty_vfio_devlog *d, int err)
{
	d->corrupt = d->armed;
	mark_all(d);
	d->st.errors++;
	return err;
}

static int not_started(void)
{
	return __dirty_err(-EINVAL, "device DMA logging is not started (dirty_view_start), so it cannot be read");
}

static int dl_sync(struct dirty_source *src)
{
	struct dirty_vfio_devlog *d = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&d->lock);
	if (!d->tracking)
		err = read_failed(d, not_started());
	else if (needs_rearm(d))
		err = rearm(d);		/* marked everything, failed or not */
	else if ((err = harvest(d)) != 0)
		err = read_failed(d, err);
	pthread_mutex_unlock(&d->lock);
	return err;
}

/*
 * Final: the device is stopped, so no re-arm (no window to cover): a log
 * that cannot be trusted, or a mapping never logged, is marked whole.
 */
static int dl_final(struct dirty_source *src)
{
	struct dirty_vfio_devlog *d = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&d->lock);
	if (!d->tracking)
		err = read_failed(d, not_started());
	else if (!d->armed || d->corrupt)
		mark_all(d);
	else if ((err = harvest(d)) != 0)
		err = read_failed(d, err);
	pthread_mutex_unlock(&d->lock);
	return err;
}

/* Start: the device log begins, and every registered page is dirty (round one). */
static int dl_start(struct dirty_source *src)
{
	struct dirty_vfio_devlog *d = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&d->lock);
	if (d->armed) {		/* a start without a stop: begin afresh */
		err = log_stop(d);
		disarm(d);
	}
	if (!err && d->map.n)
		err = arm(d);
	d->corrupt = false;
	d->tracking = err == 0;
	if (err)
		d->st.errors++;
	/* After START returned, as for a re-arm: round one. */
	mark_all(d);
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int dl_stop(struct dirty_source *src)
{
	struct dirty_vfio_devlog *d = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&d->lock);
	if (d->armed)
		err = log_stop(d);
	disarm(d);
	d->tracking = false;
	d->corrupt = false;
	pthread_mutex_unlock(&d->lock);
	return err;
}

static void dl_destroy(struct dirty_source *src)
{
	struct dirty_vfio_devlog *d = dirty_source_priv(src);

	/*
	 * Detach stopped the source first. No ioctl here even if a STOP
	 * failed: the VMM may have closed the fd, and its number may belong
	 * to another file by now.
	 */
	iova_map_free(&d->map);
	free(d->ranges);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static const struct dirty_source_ops dl_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "vfio-devlog",
	.start = dl_start,
	.stop = dl_stop,
	.sync = dl_sync,
	.final = dl_final,
	.destroy = dl_destroy,
};

/* ---- the API ------------------------------------------------------------------ */

/* A failed PROBE of START, said for a user; ENOTTY (no log ops) is -EOPNOTSUPP. */
static int probe_err(int fd, int rc)
{
	return __dirty_err(rc == -ENOTTY ? -EOPNOTSUPP : rc,
			   "VFIO device fd %d cannot log its DMA (PROBE of DMA_LOGGING_START: %s)%s",
			   fd, strerror(-rc),
			   rc == -ENOTTY ? ": its driver has no DMA logging (mlx5-vfio-pci and pds-vfio-pci have)" :
			   rc == -EINVAL || rc == -EBADF ? ": is it a VFIO device fd (not a container or group)?" : "");
}

DIRTY_API int dirty_vfio_devlog_probe(int device_fd)
{
	int rc = feature_fd(sys_ioctl, NULL, device_fd,
			    VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET |
			    VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0);

	return rc ? probe_err(device_fd, rc) : 0;
}

DIRTY_API int dirty_vfio_devlog_create(struct dirty_view *view,
				       const struct dirty_vfio_devlog_config *cfg,
				       struct dirty_vfio_devlog **out)
{
	struct dirty_vfio_devlog *d;
	uint64_t hint, align;
	int rc;

	if (!view || !cfg || !out || cfg->device_fd < 0)
		return __dirty_err(-EINVAL, "dirty_vfio_devlog_create: needs a view, a config with the device fd, and out");
	hint = cfg->page_size ? cfg->page_size : DEVLOG_MIN_PAGE;
	align = cfg->range_align ? cfg->range_align : hint;
	if (!is_pow2(hint) || hint < DEVLOG_MIN_PAGE || hint > (1ull << 62))
		return __dirty_err(-EINVAL, "device DMA log page size %#llx: must be a power of two >= 4096",
				   (unsigned long long)cfg->page_size);
	if (!is_pow2(align) || align < hint || align > (1ull << 62))
		return __dirty_err(-EINVAL, "device DMA log range_align %#llx: must be a power of two >= the page size %#llx",
				   (unsigned long long)cfg->range_align, (unsigned long long)hint);
	if (cfg->rearm > DIRTY_VFIO_DEVLOG_REARM_MANUAL)
		return __dirty_err(-EINVAL, "device DMA log: unknown rearm policy %u", cfg->rearm);
	d = calloc(1, sizeof(*d));
	if (!d)
		return __dirty_err(-ENOMEM, "dirty_vfio_devlog_create: out of memory");
	d->fd = cfg->device_fd;
	d->ioctl_fn = cfg->ioctl ? cfg->ioctl : sys_ioctl;
	d->ioctl_ctx = cfg->ioctl_ctx;
	d->hint = hint;
	d->align = align;
	d->policy = cfg->rearm;
	d->max_ranges = cfg->max_ranges && cfg->max_ranges < DEVLOG_MAX_RANGES ?
		cfg->max_ranges : DEVLOG_MAX_RANGES;
	iova_map_init(&d->map, "device DMA log", DEVLOG_MIN_PAGE);
	/* PROBE through the hook: side-effect free, and says early what is missing. */
	rc = feature(d, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET |
		     VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL, 0);
	if (rc) {
		free(d);
		return probe_err(cfg->device_fd, rc);
	}
	pthread_mutex_init(&d->lock, NULL);
	/* No fixed ranges: the adapter marks its own mappings on error. */
	rc = dirty_source_attach(view, &dl_ops, d, NULL, 0, &d->src);
	if (rc) {
		pthread_mutex_destroy(&d->lock);
		free(d);
		return rc;
	}
	*out = d;
	return 0;
}

DIRTY_API void dirty_vfio_devlog_destroy(struct dirty_vfio_devlog *d)
{
	if (d)
		dirty_source_detach(d->src);
}

DIRTY_API struct dirty_source *dirty_vfio_devlog_source(struct dirty_vfio_devlog *d)
{
	return d->src;
}

DIRTY_API int dirty_vfio_devlog_add_mapping(struct dirty_vfio_devlog *d, uint64_t iova,
					    uint64_t gpa, uint64_t len)
{
	int err = iova_map_check(&d->map, iova, gpa, len);

	if (err)
		return err;
	pthread_mutex_lock(&d->lock);
	/*
	 * Inside the logged ranges the device's writes are logged already
	 * (by IOVA; the unmap of whatever this IOVA held before reported its
	 * bits). Outside, they are logged nowhere until a re-arm, whose
	 * cover marks this mapping after its START.
	 */
	err = iova_map_add(&d->map, iova, gpa, len,
			   !d->corrupt && in_ranges(d, iova, len) ? LOGGED : 0);
	pthread_mutex_unlock(&d->lock);
	return err;
}

DIRTY_API int dirty_vfio_devlog_unmapped(struct dirty_vfio_devlog *d, uint64_t iova,
					 uint64_t len)
{
	size_t lo, hi;
	int err;

	pthread_mutex_lock(&d->lock);
	err = iova_map_range(&d->map, iova, len, &lo, &hi);
	if (err) {
		pthread_mutex_unlock(&d->lock);
		return err;
	}
	if (d->tracking && lo < hi) {
		if (d->armed && !d->corrupt) {
			/* Their last bits, translated while they are still registered. */
			d->bad = false;
			err = report_maps(d, lo, hi);
			if (!err && d->bad)
				err = untranslatable(d, "reported (at unmap)");
			if (!err)
				mark_maps(d, lo, hi, true);
		} else {
			/* Unreadable log: what they received since the last round is unknown. */
			mark_maps(d, lo, hi, false);
		}
		if (err) {
			d->corrupt = d->armed;
			mark_all(d);
			d->st.errors++;
		}
	}
	/* Gone from the kernel either way; their pages are in the view now. */
	iova_map_remove(&d->map, lo, hi - lo);
	pthread_mutex_unlock(&d->lock);
	return err;
}

DIRTY_API int dirty_vfio_devlog_rearm(struct dirty_vfio_devlog *d)
{
	int err = 0;

	pthread_mutex_lock(&d->lock);
	if (d->tracking)
		err = rearm(d);
	pthread_mutex_unlock(&d->lock);
	return err;
}

DIRTY_API int dirty_vfio_devlog_translate(struct dirty_vfio_devlog *d, uint64_t iova,
					  uint64_t *gpa)
{
	int err;

	pthread_mutex_lock(&d->lock);
	err = iova_map_lookup(&d->map, iova, gpa);
	pthread_mutex_unlock(&d->lock);
	return err;
}

DIRTY_API int dirty_vfio_devlog_stats(struct dirty_vfio_devlog *d,
				      struct dirty_vfio_devlog_stats *st)
{
	pthread_mutex_lock(&d->lock);
	*st = d->st;
	st->mappings = d->map.n;
	st->mapped_bytes = iova_map_bytes(&d->map);
	st->unlogged = unlogged_count(d);
	st->ranges = d->armed ? d->nranges : 0;
	st->page_size = d->armed ? d->pgsize : 0;
	st->max_ranges = d->max_ranges;
	pthread_mutex_unlock(&d->lock);
	return 0;
}
