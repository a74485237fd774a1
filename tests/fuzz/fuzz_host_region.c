/* SPDX-License-Identifier: MIT */
/*
 * fuzz_host_region.c - libFuzzer target: the host side of the guest bitmap
 * protocol (hv-adapters/gproto*.c) reading a region a hostile guest writes.
 *
 * Per input: a view with one region and a dirty_gp covering it (memfd);
 * this file maps the region itself (MAP_SHARED) and plays the guest. The
 * input is a config byte and then a sequence of operations: raw writes,
 * word stores and fills anywhere in the region (header, host and guest
 * words, dirty, summary, pin bitmaps), correct guest marks and pins, and
 * the host calls (sync, final, health, acked, pinned, track, claim/drain)
 * and CPU-side marks of the view (which DEFER claims keep back while
 * pinned) interleaved with them, so every host read may follow a
 * torn or hostile write. Any violated invariant abort()s; ASan+UBSan catch
 * the host reading outside its own geometry.
 *
 * Invariants (a model kept beside the region; see the CHECKs):
 *  - every claimed run is page aligned and inside the covered range, and
 *    nothing is ever marked outside it (pages_outside stays 0);
 *  - trust is exactly what gproto_trust.c's rules say, mirrored here step by
 *    step: broken (sticky) once a host-owned field differed at a judgement;
 *    trusted while tracking, sane guest words and the current generation
 *    acknowledged; a loss raises the generation; every gain owes the whole
 *    range (the new pass) to the drains;
 *  - dirty_gp_pinned/acked agree with the region and the range;
 *  - no lost page: a page the guest marked correctly (and did not erase
 *    itself), or that was marked in the view (and perhaps kept back by a
 *    claim because it was pinned), is handed out by a drain before the end
 *    of the next final;
 *  - at final: pins set then are handed out by the drain that follows; if
 *    the final failed or the guest is unhealthy under ALL_DIRTY, every
 *    page is; the final fails with -EHOSTDOWN iff unhealthy under ABORT.
 * Timeouts are set out of reach so that health, and so every run, is a
 * function of the input alone (libFuzzer needs replayable inputs).
 *
 * Build and run: make fuzz-build; build/fuzz/fuzz_host_region CORPUS_DIR
 * (or make fuzz). Seeds: tests/fuzz/corpus/fuzz_host_region/.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "libdirty.h"
#include "libdirty/proto.h"

#define BASE 0x40000000ull
#define VPS 4096ull	/* the view's page size; the gp's is 4 or 8 KiB */

#define CHECK(c)                                                               \
	do {                                                                   \
		if (!(c)) {                                                    \
			fprintf(stderr, "fuzz_host_region: invariant failed at line %d: %s\n", \
				__LINE__, #c);                                 \
			abort();                                               \
		}                                                              \
	} while (0)

/* gp page counts: the brief's default, bit edges, a chunk edge, a group edge. */
static const uint64_t geom[] = { 3 * 4096 + 77, 1, 64, 65, 4097, 64 * 4096 + 3 };

enum { OP_WRITE, OP_FILL, OP_STORE64, OP_GMARK, OP_GPIN, OP_GACK, OP_SYNC,
       OP_HEALTH, OP_ACKED, OP_PINNED, OP_VMARK, OP_TRACK, OP_FINAL,
       OP_CLAIM, OP_DRAIN, OP_COUNT };

struct fz {
	const uint8_t *in;
	size_t left;
	struct dirty_view *v;
	struct dirty_gp *gp;
	struct dirty_claim *cl;
	uint8_t *map;
	struct dirty_proto_header *hdr;	/* our mapping of it */
	uint64_t *dirty, *summary, *pin;
	struct dirty_proto_layout lay;
	uint64_t npages, range, vpages;	/* gp pages, bytes, view pages */
	unsigned int gshift, ratio;	/* view pages per gp page */
	unsigned int fallback;
	uint64_t gen;			/* the host's tracking generation */
	bool tracking, broken, trusted;	/* the host's trust, mirrored */
	uint64_t *owed_dirty;	/* gp pages: correct marks still in the region */
	uint64_t *owed_view;	/* view pages the host owes a drain */
	uint64_t *need, *seen;	/* view pages, for the final checks */
};

static uint64_t take(struct fz *f, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n && f->left; i++, f->left--)
		v |= (uint64_t)*f->in++ << (8 * i);
	return v;
}

