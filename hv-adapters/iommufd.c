/* SPDX-License-Identifier: MIT */
/*
 * iommufd.c - the iommufd source (include/libdirty/iommufd.h): IOPTE dirty
 * bits of a HWPT the VMM owns, IOMMU_HWPT_SET_DIRTY_TRACKING on and off,
 * IOMMU_HWPT_GET_DIRTY_BITMAP per run of whole registered mappings, and
 * the VMM's unmap as a NO_CLEAR read followed by IOMMU_IOAS_UNMAP.
 * Touches only the iommufd it is given (through cfg->ioctl) and the
 * mappings the VMM registers; marks through the view.
 *
 * Citations (include/uapi/linux/iommufd.h; drivers/iommu/iommufd/
 * io_pagetable.c: iommufd_check_iova_range and __iommu_read_and_clear_dirty;
 * hw_pagetable.c: iommufd_hwpt_get_dirty_bitmap): the read window must be
 * aligned to page_size and to the IOAS alignment and be one run of
 * contiguous areas; bits are only set; a dirty IOPTE is reported over its
 * size inside the window and cleared whole, so a window must never cut a
 * huge IOPTE, and an IOPTE never spans two IOMMU_IOAS_MAP calls. Hence a
 * read covers runs of whole, IOVA-adjacent registrations (adjacent only:
 * a hole is EINVAL, and could hold a mapping not registered yet). The
 * 6.1 headers have no linux/iommufd.h: hv-adapters/compat.h carries it.
 *
 * Errors follow the view's rule: a failed ioctl, or a bit past a read's
 * window, marks every registered page dirty before the error is returned.
 *
 * The unmap window (a write between the NO_CLEAR read and the unmap is
 * lost with the IOPTE) is the kernel's own, accepted by its authors for a
 * guest-initiated unmap; see dirty_iommufd_unmap() in the header.
 *
 * Locking: f->lock guards everything mutable here; the view's sync calls
 * take it inside the view's lock, the VMM's calls take it alone. The
 * ioctl hook runs with f->lock held. Nothing here takes the view's lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <libdirty/iommufd.h>

#include "compat.h"
#include "core.h"
#include "libdirty/iommufd.h"
#include "iova_map.h"

#define IOMMUFD_MIN_PAGE 4096ull
#define DEFAULT_PIECE_PAGES (1ull << 21)
/* A registration is read whole: at most a 1 GiB bitmap (32 TiB at 4 KiB). */
#define MAX_MAP_PAGES (1ull << 33)

struct dirty_iommufd {
	struct dirty_source *src;
	int fd;
	uint32_t hwpt_id, ioas_id;
	int (*ioctl_fn)(void *ctx, int fd, unsigned long req, void *arg);
	void *ioctl_ctx;
	uint64_t pgsize;		/* immutable */
	unsigned int shift;		/* log2(pgsize) */
	uint64_t piece_pages;		/* immutable */
	pthread_mutex_t lock;		/* everything below */
	struct iova_map map;		/* one registration per IOMMU_IOAS_MAP */
	bool tracking;			/* SET_DIRTY_TRACKING on, not off since */
	struct dirty_iommufd_stats st;	/* counters; the rest computed */
};

static int sys_ioctl(void *ctx, int fd, unsigned long req, void *arg)
{
	int r;

	(void)ctx;
	r = ioctl(fd, req, arg);
	return r < 0 ? -errno : r;
}

/* ---- marking (f->lock held) -------------------------------------------------- */

/*
 * The run of IOVA-adjacent registrations from regs[i] that fits a piece:
 * returns its end index and its pages. One registration larger than a
 * piece is a piece of its own (it is never split).
 */
static size_t piece_end(struct dirty_iommufd *f, size_t i, size_t hi, uint64_t *pages)
{
	return iova_map_piece(&f->map, i, hi, f->piece_pages, pages);
}

/*
 * Mark one read's bits: bit b is the page at regs[i].iova + b * pgsize,
 * inside the run of adjacent registrations from regs[i] (pages long), so
 * every bit below pages lands in exactly one of them. A bit at or past
 * pages is the kernel writing outside the window it was given: -EPROTO.
 */
