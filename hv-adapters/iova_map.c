/* SPDX-License-Identifier: MIT */
/*
 * iova_map.c - the IOVA -> GPA table of the VFIO-family adapters
 * (iova_map.h). Every call runs under the adapter's lock.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "iova_map.h"

void iova_map_init(struct iova_map *m, const char *name, uint64_t align)
{
	memset(m, 0, sizeof(*m));
	m->name = name;
	m->align = align;
	m->shift = (unsigned int)__builtin_ctzll(align);
}

void iova_map_free(struct iova_map *m)
{
	free(m->regs);
	free(m->bitmap);
	iova_map_init(m, m->name, m->align);
}

/* ---- the table ------------------------------------------------------------ */

int iova_map_check(const struct iova_map *m, uint64_t iova, uint64_t gpa, uint64_t len)
{
	if (!len || (iova | gpa | len) & (m->align - 1))
		return __dirty_err(-EINVAL, "%s mapping IOVA %#llx -> GPA %#llx, %#llx bytes: must be non-empty and aligned to the page size %#llx",
				   m->name, (unsigned long long)iova, (unsigned long long)gpa,
				   (unsigned long long)len, (unsigned long long)m->align);
	if (len > UINT64_MAX - iova || len > UINT64_MAX - gpa)
		return __dirty_err(-EINVAL, "%s mapping IOVA %#llx -> GPA %#llx, %#llx bytes: wraps around the address space",
				   m->name, (unsigned long long)iova, (unsigned long long)gpa,
				   (unsigned long long)len);
	return 0;
}

/* Index of the first registration that ends above iova (m->n if none). */
static size_t lower_bound(const struct iova_map *m, uint64_t iova)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->regs[mid].iova + m->regs[mid].len <= iova)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int iova_map_add(struct iova_map *m, uint64_t iova, uint64_t gpa, uint64_t len,
		 uint32_t flags)
{
	int err = iova_map_check(m, iova, gpa, len);
	size_t i;

	if (err)
		return err;
	i = lower_bound(m, iova);
	if (i < m->n && m->regs[i].iova < iova + len)
		return __dirty_err(-EEXIST, "%s mapping IOVA [%#llx, +%#llx) overlaps the registered [%#llx, +%#llx)",
				   m->name, (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)m->regs[i].iova,
				   (unsigned long long)m->regs[i].len);
	if (m->n == m->cap) {
		size_t c = m->cap ? m->cap * 2 : 16;
		struct iova_reg *r = realloc(m->regs, c * sizeof(*r));

		if (!r)
			return __dirty_err(-ENOMEM, "%s mapping: out of memory", m->name);
		m->regs = r;
		m->cap = c;
	}
	memmove(&m->regs[i + 1], &m->regs[i], (m->n - i) * sizeof(m->regs[0]));
	m->regs[i] = (struct iova_reg){ .iova = iova, .gpa = gpa, .len = len, .flags = flags };
	m->n++;
	return 0;
}

int iova_map_range(const struct iova_map *m, uint64_t iova, uint64_t len,
		   size_t *lo, size_t *hi)
{
	const struct iova_reg *cut;
	uint64_t end;

	if (!len || (iova | len) & (m->align - 1) || len > UINT64_MAX - iova)
		return __dirty_err(-EINVAL, "%s unmap of IOVA [%#llx, +%#llx): must be non-empty, aligned to %#llx and not wrap",
				   m->name, (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)m->align);
	end = iova + len;
	*lo = lower_bound(m, iova);
	for (*hi = *lo; *hi < m->n && m->regs[*hi].iova < end; ++*hi)
		;
	if (*lo == *hi)
		return 0;
	cut = m->regs[*lo].iova < iova ? &m->regs[*lo] : &m->regs[*hi - 1];
	if (cut->iova < iova || cut->iova + cut->len > end)
		return __dirty_err(-EINVAL, "%s unmap of IOVA [%#llx, +%#llx) would split the registered mapping [%#llx, +%#llx): a registration is unmapped whole or not at all",
				   m->name, (unsigned long long)iova, (unsigned long long)len,
				   (unsigned long long)cut->iova, (unsigned long long)cut->len);
	return 0;
}