static void bits_set(uint64_t *bm, uint64_t s, uint64_t n)
{
	for (; n && (s & 63); s++, n--)
		bm[s / 64] |= 1ull << (s & 63);
	for (; n >= 64; s += 64, n -= 64)
		bm[s / 64] = ~0ull;
	for (; n; s++, n--)
		bm[s / 64] |= 1ull << (s & 63);
}

static bool bits_any(const uint64_t *bm, uint64_t nbits)
{
	for (uint64_t w = 0; w < (nbits + 63) / 64; w++)
		if (bm[w])
			return true;
	return false;
}

/* View pages of gp pages [p, p + n). */
static void owe(struct fz *f, uint64_t *bm, uint64_t p, uint64_t n)
{
	bits_set(bm, p * f->ratio, n * f->ratio);
}

/*
 * Bring owed_dirty in line with the region. Only the guest (us, raw) and
 * a host harvest clear dirty bits: after a raw write a cleared bit is the
 * guest erasing its own mark (dropped); after a sync it was harvested, so
 * the view owes it.
 */
static void reconcile(struct fz *f, bool harvested)
{
	for (uint64_t w = 0; w < f->lay.dirty_words; w++) {
		uint64_t gone = f->owed_dirty[w] & ~__atomic_load_n(&f->dirty[w], __ATOMIC_RELAXED);

		f->owed_dirty[w] &= ~gone;
		for (; harvested && gone; gone &= gone - 1)
			owe(f, f->owed_view, w * 64 + (uint64_t)__builtin_ctzll(gone), 1);
	}
}

/* A host-owned header field differs from what the host last wrote. */
static bool host_fields_bad(struct fz *f)
{
	const struct dirty_proto_header *h = f->hdr;

	return h->magic != DIRTY_PROTO_MAGIC || h->major != DIRTY_PROTO_MAJOR ||
	       h->minor != DIRTY_PROTO_MINOR || h->header_size != DIRTY_PROTO_HEADER_SIZE ||
	       h->page_shift != f->gshift || h->gpa_base != BASE ||
	       h->npages != f->npages || h->region_size != f->lay.region_size ||
	       h->dirty_off != f->lay.dirty_off || h->dirty_len != f->lay.dirty_len ||
	       h->summary_off != f->lay.summary_off || h->summary_len != f->lay.summary_len ||
	       h->pin_off != f->lay.pin_off || h->pin_len != f->lay.pin_len ||
	       h->host.track_gen != f->gen ||
	       h->host.flags != (f->tracking ? DIRTY_PROTO_HOST_TRACKING : 0);
}

static bool guest_sane(struct fz *f)
{
	uint32_t state = f->hdr->guest.state;

	return state <= DIRTY_PROTO_GUEST_STOPPED &&
	       !(state == DIRTY_PROTO_GUEST_RUNNING && f->hdr->guest.major != DIRTY_PROTO_MAJOR);
}

/*
 * gproto_trust.c's __gp_judge, mirrored (no timeouts in play): call it right
 * before every host call that judges (sync, final, health, acked, start).
 */
static void judge(struct fz *f)
{
	bool sane, acked;

	if (f->broken)
		return;
	if (host_fields_bad(f)) {
		f->broken = true;
		f->trusted = false;
		return;
	}
	if (!f->tracking) {
		f->trusted = false;
		return;
	}
	sane = guest_sane(f);
	acked = f->hdr->guest.ack_gen == f->gen;
	if (f->trusted && !(sane && acked)) {
		f->trusted = false;
		f->gen++;		/* a loss raises a fresh generation */
	} else if (!f->trusted && sane && acked) {
		f->trusted = true;	/* a gain: the whole range, a new pass */
		bits_set(f->owed_view, 0, f->vpages);
	}
}

