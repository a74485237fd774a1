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

/* Guest-physical runs gathered before one dirty_source_mark_ranges(). */
#define RUN_BATCH 256

/* One VFIO_IOMMU_MAP_DMA of the VMM: IOVA [iova, +len) is GPA [gpa, +len). */
struct tmap {
	uint64_t iova, gpa, len;
};

struct dirty_vfio_type1 {
	struct dirty_source *src;
	int fd;
	struct dirty_vfio_type1_caps caps;	/* immutable after create */
	unsigned int shift;			/* log2(caps.pgsize) */
	uint64_t piece_pages;			/* immutable after create */
	pthread_mutex_t lock;	/* everything below; never the VMM's or the view's */
	struct tmap *maps;	/* sorted by iova, never overlapping */
	size_t nmaps, cmaps;
	bool tracking;		/* START succeeded, no STOP since */
	uint64_t *bitmap;	/* one ioctl's bitmap */
	size_t bitmap_words;
	struct dirty_range runs[RUN_BATCH];
	size_t nruns;
	struct dirty_vfio_type1_stats st;	/* mappings/mapped_bytes computed */
	uint64_t bad_iova;	/* first untranslatable IOVA of the last translate() */
};

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

/* ---- the mapping table (t->lock held) ------------------------------------- */

static uint64_t pages_of(const struct dirty_vfio_type1 *t, uint64_t len)
{
	return len >> t->shift;
}

/* Index of the first mapping that ends above iova (t->nmaps if none). */
static size_t lower_bound(const struct dirty_vfio_type1 *t, uint64_t iova)
{
	size_t lo = 0, hi = t->nmaps;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->maps[mid].iova + t->maps[mid].len <= iova)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void remove_maps(struct dirty_vfio_type1 *t, size_t i, size_t n)
{
	memmove(&t->maps[i], &t->maps[i + n], (t->nmaps - i - n) * sizeof(t->maps[0]));
	t->nmaps -= n;
}

/* ---- marking (t->lock held) ----------------------------------------------- */

static void flush_runs(struct dirty_vfio_type1 *t)
{
	if (t->nruns)
		dirty_source_mark_ranges(t->src, t->runs, t->nruns);
	t->nruns = 0;
}

/* Queue GPA [gpa, +len), joining it to the previous run when they touch. */
static void add_run(struct dirty_vfio_type1 *t, uint64_t gpa, uint64_t len)
{
	struct dirty_range *last = t->nruns ? &t->runs[t->nruns - 1] : NULL;

	if (last && last->gpa + last->len == gpa) {
		last->len += len;
		return;
	}
	if (t->nruns == RUN_BATCH)
		flush_runs(t);
	t->runs[t->nruns].gpa = gpa;
	t->runs[t->nruns++].len = len;
}

/* The error rule: every registered page is dirty. */
static void mark_all(struct dirty_vfio_type1 *t)
{
	t->nruns = 0;
	for (size_t i = 0; i < t->nmaps; i++)
		add_run(t, t->maps[i].gpa, t->maps[i].len);
	flush_runs(t);
}

/*
 * Mark what one ioctl's bitmap says. Bit i stands for the page at IOVA
 * base + i * pgsize; maps[first, last) are the registrations inside the
 * range asked for, sorted. Only the bitmap's words are read (words, from
 * the size handed to the kernel), and every set bit must fall inside one
 * of those registrations: one that does not (a hole, a MAP_DMA never
 * registered, garbage past the range) has no known guest page. It is not
 * dropped: the caller gets -EPROTO (t->bad_iova says where) and applies
 * the error rule. Everything translatable is marked either way.
 */