static int translate(struct dirty_iommufd *f, const uint64_t *bm, size_t i, uint64_t pages)
{
	struct iova_bits b = { .bm = bm, .base = f->map.regs[i].iova, .nbits = pages,
			       .shift = f->shift };
	int rc = iova_map_mark_bits(&f->map, f->src, &b);

	f->st.pages_reported += b.set;
	if (rc)
		return __dirty_err(rc, "iommufd GET_DIRTY_BITMAP of IOVA [%#llx, +%#llx) set a bit past the window it was given: every mapped page was marked dirty",
				   (unsigned long long)b.base, (unsigned long long)(pages << f->shift));
	return 0;
}

/* ---- reads (f->lock held) ------------------------------------------------------ */

static const char *get_hint(int e)
{
	switch (e) {
	case EINVAL:
		return " (tracking was turned off behind this source's back, or a registration is not what the IOAS maps: unaligned, or over a hole)";
	case ENOENT:
		return " (no such HWPT: destroyed, or the wrong id)";
	case EOPNOTSUPP:
		return " (the HWPT's IOMMU cannot report dirty IOPTEs)";
	case ENOTTY:
		return " (this kernel's iommufd has no dirty tracking: Linux 6.7 or later is needed)";
	default:
		return "";
	}
}

/* GET_DIRTY_BITMAP (flags: 0 or NO_CLEAR) of the piece at regs[i], pages long; then mark. */
static int read_piece(struct dirty_iommufd *f, size_t i, uint64_t pages, uint32_t flags)
{
	struct iommu_hwpt_get_dirty_bitmap g;
	uint64_t *bm = iova_map_bitmap(&f->map, pages);
	int rc;

	if (!bm)
		return -ENOMEM;
	memset(&g, 0, sizeof(g));
	g.size = sizeof(g);
	g.hwpt_id = f->hwpt_id;
	g.flags = flags;
	g.iova = f->map.regs[i].iova;
	g.length = pages << f->shift;
	g.page_size = f->pgsize;
	g.data = (uint64_t)(uintptr_t)bm;
	if (flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
		f->st.no_clear_calls++;
	else
		f->st.get_bitmap_calls++;
	rc = f->ioctl_fn(f->ioctl_ctx, f->fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &g);
	if (rc < 0)
		return __dirty_err(rc, "iommufd GET_DIRTY_BITMAP%s of HWPT %u, IOVA [%#llx, +%#llx) at %#llx-byte pages failed: %s%s; every mapped page was marked dirty",
				   flags ? " (NO_CLEAR)" : "", f->hwpt_id,
				   (unsigned long long)g.iova, (unsigned long long)g.length,
				   (unsigned long long)f->pgsize, strerror(-rc), get_hint(-rc));
	return translate(f, bm, i, pages);
}

/* Read regs[lo, hi) piece by piece; every piece is tried, the first error kept. */
static int read_maps(struct dirty_iommufd *f, size_t lo, size_t hi, uint32_t flags)
{
	int first = 0;

	for (size_t i = lo, j; i < hi; i = j) {
		uint64_t pages;
		int rc;

		j = piece_end(f, i, hi, &pages);
		rc = read_piece(f, i, pages, flags);
		if (rc == -EPROTO) {
			first = first ? first : rc;
			continue;
		}
		if (rc)
			return rc;	/* everything is marked by the caller */
	}
	return first;
}

static int if_sync(struct dirty_source *src)
{
	struct dirty_iommufd *f = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&f->lock);
	if (!f->tracking)
		err = __dirty_err(-EINVAL, "iommufd dirty tracking is not started (dirty_view_start), so it cannot be read");
	else
		err = read_maps(f, 0, f->map.n, 0);
	if (err) {
		iova_map_mark_all(&f->map, f->src);
		f->st.errors++;
	}
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int set_tracking(struct dirty_iommufd *f, bool on)
{
	struct iommu_hwpt_set_dirty_tracking s;
	int rc;

	memset(&s, 0, sizeof(s));
	s.size = sizeof(s);
	s.flags = on ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0;
	s.hwpt_id = f->hwpt_id;
	rc = f->ioctl_fn(f->ioctl_ctx, f->fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &s);
	if (rc < 0)
		return __dirty_err(rc, "iommufd SET_DIRTY_TRACKING %s on HWPT %u (fd %d) failed: %s%s",
				   on ? "on" : "off", f->hwpt_id, f->fd, strerror(-rc),
				   rc == -EOPNOTSUPP ? " (allocate the HWPT with IOMMU_HWPT_ALLOC_DIRTY_TRACKING, on an IOMMU with dirty bits)" :
				   get_hint(-rc));
	return 0;
}

/* Start: the kernel clears stale IOPTE bits, and every page is dirty (round one). */
static int if_start(struct dirty_source *src)
{
	struct dirty_iommufd *f = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&f->lock);
	err = set_tracking(f, true);
	if (err)
		f->st.errors++;
	else
		f->tracking = true;
	iova_map_mark_all(&f->map, f->src);
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int if_stop(struct dirty_source *src)
{
	struct dirty_iommufd *f = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&f->lock);
	if (f->tracking)
		err = set_tracking(f, false);
	f->tracking = false;
	pthread_mutex_unlock(&f->lock);
	return err;
}