static void check_health(struct fz *f, struct dirty_gp_health *h)
{
	judge(f);
	CHECK(dirty_gp_health(f->gp, h) == 0);
	CHECK(h->healthy == f->trusted);
	CHECK((h->state == DIRTY_GP_BROKEN) == f->broken);
	CHECK(h->generation == f->gen);
	CHECK(memchr(h->reason, 0, sizeof(h->reason)) != NULL);
	CHECK(h->healthy ? !h->reason[0] : !!h->reason[0]);
	CHECK(h->guest_state == f->hdr->guest.state);
}

/* One claim call; every page handed out is no longer owed. */
static ssize_t claim(struct fz *f, size_t max)
{
	struct dirty_run runs[8];
	ssize_t k = dirty_claim_next(f->cl, runs, max);

	CHECK(k >= 0 && (size_t)k <= max);
	for (ssize_t i = 0; i < k; i++) {
		uint64_t g = runs[i].gpa, n = runs[i].len;

		CHECK(n && !(g % VPS) && !(n % VPS));
		CHECK(g >= BASE && g - BASE <= f->range && n <= f->range - (g - BASE));
		for (uint64_t p = (g - BASE) / VPS, e = p + n / VPS; p < e; p++) {
			if (!(p & 63) && e - p >= 64) {
				f->seen[p / 64] = ~0ull;
				f->owed_view[p / 64] = 0;
				p += 63;
				continue;
			}
			f->seen[p / 64] |= 1ull << (p & 63);
			f->owed_view[p / 64] &= ~(1ull << (p & 63));
		}
	}
	return k;
}

static void drain(struct fz *f)
{
	while (claim(f, 8) > 0)
		;
}

static void do_final(struct fz *f)
{
	struct dirty_gp_health h;
	uint64_t words = (f->vpages + 63) / 64, pages;
	bool all;
	int err;

	/* Pins as the final sees them: only the guest writes them. */
	memset(f->need, 0, words * 8);
	for (uint64_t w = 0; w < f->lay.dirty_words; w++)
		for (uint64_t p = f->pin[w]; p; p &= p - 1) {
			uint64_t pg = w * 64 + (uint64_t)__builtin_ctzll(p);

			if (pg < f->npages)
				owe(f, f->need, pg, 1);
		}
	judge(f);
	all = !f->trusted;	/* the final round's own judgement */
	err = dirty_view_final(f->v);
	reconcile(f, true);
	CHECK(err == (all && f->fallback == DIRTY_GP_FALLBACK_ABORT ? -EHOSTDOWN : 0));
	check_health(f, &h);
	if (all) {
		/* Every page was marked: the marks still in the region are covered. */
		for (uint64_t w = 0; w < f->lay.dirty_words; w++)
			for (uint64_t d = f->owed_dirty[w]; d; d &= d - 1)
				owe(f, f->owed_view, w * 64 + (uint64_t)__builtin_ctzll(d), 1);
		memset(f->owed_dirty, 0, f->lay.dirty_words * 8);
		bits_set(f->need, 0, f->vpages);
	}
	/* A healthy final harvested every word. */
	CHECK(!bits_any(f->owed_dirty, f->npages));
	memset(f->seen, 0, words * 8);
	drain(f);
	for (uint64_t w = 0; w < words; w++)
		CHECK(!(f->need[w] & ~f->seen[w]));
	if (getenv("FUZZ_TRACE"))
		for (uint64_t p = 0; p < f->vpages; p++)
			if (f->owed_view[p / 64] >> (p % 64) & 1)
				fprintf(stderr, "view page %lu owed, not handed out by the final drain\n",
					(unsigned long)p);
	CHECK(!bits_any(f->owed_view, f->vpages));
	CHECK(dirty_view_count(f->v, &pages, NULL) == 0 && pages == 0);
}

/* Section s of the region (0 all, 1 header, 2 dirty, 3 summary, 4 pin). */
static void section(struct fz *f, unsigned int s, uint64_t *off, uint64_t *len)
{
	static const unsigned int n = 5;

	switch (s % n) {
	case 0: *off = 0; *len = f->lay.region_size; break;
	case 1: *off = 0; *len = DIRTY_PROTO_HEADER_SIZE; break;
	case 2: *off = f->lay.dirty_off; *len = f->lay.dirty_len; break;
	case 3: *off = f->lay.summary_off; *len = f->lay.summary_len; break;
	default: *off = f->lay.pin_off; *len = f->lay.pin_len; break;
	}
}

