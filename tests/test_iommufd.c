/* SPDX-License-Identifier: MIT */
/*
 * test_iommufd.c - the iommufd source (hv-adapters/iommufd.c) checked
 * against a FAKE iommufd backend.
 *
 * No kernel this project runs on enables CONFIG_IOMMUFD (DESIGN.md, section
 * 6: neither Debian's 6.1 nor its 6.12, and no emulated IOMMU in QEMU 7.2
 * has dirty bits), so the adapter's ioctls are answered here, in this
 * process, by fake_ioctl(): a small emulation of what the kernel documents
 * and does (include/uapi/linux/iommufd.h; drivers/iommu/iommufd/
 * io_pagetable.c, hw_pagetable.c; the Intel and AMD read_and_clear_dirty):
 *
 *   - IOMMU_HWPT_SET_DIRTY_TRACKING: unknown flags EOPNOTSUPP, unknown HWPT
 *     ENOENT, a HWPT without dirty support EOPNOTSUPP; enabling clears
 *     every IOPTE's dirty bit first.
 *   - IOMMU_HWPT_GET_DIRTY_BITMAP: flags other than NO_CLEAR or a nonzero
 *     __reserved EOPNOTSUPP; unknown HWPT ENOENT; length 0, page_size 0 or
 *     not a power of two, iova or iova + length not aligned to page_size
 *     or to the IOAS's alignment EINVAL; iova + length - 1 past 2^64
 *     EOVERFLOW; tracking off EINVAL (the drivers' answer); a window that
 *     is not one run of contiguous areas (a hole) EINVAL. A dirty IOPTE
 *     sets the bits of every page_size page of it inside the window (a
 *     2 MiB IOPTE: 512 bits at 4 KiB) and only sets bits; its dirty bit is
 *     cleared whole unless NO_CLEAR, so a window that cuts a huge IOPTE
 *     loses the part left out (Intel's walker also over-reports past the
 *     IOPTE's end; the fake does not).
 *   - IOMMU_IOAS_UNMAP: unknown IOAS ENOENT; length 0 EINVAL; overflow
 *     EOVERFLOW; areas are removed in IOVA order and an area crossing the
 *     range's edge stops it with ENOENT (those before it stay unmapped, as
 *     in iopt_unmap_iova_range); nothing mapped ENOENT; length returns the
 *     bytes unmapped. Unmapping destroys the IOPTEs and their bits.
 *   - anything else ENOTTY; an fd other than FAKE_FD EBADF.
 *
 * A fake device writes with fake_dma(), which sets the dirty bit of each
 * IOPTE it goes through while its HWPT tracks (the IOMMU's job), and
 * fails like an IOMMU fault on an unmapped IOVA. The fake lives in this
 * file only: the adapter's default hook is ioctl(2) (checked below), and
 * nothing here is linked into the library.
 *
 * The suites: the fake against the uapi (so the rest means something);
 * exact sets page by page with IOVA != GPA, randomized against a model;
 * huge IOPTEs; pieces of whole adjacent mappings; the unmap keeps the
 * last bits (and a plain unmap loses them: the control); the unmap
 * window the kernel leaves; every error marks every mapped page.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libdirty.h>
#include <libdirty/iommufd.h>

#include "compat.h"
#include "testutil.h"

#define PS 4096ull
#define FAKE_FD 9999

/* ---- the FAKE iommufd backend --------------------------------------------- */

#define FAKE_MAX_AREAS 64

struct fake_area {
	uint64_t iova, len;
	uint64_t iopte;		/* IOPTE size the "IOMMU driver" chose for it */
	uint8_t *dirty;		/* one flag per IOPTE */
};

struct fake_ioas {
	uint32_t id;
	uint64_t align;		/* IOAS IOVA alignment */
	struct fake_area a[FAKE_MAX_AREAS];	/* sorted by iova */
	size_t n;
};

struct fake_hwpt {
	uint32_t id, ioas;
	bool dirty_capable, tracking;
};

struct fake {
	struct fake_ioas ioas[2];
	size_t nioas;
	struct fake_hwpt hwpt[2];
	size_t nhwpt;
	uint32_t next_id;
	/* what the adapter asked */
	unsigned sets, gets, gets_no_clear, unmaps;
	/* faults to inject: the next call of fail_req returns fail_err */
	unsigned long fail_req;
	int fail_err;
	bool stray_bit;		/* a broken kernel: one bit past the window */
	/* run between the adapter's NO_CLEAR read and its unmap (the window) */
	void (*before_unmap)(struct fake *fk);
};

static struct fake_ioas *fake_ioas(struct fake *fk, uint32_t id)
{
	for (size_t i = 0; i < fk->nioas; i++)
		if (fk->ioas[i].id == id)
			return &fk->ioas[i];
	return NULL;
}

static struct fake_hwpt *fake_hwpt(struct fake *fk, uint32_t id)
{
	for (size_t i = 0; i < fk->nhwpt; i++)
		if (fk->hwpt[i].id == id)
			return &fk->hwpt[i];
	return NULL;
}

static void fake_init(struct fake *fk)
{
	memset(fk, 0, sizeof(*fk));
	fk->next_id = 1;
}

static uint32_t fake_new_ioas(struct fake *fk, uint64_t align)
{
	struct fake_ioas *io = &fk->ioas[fk->nioas++];

	ck_assert(fk->nioas <= 2);
	io->id = fk->next_id++;
	io->align = align;
	return io->id;
}

static uint32_t fake_new_hwpt(struct fake *fk, uint32_t ioas, bool dirty_capable)
{
	struct fake_hwpt *h = &fk->hwpt[fk->nhwpt++];

	ck_assert(fk->nhwpt <= 2);
	h->id = fk->next_id++;
	h->ioas = ioas;
	h->dirty_capable = dirty_capable;
	return h->id;
}

