/* SPDX-License-Identifier: MIT */
/*
 * memsrc.c - the in-memory source: a private hierarchical bitmap that any
 * thread marks; sync drains it into the view. It owns only its bitmap;
 * the draining reuses the claim protocol, so a page marked while a sync
 * runs lands in this sync or the next, never nowhere.
 */
#include <errno.h>
#include <stdlib.h>

#include "core.h"
#include "libdirty/memsrc.h"
#include "hbm_mark.h"

struct memsrc {
	uint64_t gpa, len, page_size;
	unsigned int page_shift;
	struct hbm bm;
};

static int memsrc_sync(struct dirty_source *src)
{
	struct memsrc *m = dirty_source_priv(src);
	uint64_t words[HBM_CHUNK_WORDS], g = 0;
	int err = 0;

	while ((g = hbm_find_group(&m->bm, g)) != HBM_NONE) {
		uint64_t chunks, full;

		hbm_take_group(&m->bm, g, &chunks, &full);
		chunks |= full;
		while (chunks) {
			uint64_t c = (g << 6) + (uint64_t)__builtin_ctzll(chunks);
			bool is_full = (full >> (c & 63)) & 1;
			uint64_t wmask;
			uint64_t n = hbm_claim_chunk(&m->bm, c, is_full, words, &wmask);
			uint64_t gpa = m->gpa + ((c * HBM_CHUNK_PAGES) << m->page_shift);
			int e;

			chunks &= chunks - 1;
			if (!n)
				continue;
			if (is_full) {
				e = dirty_source_mark(src, gpa, n << m->page_shift);
			} else {
				for (unsigned int j = 0; j < HBM_CHUNK_WORDS; j++)
					words[j] = (wmask >> j) & 1 ? htole64(words[j]) : 0;
				e = dirty_source_merge_bitmap(src, gpa, m->page_size, words,
							      hbm_chunk_pages(&m->bm, c));
			}
			if (e && !err)
				err = e;
		}
		g++;
	}
	return err;
}

static void memsrc_destroy(struct dirty_source *src)
{
	struct memsrc *m = dirty_source_priv(src);

	hbm_destroy(&m->bm);
	free(m);
}

static const struct dirty_source_ops memsrc_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "memory",
	.sync = memsrc_sync,
	.destroy = memsrc_destroy,
};

DIRTY_API int dirty_memsrc_new(struct dirty_view *view, uint64_t gpa,
			       uint64_t len, uint64_t page_size,
			       struct dirty_source **out)
{
	struct dirty_range range = { gpa, len };
	struct memsrc *m;
	int err;

	if (page_size == 0)
		page_size = DIRTY_MIN_PAGE_SIZE;
	if (page_size < DIRTY_MIN_PAGE_SIZE || (page_size & (page_size - 1)) ||
	    len == 0 || (gpa | len) & (page_size - 1) || gpa + len < gpa)
		return __dirty_err(-EINVAL, "memsrc [%#llx, +%#llx) needs a power-of-two page size >= 4 KiB and page alignment",
				   (unsigned long long)gpa, (unsigned long long)len);
	m = calloc(1, sizeof(*m));
	if (!m)
		return __dirty_err(-ENOMEM, "memsrc: out of memory");
	m->gpa = gpa;
	m->len = len;
	m->page_size = page_size;
	m->page_shift = (unsigned int)__builtin_ctzll(page_size);
	err = hbm_init(&m->bm, len >> m->page_shift);
	if (err) {
		free(m);
		return __dirty_err(err, "memsrc: cannot allocate its bitmap");
	}
	err = dirty_source_attach(view, &memsrc_ops, m, &range, 1, out);
	if (err) {
		hbm_destroy(&m->bm);
		free(m);
	}
	return err;
}

DIRTY_API int dirty_memsrc_mark(struct dirty_source *src, uint64_t gpa,
				uint64_t len)
{
	struct memsrc *m;
	uint64_t s, e;

	if (!__dirty_source_has_ops(src, &memsrc_ops))
		return __dirty_err(-EINVAL, "dirty_memsrc_mark: source '%s' is not an in-memory source",
				   __dirty_source_name(src));
	m = dirty_source_priv(src);
	if (len == 0)
		return 0;
	if (gpa < m->gpa || gpa + len > m->gpa + m->len || gpa + len < gpa)
		return __dirty_err(-ERANGE, "dirty_memsrc_mark: [%#llx, +%#llx) is outside the source's [%#llx, +%#llx)",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)m->gpa, (unsigned long long)m->len);
	s = (gpa - m->gpa) >> m->page_shift;
	e = (gpa + len - m->gpa + m->page_size - 1) >> m->page_shift;
	hbm_mark(&m->bm, s, e - s);
	return 0;
}