/* An address: raw, near the range (unaligned too), or near 2^64. */
static uint64_t arg_gpa(struct fz *f)
{
	unsigned int m = (unsigned int)take(f, 1) % 3;
	uint64_t v = take(f, 8);

	if (m == 0)
		return v;
	if (m == 1)
		return BASE - 2 * VPS + v % (f->range + 4 * VPS);
	return UINT64_MAX - v % (4 * VPS);
}


static const char *const op_names[OP_COUNT] = {
	"write", "fill", "store64", "gmark", "gpin", "gack", "sync", "health", "acked",
	"pinned", "vmark", "track", "final", "claim", "drain",
};

static void step(struct fz *f)
{
	struct dirty_gp_health h;
	uint64_t off, len, a, b;
	unsigned int op = (unsigned int)take(f, 1) % OP_COUNT;
	int r;

	/* FUZZ_TRACE=1 when replaying a crash: the operations, in order. */
	if (getenv("FUZZ_TRACE"))
		fprintf(stderr, "op %s (%zu input bytes left)\n", op_names[op], f->left);
	switch (op) {
	case OP_WRITE:	/* raw bytes at any offset: torn header fields, odd bits */
		off = take(f, 2) % f->lay.region_size;
		len = take(f, 1) % 33;
		len = len < f->left ? len : f->left;
		len = len < f->lay.region_size - off ? len : f->lay.region_size - off;
		memcpy(f->map + off, f->in, len);
		f->in += len;
		f->left -= len;
		reconcile(f, false);
		break;
	case OP_FILL:	/* a span of one section, often all-ones */
		section(f, (unsigned int)take(f, 1), &off, &len);
		a = take(f, 2) % len;
		b = take(f, 2);
		b = b ? b % (len - a) + 1 : len - a;
		r = (int)take(f, 1);
		memset(f->map + off + a, r & 0x80 ? 0xff : r, b);
		reconcile(f, false);
		break;
	case OP_STORE64:	/* one aligned word, as a guest's atomic store */
		off = take(f, 2) % (f->lay.region_size / 8);
		__atomic_store_n((uint64_t *)f->map + off, take(f, 8), __ATOMIC_SEQ_CST);
		reconcile(f, false);
		break;
	case OP_GMARK:	/* a correct guest mark: the host must not lose it */
		a = take(f, 4) % f->npages;
		b = take(f, 1) + 1;
		b = b < f->npages - a ? b : f->npages - a;
		dirty_proto_set_dirty_range(f->dirty, f->summary, a, b);
		bits_set(f->owed_dirty, a, b);
		break;
	case OP_GPIN:
		a = take(f, 4) % f->npages;
		if (take(f, 1) & 1)
			dirty_proto_unpin(f->pin, a);
		else
			dirty_proto_pin(f->pin, a);
		break;
	case OP_GACK:	/* a live, well-behaved agent */
		f->hdr->guest.heartbeat++;
		f->hdr->guest.major = DIRTY_PROTO_MAJOR;
		f->hdr->guest.minor = DIRTY_PROTO_MINOR;
		f->hdr->guest.state = DIRTY_PROTO_GUEST_RUNNING;
		f->hdr->guest.ack_gen = f->hdr->host.track_gen;
		break;
	case OP_SYNC:
		judge(f);
		CHECK(dirty_view_sync(f->v) == 0);	/* no path in a sync may fail */
		reconcile(f, true);
		break;
	case OP_HEALTH:
		check_health(f, &h);
		break;
	case OP_ACKED:
		judge(f);
		a = f->hdr->guest.ack_gen;
		CHECK(dirty_gp_acked(f->gp) == (a == f->gen));
		break;
	case OP_PINNED:
		a = arg_gpa(f);
		r = dirty_gp_pinned(f->gp, a);
		if (a < BASE || (a - BASE) >> f->gshift >= f->npages) {
			CHECK(r == -ERANGE);
		} else {
			b = (a - BASE) >> f->gshift;
			CHECK(r == (int)(f->pin[b / 64] >> (b % 64) & 1));
		}
		break;
	case OP_VMARK:	/* a CPU-side mark: DEFER claims keep it back while pinned */
		a = take(f, 4) % f->range;
		len = take(f, 4) % (f->range - a) + 1;
		CHECK(dirty_view_mark(f->v, BASE + a, len) == 0);
		bits_set(f->owed_view, a / VPS, (a + len + VPS - 1) / VPS - a / VPS);
		break;
	case OP_TRACK:
		a = take(f, 1) & 1;
		CHECK(dirty_gp_track(f->gp, (int)a) == 0);
		f->gen++;
		f->tracking = a;
		f->trusted = false;	/* a new generation is acknowledged anew */
		break;
	case OP_FINAL:
		do_final(f);
		break;
	case OP_CLAIM:	/* partial: leaves private state in the cursor */
		claim(f, take(f, 1) % 8 + 1);
		break;
	default:
		drain(f);
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { .in = data, .left = size };
	unsigned int cfg = (unsigned int)take(&f, 1);
	struct dirty_gp_config gc = {
		.gpa = BASE,
		.pinned = cfg & 1 ? DIRTY_GP_PINNED_DEFER : DIRTY_GP_PINNED_SEND,
		.fallback = cfg & 2 ? DIRTY_GP_FALLBACK_ABORT : DIRTY_GP_FALLBACK_ALL_DIRTY,
		.heartbeat_timeout_ms = 0,
		.ack_timeout_ms = 24u * 3600 * 1000,	/* out of reach: replayable */
	};
	struct dirty_view_stats st;
	uint64_t vwords;

	f.npages = geom[(cfg >> 3 & 7) % (sizeof(geom) / sizeof(geom[0]))];
	f.gshift = cfg & 0x40 ? 13 : 12;
	f.ratio = 1u << (f.gshift - 12);
	f.range = f.npages << f.gshift;
	f.vpages = f.range / VPS;
	f.fallback = gc.fallback;
	gc.page_size = 1ull << f.gshift;
	gc.len = f.range;
	CHECK(dirty_proto_layout(f.npages, &f.lay) == 0);
	vwords = (f.vpages + 63) / 64;
	f.owed_dirty = calloc(f.lay.dirty_words, 8);
	f.owed_view = calloc(vwords, 8);
	f.need = calloc(vwords, 8);
	f.seen = calloc(vwords, 8);
	CHECK(f.owed_dirty && f.owed_view && f.need && f.seen);

	CHECK(dirty_view_new(&f.v) == 0);
	CHECK(dirty_view_add_region(f.v, BASE, f.range, VPS, 0) == 0);
	CHECK(dirty_gp_create(f.v, &gc, &f.gp) == 0);
	CHECK(dirty_gp_size(f.gp) == f.lay.region_size);
	f.map = mmap(NULL, f.lay.region_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		     dirty_gp_fd(f.gp), 0);
	CHECK(f.map != MAP_FAILED);
	f.hdr = (struct dirty_proto_header *)f.map;
	f.dirty = (uint64_t *)(f.map + f.lay.dirty_off);
	f.summary = (uint64_t *)(f.map + f.lay.summary_off);
	f.pin = (uint64_t *)(f.map + f.lay.pin_off);
	CHECK(dirty_claim_new(f.v, &f.cl) == 0);
	if (cfg & 4) {
		CHECK(dirty_view_start(f.v) == 0);	/* raises the generation, then judges */
		f.gen = 1;
		f.tracking = true;
		judge(&f);
	}

	while (f.left)
		step(&f);
	do_final(&f);
	CHECK(dirty_view_stats(f.v, &st) == 0 && st.pages_outside == 0);

	dirty_claim_free(f.cl);
	munmap(f.map, f.lay.region_size);
	dirty_view_free(f.v);	/* frees the gp with its source */
	free(f.owed_dirty);
	free(f.owed_view);
	free(f.need);
	free(f.seen);
	return 0;
}