void iova_map_remove(struct iova_map *m, size_t i, size_t n)
{
	if (!n)
		return;	/* regs may still be NULL */
	memmove(&m->regs[i], &m->regs[i + n], (m->n - i - n) * sizeof(m->regs[0]));
	m->n -= n;
}

int iova_map_take(struct iova_map *m, uint64_t iova, uint64_t len, struct iova_reg *out)
{
	size_t i = lower_bound(m, iova);

	if (i == m->n || m->regs[i].iova != iova || m->regs[i].len != len)
		return __dirty_err(-ENOENT, "no %s mapping of IOVA [%#llx, +%#llx) is registered",
				   m->name, (unsigned long long)iova, (unsigned long long)len);
	*out = m->regs[i];
	iova_map_remove(m, i, 1);
	return 0;
}

int iova_map_lookup(const struct iova_map *m, uint64_t iova, uint64_t *gpa)
{
	size_t i = lower_bound(m, iova);

	if (i == m->n || m->regs[i].iova > iova)
		return __dirty_err(-ENOENT, "IOVA %#llx is in no registered %s mapping",
				   (unsigned long long)iova, m->name);
	*gpa = m->regs[i].gpa + (iova - m->regs[i].iova);
	return 0;
}

uint64_t iova_map_bytes(const struct iova_map *m)
{
	uint64_t b = 0;

	for (size_t i = 0; i < m->n; i++)
		b += m->regs[i].len;
	return b;
}

size_t iova_map_piece(const struct iova_map *m, size_t i, size_t hi, uint64_t max_pages,
		      uint64_t *pages)
{
	const struct iova_reg *r = m->regs;
	size_t j = i + 1;

	*pages = r[i].len >> m->shift;
	while (j < hi && r[j].iova == r[j - 1].iova + r[j - 1].len &&
	       *pages + (r[j].len >> m->shift) <= max_pages) {
		*pages += r[j].len >> m->shift;
		j++;
	}
	return j;
}

/* ---- marking ---------------------------------------------------------------- */

static void flush_runs(struct iova_map *m, struct dirty_source *src)
{
	if (m->nruns)
		dirty_source_mark_ranges(src, m->runs, m->nruns);
	m->nruns = 0;
}

/* Queue GPA [gpa, +len), joined to the previous run when they touch. */
static void add_run(struct iova_map *m, struct dirty_source *src, uint64_t gpa, uint64_t len)
{
	struct dirty_range *last = m->nruns ? &m->runs[m->nruns - 1] : NULL;

	if (last && last->gpa + last->len == gpa) {
		last->len += len;
		return;
	}
	if (m->nruns == IOVA_RUN_BATCH)
		flush_runs(m, src);
	m->runs[m->nruns].gpa = gpa;
	m->runs[m->nruns++].len = len;
}

uint64_t iova_map_mark(struct iova_map *m, struct dirty_source *src, size_t i, size_t j,
		       uint32_t skip)
{
	uint64_t bytes = 0;

	for (; i < j; i++) {
		if (m->regs[i].flags & skip)
			continue;
		add_run(m, src, m->regs[i].gpa, m->regs[i].len);
		bytes += m->regs[i].len;
	}
	flush_runs(m, src);
	return bytes;
}

uint64_t iova_map_mark_all(struct iova_map *m, struct dirty_source *src)
{
	return iova_map_mark(m, src, 0, m->n, 0);
}

