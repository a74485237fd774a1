/* SPDX-License-Identifier: MIT */
/*
 * view.c - the view: its RCU-published region table, region add/remove,
 * and the lock-free mark and merge paths. Statistics readers live here
 * too. Sources are in source.c, claiming in claim.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static _Thread_local char errbuf[512];

int __dirty_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
	return err;
}

DIRTY_API const char *dirty_last_error(void)
{
	return errbuf;
}

double __dirty_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#ifdef DIRTY_TSAN
/* Every read-side unlock releases it; every grace period acquires it. */
static _Atomic uint64_t tsan_rcu;
#endif

void __dirty_rcu_unlock(void)
{
#ifdef DIRTY_TSAN
	atomic_fetch_add_explicit(&tsan_rcu, 1, memory_order_release);
#endif
	urcu_bp_read_unlock();
}

void __dirty_rcu_acquire(void)
{
#ifdef DIRTY_TSAN
	(void)atomic_load_explicit(&tsan_rcu, memory_order_acquire);
#endif
}

void __dirty_rcu_synchronize(void)
{
	urcu_bp_synchronize_rcu();
	__dirty_rcu_acquire();
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

DIRTY_API int dirty_view_new(struct dirty_view **out)
{
	struct dirty_view *v = calloc(1, sizeof(*v));
	struct region_table *t = calloc(1, sizeof(*t));

	if (!v || !t) {
		free(v);
		free(t);
		return __dirty_err(-ENOMEM, "dirty_view_new: out of memory");
	}
	pthread_mutex_init(&v->lock, NULL);
	atomic_init(&v->table, t);
	v->next_region_id = 1;
	*out = v;
	return 0;
}

static void region_free(struct region *r)
{
	hbm_destroy(&r->bm);
	free(r);
}

DIRTY_API void dirty_view_free(struct dirty_view *view)
{
	struct region_table *t;

	if (!view)
		return;
	while (view->sources)
		dirty_source_detach(view->sources);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	for (size_t i = 0; i < t->n; i++)
		region_free(t->r[i]);
	free(t);
	pthread_mutex_destroy(&view->lock);
	free(view);
}

size_t __dirty_table_lower(const struct region_table *t, uint64_t gpa)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct region *r = t->r[mid];

		if (r->gpa + r->len <= gpa)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct region *__dirty_table_find(const struct region_table *t, uint64_t gpa)
{
	size_t i = __dirty_table_lower(t, gpa);

	if (i < t->n && t->r[i]->gpa <= gpa)
		return t->r[i];
	return NULL;
}

struct region *__dirty_table_by_id(const struct region_table *t, uint64_t id)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->r[i]->id == id)
			return t->r[i];
	return NULL;
}

/* Publish nt and wait until no reader can still see the old table. */
static void table_replace(struct dirty_view *view, struct region_table *nt)
{
	struct region_table *old =
		atomic_load_explicit(&view->table, memory_order_relaxed);

	/* Release: a reader that loads nt sees the regions fully built. */
	atomic_store_explicit(&view->table, nt, memory_order_release);
	__dirty_rcu_synchronize();
	free(old);
}

