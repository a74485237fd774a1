/* vm_type1.c - the VFIO type1 adapter (hv-adapters/vfio_type1.c) proven in
 * the VM tier, guest side (run by t_vm_type1.sh).
 *
 * The guest plays the VMM: it owns a type1 container with QEMU's edu bound
 * to vfio-pci (guest/vfio-edu.c), DMA-maps buffers of its own memory and
 * registers them with the adapter under made-up guest-physical addresses,
 * runs libdirty's view, and, for the cover parts, also plays the guest
 * driver of the bitmap protocol on an in-process region (a memfd).
 *
 *   1 real      type1 with IOVA = GPA: every mapped page on every sync
 *               (COARSE), and on an unmap with the dirty bitmap, after which
 *               the registration and the kernel's mapping are gone; a plain
 *               unmap when not tracking.
 *   2 cover     the guest protocol covers type1 on the same GPA range: the
 *               view holds exactly the page edu wrote while type1 reported
 *               all N; once the guest agent stops, type1's bits count again.
 *   3 viommu    IOVA != GPA (a mapping whose IOVA is below another's and
 *               whose GPA is above): bits land at the right guest pages,
 *               never at the IOVA-as-GPA address.
 *   4 pieces    a forced small piece: runs of whole mappings per GET_BITMAP
 *               (type1 refuses a range that splits a mapping, shown by a
 *               raw ioctl), exact reports; unmap in pieces too.
 *   5 errors    bad registrations refused; failing GET_BITMAP / unmap mark
 *               every mapped page and return the error with a message; a
 *               bit past the window asked for (the config's ioctl hook
 *               standing in for a broken kernel) is an error that marks
 *               every mapped page, never dropped and never a page.
 *   6 table     pages type1 reports vs pages the merged view reports for
 *               one one-page DMA, per buffer size.
 *
 * Every check prints "vm_type1: ok   ..." or "vm_type1: FAIL ... (expected
 * vs actual)"; the last line is "vm_type1: RESULT ... failures=N". Exit 0
 * when nothing failed.
 */
#include "vfio-edu.h"
#include "vm-check.h"
#include "vm-pset.h"
#include "vm-time.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <linux/vfio.h>

#include <libdirty.h>
#include <libdirty/guest.h>
#include <libdirty/vfio.h>

#define P ((uint64_t)4096)
/* edu's source page, mapped only while the pattern is loaded into edu. */
#define PATTERN_IOVA 0x0ff00000ull

static struct vfio_edu edu;

/* A setup step that must work: on failure say what and where, then leave. */
#define TRY(call) do { \
		int rc_ = (call); \
		if (rc_ < 0) { \
			fail("%s:%d %s = %d (%s): %s%s", __func__, __LINE__, #call, rc_, \
			     strerror(-rc_), dirty_last_error(), dirty_guest_last_error()); \
			goto out; \
		} \
	} while (0)

/* The view's pages vs want, page by page (vm-pset.h). */
static uint64_t expect(struct dirty_view *v, const char *what,
		       const struct dirty_range *want, size_t nwant)
{
	return pset_expect(v, what, want, nwant, NULL, 4);
}

/* ---- edu and buffers ------------------------------------------------------- */

static uint8_t pattern_byte(size_t i)
{
	return (uint8_t)(i * 131u + 7u + (i >> 8));
}

/* Give edu's buffer the pattern once: every later DMA writes it into RAM. */
static int load_pattern(void)
{
	uint8_t *src = mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc;

	if (src == MAP_FAILED)
		return -ENOMEM;
	for (size_t i = 0; i < P; i++)
		src[i] = pattern_byte(i);
	rc = vfio_type1_map_dma(edu.container, src, PATTERN_IOVA, P);
	if (!rc) {
		rc = edu_dma(&edu, false, PATTERN_IOVA, 0, EDU_DMA_MAX);
		if (vfio_type1_unmap_dma(edu.container, PATTERN_IOVA, P) && !rc)
			rc = -EIO;
	}
	munmap(src, P);
	return rc;
}

/* edu writes the pattern into the page at iova; the bytes are checked in page. */
static int dma_into(uint64_t iova, volatile uint8_t *page, const char *what)
{
	int rc;

	for (size_t i = 0; i < P; i++)
		page[i] = 0;
	rc = edu_dma(&edu, true, iova, 0, EDU_DMA_MAX);
	if (rc) {
		fail("%s: edu DMA to IOVA %#" PRIx64 " failed (%d)", what, iova, rc);
		return rc;
	}
	for (size_t i = 0; i < P; i++) {
		uint8_t want = i < EDU_DMA_MAX ? pattern_byte(i) : 0;

		if (page[i] != want) {
			fail("%s: after edu's DMA to IOVA %#" PRIx64 " byte %zu is %#x, expected %#x",
			     what, iova, i, page[i], want);
			return -EIO;
		}
	}
	ok("%s: edu wrote %u bytes through IOVA %#" PRIx64 ", checked byte by byte",
	   what, EDU_DMA_MAX, iova);
	return 0;
}