static void fake_free(struct fake *fk)
{
	for (size_t i = 0; i < fk->nioas; i++)
		for (size_t k = 0; k < fk->ioas[i].n; k++)
			free(fk->ioas[i].a[k].dirty);
}

/* IOMMU_IOAS_MAP as the test's VMM does it, with the IOPTE size the driver would pick. */
static void fake_map(struct fake *fk, uint32_t ioas, uint64_t iova, uint64_t len, uint64_t iopte)
{
	struct fake_ioas *io = fake_ioas(fk, ioas);
	size_t i = 0;

	ck_assert(io && io->n < FAKE_MAX_AREAS && len && iova % iopte == 0 && len % iopte == 0);
	while (i < io->n && io->a[i].iova < iova)
		i++;
	ck_assert_msg(i == io->n || io->a[i].iova >= iova + len, "fake_map: overlap");
	ck_assert_msg(i == 0 || io->a[i - 1].iova + io->a[i - 1].len <= iova, "fake_map: overlap");
	memmove(&io->a[i + 1], &io->a[i], (io->n - i) * sizeof(io->a[0]));
	io->a[i] = (struct fake_area){ .iova = iova, .len = len, .iopte = iopte,
				       .dirty = calloc(len / iopte, 1) };
	ck_assert(io->a[i].dirty);
	io->n++;
}

static bool fake_ioas_tracked(struct fake *fk, uint32_t ioas)
{
	for (size_t i = 0; i < fk->nhwpt; i++)
		if (fk->hwpt[i].ioas == ioas && fk->hwpt[i].tracking)
			return true;
	return false;
}

/* A device write through the IOMMU: 0, or -EFAULT (an IOMMU fault) if unmapped. */
static int fake_dma(struct fake *fk, uint32_t ioas, uint64_t iova, uint64_t len)
{
	struct fake_ioas *io = fake_ioas(fk, ioas);

	for (uint64_t p = iova & ~(PS - 1); p < iova + len; p += PS) {
		size_t i;

		for (i = 0; i < io->n; i++)
			if (p >= io->a[i].iova && p < io->a[i].iova + io->a[i].len)
				break;
		if (i == io->n)
			return -EFAULT;
		if (fake_ioas_tracked(fk, ioas))
			io->a[i].dirty[(p - io->a[i].iova) / io->a[i].iopte] = 1;
	}
	return 0;
}