static int translate(struct dirty_vfio_type1 *t, uint64_t base, const uint64_t *bm,
		     size_t words, size_t first, size_t last)
{
	uint64_t nbits = (uint64_t)words * 64, i = 0;
	size_t k = first;
	bool outside = false;

	t->nruns = 0;
	while (i < nbits) {
		uint64_t w = i / 64, v = bm[w] & (~0ull << (i % 64)), a, b;

		while (!v && ++w < words)
			v = bm[w];
		if (!v)
			break;
		a = w * 64 + (uint64_t)__builtin_ctzll(v);
		/* The run of set bits from a: the next clear bit ends it. */
		w = a / 64;
		v = ~bm[w] & (~0ull << (a % 64));
		while (!v && ++w < words)
			v = ~bm[w];
		b = v ? w * 64 + (uint64_t)__builtin_ctzll(v) : nbits;
		t->st.pages_reported += b - a;
		/* Pages [a, b) relative to base; mappings as page offsets too. */
		while (a < b) {
			uint64_t ms, me, end;

			while (k < last && pages_of(t, t->maps[k].iova - base) +
			       pages_of(t, t->maps[k].len) <= a)
				k++;
			ms = k < last ? pages_of(t, t->maps[k].iova - base) : b;
			if (ms > a) {
				if (!outside)
					t->bad_iova = base + (a << t->shift);
				outside = true;
				a = ms < b ? ms : b;
				continue;
			}
			me = ms + pages_of(t, t->maps[k].len);
			end = me < b ? me : b;
			add_run(t, t->maps[k].gpa + ((a - ms) << t->shift),
				(end - a) << t->shift);
			a = end;
		}
		i = b;
	}
	flush_runs(t);
	return outside ? -EPROTO : 0;
}

static int untranslatable(struct dirty_vfio_type1 *t, const char *what)
{
	return __dirty_err(-EPROTO, "type1 %s IOVA %#llx, outside every registered mapping: its guest page is unknown, so all mapped pages were marked dirty (register each VFIO_IOMMU_MAP_DMA)",
			   what, (unsigned long long)t->bad_iova);
}

/* A zeroed bitmap of at least words words in t->bitmap. */
static int bitmap_for(struct dirty_vfio_type1 *t, size_t words)
{
	if (words > t->bitmap_words) {
		uint64_t *n = realloc(t->bitmap, words * sizeof(uint64_t));

		if (!n)
			return __dirty_err(-ENOMEM, "type1: out of memory for a %zu-byte dirty bitmap",
					   words * sizeof(uint64_t));
		t->bitmap = n;
		t->bitmap_words = words;
	}
	/* The uapi: the caller zeroes the bitmap. */
	memset(t->bitmap, 0, words * sizeof(uint64_t));
	return 0;
}

/*
 * The run of IOVA-adjacent registrations that starts at maps[i] and fits
 * one piece: returns its end index. Only adjacent ones are joined: a range
 * over a hole could cover, or split, a MAP_DMA the VMM made but has not
 * registered yet (it registers after mapping), which would fail or read
 * as untranslatable bits. A single mapping larger than a piece is a piece
 * of its own, since type1 refuses to split it.
 */
static size_t piece_end(const struct dirty_vfio_type1 *t, size_t i, size_t hi,
			uint64_t *pages)
{
	size_t j = i + 1;

	*pages = pages_of(t, t->maps[i].len);
	while (j < hi && t->maps[j].iova == t->maps[j - 1].iova + t->maps[j - 1].len &&
	       *pages + pages_of(t, t->maps[j].len) <= t->piece_pages) {
		*pages += pages_of(t, t->maps[j].len);
		j++;
	}
	return j;
}

static const char *einval_hint(int e)
{
	return e == EINVAL ?
		" (tracking stopped by another user, or a registration that is not one whole VFIO_IOMMU_MAP_DMA)" : "";
}

/* ---- harvest (t->lock held) ------------------------------------------------ */

