/* SPDX-License-Identifier: MIT */
/*
 * vfio_type1.c - the VFIO type1 source (include/libdirty/vfio.h): dirty
 * tracking of a type1 container the VMM owns, VFIO_IOMMU_DIRTY_PAGES
 * START / GET_BITMAP / STOP and VFIO_IOMMU_UNMAP_DMA with
 * VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP. Touches only the container fd it
 * is given and the mappings the VMM registers; marks through the view.
 *
 * Citations (include/uapi/linux/vfio.h, drivers/vfio/vfio_iommu_type1.c;
 * each one checked against Debian's 6.1 kernel by tests/vm/t_vm_type1.sh):
 * GET_BITMAP takes only the smallest IOMMU page size, a zeroed bitmap of
 * the page count rounded up to 64 bits and at most max_dirty_bitmap_size
 * bytes, and a range that splits none of the container's mappings (bits
 * land at (mapping IOVA - range IOVA) / page size); each call returns what
 * happened since the previous one. Unmap with the dirty-bitmap flag works
 * only while tracking. The installed 6.1 <linux/vfio.h> has all of it.
 *
 * Errors follow the view's rule: a failed ioctl, or a bit this file cannot
 * translate, marks every registered page dirty before the error is
 * returned, so nothing reads as clean.
 *
 * Locking: t->lock guards everything mutable here. Sync and final run
 * with the view's lock held and take t->lock inside it; the VMM's calls
 * (add, unmap) take t->lock alone. Nothing here takes the view's lock, so
 * the order view->lock -> t->lock is the only one.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/vfio.h>

#include <libdirty/vfio.h>

#include "core.h"
#include "libdirty/vfio.h"
#include "iova_map.h"

struct dirty_vfio_type1 {
	struct dirty_source *src;
	int fd;
	struct dirty_vfio_type1_caps caps;	/* immutable after create */
	unsigned int shift;			/* log2(caps.pgsize) */
	uint64_t piece_pages;			/* immutable after create */
	pthread_mutex_t lock;	/* everything below; never the VMM's or the view's */
	struct iova_map map;	/* one registration per VFIO_IOMMU_MAP_DMA */
	bool tracking;		/* START succeeded, no STOP since */
	struct dirty_vfio_type1_stats st;	/* mappings/mapped_bytes computed */
	uint64_t bad_iova;	/* first untranslatable IOVA of the last translate() */
	int (*ioctl_fn)(void *ctx, int fd, unsigned long req, void *arg);	/* immutable */
	void *ioctl_ctx;
};

/* The source's ioctls on the container: the config's hook, or ioctl(2). */
static int t1_ioctl(struct dirty_vfio_type1 *t, unsigned long req, void *arg)
{
	int r;

	if (t->ioctl_fn)
		return t->ioctl_fn(t->ioctl_ctx, t->fd, req, arg);
	r = ioctl(t->fd, req, arg);
	return r < 0 ? -errno : r;
}

/* ---- capabilities -------------------------------------------------------- */

/*
 * Walk VFIO_IOMMU_GET_INFO's capability chain for the migration
 * capability. The chain's offsets come from the kernel, but they are
 * bounds-checked all the same: a bad one ends the walk, never a read
 * outside info.
 */
static void find_migration_cap(const struct vfio_iommu_type1_info *info,
			       uint32_t argsz, struct dirty_vfio_type1_caps *caps)
{
	uint32_t off = info->cap_offset;

	for (unsigned int hops = 0; off && hops < 64; hops++) {
		const struct vfio_info_cap_header *h;

		if (off < sizeof(*info) || off > argsz ||
		    argsz - off < sizeof(struct vfio_info_cap_header) || off % 4)
			return;
		h = (const void *)((const char *)info + off);
		if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) {
			const struct vfio_iommu_type1_info_cap_migration *m = (const void *)h;

			if (argsz - off < sizeof(*m) || !m->pgsize_bitmap)
				return;
			caps->migration = 1;
			caps->flags = m->flags;
			caps->pgsize_bitmap = m->pgsize_bitmap;
			caps->pgsize = m->pgsize_bitmap & -m->pgsize_bitmap;
			caps->max_bitmap_bytes = m->max_dirty_bitmap_size;
			caps->max_pages = m->max_dirty_bitmap_size > UINT64_MAX / 8 ?
				UINT64_MAX : m->max_dirty_bitmap_size * 8;
			return;
		}
		if (h->next <= off)	/* the chain only moves forward */
			return;
		off = h->next;
	}
}