static int fake_set_dirty(struct fake *fk, struct iommu_hwpt_set_dirty_tracking *s)
{
	struct fake_hwpt *h;
	struct fake_ioas *io;

	if (s->size != sizeof(*s))
		return -EINVAL;
	if (s->flags & ~(uint32_t)IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
		return -EOPNOTSUPP;
	h = fake_hwpt(fk, s->hwpt_id);
	if (!h)
		return -ENOENT;
	if (!h->dirty_capable)
		return -EOPNOTSUPP;
	io = fake_ioas(fk, h->ioas);
	if (s->flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE) {
		/* iopt_set_dirty_tracking: a clean snapshot before enabling. */
		for (size_t i = 0; i < io->n; i++)
			memset(io->a[i].dirty, 0, io->a[i].len / io->a[i].iopte);
		h->tracking = true;
	} else {
		h->tracking = false;
	}
	return 0;
}

static int fake_get_dirty(struct fake *fk, struct iommu_hwpt_get_dirty_bitmap *g)
{
	struct fake_hwpt *h;
	struct fake_ioas *io;
	uint64_t last, pos, *bm = (uint64_t *)(uintptr_t)g->data;
	size_t i;

	if (g->size != sizeof(*g))
		return -EINVAL;
	if ((g->flags & ~(uint32_t)IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR) || g->__reserved)
		return -EOPNOTSUPP;
	h = fake_hwpt(fk, g->hwpt_id);
	if (!h)
		return -ENOENT;
	io = fake_ioas(fk, h->ioas);
	if (!g->length)
		return -EINVAL;
	if (g->length - 1 > UINT64_MAX - g->iova)
		return -EOVERFLOW;
	last = g->iova + (g->length - 1);
	if (!g->page_size || (g->page_size & (g->page_size - 1)))
		return -EINVAL;
	if ((g->iova & (io->align - 1)) || ((last + 1) & (io->align - 1)) ||
	    (g->iova & (g->page_size - 1)) || ((last + 1) & (g->page_size - 1)))
		return -EINVAL;
	if (!h->tracking)
		return -EINVAL;
	/* One run of contiguous areas from iova to last, or EINVAL. */
	for (i = 0; i < io->n && io->a[i].iova + io->a[i].len <= g->iova; i++)
		;
	for (pos = g->iova; ; i++) {
		if (i == io->n || io->a[i].iova > pos)
			return -EINVAL;
		if (io->a[i].iova + (io->a[i].len - 1) >= last)
			break;
		pos = io->a[i].iova + io->a[i].len;
	}
	if (g->flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
		fk->gets_no_clear++;
	else
		fk->gets++;
	for (i = 0; i < io->n; i++) {
		struct fake_area *a = &io->a[i];

		for (uint64_t k = 0; k < a->len / a->iopte; k++) {
			uint64_t s = a->iova + k * a->iopte, e = s + (a->iopte - 1);

			if (e < g->iova || s > last || !a->dirty[k])
				continue;
			s = s < g->iova ? g->iova : s;
			e = e > last ? last : e;
			for (uint64_t b = (s - g->iova) / g->page_size;
			     b <= (e - g->iova) / g->page_size; b++)
				bm[b / 64] |= 1ull << (b % 64);
			if (!(g->flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR))
				a->dirty[k] = 0;	/* the whole IOPTE, cut or not */
		}
	}
	if (fk->stray_bit) {
		uint64_t nbits = g->length / g->page_size;

		if (nbits % 64)
			bm[nbits / 64] |= 1ull << (nbits % 64);
	}
	return 0;
}

static int fake_unmap(struct fake *fk, struct iommu_ioas_unmap *u)
{
	struct fake_ioas *io;
	uint64_t last, done = 0;
	size_t i = 0;

	if (u->size != sizeof(*u))
		return -EINVAL;
	io = fake_ioas(fk, u->ioas_id);
	if (!io)
		return -ENOENT;
	if (!u->length)
		return -EINVAL;
	if (u->length - 1 > UINT64_MAX - u->iova)
		return -EOVERFLOW;
	last = u->iova + (u->length - 1);
	fk->unmaps++;
	while (i < io->n) {
		struct fake_area *a = &io->a[i];

		if (a->iova + (a->len - 1) < u->iova) {
			i++;
			continue;
		}
		if (a->iova > last)
			break;
		if (a->iova < u->iova || a->iova + (a->len - 1) > last)
			return -ENOENT;	/* earlier areas stay unmapped, as in the kernel */
		done += a->len;
		free(a->dirty);
		memmove(&io->a[i], &io->a[i + 1], (io->n - i - 1) * sizeof(io->a[0]));
		io->n--;
	}
	if (!done)
		return -ENOENT;
	u->length = done;
	return 0;
}

/* The adapter's ioctl hook: a FAKE iommufd answered in this process. */
static int fake_ioctl(void *ctx, int fd, unsigned long req, void *arg)
{
	struct fake *fk = ctx;

	if (fd != FAKE_FD)
		return -EBADF;
	if (fk->fail_req == req && fk->fail_err) {
		int e = fk->fail_err;

		fk->fail_req = 0;
		fk->fail_err = 0;
		return e;
	}
	if (req == IOMMU_HWPT_SET_DIRTY_TRACKING) {
		fk->sets++;
		return fake_set_dirty(fk, arg);
	}
	if (req == IOMMU_HWPT_GET_DIRTY_BITMAP)
		return fake_get_dirty(fk, arg);
	if (req == IOMMU_IOAS_UNMAP) {
		if (fk->before_unmap)
			fk->before_unmap(fk);
		return fake_unmap(fk, arg);
	}
	return -ENOTTY;
}

/* Raw calls for the uapi checks. */
static int raw_get(struct fake *fk, uint32_t hwpt, uint64_t iova, uint64_t len, uint64_t pg,
		   uint32_t flags, uint64_t *bm)
{
	struct iommu_hwpt_get_dirty_bitmap g = {
		.size = sizeof(g), .hwpt_id = hwpt, .flags = flags, .iova = iova,
		.length = len, .page_size = pg, .data = (uint64_t)(uintptr_t)bm,
	};

	return fake_ioctl(fk, FAKE_FD, IOMMU_HWPT_GET_DIRTY_BITMAP, &g);
}

static int raw_set(struct fake *fk, uint32_t hwpt, bool on)
{
	struct iommu_hwpt_set_dirty_tracking s = {
		.size = sizeof(s), .hwpt_id = hwpt, .flags = on ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0,
	};

	return fake_ioctl(fk, FAKE_FD, IOMMU_HWPT_SET_DIRTY_TRACKING, &s);
}

static int raw_unmap(struct fake *fk, uint32_t ioas, uint64_t iova, uint64_t len, uint64_t *done)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
	int rc = fake_ioctl(fk, FAKE_FD, IOMMU_IOAS_UNMAP, &u);

	if (done)
		*done = rc ? 0 : u.length;
	return rc;
}

static unsigned popcount_bm(const uint64_t *bm, size_t words)
{
	unsigned n = 0;

	for (size_t i = 0; i < words; i++)
		n += (unsigned)__builtin_popcountll(bm[i]);
	return n;
}

/* ---- page sets and the view --------------------------------------------------- */

struct pset {
	uint64_t *p;
	size_t n, c;
};

static void pset_add(struct pset *s, uint64_t gpa, uint64_t len)
{
	for (uint64_t a = gpa & ~(PS - 1); a < gpa + len; a += PS) {
		if (s->n == s->c) {
			s->c = s->c ? s->c * 2 : 256;
			s->p = realloc(s->p, s->c * sizeof(*s->p));
			ck_assert(s->p);
		}
		s->p[s->n++] = a;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Sort and drop repeats (a model may add a page twice). */
static void pset_uniq(struct pset *s)
{
	size_t k = 0;

	if (s->n)
		qsort(s->p, s->n, sizeof(*s->p), cmp_u64);
	for (size_t i = 0; i < s->n; i++)
		if (!k || s->p[k - 1] != s->p[i])
			s->p[k++] = s->p[i];
	s->n = k;
}

static void pset_free(struct pset *s)
{
	free(s->p);
	memset(s, 0, sizeof(*s));
}

/*
 * Drain the view and compare with want page by page; the first pages
 * missing and unexpected are printed in the failure message.
 */
static void expect_pages(struct dirty_view *v, struct pset *want, const char *what)
{
	struct pset got = { 0 };
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	ssize_t n;
	size_t i = 0, k = 0, miss = 0, extra = 0;
	uint64_t first_miss = 0, first_extra = 0;

	pset_uniq(want);
	ck_assert_int_eq(dirty_claim_new(v, &cl), 0);
	while ((n = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t r = 0; r < n; r++)
			pset_add(&got, runs[r].gpa, runs[r].len);
	dirty_claim_free(cl);
	ck_assert_msg(n == 0, "%s: claim failed: %s", what, dirty_last_error());
	if (got.n)
		qsort(got.p, got.n, sizeof(*got.p), cmp_u64);
	while (i < want->n || k < got.n) {
		if (k == got.n || (i < want->n && want->p[i] < got.p[k])) {
			if (!miss++)
				first_miss = want->p[i];
			i++;
		} else if (i == want->n || got.p[k] < want->p[i]) {
			if (!extra++)
				first_extra = got.p[k];
			k++;
		} else {
			i++;
			k++;
		}
	}
	ck_assert_msg(!miss && !extra,
		      "%s: expected %zu pages, got %zu; %zu missing (first %#llx), %zu unexpected (first %#llx)",
		      what, want->n, got.n, miss, (unsigned long long)first_miss, extra,
		      (unsigned long long)first_extra);
	pset_free(&got);
}

static void expect_none(struct dirty_view *v, const char *what)
{
	struct pset none = { 0 };

	expect_pages(v, &none, what);
}

/* ---- the layout: IOVA != GPA ------------------------------------------------ */

/*
 * Guest RAM at GPA 1 GiB (64 MiB), and a decoy region at GPA [0, 16 MiB)
 * where the IOVAs would land if anyone used them as guest addresses.
 * M1 and M2 are IOVA-adjacent (one read) but far apart and reversed in
 * GPA; M3 is one 2 MiB IOPTE; a hole; M4.
 */
#define GPA_RAM 0x40000000ull
#define RAM_LEN (64ull << 20)
#define DECOY_LEN (16ull << 20)

static const struct {
	uint64_t iova, gpa, len, iopte;
} L[] = {
	{ 0x100000, GPA_RAM + 0x800000, 64 * PS, PS },		/* M1 */
	{ 0x140000, GPA_RAM + 0x000000, 32 * PS, PS },		/* M2, right after M1 */
	{ 0x200000, GPA_RAM + 0x1000000, 2ull << 20, 2ull << 20 },	/* M3, one huge IOPTE */
	{ 0x800000, GPA_RAM + 0x2000000, 16 * PS, PS },		/* M4, after a hole */
};
#define NL (sizeof(L) / sizeof(L[0]))

struct rig {
	struct fake fk;
	uint32_t ioas, hwpt;
	struct dirty_view *v;
	struct dirty_iommufd *f;
};

static void rig_up(struct rig *r, uint64_t piece_pages)
{
	struct dirty_iommufd_config cfg = { .iommufd = FAKE_FD, .piece_pages = piece_pages,
					    .ioctl = fake_ioctl, .ioctl_ctx = &r->fk };

	fake_init(&r->fk);
	r->ioas = fake_new_ioas(&r->fk, PS);
	r->hwpt = fake_new_hwpt(&r->fk, r->ioas, true);
	cfg.hwpt_id = r->hwpt;
	cfg.ioas_id = r->ioas;
	ck_assert_int_eq(dirty_view_new(&r->v), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, GPA_RAM, RAM_LEN, 0, 0), 0);
	ck_assert_int_eq(dirty_view_add_region(r->v, 0, DECOY_LEN, 0, 0), 0);
	ck_assert_int_eq(dirty_iommufd_create(r->v, &cfg, &r->f), 0);
	for (size_t i = 0; i < NL; i++) {
		fake_map(&r->fk, r->ioas, L[i].iova, L[i].len, L[i].iopte);
		ck_assert_int_eq(dirty_iommufd_add_mapping(r->f, L[i].iova, L[i].gpa, L[i].len), 0);
	}
}

static void rig_down(struct rig *r)
{
	dirty_iommufd_destroy(r->f);
	dirty_view_free(r->v);
	fake_free(&r->fk);
}

static void want_all(struct pset *w)
{
	for (size_t i = 0; i < NL; i++)
		pset_add(w, L[i].gpa, L[i].len);
}

/* The GPA pages a write to IOVA page iova dirties: its whole IOPTE. */
static void want_write(struct pset *w, uint64_t iova)
{
	for (size_t i = 0; i < NL; i++)
		if (iova >= L[i].iova && iova < L[i].iova + L[i].len) {
			uint64_t s = (iova - L[i].iova) / L[i].iopte * L[i].iopte;

			pset_add(w, L[i].gpa + s, L[i].iopte);
			return;
		}
	ck_abort_msg("IOVA %#llx is in no mapping of the layout", (unsigned long long)iova);
}

static struct dirty_iommufd_stats stats(struct dirty_iommufd *f)
{
	struct dirty_iommufd_stats st;

	ck_assert_int_eq(dirty_iommufd_stats(f, &st), 0);
	return st;
}

/* ---- the fake against the uapi ------------------------------------------------ */

START_TEST(fake_follows_the_uapi)
{
	struct fake fk;
	uint64_t bm[64], done;
	uint32_t ioas, hwpt, plain;

	fake_init(&fk);
	ioas = fake_new_ioas(&fk, PS);
	hwpt = fake_new_hwpt(&fk, ioas, true);
	plain = fake_new_hwpt(&fk, ioas, false);
	fake_map(&fk, ioas, 0x100000, 64 * PS, PS);
	fake_map(&fk, ioas, 0x140000, 32 * PS, PS);
	fake_map(&fk, ioas, 0x200000, 2ull << 20, 2ull << 20);

	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, PS, 0, bm), -EINVAL);	/* tracking off */
	ck_assert_int_eq(raw_set(&fk, plain, true), -EOPNOTSUPP);	/* no dirty support */
	ck_assert_int_eq(raw_set(&fk, 77, true), -ENOENT);
	{
		struct iommu_hwpt_set_dirty_tracking s = { .size = sizeof(s), .flags = 2, .hwpt_id = hwpt };

		ck_assert_int_eq(fake_ioctl(&fk, FAKE_FD, IOMMU_HWPT_SET_DIRTY_TRACKING, &s), -EOPNOTSUPP);
	}
	/* Writes before tracking leave no bit; enabling starts clean. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x100000, PS), 0);
	ck_assert_int_eq(raw_set(&fk, hwpt, true), 0);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 0);

	/* Argument checks. */
	ck_assert_int_eq(raw_get(&fk, 77, 0x100000, 64 * PS, PS, 0, bm), -ENOENT);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, PS, 2, bm), -EOPNOTSUPP);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 0, PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, 0, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, 3 * PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100800, 8 * PS, PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 8 * PS + 512, PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x101000, 8 * PS, 2 * PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0xfffffffffffff000ull, 2 * PS, PS, 0, bm), -EOVERFLOW);
	{
		struct iommu_hwpt_get_dirty_bitmap g = {
			.size = sizeof(g), .hwpt_id = hwpt, .__reserved = 1, .iova = 0x100000,
			.length = PS, .page_size = PS, .data = (uint64_t)(uintptr_t)bm,
		};

		ck_assert_int_eq(fake_ioctl(&fk, FAKE_FD, IOMMU_HWPT_GET_DIRTY_BITMAP, &g), -EOPNOTSUPP);
	}
	/* Two adjacent areas in one read; a hole is EINVAL. */
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 96 * PS, PS, 0, bm), 0);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 0x200000 - 0x100000 + PS, PS, 0, bm), -EINVAL);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x0f0000, 32 * PS, PS, 0, bm), -EINVAL);

	/* Read and clear; NO_CLEAR keeps; bits are only ever set. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x100000 + 5 * PS, PS), 0);
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x140000 + 2 * PS, PS), 0);
	memset(bm, 0, sizeof(bm));
	bm[1] = 1ull << 63;	/* preset, page 127: nobody wrote it */
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 96 * PS, PS,
				 IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR, bm), 0);
	ck_assert_uint_eq(bm[0], 1ull << 5);
	ck_assert_uint_eq(bm[1], (1ull << 63) | (1ull << 2));
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 96 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(bm[0], 1ull << 5);
	ck_assert_uint_eq(bm[1], 1ull << 2);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 96 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 0);
	/* At 8 KiB pages, one bit per two base pages. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x100000 + 9 * PS, PS), 0);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, 2 * PS, 0, bm), 0);
	ck_assert_uint_eq(bm[0], 1ull << 4);

	/* A huge IOPTE reports every base page it covers. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x200000 + 77 * PS, 8), 0);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x200000, 2ull << 20, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 512);
	/* A window that cuts it reports its part and loses the rest (the control). */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x200000, PS), 0);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x200000, 16 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 16);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x210000, (2ull << 20) - 16 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 0);

	/* Unmap: whole areas only; it destroys the bits; nothing there is ENOENT. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x140000, PS), 0);
	ck_assert_int_eq(raw_unmap(&fk, ioas, 0x140000, 16 * PS, &done), -ENOENT);
	ck_assert_int_eq(raw_unmap(&fk, ioas, 0x140000, 32 * PS, &done), 0);
	ck_assert_uint_eq(done, 32 * PS);
	fake_map(&fk, ioas, 0x140000, 32 * PS, PS);
	memset(bm, 0, sizeof(bm));
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x140000, 32 * PS, PS, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 64), 0);	/* the write went with the IOPTE */
	ck_assert_int_eq(raw_unmap(&fk, ioas, 0x600000, PS, &done), -ENOENT);
	ck_assert_int_eq(raw_unmap(&fk, ioas, 0, 0, &done), -EINVAL);
	ck_assert_int_eq(raw_unmap(&fk, 77, 0x140000, PS, &done), -ENOENT);
	/* The IOMMU faults a write to an unmapped IOVA. */
	ck_assert_int_eq(fake_dma(&fk, ioas, 0x600000, PS), -EFAULT);
	ck_assert_int_eq(fake_ioctl(&fk, FAKE_FD, 0x1234, bm), -ENOTTY);
	ck_assert_int_eq(fake_ioctl(&fk, 3, IOMMU_HWPT_GET_DIRTY_BITMAP, bm), -EBADF);
	/* Tracking off again: reads refused. */
	ck_assert_int_eq(raw_set(&fk, hwpt, false), 0);
	ck_assert_int_eq(raw_get(&fk, hwpt, 0x100000, 64 * PS, PS, 0, bm), -EINVAL);
	fake_free(&fk);
}
END_TEST