static uint8_t *alloc_pages(uint64_t pages)
{
	void *p = mmap(NULL, pages * P, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* GET_BITMAP straight from the kernel, for what the adapter works around. */
static int raw_get_bitmap(uint64_t iova, uint64_t size, uint64_t *bm, size_t bytes)
{
	union {
		struct vfio_iommu_type1_dirty_bitmap db;
		unsigned char raw[sizeof(struct vfio_iommu_type1_dirty_bitmap) +
				  sizeof(struct vfio_iommu_type1_dirty_bitmap_get)];
	} arg;
	struct vfio_iommu_type1_dirty_bitmap_get get = {
		.iova = iova, .size = size,
		.bitmap = { .pgsize = P, .size = bytes, .data = (__u64 *)bm },
	};

	memset(&arg, 0, sizeof(arg));
	arg.db.argsz = sizeof(arg.raw);
	arg.db.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	memcpy(arg.raw + sizeof(arg.db), &get, sizeof(get));
	memset(bm, 0, bytes);
	return ioctl(edu.container, VFIO_IOMMU_DIRTY_PAGES, &arg) ? -errno : 0;
}

static struct dirty_vfio_type1_stats t1_stats(struct dirty_vfio_type1 *t)
{
	struct dirty_vfio_type1_stats st;

	dirty_vfio_type1_stats(t, &st);
	return st;
}

/* A view of the regions with a type1 adapter over edu's container. */
static int type1_view(const struct dirty_range *regions, size_t n,
		      const struct dirty_vfio_type1_config *cfg, struct dirty_view **v,
		      struct dirty_vfio_type1 **t)
{
	int rc = dirty_view_new(v);

	for (size_t i = 0; !rc && i < n; i++)
		rc = dirty_view_add_region(*v, regions[i].gpa, regions[i].len, 0, 0);
	return rc ? rc : dirty_vfio_type1_create(*v, cfg, t);
}

/*
 * The guest protocol over gcfg's range covering type1, with this program
 * as the guest driver (the region through its fd, the agent started).
 */
static int cover_type1(struct dirty_view *v, struct dirty_vfio_type1 *t,
		       const struct dirty_gp_config *gcfg, struct dirty_gp **gp,
		       struct dirty_guest **g)
{
	int rc = dirty_gp_create(v, gcfg, gp);

	if (!rc)
		rc = dirty_guest_open_fd(dirty_gp_fd(*gp), g);
	if (!rc)
		rc = dirty_guest_agent_start(*g, 10);
	return rc ? rc : dirty_source_cover(dirty_gp_source(*gp), dirty_vfio_type1_source(t));
}

/* Everything type1_view and cover_type1 made, in their reverse order. */
static void teardown(struct dirty_vfio_type1 **t, struct dirty_guest **g, struct dirty_gp **gp,
		     struct dirty_view **v)
{
	dirty_vfio_type1_destroy(*t);
	*t = NULL;
	dirty_guest_close(*g);
	*g = NULL;
	dirty_gp_destroy(*gp);
	*gp = NULL;
	dirty_view_free(*v);
	*v = NULL;
}

/* One sync; type1's counters (and its source's, if c0) before and after. */
static int counted_sync(struct dirty_view *v, struct dirty_vfio_type1 *t,
			struct dirty_vfio_type1_stats *s0, struct dirty_vfio_type1_stats *s1,
			struct dirty_source_stats *c0, struct dirty_source_stats *c1)
{
	int rc;

	*s0 = t1_stats(t);
	if (c0)
		dirty_source_stats(dirty_vfio_type1_source(t), c0);
	rc = dirty_view_sync(v);
	*s1 = t1_stats(t);
	if (c1)
		dirty_source_stats(dirty_vfio_type1_source(t), c1);
	return rc;
}

static int has(const char *msg, const char *needle)
{
	return strstr(msg, needle) != NULL;
}

/* ---- 1: type1 for real ------------------------------------------------------ */

static void part_real(void)
{
	const uint64_t n = 64, base = 0x3000000;	/* IOVA = GPA: no vIOMMU */
	const struct dirty_range all = { base, n * P };
	struct dirty_vfio_type1_config cfg = { .container_fd = edu.container };
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_vfio_type1_stats s0, s1;
	struct dirty_view *v = NULL;
	uint64_t unmapped = 0, gpa = 0;
	bool kmapped = false;
	uint8_t *buf;
	int rc;

	printf("vm_type1: ---- 1 real: edu in a type1 container, %" PRIu64 " pages, IOVA = GPA\n", n);
	buf = alloc_pages(n);
	if (!buf) {
		fail("out of memory");
		return;
	}
	TRY(vfio_type1_map_dma(edu.container, buf, base, n * P));
	kmapped = true;
	TRY(type1_view(&all, 1, &cfg, &v, &t));
	TRY(dirty_vfio_type1_add_mapping(t, base, base, n * P));
	TRY(dirty_view_start(v));
	expect(v, "1 start: the first round holds every mapped page", &all, 1);

	TRY(counted_sync(v, t, &s0, &s1, NULL, NULL));
	expect(v, "1 sync before any DMA: type1 reports every mapped page (COARSE)", &all, 1);
	CHECK_EQ("1 GET_BITMAP calls for one mapping", 1, s1.get_bitmap_calls - s0.get_bitmap_calls);
	CHECK_EQ("1 pages type1 reported", n, s1.pages_reported - s0.pages_reported);

	if (dma_into(base + (n / 2 + 1) * P, buf + (n / 2 + 1) * P, "1 DMA"))
		goto out;
	TRY(counted_sync(v, t, &s0, &s1, NULL, NULL));
	expect(v, "1 sync after a one-page DMA: still every mapped page", &all, 1);
	CHECK_EQ("1 pages type1 reported after the DMA", n, s1.pages_reported - s0.pages_reported);

	/* The VMM's unmap, mid-migration: the mapping's last bits come along. */
	s0 = t1_stats(t);
	TRY(dirty_vfio_type1_unmap(t, base, n * P, &unmapped));
	kmapped = false;
	s1 = t1_stats(t);
	CHECK_EQ("1 bytes the kernel unmapped", n * P, unmapped);
	CHECK_EQ("1 unmaps with GET_DIRTY_BITMAP", 1, s1.unmap_bitmap_calls - s0.unmap_bitmap_calls);
	expect(v, "1 unmap with the dirty bitmap: the unmapped mapping's pages", &all, 1);
	CHECK_EQ("1 registrations after the unmap", 0, s1.mappings);
	rc = dirty_vfio_type1_translate(t, base, &gpa);
	CHECK_EQ("1 translate(IOVA) after the unmap = -ENOENT", -ENOENT, rc);
	/* The kernel's mapping is gone too: the same IOVA maps again. */
	rc = vfio_type1_map_dma(edu.container, buf, base, n * P);
	CHECK_EQ("1 VFIO_IOMMU_MAP_DMA of the same IOVA again (0: the kernel unmapped it)", 0, rc);
	kmapped = rc == 0;
	TRY(dirty_view_sync(v));
	expect(v, "1 sync after the unmap: nothing (no registration left)", NULL, 0);

	/* Not tracking: the same call is a plain unmap (the kernel refuses a bitmap). */
	TRY(dirty_view_stop(v));
	TRY(dirty_vfio_type1_add_mapping(t, base, base, n * P));
	s0 = t1_stats(t);
	rc = dirty_vfio_type1_unmap(t, base, n * P, &unmapped);
	s1 = t1_stats(t);
	CHECK_EQ("1 unmap while not tracking returns", 0, rc);
	kmapped = rc != 0;
	CHECK_EQ("1 ... as a plain unmap (no dirty-bitmap unmap)", 0,
		 s1.unmap_bitmap_calls - s0.unmap_bitmap_calls);
	CHECK_EQ("1 ... of every byte", n * P, unmapped);
	CHECK_EQ("1 ... dropping the registration", 0, s1.mappings);
	expect(v, "1 ... marking nothing", NULL, 0);
out:
	dirty_vfio_type1_destroy(t);
	dirty_view_free(v);
	if (kmapped)
		vfio_type1_unmap_dma(edu.container, base, n * P);
	munmap(buf, n * P);
}

/* ---- 2 and 6: the guest protocol covers type1 ---------------------------------- */

struct row {
	uint64_t pages, type1, merged;
	double sync_ms;
};

/*
 * A buffer of n pages at IOVA iova = GPA 0x40000000 + ..., type1 and the
 * guest protocol over the same range, the protocol covering type1; edu
 * writes page k while the "guest driver" has it mapped FROM_DEVICE. With
 * lose_agent, the agent then stops and type1's bits must count again.
 */
static void cover_run(uint64_t n, bool lose_agent, struct row *row, const char *tag)
{
	const uint64_t iova = 0x1000000, gpa = 0x40000000, k = n / 2 + 1;
	const struct dirty_range all = { gpa, n * P }, page_k = { gpa + k * P, P };
	struct dirty_vfio_type1_config cfg = { .container_fd = edu.container };
	struct dirty_gp_config gcfg = {
		.gpa = gpa, .len = n * P,
		.fallback = DIRTY_GP_FALLBACK_ALL_DIRTY,
		.heartbeat_timeout_ms = 400,
	};
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_vfio_type1_stats s0, s1;
	struct dirty_source_stats c0, c1;
	struct dirty_guest *g = NULL;
	struct dirty_gp *gp = NULL;
	struct dirty_view *v = NULL;
	struct dirty_gp_health h;
	char what[160];
	bool kmapped = false;
	uint8_t *buf;
	double t0;

	buf = alloc_pages(n);
	if (!buf) {
		fail("%s: out of memory", tag);
		return;
	}
	TRY(vfio_type1_map_dma(edu.container, buf, iova, n * P));
	kmapped = true;
	TRY(type1_view(&all, 1, &cfg, &v, &t));
	TRY(dirty_vfio_type1_add_mapping(t, iova, gpa, n * P));
	TRY(cover_type1(v, t, &gcfg, &gp, &g));
	TRY(dirty_view_start(v));
	TRY(dirty_view_sync(v));
	snprintf(what, sizeof(what), "%s start + first sync: the first pass holds every page", tag);
	expect(v, what, &all, 1);

	TRY(counted_sync(v, t, &s0, &s1, &c0, &c1));
	snprintf(what, sizeof(what), "%s idle sync, guest trusted: type1's pages stand covered", tag);
	expect(v, what, NULL, 0);
	snprintf(what, sizeof(what), "%s ... type1 reported", tag);
	CHECK_EQ(what, n, s1.pages_reported - s0.pages_reported);
	snprintf(what, sizeof(what), "%s ... pages_covered grew by", tag);
	CHECK_EQ(what, n, c1.pages_covered - c0.pages_covered);

	/* The guest driver's side of one DMA: map, device writes, unmap. */
	TRY(dirty_guest_map(g, gpa + k * P, P, DIRTY_FROM_DEVICE));
	snprintf(what, sizeof(what), "%s DMA", tag);
	if (dma_into(iova + k * P, buf + k * P, what))
		goto out;
	TRY(dirty_guest_unmap(g, gpa + k * P, P, DIRTY_FROM_DEVICE));
	t0 = now_ms();
	TRY(counted_sync(v, t, &s0, &s1, &c0, &c1));
	row->sync_ms = now_ms() - t0;
	snprintf(what, sizeof(what), "%s sync after the DMA: the merged view holds exactly the page edu wrote", tag);
	row->merged = expect(v, what, &page_k, 1);
	row->type1 = s1.pages_reported - s0.pages_reported;
	row->pages = n;
	snprintf(what, sizeof(what), "%s ... while type1 reported every mapped page", tag);
	CHECK_EQ(what, n, row->type1);
	snprintf(what, sizeof(what), "%s ... all of them covered (pages_covered grew by)", tag);
	CHECK_EQ(what, n, c1.pages_covered - c0.pages_covered);

	if (lose_agent) {
		double t1;
		int healthy = 1;

		/* The agent stops: no heartbeat, so the guest is no longer trusted. */
		dirty_guest_close(g);
		g = NULL;
		t1 = now_ms();
		while (healthy && now_ms() - t1 < 5000) {
			sleep_ms(100);
			TRY(dirty_view_sync(v));
			TRY(dirty_gp_health(gp, &h));
			healthy = h.healthy;
		}
		if (healthy) {
			fail("%s: the guest protocol still counts as healthy %.0f ms after its agent stopped (heartbeat timeout %u ms)",
			     tag, now_ms() - t1, gcfg.heartbeat_timeout_ms);
			goto out;
		}
		ok("%s agent stopped: untrusted after %.0f ms: %s", tag, now_ms() - t1, h.reason);
		/*
		 * The round that noticed may have judged the cover just before
		 * (the judgement is at each round start): start from an empty
		 * view, then one round judged untrusted from its start.
		 */
		{
			struct pset skip = { 0 };

			pset_drain(v, &skip);
			pset_free(&skip);
		}
		TRY(counted_sync(v, t, &s0, &s1, &c0, &c1));
		snprintf(what, sizeof(what), "%s sync with the guest untrusted: type1's coarse bits count again", tag);
		expect(v, what, &all, 1);
		snprintf(what, sizeof(what), "%s ... none of them covered (pages_covered grew by)", tag);
		CHECK_EQ(what, 0, c1.pages_covered - c0.pages_covered);
		snprintf(what, sizeof(what), "%s ... type1 reported", tag);
		CHECK_EQ(what, n, s1.pages_reported - s0.pages_reported);
	}
out:
	teardown(&t, &g, &gp, &v);
	if (kmapped)
		vfio_type1_unmap_dma(edu.container, iova, n * P);
	munmap(buf, n * P);
}

/* ---- 3: behind a vIOMMU, IOVA is not GPA ---------------------------------------- */

static void part_viommu(void)
{
	/* M1 as the brief has it; M2 below M1 in IOVA, above it in GPA. */
	const uint64_t iova1 = 0x100000, gpa1 = 0x40000000, n1 = 64;
	const uint64_t iova2 = 0x80000, gpa2 = 0x40200000, n2 = 16;
	const uint64_t rgpa = 0x40000000, rlen = 4ull << 20;	/* both GPA ranges */
	const uint64_t decoy = 0, dlen = 2ull << 20;		/* the IOVAs as GPAs */
	const struct dirty_range regions[] = { { rgpa, rlen }, { decoy, dlen } };
	const struct dirty_range both[] = { { gpa1, n1 * P }, { gpa2, n2 * P } };
	const struct dirty_range written[] = { { gpa1 + 7 * P, P }, { gpa2 + 5 * P, P } };
	struct dirty_vfio_type1_config cfg = { .container_fd = edu.container };
	struct dirty_gp_config gcfg = { .gpa = rgpa, .len = rlen };
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_guest *g = NULL;
	struct dirty_gp *gp = NULL;
	struct dirty_view *v = NULL;
	struct dirty_view_stats vs;
	uint64_t x = 0, unmapped = 0;
	bool k1 = false, k2 = false;
	uint8_t *b1 = alloc_pages(n1), *b2 = alloc_pages(n2);

	printf("vm_type1: ---- 3 viommu: IOVA %#" PRIx64 " -> GPA %#" PRIx64 " (%" PRIu64 " pages), IOVA %#" PRIx64 " -> GPA %#" PRIx64 " (%" PRIu64 " pages)\n",
	       iova1, gpa1, n1, iova2, gpa2, n2);
	if (!b1 || !b2) {
		fail("out of memory");
		goto out;
	}
	TRY(vfio_type1_map_dma(edu.container, b1, iova1, n1 * P));
	k1 = true;
	TRY(vfio_type1_map_dma(edu.container, b2, iova2, n2 * P));
	k2 = true;

	/* a. Covered by the guest protocol: exactly the GPA pages edu wrote. */
	TRY(type1_view(regions, 2, &cfg, &v, &t));
	TRY(dirty_vfio_type1_add_mapping(t, iova1, gpa1, n1 * P));
	TRY(dirty_vfio_type1_add_mapping(t, iova2, gpa2, n2 * P));
	TRY(cover_type1(v, t, &gcfg, &gp, &g));
	TRY(dirty_view_start(v));
	TRY(dirty_view_sync(v));
	{
		/* The first pass: at least both mappings (the protocol may add its range). */
		struct pset first = { 0 };
		uint64_t in = 0;

		TRY(pset_drain(v, &first));
		for (size_t i = 0; i < first.n; i++)
			in += (first.p[i] >= gpa1 && first.p[i] < gpa1 + n1 * P) ||
			      (first.p[i] >= gpa2 && first.p[i] < gpa2 + n2 * P);
		if (in == n1 + n2)
			ok("3a start + first sync: the first pass holds all %" PRIu64 " mapped pages at their GPAs (%zu pages in all)",
			   n1 + n2, first.n);
		else
			fail("3a start + first sync: %" PRIu64 " of the %" PRIu64 " mapped GPA pages in the first pass",
			     in, n1 + n2);
		pset_free(&first);
	}
	TRY(dirty_vfio_type1_translate(t, iova2 + 5 * P, &x));
	if (x == gpa2 + 5 * P)
		ok("3a translate(IOVA %#" PRIx64 ") = GPA %#" PRIx64, iova2 + 5 * P, x);
	else
		fail("3a translate(IOVA %#" PRIx64 "): expected GPA %#" PRIx64 ", got %#" PRIx64,
		     iova2 + 5 * P, gpa2 + 5 * P, x);
	TRY(dirty_guest_map(g, gpa1 + 7 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_map(g, gpa2 + 5 * P, P, DIRTY_FROM_DEVICE));
	if (dma_into(iova1 + 7 * P, b1 + 7 * P, "3a DMA through M1") ||
	    dma_into(iova2 + 5 * P, b2 + 5 * P, "3a DMA through M2"))
		goto out;
	TRY(dirty_guest_unmap(g, gpa1 + 7 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_guest_unmap(g, gpa2 + 5 * P, P, DIRTY_FROM_DEVICE));
	TRY(dirty_view_sync(v));
	expect(v, "3a sync, guest trusted: exactly the two GPA pages, nothing at the IOVAs", written, 2);
	teardown(&t, &g, &gp, &v);

	/* b. type1 alone: its bits translated, mapping by mapping. */
	TRY(type1_view(regions, 2, &cfg, &v, &t));
	TRY(dirty_vfio_type1_add_mapping(t, iova2, gpa2, n2 * P));
	TRY(dirty_vfio_type1_add_mapping(t, iova1, gpa1, n1 * P));
	TRY(dirty_view_start(v));
	expect(v, "3b start", both, 2);
	if (dma_into(iova2 + 5 * P, b2 + 5 * P, "3b DMA through M2"))
		goto out;
	TRY(dirty_view_sync(v));
	expect(v, "3b sync: type1's bits at both mappings' GPA pages, none at the IOVAs", both, 2);
	TRY(dirty_vfio_type1_unmap(t, iova2, n2 * P, &unmapped));
	k2 = false;
	expect(v, "3b unmap of M2 with the dirty bitmap: M2's GPA pages only", &both[1], 1);
	TRY(dirty_vfio_type1_unmap(t, iova1, n1 * P, &unmapped));
	k1 = false;
	expect(v, "3b unmap of M1 with the dirty bitmap: M1's GPA pages only", &both[0], 1);
	TRY(dirty_view_stats(v, &vs));
	CHECK_EQ("3b marks that fell outside every region", 0, vs.pages_outside);
out:
	teardown(&t, &g, &gp, &v);
	if (k1)
		vfio_type1_unmap_dma(edu.container, iova1, n1 * P);
	if (k2)
		vfio_type1_unmap_dma(edu.container, iova2, n2 * P);
	if (b1)
		munmap(b1, n1 * P);
	if (b2)
		munmap(b2, n2 * P);
}

/* ---- 4: pieces ---------------------------------------------------------------------- */

/*
 * Six MAP_DMAs over one buffer: A..E adjacent in IOVA, a 16-page hole,
 * then F. Sizes are not multiples of 64, so mappings start mid-word in
 * a piece's bitmap; GPAs are shuffled.
 */
static const struct {
	char name;
	uint64_t pages, gpa_page;	/* GPA = base + gpa_page pages */
} pieces[] = {
	{ 'A', 40, 600 }, { 'B', 24, 0 }, { 'C', 100, 300 }, { 'D', 28, 100 },
	{ 'E', 192, 700 }, { 'F', 64, 900 },
};
#define NPIECES (sizeof(pieces) / sizeof(pieces[0]))

static void piece_layout(uint64_t iova0, uint64_t *iova, uint64_t *boff)
{
	uint64_t at = iova0, off = 0;

	for (size_t i = 0; i < NPIECES; i++) {
		if (pieces[i].name == 'F')
			at += 16 * P;	/* the hole */
		iova[i] = at;
		boff[i] = off;
		at += pieces[i].pages * P;
		off += pieces[i].pages;
	}
}

static void part_pieces(void)
{
	const uint64_t iova0 = 0x4000000, gpa0 = 0x48000000, total = 448;
	const unsigned order[NPIECES] = { 5, 2, 0, 4, 1, 3 };	/* registration order */
	struct dirty_range all[NPIECES];
	uint64_t iova[NPIECES], boff[NPIECES], unmapped = 0, bm[8];
	struct dirty_vfio_type1_stats s0, s1;
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_view *v = NULL;
	bool kmapped[NPIECES] = { false };
	uint8_t *buf = alloc_pages(total);
	char what[160];
	int rc;

	printf("vm_type1: ---- 4 pieces: mappings of 40,24,100,28,192 pages adjacent, a hole, 64 pages\n");
	if (!buf) {
		fail("out of memory");
		return;
	}
	piece_layout(iova0, iova, boff);
	for (size_t i = 0; i < NPIECES; i++) {
		all[i].gpa = gpa0 + pieces[i].gpa_page * P;
		all[i].len = pieces[i].pages * P;
		TRY(vfio_type1_map_dma(edu.container, buf + boff[i] * P, iova[i], pieces[i].pages * P));
		kmapped[i] = true;
	}
	/* What the kernel accepts, straight from it (the adapter relies on it). */
	rc = raw_get_bitmap(iova[4], 192 * P, bm, sizeof(bm));
	CHECK_EQ("4 raw GET_BITMAP before START = -EINVAL", -EINVAL, rc);
	TRY(vfio_type1_dirty_start(edu.container));
	rc = vfio_type1_dirty_start(edu.container);
	CHECK_EQ("4 raw START twice = 0", 0, rc);
	rc = raw_get_bitmap(iova[4], 96 * P, bm, sizeof(bm));
	CHECK_EQ("4 raw GET_BITMAP of the first half of E (192 pages) = -EINVAL", -EINVAL, rc);
	rc = raw_get_bitmap(iova[4], 192 * P, bm, 16);
	CHECK_EQ("4 raw GET_BITMAP of E with a bitmap of 128 bits = -EINVAL", -EINVAL, rc);
	rc = raw_get_bitmap(iova[4], 192 * P, bm, sizeof(bm));
	CHECK_EQ("4 raw GET_BITMAP of all of E = 0", 0, rc);
	/* D, E, the hole, F: several whole mappings and a hole in one range. */
	rc = raw_get_bitmap(iova[3], iova[5] + 64 * P - iova[3], bm, sizeof(bm));
	CHECK_EQ("4 raw GET_BITMAP of D, E, the hole and F = 0", 0, rc);
	{
		uint64_t set = 0, hole = 0, first_hole = 28 + 192;

		for (uint64_t b = 0; b < 28 + 192 + 16 + 64; b++) {
			uint64_t bit = bm[b / 64] >> (b % 64) & 1;

			set += bit;
			hole += bit && b >= first_hole && b < first_hole + 16;
		}
		CHECK_EQ("4 ... bits set (every page of D, E and F)", 28 + 192 + 64, set);
		CHECK_EQ("4 ... bits set in the hole", 0, hole);
	}
	TRY(vfio_type1_dirty_stop(edu.container));
	rc = vfio_type1_dirty_stop(edu.container);
	CHECK_EQ("4 raw STOP twice = 0", 0, rc);

	for (int round = 0; round < 2; round++) {
		/* round 0: the kernel's maximum piece; round 1: 128 pages. */
		struct dirty_vfio_type1_config cfg = {
			.container_fd = edu.container, .piece_pages = round ? 128 : 0,
		};
		unsigned want_calls = round ? 4 : 2;

		TRY(type1_view(&(struct dirty_range){ gpa0, 1024 * P }, 1, &cfg, &v, &t));
		for (size_t r = 0; r < NPIECES; r++) {
			unsigned i = order[r];

			TRY(dirty_vfio_type1_add_mapping(t, iova[i], all[i].gpa, all[i].len));
		}
		TRY(dirty_view_start(v));
		snprintf(what, sizeof(what), "4 piece %s: start", round ? "128" : "max");
		expect(v, what, all, NPIECES);
		TRY(counted_sync(v, t, &s0, &s1, NULL, NULL));
		snprintf(what, sizeof(what), "4 piece %s: GET_BITMAP calls per sync (%s)", round ? "128" : "max",
			 round ? "{A,B} {C,D} {E} {F}" : "{A..E} {F}");
		CHECK_EQ(what, want_calls, s1.get_bitmap_calls - s0.get_bitmap_calls);
		snprintf(what, sizeof(what), "4 piece %s: sync, every mapped page at its GPA", round ? "128" : "max");
		expect(v, what, all, NPIECES);
		if (!round) {
			dirty_vfio_type1_destroy(t);
			t = NULL;
			dirty_view_free(v);
			v = NULL;
			continue;
		}
		if (dma_into(iova[4] + 150 * P, buf + (boff[4] + 150) * P, "4 DMA into E"))
			goto out;
		TRY(counted_sync(v, t, &s0, &s1, NULL, NULL));
		expect(v, "4 piece 128: sync after the DMA, exactly as in 1 (every page)", all, NPIECES);
		CHECK_EQ("4 piece 128: pages type1 reported", total, s1.pages_reported - s0.pages_reported);
		/* One unmap of the whole span: runs with their bits, the hole plainly. */
		s0 = t1_stats(t);
		TRY(dirty_vfio_type1_unmap(t, iova0, iova[5] + 64 * P - iova0, &unmapped));
		for (size_t i = 0; i < NPIECES; i++)
			kmapped[i] = false;
		s1 = t1_stats(t);
		CHECK_EQ("4 piece 128: unmaps with GET_DIRTY_BITMAP for the span", 4,
			 s1.unmap_bitmap_calls - s0.unmap_bitmap_calls);
		CHECK_EQ("4 piece 128: bytes unmapped", total * P, unmapped);
		expect(v, "4 piece 128: the unmap's bits, every page at its GPA", all, NPIECES);
		CHECK_EQ("4 piece 128: registrations left", 0, s1.mappings);
	}
out:
	dirty_vfio_type1_destroy(t);
	dirty_view_free(v);
	for (size_t i = 0; i < NPIECES; i++)
		if (kmapped[i])
			vfio_type1_unmap_dma(edu.container, iova[i], pieces[i].pages * P);
	munmap(buf, total * P);
}

/* ---- 5: errors ------------------------------------------------------------------------- */

static void check_err(const char *what, int want, int got, const char *needle)
{
	const char *msg = dirty_last_error();

	if (got == want && has(msg, needle))
		ok("%s: %d, \"%s\"", what, got, msg);
	else
		fail("%s: expected %d with a message naming '%s', got %d \"%s\"", what, want,
		     needle, got, msg);
}

static void part_errors(void)
{
	const uint64_t ik = 0x6000000, ig = 0x6100000, ih = 0x6200000, il = 0x6300000;
	const uint64_t gpa = 0x50000000;
	const struct dirty_range k_half = { gpa, 32 * P }, g_all = { gpa + 64 * P, 16 * P };
	const struct dirty_range both[] = { k_half, g_all }, l_all = { gpa + 100 * P, 8 * P };
	struct dirty_vfio_type1_config cfg = { .container_fd = edu.container };
	struct dirty_vfio_type1_caps caps;
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_source_stats ss;
	struct dirty_view *v = NULL;
	uint64_t unmapped = 0;
	bool kk = false, kg = false, kh = false;
	uint8_t *bk = alloc_pages(64), *bg = alloc_pages(16), *bh = alloc_pages(8);
	int rc;

	printf("vm_type1: ---- 5 errors\n");
	if (!bk || !bg || !bh) {
		fail("out of memory");
		goto out;
	}
	TRY(vfio_type1_map_dma(edu.container, bk, ik, 64 * P));
	kk = true;
	TRY(vfio_type1_map_dma(edu.container, bg, ig, 16 * P));
	kg = true;
	TRY(type1_view(&(struct dirty_range){ gpa, 128 * P }, 1, &cfg, &v, &t));
	TRY(dirty_vfio_type1_caps(t, &caps));

	/* Registrations type1 could never serve are refused up front. */
	rc = dirty_vfio_type1_add_mapping(t, ik + P / 2, gpa, 8 * P);
	check_err("5 register an unaligned IOVA", -EINVAL, rc, "aligned");
	rc = dirty_vfio_type1_add_mapping(t, UINT64_MAX - P + 1, gpa, 2 * P);
	check_err("5 register a range that wraps", -EINVAL, rc, "wraps");
	rc = dirty_vfio_type1_add_mapping(t, 1ull << 40, gpa, (caps.max_pages + 1) * P);
	check_err("5 register a mapping whose bitmap exceeds type1's maximum", -E2BIG, rc,
		  "per VFIO_IOMMU_MAP_DMA");
	TRY(dirty_vfio_type1_add_mapping(t, ig, g_all.gpa, g_all.len));
	rc = dirty_vfio_type1_add_mapping(t, ig + 8 * P, gpa + 120 * P, 8 * P);
	check_err("5 register an overlapping IOVA range", -EEXIST, rc, "overlaps");

	/* a. A registration that splits a kernel mapping: GET_BITMAP fails. */
	TRY(dirty_vfio_type1_add_mapping(t, ik, k_half.gpa, k_half.len));
	TRY(dirty_view_start(v));
	expect(v, "5a start", both, 2);
	rc = dirty_view_sync(v);
	check_err("5a sync with a registration of half a kernel mapping", -EINVAL, rc,
		  "not one whole VFIO_IOMMU_MAP_DMA");
	expect(v, "5a ... marked every mapped page", both, 2);
	dirty_source_stats(dirty_vfio_type1_source(t), &ss);
	CHECK_EQ("5a ... the source's error count", 1, ss.errors);
	rc = dirty_vfio_type1_unmap(t, ik, 32 * P, &unmapped);
	check_err("5a unmap of that registration (the kernel refuses half a mapping)", -EINVAL, rc,
		  "unmap with dirty bitmap");
	expect(v, "5a ... marked every mapped page", both, 2);
	CHECK_EQ("5a ... and kept the registrations", 2, t1_stats(t).mappings);
	rc = dirty_vfio_type1_unmap(t, ig, 8 * P, &unmapped);
	check_err("5a unmap splitting a registration is refused before any ioctl", -EINVAL, rc,
		  "split");
	TRY(dirty_vfio_type1_remove_mapping(t, ik, 32 * P));
	expect(v, "5a forgetting the bad registration marks its pages (its last bits are lost)",
	       &k_half, 1);
	TRY(dirty_view_sync(v));
	expect(v, "5a sync without it: fine again", &g_all, 1);

	/* b. Tracking stopped behind the adapter's back. */
	TRY(vfio_type1_dirty_stop(edu.container));
	rc = dirty_view_sync(v);
	check_err("5b sync after someone else's STOP", -EINVAL, rc, "tracking stopped");
	expect(v, "5b ... marked every mapped page", &g_all, 1);
	rc = dirty_vfio_type1_unmap(t, ig, 16 * P, &unmapped);
	check_err("5b unmap with the dirty bitmap after that STOP", -EINVAL, rc, "unmap with dirty bitmap");
	expect(v, "5b ... marked every mapped page", &g_all, 1);
	CHECK_EQ("5b ... and kept the registration", 1, t1_stats(t).mappings);
	TRY(dirty_view_stop(v));
	TRY(dirty_vfio_type1_unmap(t, ig, 16 * P, &unmapped));
	kg = false;
	CHECK_EQ("5b after the view's stop the unmap is plain and works: bytes", 16 * P, unmapped);

	/* c. A registration the kernel does not have reads as clean, without error. */
	TRY(dirty_vfio_type1_add_mapping(t, il, l_all.gpa, l_all.len));
	TRY(dirty_view_start(v));
	expect(v, "5c start", &l_all, 1);
	rc = dirty_view_sync(v);
	CHECK_EQ("5c sync of a registration the kernel lacks returns", 0, rc);
	expect(v, "5c ... and type1 reports none of it (nothing can DMA there)", NULL, 0);

	/* d. The kernel unmaps a MAP_DMA nobody registered: its bits are unknown. */
	TRY(vfio_type1_map_dma(edu.container, bh, ih, 8 * P));
	kh = true;
	rc = dirty_vfio_type1_unmap(t, ih, 8 * P, &unmapped);
	kh = unmapped != 8 * P;
	check_err("5d unmap of an unregistered kernel mapping while tracking", -EPROTO, rc,
		  "nothing is registered");
	CHECK_EQ("5d ... the kernel still unmapped it: bytes", 8 * P, unmapped);
	expect(v, "5d ... marked every mapped page", &l_all, 1);
	TRY(dirty_vfio_type1_unmap(t, il, 8 * P, &unmapped));
	CHECK_EQ("5d unmap of the registration the kernel lacks: bytes", 0, unmapped);
	expect(v, "5d ... marks nothing", NULL, 0);
	CHECK_EQ("5 errors counted by the adapter", 5, t1_stats(t).errors);
out:
	dirty_vfio_type1_destroy(t);
	dirty_view_free(v);
	if (kk)
		vfio_type1_unmap_dma(edu.container, ik, 64 * P);
	if (kg)
		vfio_type1_unmap_dma(edu.container, ig, 16 * P);
	if (kh)
		vfio_type1_unmap_dma(edu.container, ih, 8 * P);
	if (bk)
		munmap(bk, 64 * P);
	if (bg)
		munmap(bg, 16 * P);
	if (bh)
		munmap(bh, 8 * P);
}

/*
 * The config's ioctl hook, standing in for a kernel that writes one bit
 * past the window GET_BITMAP asked for (while armed); counts the calls.
 */
struct stray {
	bool armed;
	unsigned int calls;
};

static int stray_ioctl(void *ctx, int fd, unsigned long req, void *arg)
{
	struct stray *st = ctx;
	struct vfio_iommu_type1_dirty_bitmap db;
	struct vfio_iommu_type1_dirty_bitmap_get get;
	uint64_t nbits;
	int rc = ioctl(fd, req, arg) < 0 ? -errno : 0;

	st->calls++;
	if (rc || !st->armed || req != VFIO_IOMMU_DIRTY_PAGES)
		return rc;
	memcpy(&db, arg, sizeof(db));
	if (!(db.flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP))
		return rc;
	memcpy(&get, (const char *)arg + offsetof(struct vfio_iommu_type1_dirty_bitmap, data),
	       sizeof(get));
	nbits = get.size / get.bitmap.pgsize;
	if (nbits % 64)
		((uint64_t *)(uintptr_t)get.bitmap.data)[nbits / 64] |= 1ull << (nbits % 64);
	return rc;
}

/* 5e: a bit past the window is an error that marks everything, never dropped. */
static void part_errors_stray(void)
{
	const uint64_t ie = 0x6400000;
	const struct dirty_range e_all = { 0x50000000 + 200 * P, 8 * P };
	struct stray st = { 0 };
	struct dirty_vfio_type1_config cfg = {
		.container_fd = edu.container, .ioctl = stray_ioctl, .ioctl_ctx = &st,
	};
	struct dirty_vfio_type1 *t = NULL;
	struct dirty_view_stats vs;
	struct dirty_view *v = NULL;
	uint64_t unmapped = 0;
	bool mapped = false;
	uint8_t *b = alloc_pages(8);
	int rc;

	if (!b) {
		fail("out of memory");
		goto out;
	}
	TRY(vfio_type1_map_dma(edu.container, b, ie, 8 * P));
	mapped = true;
	TRY(type1_view(&e_all, 1, &cfg, &v, &t));
	TRY(dirty_vfio_type1_add_mapping(t, ie, e_all.gpa, e_all.len));
	TRY(dirty_view_start(v));
	expect(v, "5e start", &e_all, 1);
	st.armed = true;
	rc = dirty_view_sync(v);
	st.armed = false;
	check_err("5e sync when the kernel sets a bit past the window", -EPROTO, rc,
		  "outside every registered mapping");
	expect(v, "5e ... marked every mapped page", &e_all, 1);
	TRY(dirty_view_stats(v, &vs));
	CHECK_EQ("5e ... and nothing outside them (the stray bit is not a page)", 0, vs.pages_outside);
	CHECK_EQ("5e ... counted as an error", 1, t1_stats(t).errors);
	TRY(dirty_view_sync(v));
	expect(v, "5e the next sync is fine again", &e_all, 1);
	TRY(dirty_view_stop(v));
	TRY(dirty_vfio_type1_unmap(t, ie, 8 * P, &unmapped));
	mapped = unmapped != 8 * P;
	CHECK_EQ("5e every ioctl went through the config's hook (START, 2 GET_BITMAP, STOP, UNMAP)",
		 5, st.calls);
out:
	dirty_vfio_type1_destroy(t);
	dirty_view_free(v);
	if (mapped)
		vfio_type1_unmap_dma(edu.container, ie, 8 * P);
	if (b)
		munmap(b, 8 * P);
}

/* ---- main ----------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: vm_type1 [--part LIST]\n"
		   "  --part LIST  comma-separated parts to run (1-6 or names: real, cover,\n"
		   "               viommu, pieces, errors, table); default all\n");
}

static const char *const part_names[] = { "", "real", "cover", "viommu", "pieces", "errors", "table" };

int main(int argc, char **argv)
{
	bool run[7] = { false, true, true, true, true, true, true };
	static const uint64_t sizes[] = { 64, 512, 4096 };
	struct row rows[3] = { { 0 } };
	struct dirty_vfio_type1_caps caps;
	struct utsname uts;
	double t0, tp;
	int rc;

	vm_check_init("vm_type1", false);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--part") && i + 1 < argc) {
			char *list = argv[++i];

			memset(run, 0, sizeof(run));
			for (char *s = strtok(list, ","); s; s = strtok(NULL, ",")) {
				int p = atoi(s);

				for (int k = 1; k < 7 && !p; k++)
					if (!strcmp(s, part_names[k]))
						p = k;
				if (p < 1 || p > 6) {
					usage(stderr);
					return 2;
				}
				run[p] = true;
			}
		} else {
			usage(strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? stderr : stdout);
			return strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? 2 : 0;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	uname(&uts);
	t0 = now_ms();
	rc = vfio_edu_open(&edu);
	if (rc) {
		printf("vm_type1: FAIL cannot open edu through vfio-pci (%d)\n", rc);
		printf("vm_type1: RESULT kernel=%s failures=1\n", uts.release);
		return 1;
	}
	rc = dirty_vfio_type1_probe(edu.container, &caps);
	if (rc || !caps.migration) {
		printf("vm_type1: FAIL probe: %d migration=%d %s\n", rc, caps.migration, dirty_last_error());
		printf("vm_type1: RESULT kernel=%s failures=1\n", uts.release);
		return 1;
	}
	ok("probe: migration capability, page size %#" PRIx64 " (pgsize_bitmap %#" PRIx64
	   "), bitmaps up to %" PRIu64 " bytes = %" PRIu64 " pages per GET_BITMAP",
	   caps.pgsize, caps.pgsize_bitmap, caps.max_bitmap_bytes, caps.max_pages);
	rc = load_pattern();
	if (rc) {
		printf("vm_type1: FAIL loading edu's buffer (%d)\n", rc);
		printf("vm_type1: RESULT kernel=%s failures=1\n", uts.release);
		return 1;
	}
	if (run[1]) {
		tp = now_ms();
		part_real();
		printf("vm_type1: part 1 took %.0f ms\n", now_ms() - tp);
	}
	if (run[2]) {
		tp = now_ms();
		printf("vm_type1: ---- 2 cover: the guest protocol stands in for type1, 64 pages\n");
		cover_run(64, true, &rows[0], "2");
		printf("vm_type1: part 2 took %.0f ms\n", now_ms() - tp);
	}
	if (run[3]) {
		tp = now_ms();
		part_viommu();
		printf("vm_type1: part 3 took %.0f ms\n", now_ms() - tp);
	}
	if (run[4]) {
		tp = now_ms();
		part_pieces();
		printf("vm_type1: part 4 took %.0f ms\n", now_ms() - tp);
	}
	if (run[5]) {
		tp = now_ms();
		part_errors();
		part_errors_stray();
		printf("vm_type1: part 5 took %.0f ms\n", now_ms() - tp);
	}
	if (run[6]) {
		char tag[32];

		tp = now_ms();
		printf("vm_type1: ---- 6 table: one one-page DMA, type1 alone vs the merged view\n");
		for (size_t i = 0; i < 3; i++) {
			if (i == 0 && run[2] && rows[0].pages)
				continue;	/* part 2 measured it */
			snprintf(tag, sizeof(tag), "6 (%" PRIu64 " pages)", sizes[i]);
			cover_run(sizes[i], false, &rows[i], tag);
		}
		printf("vm_type1: TABLE %-12s %-18s %-18s %s\n", "mapped pages", "type1 reports",
		       "merged view", "sync ms");
		for (size_t i = 0; i < 3; i++)
			printf("vm_type1: TABLE %-12" PRIu64 " %-18" PRIu64 " %-18" PRIu64 " %.2f\n",
			       rows[i].pages, rows[i].type1, rows[i].merged, rows[i].sync_ms);
		printf("vm_type1: part 6 took %.0f ms\n", now_ms() - tp);
	}
	vfio_edu_close(&edu);
	printf("vm_type1: RESULT kernel=%s checks=%d time_ms=%.0f failures=%d\n", uts.release,
	       checks, now_ms() - t0, failures);
	return failures ? 1 : 0;
}