DIRTY_API int dirty_vfio_type1_probe(int container_fd, struct dirty_vfio_type1_caps *caps)
{
	struct vfio_iommu_type1_info *info = NULL;
	uint32_t argsz = sizeof(*info) + 256;

	if (!caps)
		return __dirty_err(-EINVAL, "dirty_vfio_type1_probe: caps is NULL");
	memset(caps, 0, sizeof(*caps));
	/* The kernel raises argsz when the chain needs more: ask again once. */
	for (int pass = 0; pass < 2; pass++) {
		info = calloc(1, argsz);
		if (!info)
			return __dirty_err(-ENOMEM, "dirty_vfio_type1_probe: out of memory");
		info->argsz = argsz;
		if (ioctl(container_fd, VFIO_IOMMU_GET_INFO, info) < 0) {
			int e = errno;

			free(info);
			return __dirty_err(-e, "VFIO_IOMMU_GET_INFO on fd %d failed: %s (a VFIO container with a group, after VFIO_SET_IOMMU?)",
					   container_fd, strerror(e));
		}
		if (info->argsz <= argsz)
			break;
		argsz = info->argsz;
		free(info);
		info = NULL;
	}
	if (!info)
		return __dirty_err(-EPROTO, "VFIO_IOMMU_GET_INFO kept asking for a larger buffer");
	if (info->flags & VFIO_IOMMU_INFO_CAPS)
		find_migration_cap(info, argsz, caps);
	free(info);
	return 0;
}

/* ---- marking (t->lock held) ----------------------------------------------- */

/*
 * Mark what one ioctl's bitmap says: bit i is the page at IOVA base + i *
 * pgsize, over the registrations of the range asked for. A set bit in
 * none of them (a hole, a MAP_DMA never registered, garbage past the
 * range) has no known guest page. It is not dropped: the caller gets
 * -EPROTO (t->bad_iova says where) and applies the error rule.
 * Everything translatable is marked either way.
 */
static int translate(struct dirty_vfio_type1 *t, uint64_t base, const uint64_t *bm,
		     uint64_t pages)
{
	struct iova_bits b = { .bm = bm, .base = base, .nbits = pages, .shift = t->shift };
	int err = iova_map_mark_bits(&t->map, t->src, &b);

	t->st.pages_reported += b.set;
	if (err)
		t->bad_iova = b.bad;
	return err;
}

static int untranslatable(struct dirty_vfio_type1 *t, const char *what)
{
	return __dirty_err(-EPROTO, "type1 %s IOVA %#llx, outside every registered mapping: its guest page is unknown, so all mapped pages were marked dirty (register each VFIO_IOMMU_MAP_DMA)",
			   what, (unsigned long long)t->bad_iova);
}

/*
 * The run of IOVA-adjacent registrations that starts at regs[i] and fits
 * one piece: returns its end index. Only adjacent ones are joined: a range
 * over a hole could cover, or split, a MAP_DMA the VMM made but has not
 * registered yet (it registers after mapping), which would fail or read
 * as untranslatable bits. A single mapping larger than a piece is a piece
 * of its own, since type1 refuses to split it.
 */
static size_t piece_end(struct dirty_vfio_type1 *t, size_t i, size_t hi, uint64_t *pages)
{
	return iova_map_piece(&t->map, i, hi, t->piece_pages, pages);
}

static const char *einval_hint(int e)
{
	return e == EINVAL ?
		" (tracking stopped by another user, or a registration that is not one whole VFIO_IOMMU_MAP_DMA)" : "";
}

/* ---- harvest (t->lock held) ------------------------------------------------ */

/* GET_BITMAP of the piece at regs[i], pages long; then mark. */
static int get_piece(struct dirty_vfio_type1 *t, size_t i, uint64_t pages)
{
	union {
		struct vfio_iommu_type1_dirty_bitmap db;
		unsigned char raw[offsetof(struct vfio_iommu_type1_dirty_bitmap, data) +
				  sizeof(struct vfio_iommu_type1_dirty_bitmap_get)];
	} arg;
	struct vfio_iommu_type1_dirty_bitmap_get get;
	size_t words = (size_t)((pages + 63) / 64);
	uint64_t *bm = iova_map_bitmap(&t->map, pages);
	int e;

	if (!bm)
		return -ENOMEM;
	memset(&arg, 0, sizeof(arg));
	arg.db.argsz = sizeof(arg.raw);
	arg.db.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	memset(&get, 0, sizeof(get));
	get.iova = t->map.regs[i].iova;
	get.size = pages << t->shift;
	get.bitmap.pgsize = t->caps.pgsize;
	get.bitmap.size = words * sizeof(uint64_t);
	get.bitmap.data = (__u64 *)bm;
	memcpy(arg.raw + offsetof(struct vfio_iommu_type1_dirty_bitmap, data), &get, sizeof(get));
	t->st.get_bitmap_calls++;
	if ((e = t1_ioctl(t, VFIO_IOMMU_DIRTY_PAGES, &arg)) < 0) {
		e = -e;

		return __dirty_err(-e, "type1 GET_BITMAP of IOVA [%#llx, +%#llx) failed: %s%s",
				   (unsigned long long)get.iova, (unsigned long long)get.size,
				   strerror(e), einval_hint(e));
	}
	if (translate(t, get.iova, bm, pages))
		return untranslatable(t, "GET_BITMAP reported");
	return 0;
}