DIRTY_API int dirty_view_add_region(struct dirty_view *view, uint64_t gpa,
				    uint64_t len, uint64_t page_size,
				    unsigned int flags)
{
	struct region_table *t, *nt;
	struct region *r;
	size_t i;
	int err;

	if (page_size == 0)
		page_size = DIRTY_MIN_PAGE_SIZE;
	if (!is_pow2(page_size) || page_size < DIRTY_MIN_PAGE_SIZE)
		return __dirty_err(-EINVAL, "region page size %#llx must be a power of two >= 4 KiB",
				   (unsigned long long)page_size);
	if (len == 0 || (gpa | len) & (page_size - 1))
		return __dirty_err(-EINVAL, "region [%#llx, +%#llx) must be non-empty and aligned to its page size %#llx",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)page_size);
	if (gpa + len < gpa)
		return __dirty_err(-EINVAL, "region [%#llx, +%#llx) wraps the address space",
				   (unsigned long long)gpa, (unsigned long long)len);
	if (flags & ~DIRTY_REGION_DIRTY)
		return __dirty_err(-EINVAL, "unknown region flags %#x", flags);

	r = calloc(1, sizeof(*r));
	if (!r)
		return __dirty_err(-ENOMEM, "add_region: out of memory");
	r->gpa = gpa;
	r->len = len;
	r->page_size = page_size;
	r->page_shift = (unsigned int)__builtin_ctzll(page_size);
	r->npages = len >> r->page_shift;
	err = hbm_init(&r->bm, r->npages);
	if (err) {
		free(r);
		return __dirty_err(err, "add_region: cannot allocate the bitmap for %llu pages",
				   (unsigned long long)(len >> __builtin_ctzll(page_size)));
	}
	if (flags & DIRTY_REGION_DIRTY)
		hbm_mark(&r->bm, 0, r->npages);

	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	i = __dirty_table_lower(t, gpa);
	if (i < t->n && t->r[i]->gpa < gpa + len) {
		pthread_mutex_unlock(&view->lock);
		region_free(r);
		return __dirty_err(-EEXIST, "region [%#llx, +%#llx) overlaps [%#llx, +%#llx)",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)t->r[i]->gpa,
				   (unsigned long long)t->r[i]->len);
	}
	nt = malloc(sizeof(*nt) + (t->n + 1) * sizeof(nt->r[0]));
	if (!nt) {
		pthread_mutex_unlock(&view->lock);
		region_free(r);
		return __dirty_err(-ENOMEM, "add_region: out of memory");
	}
	r->id = view->next_region_id++;
	nt->n = t->n + 1;
	memcpy(nt->r, t->r, i * sizeof(nt->r[0]));
	nt->r[i] = r;
	memcpy(nt->r + i + 1, t->r + i, (t->n - i) * sizeof(nt->r[0]));
	table_replace(view, nt);
	pthread_mutex_unlock(&view->lock);
	return 0;
}

DIRTY_API int dirty_view_remove_region(struct dirty_view *view, uint64_t gpa)
{
	struct region_table *t, *nt;
	struct region *r;
	size_t i;

	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	i = __dirty_table_lower(t, gpa);
	if (i >= t->n || t->r[i]->gpa != gpa) {
		pthread_mutex_unlock(&view->lock);
		return __dirty_err(-ENOENT, "no region starts at %#llx",
				   (unsigned long long)gpa);
	}
	r = t->r[i];
	nt = malloc(sizeof(*nt) + (t->n - 1) * sizeof(nt->r[0]));
	if (!nt) {
		pthread_mutex_unlock(&view->lock);
		return __dirty_err(-ENOMEM, "remove_region: out of memory");
	}
	nt->n = t->n - 1;
	memcpy(nt->r, t->r, i * sizeof(nt->r[0]));
	memcpy(nt->r + i, t->r + i + 1, (t->n - i - 1) * sizeof(nt->r[0]));
	table_replace(view, nt);	/* after this no reader holds r */
	pthread_mutex_unlock(&view->lock);
	region_free(r);
	return 0;
}

static const struct region_table *table_get(struct dirty_view *view)
{
	/* Acquire pairs with table_replace()'s release. */
	return atomic_load_explicit(&view->table, memory_order_acquire);
}

static void count_outside(struct dirty_view *view, uint64_t bytes)
{
	if (bytes)
		atomic_fetch_add_explicit(&view->pages_outside,
					  (bytes + DIRTY_MIN_PAGE_SIZE - 1) / DIRTY_MIN_PAGE_SIZE,
					  memory_order_relaxed);
}

uint64_t __dirty_mark_locked(struct dirty_view *view,
			     const struct region_table *t, uint64_t gpa,
			     uint64_t len)
{
	uint64_t end = gpa + len, total = 0;
	size_t i;

	if (len == 0)
		return 0;
	if (end < gpa)
		end = UINT64_MAX;
	for (i = __dirty_table_lower(t, gpa); i < t->n && gpa < end; i++) {
		struct region *r = t->r[i];
		uint64_t s, e, first, last;

		if (r->gpa >= end)
			break;
		if (r->gpa > gpa)
			count_outside(view, r->gpa - gpa);
		s = gpa > r->gpa ? gpa : r->gpa;
		e = end < r->gpa + r->len ? end : r->gpa + r->len;
		/* Round outward: a partly written page is a dirty page. */
		first = (s - r->gpa) >> r->page_shift;
		last = (e - r->gpa + r->page_size - 1) >> r->page_shift;
		hbm_mark(&r->bm, first, last - first);
		atomic_fetch_add_explicit(&r->marked, last - first,
					  memory_order_relaxed);
		total += last - first;
		gpa = r->gpa + r->len;
	}
	if (gpa < end)
		count_outside(view, end - gpa);
	return total;
}