/* ---- the adapter ---------------------------------------------------------------- */

START_TEST(exact_sets_page_by_page)
{
	struct rig r;
	struct pset w = { 0 };
	struct dirty_view_stats vs;
	uint64_t seed = 0x10aa5eedull, gpa = 0, total = 0;
	unsigned rounds = (unsigned)test_scaled(300, 30);

	rig_up(&r, 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	ck_assert_uint_eq(r.fk.sets, 1);
	want_all(&w);
	expect_pages(r.v, &w, "start: every mapped page, at its GPA");
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_none(r.v, "idle sync");

	/* The translation itself. */
	ck_assert_int_eq(dirty_iommufd_translate(r.f, 0x140000 + 3 * PS, &gpa), 0);
	ck_assert_uint_eq(gpa, GPA_RAM + 3 * PS);
	ck_assert_int_eq(dirty_iommufd_translate(r.f, 0x600000, &gpa), -ENOENT);

	/* A fixed set first, then random rounds against the model. */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x100000 + 63 * PS, PS), 0);	/* M1's last */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x140000, PS), 0);		/* M2's first */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000 + 15 * PS, PS), 0);	/* M4's last */
	w.n = 0;
	want_write(&w, 0x100000 + 63 * PS);
	want_write(&w, 0x140000);
	want_write(&w, 0x800000 + 15 * PS);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_pages(r.v, &w, "three writes at mapping edges");
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_none(r.v, "the next sync (read and clear)");

	for (unsigned round = 0; round < rounds; round++) {
		unsigned writes = (unsigned)test_below(&seed, 12);

		w.n = 0;
		for (unsigned k = 0; k < writes; k++) {
			size_t m = (size_t)test_below(&seed, NL);
			uint64_t iova = L[m].iova + test_below(&seed, L[m].len / PS) * PS;

			/* m == 2 rarely: one write dirties its 512 pages. */
			if (m == 2 && test_below(&seed, 4))
				continue;
			ck_assert_int_eq(fake_dma(&r.fk, r.ioas, iova, PS), 0);
			want_write(&w, iova);
		}
		ck_assert_int_eq(dirty_view_sync(r.v), 0);
		expect_pages(r.v, &w, "a random round");
		total += w.n;
	}
	/* Never pass by doing nothing: the rounds wrote pages. */
	ck_assert_msg(total > rounds, "only %llu pages written in %u rounds",
		      (unsigned long long)total, rounds);
	/* Every drain above was exact, so nothing landed in the decoy (the IOVAs as GPAs). */
	ck_assert_int_eq(dirty_view_stats(r.v, &vs), 0);
	ck_assert_uint_eq(vs.pages_outside, 0);
	ck_assert_int_eq(dirty_view_stop(r.v), 0);
	ck_assert_uint_eq(r.fk.hwpt[0].tracking, false);
	pset_free(&w);
	rig_down(&r);
}
END_TEST