static int t1_sync(struct dirty_source *src)
{
	struct dirty_vfio_type1 *t = dirty_source_priv(src);
	int err = 0, first = 0;

	pthread_mutex_lock(&t->lock);
	if (!t->tracking) {
		err = __dirty_err(-EINVAL, "type1 dirty tracking is not started (dirty_view_start), so it cannot be read");
	} else {
		for (size_t i = 0, j; i < t->map.n; i = j) {
			uint64_t pages;

			j = piece_end(t, i, t->map.n, &pages);
			err = get_piece(t, i, pages);
			if (err == -EPROTO) {
				/* Translated what it could; read the other pieces too. */
				first = first ? first : err;
				continue;
			}
			if (err)
				break;	/* everything is marked below anyway */
		}
		err = err ? err : first;
	}
	if (err) {
		iova_map_mark_all(&t->map, t->src);
		t->st.errors++;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int dirty_ctl(struct dirty_vfio_type1 *t, uint32_t flag, const char *what)
{
	struct vfio_iommu_type1_dirty_bitmap db = { .argsz = sizeof(db), .flags = flag };
	int e;

	if ((e = t1_ioctl(t, VFIO_IOMMU_DIRTY_PAGES, &db)) < 0) {
		e = -e;

		return __dirty_err(-e, "VFIO_IOMMU_DIRTY_PAGES %s on container fd %d failed: %s%s",
				   what, t->fd, strerror(e),
				   e == EACCES ? " (dirty tracking needs a VFIO_TYPE1v2_IOMMU container)" : "");
	}
	return 0;
}

/* Start: the kernel log begins, and every registered page is dirty (round one). */
static int t1_start(struct dirty_source *src)
{
	struct dirty_vfio_type1 *t = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&t->lock);
	err = dirty_ctl(t, VFIO_IOMMU_DIRTY_PAGES_FLAG_START, "START");
	if (err)
		t->st.errors++;
	else
		t->tracking = true;
	iova_map_mark_all(&t->map, t->src);
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int t1_stop(struct dirty_source *src)
{
	struct dirty_vfio_type1 *t = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&t->lock);
	/* Unmaps from now on are plain: the kernel refuses bitmaps after STOP. */
	if (t->tracking)
		err = dirty_ctl(t, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, "STOP");
	t->tracking = false;
	pthread_mutex_unlock(&t->lock);
	return err;
}

static void t1_destroy(struct dirty_source *src)
{
	struct dirty_vfio_type1 *t = dirty_source_priv(src);

	iova_map_free(&t->map);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static const struct dirty_source_ops t1_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_COARSE,
	.name = "vfio-type1",
	.start = t1_start,
	.stop = t1_stop,
	.sync = t1_sync,
	/* The device is stopped: the same harvest is the last word. */
	.final = t1_sync,
	.destroy = t1_destroy,
};

/* ---- the API ---------------------------------------------------------------- */

DIRTY_API int dirty_vfio_type1_create(struct dirty_view *view,
				      const struct dirty_vfio_type1_config *cfg,
				      struct dirty_vfio_type1 **out)
{
	struct dirty_vfio_type1_caps caps;
	struct dirty_vfio_type1 *t;
	int err;

	if (!view || !cfg || !out || cfg->container_fd < 0)
		return __dirty_err(-EINVAL, "dirty_vfio_type1_create: needs a view, a config with the container fd, and out");
	err = dirty_vfio_type1_probe(cfg->container_fd, &caps);
	if (err)
		return err;
	if (!caps.migration)
		return __dirty_err(-EOPNOTSUPP, "VFIO container fd %d has no migration capability (VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION): its IOMMU backend cannot track dirty pages",
				   cfg->container_fd);
	if (caps.pgsize < 4096 || caps.max_pages < 64)
		return __dirty_err(-EOPNOTSUPP, "type1's migration capability is unusable: page size %#llx, bitmaps of at most %llu bytes",
				   (unsigned long long)caps.pgsize,
				   (unsigned long long)caps.max_bitmap_bytes);
	t = calloc(1, sizeof(*t));
	if (!t)
		return __dirty_err(-ENOMEM, "dirty_vfio_type1_create: out of memory");
	t->fd = cfg->container_fd;
	t->ioctl_fn = cfg->ioctl;
	t->ioctl_ctx = cfg->ioctl_ctx;
	t->caps = caps;
	t->shift = (unsigned int)__builtin_ctzll(caps.pgsize);
	t->piece_pages = cfg->piece_pages && cfg->piece_pages < caps.max_pages ?
		cfg->piece_pages : caps.max_pages;
	iova_map_init(&t->map, "type1", caps.pgsize);
	pthread_mutex_init(&t->lock, NULL);
	/* No fixed ranges: the adapter marks its own mappings on error. */
	err = dirty_source_attach(view, &t1_ops, t, NULL, 0, &t->src);
	if (err) {
		pthread_mutex_destroy(&t->lock);
		free(t);
		return err;
	}
	*out = t;
	return 0;
}

DIRTY_API void dirty_vfio_type1_destroy(struct dirty_vfio_type1 *t)
{
	if (t)
		dirty_source_detach(t->src);
}

DIRTY_API struct dirty_source *dirty_vfio_type1_source(struct dirty_vfio_type1 *t)
{
	return t->src;
}

DIRTY_API int dirty_vfio_type1_caps(struct dirty_vfio_type1 *t,
				    struct dirty_vfio_type1_caps *caps)
{
	*caps = t->caps;	/* immutable after create */
	return 0;
}

DIRTY_API int dirty_vfio_type1_add_mapping(struct dirty_vfio_type1 *t, uint64_t iova,
					   uint64_t gpa, uint64_t len)
{
	int err = iova_map_check(&t->map, iova, gpa, len);

	if (err)
		return err;
	if (len >> t->shift > t->caps.max_pages)
		return __dirty_err(-E2BIG, "type1 mapping of %llu pages at IOVA %#llx needs a bitmap over type1's %llu-byte maximum (it never reports part of a mapping): map at most %llu pages per VFIO_IOMMU_MAP_DMA",
				   (unsigned long long)(len >> t->shift), (unsigned long long)iova,
				   (unsigned long long)t->caps.max_bitmap_bytes,
				   (unsigned long long)t->caps.max_pages);
	pthread_mutex_lock(&t->lock);
	err = iova_map_add(&t->map, iova, gpa, len, 0);
	/* Mapped mid-migration: never sent as DMA-able memory, its first round. */
	if (!err && t->tracking)
		dirty_source_mark(t->src, gpa, len);
	pthread_mutex_unlock(&t->lock);
	return err;
}

/* Plain VFIO_IOMMU_UNMAP_DMA of [iova, +len); *done gets the bytes unmapped. */
static int unmap_plain(struct dirty_vfio_type1 *t, uint64_t iova, uint64_t len,
		       uint64_t *done)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u), .iova = iova, .size = len,
	};
	int e;

	if ((e = t1_ioctl(t, VFIO_IOMMU_UNMAP_DMA, &u)) < 0) {
		e = -e;

		return __dirty_err(-e, "VFIO_IOMMU_UNMAP_DMA of IOVA [%#llx, +%#llx) failed: %s",
				   (unsigned long long)iova, (unsigned long long)len, strerror(e));
	}
	*done = u.size;
	return 0;
}