/* GET_BITMAP of maps[i, j), pages long, into t->bitmap; then mark. */
static int get_piece(struct dirty_vfio_type1 *t, size_t i, size_t j, uint64_t pages)
{
	union {
		struct vfio_iommu_type1_dirty_bitmap db;
		unsigned char raw[offsetof(struct vfio_iommu_type1_dirty_bitmap, data) +
				  sizeof(struct vfio_iommu_type1_dirty_bitmap_get)];
	} arg;
	struct vfio_iommu_type1_dirty_bitmap_get get;
	size_t words = (size_t)((pages + 63) / 64);
	int err = bitmap_for(t, words);

	if (err)
		return err;
	memset(&arg, 0, sizeof(arg));
	arg.db.argsz = sizeof(arg.raw);
	arg.db.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	memset(&get, 0, sizeof(get));
	get.iova = t->maps[i].iova;
	get.size = pages << t->shift;
	get.bitmap.pgsize = t->caps.pgsize;
	get.bitmap.size = words * sizeof(uint64_t);
	get.bitmap.data = (__u64 *)t->bitmap;
	memcpy(arg.raw + offsetof(struct vfio_iommu_type1_dirty_bitmap, data), &get, sizeof(get));
	t->st.get_bitmap_calls++;
	if (ioctl(t->fd, VFIO_IOMMU_DIRTY_PAGES, &arg) < 0) {
		int e = errno;

		return __dirty_err(-e, "type1 GET_BITMAP of IOVA [%#llx, +%#llx) failed: %s%s",
				   (unsigned long long)get.iova, (unsigned long long)get.size,
				   strerror(e), einval_hint(e));
	}
	if (translate(t, get.iova, t->bitmap, words, i, j))
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
		for (size_t i = 0, j; i < t->nmaps; i = j) {
			uint64_t pages;

			j = piece_end(t, i, t->nmaps, &pages);
			err = get_piece(t, i, j, pages);
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
		mark_all(t);
		t->st.errors++;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int dirty_ctl(struct dirty_vfio_type1 *t, uint32_t flag, const char *what)
{
	struct vfio_iommu_type1_dirty_bitmap db = { .argsz = sizeof(db), .flags = flag };

	if (ioctl(t->fd, VFIO_IOMMU_DIRTY_PAGES, &db) < 0) {
		int e = errno;

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
	mark_all(t);
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

	free(t->maps);
	free(t->bitmap);
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
	t->caps = caps;
	t->shift = (unsigned int)__builtin_ctzll(caps.pgsize);
	t->piece_pages = cfg->piece_pages && cfg->piece_pages < caps.max_pages ?
		cfg->piece_pages : caps.max_pages;
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
	uint64_t mask = t->caps.pgsize - 1;
	size_t i;

	if (!len || (iova | gpa | len) & mask)
		return __dirty_err(-EINVAL, "type1 mapping IOVA %#llx -> GPA %#llx, %#llx bytes: must be non-empty and aligned to type1's dirty page size %#llx",
				   (unsigned long long)iova, (unsigned long long)gpa,
				   (unsigned long long)len, (unsigned long long)t->caps.pgsize);
	if (len > UINT64_MAX - iova || len > UINT64_MAX - gpa)
		return __dirty_err(-EINVAL, "type1 mapping IOVA %#llx -> GPA %#llx, %#llx bytes: wraps around the address space",
				   (unsigned long long)iova, (unsigned long long)gpa,
				   (unsigned long long)len);
	if (pages_of(t, len) > t->caps.max_pages)
		return __dirty_err(-E2BIG, "type1 mapping of %llu pages at IOVA %#llx needs a bitmap over type1's %llu-byte maximum (it never reports part of a mapping): map at most %llu pages per VFIO_IOMMU_MAP_DMA",
				   (unsigned long long)pages_of(t, len), (unsigned long long)iova,
				   (unsigned long long)t->caps.max_bitmap_bytes,
				   (unsigned long long)t->caps.max_pages);
	pthread_mutex_lock(&t->lock);
	i = lower_bound(t, iova);
	if (i < t->nmaps && t->maps[i].iova < iova + len) {
		struct tmap o = t->maps[i];

		pthread_mutex_unlock(&t->lock);
		return __dirty_err(-EEXIST, "type1 mapping IOVA [%#llx, +%#llx) overlaps the registered [%#llx, +%#llx)",
				   (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)o.iova, (unsigned long long)o.len);
	}
	if (t->nmaps == t->cmaps) {
		size_t c = t->cmaps ? t->cmaps * 2 : 16;
		struct tmap *n = realloc(t->maps, c * sizeof(*n));

		if (!n) {
			pthread_mutex_unlock(&t->lock);
			return __dirty_err(-ENOMEM, "dirty_vfio_type1_add_mapping: out of memory");
		}
		t->maps = n;
		t->cmaps = c;
	}
	memmove(&t->maps[i + 1], &t->maps[i], (t->nmaps - i) * sizeof(t->maps[0]));
	t->maps[i] = (struct tmap){ .iova = iova, .gpa = gpa, .len = len };
	t->nmaps++;
	/* Mapped mid-migration: never sent as DMA-able memory, its first round. */
	if (t->tracking)
		dirty_source_mark(t->src, gpa, len);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/* Plain VFIO_IOMMU_UNMAP_DMA of [iova, +len); *done gets the bytes unmapped. */
static int unmap_plain(struct dirty_vfio_type1 *t, uint64_t iova, uint64_t len,
		       uint64_t *done)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u), .iova = iova, .size = len,
	};

	if (ioctl(t->fd, VFIO_IOMMU_UNMAP_DMA, &u) < 0) {
		int e = errno;

		return __dirty_err(-e, "VFIO_IOMMU_UNMAP_DMA of IOVA [%#llx, +%#llx) failed: %s",
				   (unsigned long long)iova, (unsigned long long)len, strerror(e));
	}
	*done = u.size;
	return 0;
}

/* Unmap maps[i, j) (pages long) with their last bits, and mark them. */
static int unmap_piece(struct dirty_vfio_type1 *t, size_t i, size_t j, uint64_t pages,
		       uint64_t *done)
{
	union {
		struct vfio_iommu_type1_dma_unmap u;
		unsigned char raw[offsetof(struct vfio_iommu_type1_dma_unmap, data) +
				  sizeof(struct vfio_bitmap)];
	} arg;
	struct vfio_bitmap bm;
	size_t words = (size_t)((pages + 63) / 64);
	int err = bitmap_for(t, words);

	if (err)
		return err;
	memset(&arg, 0, sizeof(arg));
	arg.u.argsz = sizeof(arg.raw);
	arg.u.flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	arg.u.iova = t->maps[i].iova;
	arg.u.size = pages << t->shift;
	bm.pgsize = t->caps.pgsize;
	bm.size = words * sizeof(uint64_t);
	bm.data = (__u64 *)t->bitmap;
	memcpy(arg.raw + offsetof(struct vfio_iommu_type1_dma_unmap, data), &bm, sizeof(bm));
	t->st.unmap_bitmap_calls++;
	if (ioctl(t->fd, VFIO_IOMMU_UNMAP_DMA, &arg) < 0) {
		int e = errno;

		return __dirty_err(-e, "type1 unmap with dirty bitmap of IOVA [%#llx, +%#llx) failed: %s%s",
				   (unsigned long long)t->maps[i].iova,
				   (unsigned long long)(pages << t->shift), strerror(e), einval_hint(e));
	}
	*done = arg.u.size;
	return translate(t, t->maps[i].iova, t->bitmap, words, i, j);
}

DIRTY_API int dirty_vfio_type1_unmap(struct dirty_vfio_type1 *t, uint64_t iova,
				     uint64_t len, uint64_t *unmapped)
{
	uint64_t end, pos, total = 0, done = 0;
	size_t lo, hi;
	int err = 0, late = 0;

	if (unmapped)
		*unmapped = 0;
	if (!len || (iova | len) & (t->caps.pgsize - 1) || len > UINT64_MAX - iova)
		return __dirty_err(-EINVAL, "type1 unmap of IOVA [%#llx, +%#llx): must be non-empty, aligned to %#llx and not wrap",
				   (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)t->caps.pgsize);
	end = iova + len;
	pthread_mutex_lock(&t->lock);
	lo = lower_bound(t, iova);
	for (hi = lo; hi < t->nmaps && t->maps[hi].iova < end; hi++)
		;
	if ((lo < hi && t->maps[lo].iova < iova) ||
	    (lo < hi && t->maps[hi - 1].iova + t->maps[hi - 1].len > end)) {
		struct tmap m = t->maps[lo].iova < iova ? t->maps[lo] : t->maps[hi - 1];

		pthread_mutex_unlock(&t->lock);
		return __dirty_err(-EINVAL, "type1 unmap of IOVA [%#llx, +%#llx) would split the registered mapping [%#llx, +%#llx); type1 unmaps whole mappings only",
				   (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)m.iova, (unsigned long long)m.len);
	}
	if (!t->tracking) {
		err = unmap_plain(t, iova, len, &total);
		if (!err)
			remove_maps(t, lo, hi - lo);
		pthread_mutex_unlock(&t->lock);
		if (unmapped)
			*unmapped = total;
		return err;
	}
	/* In IOVA order: holes plainly, runs of registrations with their bits. */
	for (pos = iova; pos < end && !err; ) {
		if (lo == hi || t->maps[lo].iova > pos) {
			uint64_t next = lo == hi ? end : t->maps[lo].iova;

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

			err = unmap_piece(t, lo, j, pages, &done);
			if (err == -EPROTO) {
				late = late ? late : untranslatable(t, "unmap reported");
				err = 0;
			}
			if (err)
				break;
			/* Gone from the kernel: their bits are in the view now. */
			pos = t->maps[j - 1].iova + t->maps[j - 1].len;
			remove_maps(t, lo, j - lo);
			hi -= j - lo;
		}
		total += err ? 0 : done;
	}
	err = err ? err : late;
	if (err) {
		mark_all(t);
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
	size_t i;

	pthread_mutex_lock(&t->lock);
	i = lower_bound(t, iova);
	if (i == t->nmaps || t->maps[i].iova != iova || t->maps[i].len != len) {
		pthread_mutex_unlock(&t->lock);
		return __dirty_err(-ENOENT, "no type1 mapping of IOVA [%#llx, +%#llx) is registered",
				   (unsigned long long)iova, (unsigned long long)len);
	}
	/* Whatever the device wrote since the last harvest is unknown now. */
	if (t->tracking)
		dirty_source_mark(t->src, t->maps[i].gpa, t->maps[i].len);
	remove_maps(t, i, 1);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

DIRTY_API int dirty_vfio_type1_translate(struct dirty_vfio_type1 *t, uint64_t iova,
					 uint64_t *gpa)
{
	int err = -ENOENT;
	size_t i;

	pthread_mutex_lock(&t->lock);
	i = lower_bound(t, iova);
	if (i < t->nmaps && t->maps[i].iova <= iova) {
		*gpa = t->maps[i].gpa + (iova - t->maps[i].iova);
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	if (err)
		return __dirty_err(err, "IOVA %#llx is in no registered type1 mapping",
				   (unsigned long long)iova);
	return 0;
}

DIRTY_API int dirty_vfio_type1_stats(struct dirty_vfio_type1 *t,
				     struct dirty_vfio_type1_stats *st)
{
	pthread_mutex_lock(&t->lock);
	*st = t->st;
	st->mappings = t->nmaps;
	st->mapped_bytes = 0;
	for (size_t i = 0; i < t->nmaps; i++)
		st->mapped_bytes += t->maps[i].len;
	pthread_mutex_unlock(&t->lock);
	return 0;
}