START_TEST(huge_iopte_reports_every_base_page)
{
	struct rig r;
	struct pset w = { 0 };
	struct dirty_iommufd_stats s0, s1;

	rig_up(&r, 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	want_all(&w);
	expect_pages(r.v, &w, "start");
	/* 8 bytes at the end of M3: its one 2 MiB IOPTE is dirty. */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x200000 + (2ull << 20) - 8, 8), 0);
	w.n = 0;
	pset_add(&w, L[2].gpa, L[2].len);
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	s1 = stats(r.f);
	expect_pages(r.v, &w, "one write through a 2 MiB IOPTE: its 512 GPA pages");
	ck_assert_uint_eq(s1.pages_reported - s0.pages_reported, 512);
	pset_free(&w);
	rig_down(&r);
}
END_TEST

START_TEST(pieces_are_whole_adjacent_mappings)
{
	struct rig r;
	struct pset w = { 0 };
	struct dirty_iommufd_stats s0, s1;

	/* Default piece: {M1, M2} adjacent in one read, M3, M4 (a hole before). */
	rig_up(&r, 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	expect_pages(r.v, (want_all(&w), &w), "start");
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	s1 = stats(r.f);
	ck_assert_uint_eq(s1.get_bitmap_calls - s0.get_bitmap_calls, 3);
	rig_down(&r);

	/* 64-page pieces: M1 (64) and M2 (32) no longer fit one; M3 (512) is still whole. */
	rig_up(&r, 64);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	expect_pages(r.v, &w, "start");
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x100000 + 63 * PS, PS), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x140000, PS), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x200000 + 300 * PS, PS), 0);
	w.n = 0;
	want_write(&w, 0x100000 + 63 * PS);
	want_write(&w, 0x140000);
	want_write(&w, 0x200000 + 300 * PS);
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	s1 = stats(r.f);
	ck_assert_uint_eq(s1.get_bitmap_calls - s0.get_bitmap_calls, 4);
	expect_pages(r.v, &w, "64-page pieces, exact");
	pset_free(&w);
	rig_down(&r);
}
END_TEST