DIRTY_API int dirty_view_mark(struct dirty_view *view, uint64_t gpa,
			      uint64_t len)
{
	__dirty_rcu_lock();
	__dirty_mark_locked(view, table_get(view), gpa, len);
	__dirty_rcu_unlock();
	return 0;
}

DIRTY_API int dirty_view_mark_ranges(struct dirty_view *view,
				     const struct dirty_range *ranges, size_t n)
{
	const struct region_table *t;

	if (n && !ranges)
		return __dirty_err(-EINVAL, "mark_ranges: NULL ranges");
	__dirty_rcu_lock();
	t = table_get(view);
	for (size_t i = 0; i < n; i++)
		__dirty_mark_locked(view, t, ranges[i].gpa, ranges[i].len);
	__dirty_rcu_unlock();
	return 0;
}

DIRTY_API int dirty_view_mark_all(struct dirty_view *view)
{
	const struct region_table *t;

	__dirty_rcu_lock();
	t = table_get(view);
	for (size_t i = 0; i < t->n; i++) {
		hbm_mark(&t->r[i]->bm, 0, t->r[i]->npages);
		atomic_fetch_add_explicit(&t->r[i]->marked, t->r[i]->npages,
					  memory_order_relaxed);
	}
	__dirty_rcu_unlock();
	return 0;
}

/* ---- foreign bitmaps ---------------------------------------------------- */

/* Bits [64q, 64q + 64) of a foreign bitmap of nbits bits (zero outside). */
static uint64_t foreign_word(const uint8_t *bm, uint64_t nbits, int64_t q)
{
	uint64_t v = 0, nbytes = (nbits + 7) / 8, b;

	if (q < 0 || (uint64_t)q * 64 >= nbits)
		return 0;
	b = (uint64_t)q * 8;
	if (b + 8 <= nbytes) {
		memcpy(&v, bm + b, 8);
		v = le64toh(v);
	} else {
		for (uint64_t k = 0; b + k < nbytes; k++)
			v |= (uint64_t)bm[b + k] << (8 * k);
	}
	if (nbits - (uint64_t)q * 64 < 64)
		v &= (1ull << (nbits - (uint64_t)q * 64)) - 1;
	return v;
}

/* 64 foreign bits starting at bit pos (which may be negative). */
static uint64_t foreign_bits(const uint8_t *bm, uint64_t nbits, int64_t pos)
{
	int64_t q = pos >= 0 ? pos / 64 : -((-pos + 63) / 64);
	unsigned int s = (unsigned int)(pos - q * 64);
	uint64_t lo = foreign_word(bm, nbits, q);

	if (!s)
		return lo;
	return (lo >> s) | (foreign_word(bm, nbits, q + 1) << (64 - s));
}

/*
 * Chunk c's 64 words straight from a word-aligned foreign bitmap.
 * Returns 0 empty, 1 partial, 2 full, -1 when the fast path does not apply.
 */
static int chunk_direct(const uint8_t *bm, uint64_t nbits, int64_t fbit,
			uint64_t words[HBM_CHUNK_WORDS])
{
	uint64_t all = ~0ull, any = 0;

	if (fbit < 0 || fbit & 63 || (uint64_t)fbit + HBM_CHUNK_PAGES > nbits)
		return -1;
	bm += (uint64_t)fbit / 8;
	for (unsigned int j = 0; j < HBM_CHUNK_WORDS; j++) {
		uint64_t v;

		memcpy(&v, bm + j * 8, 8);
		words[j] = le64toh(v);
		all &= words[j];
		any |= words[j];
	}
	return all == ~0ull ? 2 : any ? 1 : 0;
}