static void if_destroy(struct dirty_source *src)
{
	struct dirty_iommufd *f = dirty_source_priv(src);

	iova_map_free(&f->map);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

static const struct dirty_source_ops if_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "iommufd",
	.start = if_start,
	.stop = if_stop,
	.sync = if_sync,
	/* The devices are stopped: the same read is the last word. */
	.final = if_sync,
	.destroy = if_destroy,
};

/* ---- the API ----------------------------------------------------------------- */

DIRTY_API int dirty_iommufd_create(struct dirty_view *view, const struct dirty_iommufd_config *cfg,
				   struct dirty_iommufd **out)
{
	struct dirty_iommufd *f;
	uint64_t pg;
	int err;

	if (!view || !cfg || !out || cfg->iommufd < 0)
		return __dirty_err(-EINVAL, "dirty_iommufd_create: needs a view, a config with the iommufd, and out");
	pg = cfg->page_size ? cfg->page_size : IOMMUFD_MIN_PAGE;
	if ((pg & (pg - 1)) || pg < IOMMUFD_MIN_PAGE || pg > (1ull << 62))
		return __dirty_err(-EINVAL, "iommufd page size %#llx: must be a power of two >= 4096",
				   (unsigned long long)cfg->page_size);
	f = calloc(1, sizeof(*f));
	if (!f)
		return __dirty_err(-ENOMEM, "dirty_iommufd_create: out of memory");
	f->fd = cfg->iommufd;
	f->hwpt_id = cfg->hwpt_id;
	f->ioas_id = cfg->ioas_id;
	f->ioctl_fn = cfg->ioctl ? cfg->ioctl : sys_ioctl;
	f->ioctl_ctx = cfg->ioctl_ctx;
	f->pgsize = pg;
	f->shift = (unsigned int)__builtin_ctzll(pg);
	f->piece_pages = cfg->piece_pages ? cfg->piece_pages : DEFAULT_PIECE_PAGES;
	iova_map_init(&f->map, "iommufd", pg);
	pthread_mutex_init(&f->lock, NULL);
	/* No fixed ranges: the adapter marks its own mappings on error. */
	err = dirty_source_attach(view, &if_ops, f, NULL, 0, &f->src);
	if (err) {
		pthread_mutex_destroy(&f->lock);
		free(f);
		return err;
	}
	*out = f;
	return 0;
}

DIRTY_API void dirty_iommufd_destroy(struct dirty_iommufd *f)
{
	if (f)
		dirty_source_detach(f->src);
}

DIRTY_API struct dirty_source *dirty_iommufd_source(struct dirty_iommufd *f)
{
	return f->src;
}