START_TEST(unmap_keeps_the_last_bits)
{
	struct rig r;
	struct pset w = { 0 };
	struct dirty_iommufd_stats s0, s1;
	uint64_t done = 0, bm[4] = { 0 };

	rig_up(&r, 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	expect_pages(r.v, (want_all(&w), &w), "start");

	/* M4: two pages written, then the VMM's unmap through the adapter. */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000 + 2 * PS, PS), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000 + 9 * PS, PS), 0);
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x800000, 16 * PS, &done), 0);
	s1 = stats(r.f);
	w.n = 0;
	pset_add(&w, L[3].gpa + 2 * PS, PS);
	pset_add(&w, L[3].gpa + 9 * PS, PS);
	expect_pages(r.v, &w, "unmap of M4: exactly its two written pages");
	ck_assert_uint_eq(done, 16 * PS);
	ck_assert_uint_eq(s1.no_clear_calls - s0.no_clear_calls, 1);
	ck_assert_uint_eq(s1.unmap_calls - s0.unmap_calls, 1);
	ck_assert_uint_eq(s1.mappings, NL - 1);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000, PS), -EFAULT);	/* gone from the IOMMU */

	/* The same IOVA mapped again to other guest pages: bits land there only. */
	fake_map(&r.fk, r.ioas, 0x800000, 16 * PS, PS);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x800000, GPA_RAM + 0x3000000, 16 * PS), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000 + 9 * PS, PS), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	w.n = 0;
	pset_add(&w, GPA_RAM + 0x3000000 + 9 * PS, PS);
	expect_pages(r.v, &w, "IOVA reused: the new GPA only");

	/* One unmap over M1, M2 (adjacent) and the hole up to M3: one NO_CLEAR read. */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x100000, PS), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x140000 + 31 * PS, PS), 0);
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x100000, 0x100000, &done), 0);
	s1 = stats(r.f);
	ck_assert_uint_eq(done, 96 * PS);
	ck_assert_uint_eq(s1.no_clear_calls - s0.no_clear_calls, 1);
	w.n = 0;
	want_write(&w, 0x100000);
	want_write(&w, 0x140000 + 31 * PS);
	expect_pages(r.v, &w, "unmap of M1+M2 and a hole");

	/* The control: a plain unmap loses the bits for good. */
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x200000, PS), 0);
	ck_assert_int_eq(raw_unmap(&r.fk, r.ioas, 0x200000, 2ull << 20, &done), 0);
	fake_map(&r.fk, r.ioas, 0x200000, 2ull << 20, 2ull << 20);
	ck_assert_int_eq(raw_get(&r.fk, r.hwpt, 0x200000, 2ull << 20, 2ull << 20, 0, bm), 0);
	ck_assert_uint_eq(popcount_bm(bm, 4), 0);

	/* Not tracking: a plain unmap, no read. */
	ck_assert_int_eq(dirty_view_stop(r.v), 0);
	s0 = stats(r.f);
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x800000, 16 * PS, &done), 0);
	s1 = stats(r.f);
	ck_assert_uint_eq(s1.no_clear_calls - s0.no_clear_calls, 0);
	ck_assert_uint_eq(done, 16 * PS);
	expect_none(r.v, "unmap while not tracking");
	pset_free(&w);
	rig_down(&r);
}
END_TEST

