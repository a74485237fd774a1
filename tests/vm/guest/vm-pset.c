/* vm-pset.c - page sets of the guest programs; see vm-pset.h. */
#include "vm-pset.h"
#include "vm-check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P ((uint64_t)4096)

void pset_free(struct pset *s)
{
	free(s->p);
	memset(s, 0, sizeof(*s));
}

int pset_add(struct pset *s, uint64_t gpa, uint64_t len)
{
	for (uint64_t a = gpa & ~(P - 1); a < gpa + len; a += P) {
		if (s->n == s->c) {
			size_t c = s->c ? s->c * 2 : 256;
			uint64_t *n = realloc(s->p, c * sizeof(*n));

			if (!n)
				return -ENOMEM;
			s->p = n;
			s->c = c;
		}
		s->p[s->n++] = a;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void pset_sort(struct pset *s)
{
	if (s->n)
		qsort(s->p, s->n, sizeof(s->p[0]), cmp_u64);
}

bool pset_has(const struct pset *s, uint64_t gpa)
{
	return s->n && bsearch(&gpa, s->p, s->n, sizeof(*s->p), cmp_u64) != NULL;
}

void pset_fmt(const uint64_t *p, size_t n, char *buf, size_t len, unsigned max)
{
	size_t off = 0;
	unsigned runs = 0;

	buf[0] = '\0';
	if (!n) {
		snprintf(buf, len, "{}");
		return;
	}
	for (size_t i = 0; i < n && off < len; ) {
		size_t j = i + 1;

		while (j < n && p[j] == p[j - 1] + P)
			j++;
		if (runs++ == max) {
			snprintf(buf + off, len - off, " ...");
			return;
		}
		off += (size_t)snprintf(buf + off, len - off, "%s%#" PRIx64 "+%zup",
					off ? " " : "", p[i], j - i);
		i = j;
	}
}

int pset_drain(struct dirty_view *v, struct pset *got)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	ssize_t n;
	int rc = dirty_claim_new(v, &cl);

	if (rc)
		return rc;
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < n; i++)
			if (pset_add(got, runs[i].gpa, runs[i].len))
				n = -ENOMEM;
	dirty_claim_free(cl);
	pset_sort(got);
	return n < 0 ? (int)n : 0;
}

uint64_t pset_expect(struct dirty_view *v, const char *what, const struct dirty_range *want,
		     size_t nwant, struct pset *gotp, unsigned shown)
{
	struct pset w = { 0 }, g = { 0 }, miss = { 0 }, extra = { 0 };
	char a[256], b[256];
	uint64_t got_pages = 0;
	size_t i = 0, k = 0, u = 0;
	int rc;

	for (size_t r = 0; r < nwant; r++)
		if (pset_add(&w, want[r].gpa, want[r].len))
			goto oom;
	pset_sort(&w);
	for (size_t x = 0; x < w.n; x++)
		if (!u || w.p[u - 1] != w.p[x])
			w.p[u++] = w.p[x];
	w.n = u;
	rc = pset_drain(v, &g);
	if (rc) {
		fail("%s: draining the view failed: %s", what, dirty_last_error());
		goto done;
	}
	got_pages = g.n;
	while (i < w.n || k < g.n) {
		if (k == g.n || (i < w.n && w.p[i] < g.p[k])) {
			if (pset_add(&miss, w.p[i++], P))
				goto oom;
		} else if (i == w.n || g.p[k] < w.p[i]) {
			if (pset_add(&extra, g.p[k++], P))
				goto oom;
		} else {
			i++;
			k++;
		}
	}
	if (!miss.n && !extra.n) {
		pset_fmt(g.p, g.n, a, sizeof(a), shown);
		ok("%s: %zu pages, exactly as expected: %s", what, g.n, a);
	} else {
		pset_fmt(miss.p, miss.n, a, sizeof(a), shown + 2);
		pset_fmt(extra.p, extra.n, b, sizeof(b), shown + 2);
		fail("%s: expected %zu pages, got %zu; missing %zu: %s; unexpected %zu: %s",
		     what, w.n, g.n, miss.n, a, extra.n, b);
	}
	if (gotp) {
		*gotp = g;
		g = (struct pset){ 0 };
	}
	goto done;
oom:
	fail("%s: out of memory", what);
done:
	pset_free(&w);
	pset_free(&g);
	pset_free(&miss);
	pset_free(&extra);
	return got_pages;
}