/* Same page size: word-level OR of region pages [p0, p1). */
static uint64_t merge_same(struct region *r, const uint8_t *bm, uint64_t nbits,
			   int64_t off, uint64_t p0, uint64_t p1)
{
	uint64_t words[HBM_CHUNK_WORDS], total = 0;
	uint64_t c, c0 = p0 / HBM_CHUNK_PAGES, c1 = (p1 - 1) / HBM_CHUNK_PAGES;

	for (c = c0; c <= c1; c++) {
		uint64_t base = c * HBM_CHUNK_PAGES, npg = hbm_chunk_pages(&r->bm, c);
		unsigned int j, nw = (unsigned int)((npg + 63) / 64);
		uint64_t n = 0;
		int kind = -1;

		/* The common case: a whole chunk, word aligned with the source. */
		if (npg == HBM_CHUNK_PAGES && base >= p0 && base + npg <= p1)
			kind = chunk_direct(bm, nbits, (int64_t)base - off, words);
		if (kind == 2) {
			hbm_mark(&r->bm, base, npg);	/* one "full" bit */
			total += npg;
			continue;
		}
		if (kind >= 0) {
			total += kind ? hbm_or_chunk(&r->bm, c, words, nw) : 0;
			continue;
		}
		for (j = 0; j < nw; j++) {
			uint64_t pg = base + (uint64_t)j * 64, m = ~0ull;

			if (pg + 64 <= p0 || pg >= p1) {
				m = 0;
			} else {
				if (pg < p0)
					m &= ~0ull << (p0 - pg);
				if (pg + 64 > p1)
					m &= (1ull << (p1 - pg)) - 1;
			}
			words[j] = m ? foreign_bits(bm, nbits, (int64_t)pg - off) & m : 0;
			n += hbm_popcount(words[j]);
		}
		if (n == npg)
			hbm_mark(&r->bm, base, npg);
		else if (n)
			hbm_or_chunk(&r->bm, c, words, nw);
		total += n;
	}
	return total;
}

/* Other page size: expand or fold each run of set bits. */
static uint64_t merge_runs(struct region *r, const uint8_t *bm, uint64_t nbits,
			   uint64_t gpa, unsigned int fshift, uint64_t b0,
			   uint64_t b1)
{
	uint64_t total = 0, q;

	for (q = b0 / 64; q * 64 < b1; q++) {
		uint64_t v = foreign_word(bm, nbits, (int64_t)q);

		if (q * 64 < b0)
			v &= ~0ull << (b0 - q * 64);
		if (b1 - q * 64 < 64)
			v &= (1ull << (b1 - q * 64)) - 1;
		while (v) {
			unsigned int s = (unsigned int)__builtin_ctzll(v);
			uint64_t rest = ~(v >> s), n, first, last, a, e;

			n = rest ? (uint64_t)__builtin_ctzll(rest) : 64 - s;
			a = gpa + ((q * 64 + s) << fshift);
			e = a + (n << fshift);
			/* A large foreign page may stick out of the region. */
			if (a < r->gpa)
				a = r->gpa;
			if (e > r->gpa + r->len)
				e = r->gpa + r->len;
			first = (a - r->gpa) >> r->page_shift;
			last = (e - r->gpa + r->page_size - 1) >> r->page_shift;
			hbm_mark(&r->bm, first, last - first);
			total += last - first;
			v &= n + s >= 64 ? 0 : ~0ull << (s + n);
		}
	}
	return total;
}

uint64_t __dirty_merge_locked(struct dirty_view *view,
			      const struct region_table *t, uint64_t gpa,
			      uint64_t page_size, const void *bitmap,
			      uint64_t nbits)
{
	unsigned int fshift = (unsigned int)__builtin_ctzll(page_size);
	uint64_t end = gpa + (nbits << fshift), total = 0, covered = 0;

	for (size_t i = __dirty_table_lower(t, gpa); i < t->n; i++) {
		struct region *r = t->r[i];
		uint64_t s, e, n;

		if (r->gpa >= end)
			break;
		s = gpa > r->gpa ? gpa : r->gpa;
		e = end < r->gpa + r->len ? end : r->gpa + r->len;
		covered += e - s;
		if (page_size == r->page_size) {
			int64_t off = (int64_t)((gpa >> fshift) - (r->gpa >> fshift));

			n = merge_same(r, bitmap, nbits, off,
				       (s - r->gpa) >> fshift,
				       (e - r->gpa) >> fshift);
		} else {
			n = merge_runs(r, bitmap, nbits, gpa, fshift,
				       (s - gpa) >> fshift,
				       (e - gpa + page_size - 1) >> fshift);
		}
		atomic_fetch_add_explicit(&r->marked, n, memory_order_relaxed);
		total += n;
	}
	/* Bits in no region are not tracked; count them so it shows. */
	if (covered < end - gpa) {
		uint64_t outside = 0;

		for (uint64_t q = 0; q * 64 < nbits; q++) {
			uint64_t v = foreign_word(bitmap, nbits, (int64_t)q);

			while (v) {
				uint64_t a = gpa + ((q * 64 +
					(uint64_t)__builtin_ctzll(v)) << fshift);

				if (!__dirty_table_find(t, a))
					outside++;
				v &= v - 1;
			}
		}
		count_outside(view, outside << fshift);
	}
	return total;
}