static struct rig *window_rig;

static void write_in_window(struct fake *fk)
{
	ck_assert_int_eq(fake_dma(fk, window_rig->ioas, 0x800000 + 4 * PS, PS), 0);
}

/*
 * The kernel's own window, documented in iommufd.h: a write between the
 * NO_CLEAR read and IOMMU_IOAS_UNMAP goes with the IOPTE. This pins the
 * behaviour down (so a change shows) and checks the remedy the header
 * gives a caller who unmaps an IOVA still in use: mark the range after.
 */
START_TEST(unmap_window_is_the_kernels)
{
	struct rig r;
	struct pset w = { 0 };

	rig_up(&r, 0);
	window_rig = &r;
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	expect_pages(r.v, (want_all(&w), &w), "start");
	r.fk.before_unmap = write_in_window;
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x800000, 16 * PS, NULL), 0);
	expect_none(r.v, "a write between the NO_CLEAR read and the unmap is the kernel's to lose");
	fake_map(&r.fk, r.ioas, 0x800000, 16 * PS, PS);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x800000, L[3].gpa, 16 * PS), 0);
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x800000, 16 * PS, NULL), 0);
	ck_assert_int_eq(dirty_view_mark(r.v, L[3].gpa, 16 * PS), 0);
	w.n = 0;
	pset_add(&w, L[3].gpa, 16 * PS);
	expect_pages(r.v, &w, "the caller's remedy: the range marked after the unmap");
	r.fk.before_unmap = NULL;
	pset_free(&w);
	rig_down(&r);
}
END_TEST

/* Drain and require every mapped page; check the error's message. */
static void expect_all_marked(struct rig *r, int rc, int want, const char *needle,
			      const char *what)
{
	struct pset w = { 0 };

	ck_assert_msg(rc == want, "%s: expected %d, got %d (%s)", what, want, rc,
		      dirty_last_error());
	ck_assert_msg(!needle || strstr(dirty_last_error(), needle),
		      "%s: the message should say '%s': %s", what, needle, dirty_last_error());
	want_all(&w);
	expect_pages(r->v, &w, what);
	pset_free(&w);
}