/* Unmap the piece at regs[i] (pages long) with its last bits, and mark them. */
static int unmap_piece(struct dirty_vfio_type1 *t, size_t i, uint64_t pages, uint64_t *done)
{
	union {
		struct vfio_iommu_type1_dma_unmap u;
		unsigned char raw[offsetof(struct vfio_iommu_type1_dma_unmap, data) +
				  sizeof(struct vfio_bitmap)];
	} arg;
	struct vfio_bitmap bm;
	size_t words = (size_t)((pages + 63) / 64);
	uint64_t *bits = iova_map_bitmap(&t->map, pages);
	int e;

	if (!bits)
		return -ENOMEM;
	memset(&arg, 0, sizeof(arg));
	arg.u.argsz = sizeof(arg.raw);
	arg.u.flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	arg.u.iova = t->map.regs[i].iova;
	arg.u.size = pages << t->shift;
	bm.pgsize = t->caps.pgsize;
	bm.size = words * sizeof(uint64_t);
	bm.data = (__u64 *)bits;
	memcpy(arg.raw + offsetof(struct vfio_iommu_type1_dma_unmap, data), &bm, sizeof(bm));
	t->st.unmap_bitmap_calls++;
	if ((e = t1_ioctl(t, VFIO_IOMMU_UNMAP_DMA, &arg)) < 0) {
		e = -e;

		return __dirty_err(-e, "type1 unmap with dirty bitmap of IOVA [%#llx, +%#llx) failed: %s%s",
				   (unsigned long long)arg.u.iova,
				   (unsigned long long)(pages << t->shift), strerror(e), einval_hint(e));
	}
	*done = arg.u.size;
	return translate(t, arg.u.iova, bits, pages);
}