uint64_t *iova_map_bitmap(struct iova_map *m, uint64_t nbits)
{
	size_t words = (size_t)((nbits + 63) / 64);

	if (words > m->bitmap_words) {
		uint64_t *b = realloc(m->bitmap, words * sizeof(uint64_t));

		if (!b) {
			__dirty_err(-ENOMEM, "%s: out of memory for a %zu-byte dirty bitmap",
				    m->name, words * sizeof(uint64_t));
			return NULL;
		}
		m->bitmap = b;
		m->bitmap_words = words;
	}
	/* The kernels only set bits: the caller zeroes. */
	memset(m->bitmap, 0, words * sizeof(uint64_t));
	return m->bitmap;
}

/* Word w of b, without the bits at or past nbits. */
static uint64_t word_at(const struct iova_bits *b, uint64_t w)
{
	uint64_t v = b->bm[w];

	if (w == b->nbits / 64)
		v &= (1ull << (b->nbits % 64)) - 1;
	return v;
}

/* The first bit at or after from (< nbits) that is set, or clear with flip ~0; else nbits. */
static uint64_t next_bit(const struct iova_bits *b, uint64_t from, uint64_t flip)
{
	uint64_t words = (b->nbits + 63) / 64, w = from / 64, at;
	uint64_t v = (word_at(b, w) ^ flip) & (~0ull << (from % 64));

	while (!v && ++w < words)
		v = word_at(b, w) ^ flip;
	if (!v)
		return b->nbits;
	at = w * 64 + (uint64_t)__builtin_ctzll(v);
	return at < b->nbits ? at : b->nbits;
}

/*
 * The IOVA gap [s, l] (inclusive) inside a run of set bits: a bit whose
 * whole page lies in it overlaps no registration. Pages are aligned to
 * their size, since base is.
 */
static void gap(struct iova_bits *b, uint64_t s, uint64_t l, bool *bad)
{
	uint64_t pmask = (1ull << b->shift) - 1, p = (s + pmask) & ~pmask;

	if (p >= s && p <= l && l - p >= pmask && !*bad) {
		*bad = true;
		b->bad = p;
	}
}

/* Mark bits [a, e) of b at the GPAs of the registrations they overlap. */
static void mark_span(struct iova_map *m, struct dirty_source *src, struct iova_bits *b,
		      uint64_t a, uint64_t e, bool *bad)
{
	/* Inclusive last byte: a window may end at 2^64. */
	uint64_t first = b->base + (a << b->shift);
	uint64_t last = first + (((e - a) << b->shift) - 1), at = first;
	size_t k = lower_bound(m, first);

	for (; k < m->n && m->regs[k].iova <= last; k++) {
		const struct iova_reg *r = &m->regs[k];
		uint64_t s = first > r->iova ? first : r->iova;
		uint64_t l = last < r->iova + (r->len - 1) ? last : r->iova + (r->len - 1);

		if (s > at)
			gap(b, at, s - 1, bad);
		add_run(m, src, r->gpa + (s - r->iova), l - s + 1);
		if (l == last)
			return;
		at = l + 1;
	}
	gap(b, at, last, bad);
}

int iova_map_mark_bits(struct iova_map *m, struct dirty_source *src, struct iova_bits *b)
{
	uint64_t tail = b->nbits % 64 ? b->bm[b->nbits / 64] >> (b->nbits % 64) : 0;
	bool bad = false;

	b->set = 0;
	/* By runs of set bits, one table walk each: type1, being COARSE, sets them all. */
	for (uint64_t a = 0, e; a < b->nbits; a = e) {
		a = next_bit(b, a, 0);
		if (a == b->nbits)
			break;
		e = next_bit(b, a, ~0ull);
		b->set += e - a;
		mark_span(m, src, b, a, e, &bad);
	}
	flush_runs(m, src);
	/* Past the window: the kernel writing where it was not asked to. */
	if (tail && !bad) {
		bad = true;
		b->bad = b->base + ((b->nbits + (uint64_t)__builtin_ctzll(tail)) << b->shift);
	}
	return bad ? -EPROTO : 0;
}