START_TEST(errors_mark_everything)
{
	struct dirty_iommufd_config cfg = { .iommufd = FAKE_FD, .ioctl = fake_ioctl };
	struct dirty_iommufd *f2 = NULL;
	struct rig r;
	struct pset w = { 0 };
	uint64_t done = 0;
	int rc;

	/* Refused registrations and configs: nothing changes. */
	rig_up(&r, 0);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x900800, GPA_RAM, PS), -EINVAL);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x900000, GPA_RAM, 0), -EINVAL);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0xfffffffffffff000ull, GPA_RAM, 2 * PS), -EINVAL);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x100000 + PS, GPA_RAM, PS), -EEXIST);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 1ull << 40, GPA_RAM, (1ull << 33) * PS + PS), -E2BIG);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "smaller IOMMU_IOAS_MAP"));
	cfg.page_size = 3 * PS;
	ck_assert_int_eq(dirty_iommufd_create(r.v, &cfg, &f2), -EINVAL);
	cfg.page_size = 0;
	cfg.iommufd = -1;
	ck_assert_int_eq(dirty_iommufd_create(r.v, &cfg, &f2), -EINVAL);
	ck_assert_int_eq(dirty_view_sync(r.v), -EINVAL);	/* not started: all marked */
	expect_all_marked(&r, -EINVAL, -EINVAL, "not started", "sync before start");

	/*
	 * Start on a HWPT without dirty support: dirty_view_start() names the
	 * source and passes on the adapter's advice.
	 */
	rig_down(&r);
	rig_up(&r, 0);
	r.fk.hwpt[0].dirty_capable = false;
	rc = dirty_view_start(r.v);
	ck_assert_msg(strstr(dirty_last_error(), "IOMMU_HWPT_ALLOC_DIRTY_TRACKING"),
		      "start error lost the adapter's advice: %s", dirty_last_error());
	expect_all_marked(&r, rc, -EOPNOTSUPP, "'iommufd' failed to start",
			  "start on a HWPT without dirty tracking");
	rig_down(&r);

	rig_up(&r, 0);
	ck_assert_int_eq(dirty_view_start(r.v), 0);
	expect_pages(r.v, (want_all(&w), &w), "start");

	/* Tracking turned off behind the adapter's back. */
	ck_assert_int_eq(raw_set(&r.fk, r.hwpt, false), 0);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x100000, PS), 0);
	expect_all_marked(&r, dirty_view_sync(r.v), -EINVAL, "behind this source's back",
			  "sync with tracking off");
	ck_assert_int_eq(raw_set(&r.fk, r.hwpt, true), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	expect_none(r.v, "tracking back on: precise again");

	/* A transient EIO, then the next sync is exact again. */
	r.fk.fail_req = IOMMU_HWPT_GET_DIRTY_BITMAP;
	r.fk.fail_err = -EIO;
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x140000 + PS, PS), 0);
	expect_all_marked(&r, dirty_view_sync(r.v), -EIO, "GET_DIRTY_BITMAP", "sync with EIO");
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x140000 + 2 * PS, PS), 0);
	ck_assert_int_eq(dirty_view_sync(r.v), 0);
	w.n = 0;
	want_write(&w, 0x140000 + PS);	/* still in its IOPTE: the failed read cleared nothing */
	want_write(&w, 0x140000 + 2 * PS);
	expect_pages(r.v, &w, "after the EIO: exact");

	/* A kernel writing past the window is not believed. */
	r.fk.stray_bit = true;
	expect_all_marked(&r, dirty_view_sync(r.v), -EPROTO, "past the window", "stray bit");
	r.fk.stray_bit = false;

	/* Unmap: splitting a registration is refused, nothing done. */
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x100000, 8 * PS, &done), -EINVAL);
	ck_assert_uint_eq(stats(r.f).mappings, NL);
	expect_none(r.v, "a refused unmap marks nothing");

	/* The NO_CLEAR read fails: the unmap still happens, everything marked after it. */
	r.fk.fail_req = IOMMU_HWPT_GET_DIRTY_BITMAP;
	r.fk.fail_err = -EIO;
	expect_all_marked(&r, dirty_iommufd_unmap(r.f, 0x800000, 16 * PS, &done), -EIO,
			  "the unmap was done", "unmap whose read failed");
	ck_assert_uint_eq(done, 16 * PS);
	ck_assert_uint_eq(stats(r.f).mappings, NL - 1);
	ck_assert_int_eq(fake_dma(&r.fk, r.ioas, 0x800000, PS), -EFAULT);

	/* The kernel refuses the unmap (a registration that is half an area). */
	fake_map(&r.fk, r.ioas, 0x800000, 16 * PS, PS);
	ck_assert_int_eq(dirty_iommufd_add_mapping(r.f, 0x800000, L[3].gpa, 8 * PS), 0);
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x800000, 8 * PS, &done), -ENOENT);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "splits a mapping"));
	w.n = 0;
	for (size_t i = 0; i < NL; i++)		/* every registered page: M4's first half */
		pset_add(&w, L[i].gpa, i == 3 ? 8 * PS : L[i].len);
	expect_pages(r.v, &w, "unmap the kernel refuses: every registered page");
	ck_assert_uint_eq(stats(r.f).mappings, NL);	/* kept */
	ck_assert_int_eq(dirty_iommufd_remove_mapping(r.f, 0x800000, 8 * PS), 0);
	w.n = 0;
	pset_add(&w, L[3].gpa, 8 * PS);
	expect_pages(r.v, &w, "remove_mapping marks what it forgets");
	ck_assert_int_eq(dirty_iommufd_remove_mapping(r.f, 0x800000, 8 * PS), -ENOENT);

	/* The kernel unmapping what nobody registered (the area left above): -EPROTO. */
	ck_assert_int_eq(dirty_iommufd_unmap(r.f, 0x700000, 0x200000, &done), -EPROTO);
	ck_assert_ptr_nonnull(strstr(dirty_last_error(), "where 0 are registered"));
	ck_assert_uint_eq(done, 16 * PS);
	w.n = 0;
	for (size_t i = 0; i < 3; i++)		/* every registered page: M1..M3 */
		pset_add(&w, L[i].gpa, L[i].len);
	expect_pages(r.v, &w, "unmap of an unregistered area: every registered page");

	/* A failing stop is returned; tracking is off for the adapter either way. */
	r.fk.fail_req = IOMMU_HWPT_SET_DIRTY_TRACKING;
	r.fk.fail_err = -EIO;
	ck_assert_int_eq(dirty_view_stop(r.v), -EIO);
	pset_free(&w);
	rig_down(&r);
}
END_TEST

/* The shipped path: no hook means ioctl(2) on the real fd, never the fake. */
START_TEST(default_hook_is_the_kernel)
{
	struct dirty_iommufd_config cfg = { .hwpt_id = 1, .ioas_id = 2 };
	struct dirty_iommufd *f = NULL;
	struct dirty_view *v = NULL;
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	cfg.iommufd = fd;
	ck_assert_int_eq(dirty_view_new(&v), 0);
	ck_assert_int_eq(dirty_view_add_region(v, GPA_RAM, RAM_LEN, 0, 0), 0);
	ck_assert_int_eq(dirty_iommufd_create(v, &cfg, &f), 0);
	ck_assert_int_eq(dirty_iommufd_add_mapping(f, 0x100000, GPA_RAM, 4 * PS), 0);
	/* /dev/null answers ENOTTY: the kernel was asked, not a fake. */
	ck_assert_int_eq(dirty_view_start(v), -ENOTTY);
	dirty_iommufd_destroy(f);
	dirty_view_free(v);
	close(fd);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("iommufd");
	TCase *tc = tcase_create("fake-backend");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, fake_follows_the_uapi);
	tcase_add_test(tc, exact_sets_page_by_page);
	tcase_add_test(tc, huge_iopte_reports_every_base_page);
	tcase_add_test(tc, pieces_are_whole_adjacent_mappings);
	tcase_add_test(tc, unmap_keeps_the_last_bits);
	tcase_add_test(tc, unmap_window_is_the_kernels);
	tcase_add_test(tc, errors_mark_everything);
	tcase_add_test(tc, default_hook_is_the_kernel);
	suite_add_tcase(s, tc);
	return test_run_suite(s);
}