int __dirty_merge_check(uint64_t gpa, uint64_t page_size,
			const void *bitmap, uint64_t nbits)
{
	if (!is_pow2(page_size) || page_size < DIRTY_MIN_PAGE_SIZE)
		return __dirty_err(-EINVAL, "bitmap page size %#llx must be a power of two >= 4 KiB",
				   (unsigned long long)page_size);
	if (gpa & (page_size - 1))
		return __dirty_err(-EINVAL, "bitmap base %#llx is not aligned to its page size %#llx",
				   (unsigned long long)gpa, (unsigned long long)page_size);
	if (nbits && !bitmap)
		return __dirty_err(-EINVAL, "NULL bitmap with %llu bits",
				   (unsigned long long)nbits);
	if (nbits > (UINT64_MAX - gpa) >> __builtin_ctzll(page_size))
		return __dirty_err(-EINVAL, "bitmap of %llu pages at %#llx wraps the address space",
				   (unsigned long long)nbits, (unsigned long long)gpa);
	return 0;
}

int __dirty_merge_checked(struct dirty_view *view, uint64_t gpa,
			  uint64_t page_size, const void *bitmap,
			  uint64_t nbits, uint64_t *marked)
{
	int err = __dirty_merge_check(gpa, page_size, bitmap, nbits);

	if (err)
		return err;
	__dirty_rcu_lock();
	*marked = __dirty_merge_locked(view, table_get(view), gpa, page_size,
				       bitmap, nbits);
	__dirty_rcu_unlock();
	return 0;
}

DIRTY_API int dirty_view_merge_bitmap(struct dirty_view *view, uint64_t gpa,
				      uint64_t page_size, const void *bitmap,
				      uint64_t nbits)
{
	uint64_t marked;

	return __dirty_merge_checked(view, gpa, page_size, bitmap, nbits,
				     &marked);
}

DIRTY_API int dirty_view_count(struct dirty_view *view, uint64_t *pages,
			       uint64_t *bytes)
{
	const struct region_table *t;
	uint64_t p = 0, b = 0;

	__dirty_rcu_lock();
	t = table_get(view);
	for (size_t i = 0; i < t->n; i++) {
		uint64_t n = hbm_count(&t->r[i]->bm);

		p += n;
		b += n << t->r[i]->page_shift;
	}
	__dirty_rcu_unlock();
	if (pages)
		*pages = p;
	if (bytes)
		*bytes = b;
	return 0;
}

DIRTY_API int dirty_view_stats(struct dirty_view *view,
			       struct dirty_view_stats *st)
{
	const struct region_table *t;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&view->lock);
	t = atomic_load_explicit(&view->table, memory_order_relaxed);
	st->regions = t->n;
	for (size_t i = 0; i < t->n; i++)
		st->pages += t->r[i]->npages;
	st->syncs = view->syncs;
	pthread_mutex_unlock(&view->lock);
	st->pages_outside = atomic_load_explicit(&view->pages_outside,
						 memory_order_relaxed);
	return 0;
}

DIRTY_API int dirty_view_region_stats(struct dirty_view *view, uint64_t gpa,
				      struct dirty_region_stats *st)
{
	struct region *r;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&view->lock);
	r = __dirty_table_find(atomic_load_explicit(&view->table,
						    memory_order_relaxed), gpa);
	if (r) {
		st->gpa = r->gpa;
		st->len = r->len;
		st->page_size = r->page_size;
		st->pages_marked = atomic_load_explicit(&r->marked,
							memory_order_relaxed);
		st->pages_claimed = atomic_load_explicit(&r->claimed,
							 memory_order_relaxed);
		st->dirty_rate = r->rate;
	}
	pthread_mutex_unlock(&view->lock);
	if (!r)
		return __dirty_err(-ENOENT, "no region contains %#llx",
				   (unsigned long long)gpa);
	return 0;
}