DIRTY_API int dirty_vfio_type1_unmap(struct dirty_vfio_type1 *t, uint64_t iova,
				     uint64_t len, uint64_t *unmapped)
{
	const struct iova_reg *r;
	uint64_t end = iova + len, pos, total = 0, done = 0;
	size_t lo, hi;
	int err, late = 0;

	if (unmapped)
		*unmapped = 0;
	pthread_mutex_lock(&t->lock);
	err = iova_map_range(&t->map, iova, len, &lo, &hi);
	if (err) {
		pthread_mutex_unlock(&t->lock);
		return err;
	}
	if (!t->tracking) {
		err = unmap_plain(t, iova, len, &total);
		if (!err)
			iova_map_remove(&t->map, lo, hi - lo);
		pthread_mutex_unlock(&t->lock);
		if (unmapped)
			*unmapped = total;
		return err;
	}
	/* In IOVA order: holes plainly, runs of registrations with their bits. */
	for (pos = iova; pos < end && !err; ) {
		r = t->map.regs;
		if (lo == hi || r[lo].iova > pos) {
			uint64_t next = lo == hi ? end : r[lo].iova;

			err = unmap_plain(t, pos, next - pos, &done);
			if (!err && done && !late) {
				late = __dirty_err(-EPROTO, "type1 unmapped %#llx bytes at IOVA [%#llx, +%#llx) where nothing is registered: their bits and guest pages are unknown, so all mapped pages were marked dirty",
						   (unsigned long long)done, (unsigned long long)pos,
						   (unsigned long long)(next - pos));
			}
			pos = next;
		} else {
			uint64_t pages;
			size_t j = piece_end(t, lo, hi, &pages);

			err = unmap_piece(t, lo, pages, &done);
			if (err == -EPROTO) {
				late = late ? late : untranslatable(t, "unmap reported");
				err = 0;
			}
			if (err)
				break;
			/* Gone from the kernel: their bits are in the view now. */
			pos = r[j - 1].iova + r[j - 1].len;
			iova_map_remove(&t->map, lo, j - lo);
			hi -= j - lo;
		}
		total += err ? 0 : done;
	}
	err = err ? err : late;
	if (err) {
		iova_map_mark_all(&t->map, t->src);
		t->st.errors++;
	}
	pthread_mutex_unlock(&t->lock);
	if (unmapped)
		*unmapped = total;
	return err;
}

DIRTY_API int dirty_vfio_type1_remove_mapping(struct dirty_vfio_type1 *t, uint64_t iova,
					      uint64_t len)
{
	struct iova_reg r;
	int err;

	pthread_mutex_lock(&t->lock);
	err = iova_map_take(&t->map, iova, len, &r);
	/* Whatever the device wrote since the last harvest is unknown now. */
	if (!err && t->tracking)
		dirty_source_mark(t->src, r.gpa, r.len);
	pthread_mutex_unlock(&t->lock);
	return err;
}

DIRTY_API int dirty_vfio_type1_translate(struct dirty_vfio_type1 *t, uint64_t iova,
					 uint64_t *gpa)
{
	int err;

	pthread_mutex_lock(&t->lock);
	err = iova_map_lookup(&t->map, iova, gpa);
	pthread_mutex_unlock(&t->lock);
	return err;
}

DIRTY_API int dirty_vfio_type1_stats(struct dirty_vfio_type1 *t,
				     struct dirty_vfio_type1_stats *st)
{
	pthread_mutex_lock(&t->lock);
	*st = t->st;
	st->mappings = t->map.n;
	st->mapped_bytes = iova_map_bytes(&t->map);
	pthread_mutex_unlock(&t->lock);
	return 0;
}