DIRTY_API int dirty_iommufd_add_mapping(struct dirty_iommufd *f, uint64_t iova, uint64_t gpa,
					uint64_t len)
{
	int err = iova_map_check(&f->map, iova, gpa, len);

	if (err)
		return err;
	/* One read holds a whole registration: keep its bitmap at most 1 GiB. */
	if (len >> f->shift > MAX_MAP_PAGES)
		return __dirty_err(-E2BIG, "iommufd mapping of %llu pages at IOVA %#llx: reading it whole needs a bitmap over 1 GiB; map it in smaller IOMMU_IOAS_MAP calls",
				   (unsigned long long)(len >> f->shift), (unsigned long long)iova);
	pthread_mutex_lock(&f->lock);
	err = iova_map_add(&f->map, iova, gpa, len, 0);
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int ioas_unmap(struct dirty_iommufd *f, uint64_t iova, uint64_t len, uint64_t *done)
{
	struct iommu_ioas_unmap u;
	int rc;

	memset(&u, 0, sizeof(u));
	u.size = sizeof(u);
	u.ioas_id = f->ioas_id;
	u.iova = iova;
	u.length = len;
	f->st.unmap_calls++;
	rc = f->ioctl_fn(f->ioctl_ctx, f->fd, IOMMU_IOAS_UNMAP, &u);
	if (rc < 0)
		return __dirty_err(rc, "iommufd IOAS_UNMAP of IOAS %u, IOVA [%#llx, +%#llx) failed: %s%s",
				   f->ioas_id, (unsigned long long)iova, (unsigned long long)len,
				   strerror(-rc),
				   rc == -ENOENT ? " (nothing mapped there, or the range splits a mapping: iommufd unmaps whole IOMMU_IOAS_MAP areas only)" : "");
	*done = u.length;
	return 0;
}

DIRTY_API int dirty_iommufd_unmap(struct dirty_iommufd *f, uint64_t iova, uint64_t len,
				  uint64_t *unmapped)
{
	uint64_t registered = 0, done = 0;
	size_t lo, hi;
	int err, rerr = 0, uerr, late = 0;

	if (unmapped)
		*unmapped = 0;
	pthread_mutex_lock(&f->lock);
	err = iova_map_range(&f->map, iova, len, &lo, &hi);
	if (err) {
		pthread_mutex_unlock(&f->lock);
		return err;
	}
	for (size_t i = lo; i < hi; i++)
		registered += f->map.regs[i].len;
	/*
	 * While tracking: the last bits first, without clearing (the unmap
	 * destroys the IOPTEs right after), marked now, then the unmap. The
	 * unmap is the VMM's and happens even when the read failed: then
	 * everything is marked below, after the unmap, when no device can
	 * write these IOVAs any more.
	 */
	if (f->tracking)
		rerr = read_maps(f, lo, hi, IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR);
	uerr = ioas_unmap(f, iova, len, &done);
	if (!uerr && f->tracking && done > registered)
		late = __dirty_err(-EPROTO, "iommufd unmapped %#llx bytes in IOVA [%#llx, +%#llx) where %#llx are registered: the rest's bits and guest pages are unknown, so all mapped pages were marked dirty",
				   (unsigned long long)done, (unsigned long long)iova,
				   (unsigned long long)len, (unsigned long long)registered);
	if (!uerr && rerr)
		err = __dirty_err(rerr, "iommufd unmap of IOVA [%#llx, +%#llx): the unmap was done, but reading its last dirty bits failed first (%s), so every mapped page was marked dirty",
				  (unsigned long long)iova, (unsigned long long)len, strerror(-rerr));
	err = uerr ? uerr : err ? err : late;
	/* Marked while the unmapped ones are still registered: they are the likeliest lost. */
	if (err) {
		iova_map_mark_all(&f->map, f->src);
		f->st.errors++;
	}
	/* Gone from the kernel: their bits are in the view now. */
	if (!uerr)
		iova_map_remove(&f->map, lo, hi - lo);
	pthread_mutex_unlock(&f->lock);
	if (unmapped)
		*unmapped = done;
	return err;
}

DIRTY_API int dirty_iommufd_remove_mapping(struct dirty_iommufd *f, uint64_t iova, uint64_t len)
{
	struct iova_reg r;
	int err;

	pthread_mutex_lock(&f->lock);
	err = iova_map_take(&f->map, iova, len, &r);
	/* Its IOPTEs and their bits may be gone: what it received is unknown. */
	if (!err && f->tracking)
		dirty_source_mark(f->src, r.gpa, r.len);
	pthread_mutex_unlock(&f->lock);
	return err;
}

DIRTY_API int dirty_iommufd_translate(struct dirty_iommufd *f, uint64_t iova, uint64_t *gpa)
{
	int err;

	pthread_mutex_lock(&f->lock);
	err = iova_map_lookup(&f->map, iova, gpa);
	pthread_mutex_unlock(&f->lock);
	return err;
}

DIRTY_API int dirty_iommufd_stats(struct dirty_iommufd *f, struct dirty_iommufd_stats *st)
{
	pthread_mutex_lock(&f->lock);
	*st = f->st;
	st->mappings = f->map.n;
	st->mapped_bytes = iova_map_bytes(&f->map);
	pthread_mutex_unlock(&f->lock);
	return 0;
}
