/* SPDX-License-Identifier: MIT */
/*
 * gproto.c - the host side of the guest bitmap protocol: creates the
 * shared region, harvests dirty bits into the view, handles pinned and
 * carried pages, and judges the guest's health.
 *
 * Trust: the guest may write anything anywhere in the region. Geometry
 * (layout, page count, range) lives in this struct and is never read back
 * from the region; every index is bounded by it. A header that no longer
 * matches what the host wrote, a silent agent or a missing acknowledgement
 * makes the guest "unhealthy", and the final round then applies the
 * configured fallback instead of trusting the bitmaps.
 *
 * Ordering: the guest sets a dirty bit, then its summary bit; it clears a
 * pin bit only after both. The host exchanges summary words and then the
 * dirty words they name (seq_cst, matching libdirty/proto.h), and reads
 * pin bits with acquire before acting on "not pinned".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "libdirty/proto.h"

struct dirty_gp {
	int fd;
	uint8_t *base;
	struct dirty_proto_header *hdr;	/* shared: untrusted */
	struct dirty_proto_header expect;	/* what the host wrote */
	struct dirty_proto_layout lay;
	uint64_t *dirty, *summary, *pin;
	uint64_t gpa, npages, page_size;
	unsigned int shift;
	struct dirty_gp_config cfg;
	struct dirty_source *src;
	struct hbm carried;	/* deferred pages, host-private */
	/*
	 * DEFER: claims keep pinned pages back into `carried` until final
	 * begins; both sides take carry_lock, so a page kept back either
	 * lands before final releases every carried page, or is not kept.
	 */
	pthread_mutex_t carry_lock;
	bool final_started;	/* under carry_lock */
	pthread_mutex_t lock;	/* health and generation state */
	bool healthy;
	char reason[160];
	uint64_t gen;
	bool tracking;
	double gen_time;
	uint64_t last_hb;
	double last_hb_change;
	_Atomic uint64_t harvested, pinned_sent, carried_sent, kept_back;	/* relaxed: statistics */
};

#define LDA(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LDX(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define XCHG(p) __atomic_exchange_n((p), 0, __ATOMIC_SEQ_CST)

static void unhealthy(struct dirty_gp *gp, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Called with gp->lock held. The first reason sticks. */
static void unhealthy(struct dirty_gp *gp, const char *fmt, ...)
{
	va_list ap;

	if (!gp->healthy)
		return;
	gp->healthy = false;
	va_start(ap, fmt);
	vsnprintf(gp->reason, sizeof(gp->reason), fmt, ap);
	va_end(ap);
}

#define CHECK_FIELD(f)                                                         \
	do {                                                                   \
		uint64_t got = (uint64_t)LDA(&h->f);                           \
		if (got != (uint64_t)gp->expect.f) {                           \
			unhealthy(gp, "region header field " #f " was overwritten (%#llx, host wrote %#llx)", \
				  (unsigned long long)got,                     \
				  (unsigned long long)gp->expect.f);           \
			return;                                                \
		}                                                              \
	} while (0)

/* Re-judge health now. Called with gp->lock held. */
static void check_health(struct dirty_gp *gp)
{
	struct dirty_proto_header *h = gp->hdr;
	double now = __dirty_now();
	uint32_t state;
	uint64_t hb;

	if (!gp->healthy)
		return;
	CHECK_FIELD(magic);
	CHECK_FIELD(major);
	CHECK_FIELD(minor);
	CHECK_FIELD(header_size);
	CHECK_FIELD(page_shift);
	CHECK_FIELD(gpa_base);
	CHECK_FIELD(npages);
	CHECK_FIELD(region_size);
	CHECK_FIELD(dirty_off);
	CHECK_FIELD(dirty_len);
	CHECK_FIELD(summary_off);
	CHECK_FIELD(summary_len);
	CHECK_FIELD(pin_off);
	CHECK_FIELD(pin_len);
	CHECK_FIELD(host.track_gen);
	CHECK_FIELD(host.flags);
	state = LDA(&h->guest.state);
	if (state == DIRTY_PROTO_GUEST_RUNNING &&
	    LDA(&h->guest.major) != DIRTY_PROTO_MAJOR) {
		unhealthy(gp, "guest speaks protocol v%u, the host v%u",
			  (unsigned int)LDA(&h->guest.major), DIRTY_PROTO_MAJOR);
		return;
	}
	if (state > DIRTY_PROTO_GUEST_STOPPED) {
		unhealthy(gp, "guest state word holds %u, which no guest writes", state);
		return;
	}
	hb = LDA(&h->guest.heartbeat);
	if (hb != gp->last_hb) {
		gp->last_hb = hb;
		gp->last_hb_change = now;
	} else if (gp->cfg.heartbeat_timeout_ms &&
		   (now - gp->last_hb_change) * 1000 > gp->cfg.heartbeat_timeout_ms) {
		unhealthy(gp, "guest agent silent for %.0f ms (timeout %u ms); is the agent running?",
			  (now - gp->last_hb_change) * 1000, gp->cfg.heartbeat_timeout_ms);
		return;
	}
	if (gp->tracking && LDA(&h->guest.ack_gen) != gp->gen &&
	    (now - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms)
		unhealthy(gp, "guest did not acknowledge tracking generation %llu within %u ms",
			  (unsigned long long)gp->gen, gp->cfg.ack_timeout_ms);
}

/*
 * Merge 64 words of pages (one 4096-page chunk) into the view; *counter
 * (a statistic) receives their number.
 */
static int flush_chunk(struct dirty_gp *gp, uint64_t c, uint64_t *words,
		       uint64_t *mask, _Atomic uint64_t *counter)
{
	uint64_t n = 0;
	int err;

	if (!*mask)
		return 0;
	for (unsigned int j = 0; j < 64; j++) {
		if (*mask >> j & 1) {
			n += hbm_popcount(words[j]);
			words[j] = htole64(words[j]);
		} else {
			words[j] = 0;
		}
	}
	*mask = 0;
	atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
	err = dirty_source_merge_bitmap(gp->src,
					gp->gpa + ((c * 4096) << gp->shift),
					gp->page_size, words,
					gp->npages - c * 4096 < 4096 ?
					gp->npages - c * 4096 : 4096);
	memset(words, 0, 64 * sizeof(words[0]));
	return err;
}

/* Valid bits of dirty word w (the last one may be short). */
static uint64_t word_mask(struct dirty_gp *gp, uint64_t w)
{
	uint64_t left = gp->npages - w * 64;

	return left >= 64 ? ~0ull : (1ull << left) - 1;
}

/*
 * Move dirty bits into the view. Through the summary (O(dirty)), or, at
 * final, every dirty word: a guest that set a dirty bit and died before
 * its summary bit still gets its page sent.
 */
static int harvest(struct dirty_gp *gp, bool all_words)
{
	uint64_t words[64] = { 0 }, mask = 0, cur = UINT64_MAX;
	int err = 0, e;

	for (uint64_t sw = 0; sw < gp->lay.summary_words; sw++) {
		uint64_t s;

		if (all_words) {
			XCHG(&gp->summary[sw]);
			s = ~0ull;
		} else {
			if (!LDX(&gp->summary[sw]))
				continue;
			s = XCHG(&gp->summary[sw]);
		}
		while (s) {
			uint64_t w = sw * 64 + (uint64_t)__builtin_ctzll(s);
			uint64_t d;

			s &= s - 1;
			if (w >= gp->lay.dirty_words)
				break;	/* bits past the end: guest garbage */
			d = LDX(&gp->dirty[w]) ? XCHG(&gp->dirty[w]) & word_mask(gp, w) : 0;
			if (!d)
				continue;
			if (w / 64 != cur) {
				e = flush_chunk(gp, cur, words, &mask, &gp->harvested);
				err = err ? err : e;
				cur = w / 64;
			}
			words[w % 64] = d;
			mask |= 1ull << (w % 64);
		}
	}
	e = flush_chunk(gp, cur, words, &mask, &gp->harvested);
	return err ? err : e;
}

/* Mark every pinned page (acquire: a clear pin means its dirty bit is visible). */
static int mark_pinned(struct dirty_gp *gp)
{
	uint64_t words[64] = { 0 }, mask = 0, cur = UINT64_MAX;
	int err = 0, e;

	for (uint64_t w = 0; w < gp->lay.dirty_words; w++) {
		uint64_t p = LDA(&gp->pin[w]) & word_mask(gp, w);

		if (!p)
			continue;
		if (w / 64 != cur) {
			e = flush_chunk(gp, cur, words, &mask, &gp->pinned_sent);
			err = err ? err : e;
			cur = w / 64;
		}
		words[w % 64] = p;
		mask |= 1ull << (w % 64);
	}
	e = flush_chunk(gp, cur, words, &mask, &gp->pinned_sent);
	return err ? err : e;
}

/*
 * Carried pages: send those no longer pinned (or all, at final); keep the
 * rest carried.
 */
static int release_carried(struct dirty_gp *gp, bool all)
{
	uint64_t words[64], wmask, g = 0;
	int err = 0;

	while ((g = hbm_find_group(&gp->carried, g)) != HBM_NONE) {
		uint64_t chunks, full;

		hbm_take_group(&gp->carried, g, &chunks, &full);
		for (chunks |= full; chunks; chunks &= chunks - 1) {
			uint64_t c = (g << 6) + (uint64_t)__builtin_ctzll(chunks);
			bool isfull = full >> (c & 63) & 1;
			uint64_t keep[64] = { 0 }, send = 0, sendw[64] = { 0 };

			hbm_claim_chunk(&gp->carried, c, isfull, words, &wmask);
			if (isfull) {
				uint64_t npg = hbm_chunk_pages(&gp->carried, c);

				wmask = 0;
				for (unsigned int j = 0; j * 64 < npg; j++) {
					words[j] = npg - j * 64 >= 64 ? ~0ull :
						(1ull << (npg - j * 64)) - 1;
					wmask |= 1ull << j;
				}
			}
			for (; wmask; wmask &= wmask - 1) {
				unsigned int j = (unsigned int)__builtin_ctzll(wmask);
				uint64_t pinned = all ? 0 : LDA(&gp->pin[c * 64 + j]);

				keep[j] = words[j] & pinned;
				sendw[j] = words[j] & ~pinned;
				if (sendw[j])
					send |= 1ull << j;
			}
			hbm_or_chunk(&gp->carried, c, keep, 64);
			if (send) {
				int e = flush_chunk(gp, c, sendw, &send, &gp->carried_sent);

				err = err ? err : e;
			}
		}
		g++;
	}
	return err;
}

static void set_final_started(struct dirty_gp *gp, bool on)
{
	pthread_mutex_lock(&gp->carry_lock);
	gp->final_started = on;
	pthread_mutex_unlock(&gp->carry_lock);
}

static int gp_sync_common(struct dirty_source *src, bool final)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	char reason[sizeof(gp->reason)];
	bool healthy;
	int err, e;

	/* From final on nothing is kept back; a later sync is a new pre-copy. */
	set_final_started(gp, final);

	pthread_mutex_lock(&gp->lock);
	check_health(gp);
	healthy = gp->healthy;
	memcpy(reason, gp->reason, sizeof(reason));
	pthread_mutex_unlock(&gp->lock);

	if (final && !healthy) {
		if (gp->cfg.fallback == DIRTY_GP_FALLBACK_ABORT)
			return __dirty_err(-EHOSTDOWN, "guest protocol unhealthy at final: %s",
					   reason);
		return dirty_source_mark(src, gp->gpa, gp->npages << gp->shift);
	}
	err = harvest(gp, final);
	if (final || gp->cfg.pinned == DIRTY_GP_PINNED_SEND) {
		e = mark_pinned(gp);
		err = err ? err : e;
	}
	e = release_carried(gp, final);
	return err ? err : e;
}

static int gp_sync(struct dirty_source *src)
{
	return gp_sync_common(src, false);
}

static int gp_final(struct dirty_source *src)
{
	return gp_sync_common(src, true);
}

static int gp_start(struct dirty_source *src)
{
	set_final_started(dirty_source_priv(src), false);
	return dirty_gp_track(dirty_source_priv(src), 1);
}

/*
 * Ready once the guest acknowledged tracking. A guest that never opened
 * the region (not booted yet) is not waited for: its first
 * acknowledgement will come late, which the health rules handle.
 */
static int gp_ready(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);

	if (LDA(&gp->hdr->guest.state) != DIRTY_PROTO_GUEST_RUNNING)
		return -ENODEV;
	return dirty_gp_acked(gp);
}

/* Pinned pages in gp pages [p, end): the first one, or end. */
static uint64_t next_pinned(struct dirty_gp *gp, uint64_t p, uint64_t end)
{
	while (p < end) {
		/* Acquire: as mark_pinned(); a clear pin shows its dirty bit. */
		uint64_t v = LDA(&gp->pin[p / 64]) & (~0ull << (p % 64));

		if (v)
			return (p & ~63ull) + (uint64_t)__builtin_ctzll(v) < end ?
				(p & ~63ull) + (uint64_t)__builtin_ctzll(v) : end;
		p = (p & ~63ull) + 64;
	}
	return end;
}

/* Append [gpa, gpa + len) to out; false if that would pass max runs. */
static bool put_run(struct dirty_run *out, size_t *n, size_t max, uint64_t gpa,
		    uint64_t len)
{
	if (!len)
		return true;
	if (*n && out[*n - 1].gpa + out[*n - 1].len == gpa) {
		out[*n - 1].len += len;
		return true;
	}
	if (*n == max)
		return false;
	out[*n].gpa = gpa;
	out[(*n)++].len = len;
	return true;
}

/*
 * One claimed run: pass its pages on to out, keeping back (carrying) the
 * pinned ones in units of `unit` bytes (the larger of the region's and
 * the protocol's page size, so what is handed out stays page aligned).
 * At most lim runs may be used in all; a split that would need more is
 * not made and the rest goes out as is: sending a pinned page is merely
 * early, never wrong. The caller leaves a free slot for the run.
 */
static void withhold_run(struct dirty_gp *gp, struct dirty_run in, uint64_t unit,
			 struct dirty_run *out, size_t *n, size_t lim)
{
	uint64_t end = in.gpa + in.len, gend = gp->gpa + (gp->npages << gp->shift);
	uint64_t a = in.gpa > gp->gpa ? in.gpa : gp->gpa;
	uint64_t e = end < gend ? end : gend;
	uint64_t pos = in.gpa;	/* what is not yet handed out or kept back */

	while (a < e) {
		uint64_t last = (e - gp->gpa + gp->page_size - 1) >> gp->shift;
		uint64_t p = next_pinned(gp, (a - gp->gpa) >> gp->shift, last);
		uint64_t x = gp->gpa + (p << gp->shift), k0, k1, first, count;
		size_t need;

		if (p >= last)
			break;
		k0 = x & ~(unit - 1);
		k1 = k0 + unit;
		k0 = k0 < pos ? pos : k0;
		k1 = k1 > end ? end : k1;
		a = k1;
		/* Only whole units inside the protocol's range are kept back. */
		if (k0 < gp->gpa || k1 > gend)
			continue;
		/* Slots for the part before (unless it joins) and for a tail. */
		need = (k0 > pos && !(*n && out[*n - 1].gpa + out[*n - 1].len == pos)) +
		       (k1 < end);
		if (*n + need > lim)
			break;
		put_run(out, n, lim, pos, k0 - pos);
		/*
		 * Carried whole: a run shorter than a protocol page keeps back
		 * part of one, and the page is carried (and later sent) whole.
		 */
		first = (k0 - gp->gpa) >> gp->shift;
		count = ((k1 - gp->gpa + gp->page_size - 1) >> gp->shift) - first;
		hbm_mark(&gp->carried, first, count);
		atomic_fetch_add_explicit(&gp->kept_back, count, memory_order_relaxed);
		pos = k1;
	}
	put_run(out, n, lim, pos, end - pos);	/* room was left for it */
}

/*
 * DEFER: pinned pages a claim took are kept back until they are unpinned
 * (then marked again by release_carried()) or until final; the claimer
 * never sees them, so no caller has to skip and report them.
 */
static int gp_prepare_read(struct dirty_source *src, struct dirty_run *runs,
			   size_t *n, size_t max)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	uint64_t gend = gp->gpa + (gp->npages << gp->shift);
	struct dirty_view *view = dirty_source_view(src);
	const struct region_table *t;
	struct dirty_run *in;
	size_t i, nin = *n;
	bool any = false;

	for (i = 0; i < nin && !any; i++) {
		uint64_t a = runs[i].gpa > gp->gpa ? runs[i].gpa : gp->gpa;
		uint64_t e = runs[i].gpa + runs[i].len < gend ? runs[i].gpa + runs[i].len : gend;

		any = a < e && next_pinned(gp, (a - gp->gpa) >> gp->shift,
					   (e - gp->gpa + gp->page_size - 1) >> gp->shift) <
			       (e - gp->gpa + gp->page_size - 1) >> gp->shift;
	}
	if (!any)
		return 0;
	in = malloc(nin * sizeof(*in));
	if (!in)
		return 0;	/* nothing kept back: every page goes out, which is correct */
	memcpy(in, runs, nin * sizeof(*in));
	pthread_mutex_lock(&gp->carry_lock);
	if (gp->final_started) {
		pthread_mutex_unlock(&gp->carry_lock);
		free(in);
		return 0;
	}
	/* Called inside the claimer's read section: the table is stable. */
	t = atomic_load_explicit(&view->table, memory_order_acquire);
	*n = 0;
	for (i = 0; i < nin; i++) {
		const struct region *r = __dirty_table_find(t, in[i].gpa);
		uint64_t unit = r && r->page_size > gp->page_size ? r->page_size : gp->page_size;

		/* One slot stays free for each run still to come. */
		withhold_run(gp, in[i], unit, runs, n, max - (nin - 1 - i));
	}
	pthread_mutex_unlock(&gp->carry_lock);
	free(in);
	return 0;
}

/* Trusted right now: the cover policy asks this at each round start. */
static int gp_healthy(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	bool ok;

	pthread_mutex_lock(&gp->lock);
	check_health(gp);
	ok = gp->healthy && gp->tracking && LDA(&gp->hdr->guest.ack_gen) == gp->gen;
	pthread_mutex_unlock(&gp->lock);
	return ok;
}

/* DEFER: what final will add that the view does not hold now (at most). */
static uint64_t gp_held_bytes(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	uint64_t pages = hbm_count(&gp->carried);

	for (uint64_t w = 0; w < gp->lay.dirty_words; w++)
		pages += hbm_popcount(LDA(&gp->pin[w]) & word_mask(gp, w));
	return pages << gp->shift;
}

static int gp_stop(struct dirty_source *src)
{
	return dirty_gp_track(dirty_source_priv(src), 0);
}

static void gp_free(struct dirty_gp *gp)
{
	if (gp->base)
		munmap(gp->base, gp->lay.region_size);
	if (gp->fd >= 0)
		close(gp->fd);
	hbm_destroy(&gp->carried);
	pthread_mutex_destroy(&gp->lock);
	pthread_mutex_destroy(&gp->carry_lock);
	free(gp);
}

static void gp_destroy(struct dirty_source *src)
{
	gp_free(dirty_source_priv(src));
}

static const struct dirty_source_ops gp_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "guest-protocol",
	.start = gp_start,
	.stop = gp_stop,
	.sync = gp_sync,
	.final = gp_final,
	.destroy = gp_destroy,
	.ready = gp_ready,
	.healthy = gp_healthy,
};

/* DEFER: claims keep pinned pages back; final adds them. */
static const struct dirty_source_ops gp_defer_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_PRECISE,
	.name = "guest-protocol",
	.start = gp_start,
	.stop = gp_stop,
	.sync = gp_sync,
	.final = gp_final,
	.destroy = gp_destroy,
	.prepare_read = gp_prepare_read,
	.ready = gp_ready,
	.held_bytes = gp_held_bytes,
	.healthy = gp_healthy,
};

static int create_region(struct dirty_gp *gp)
{
	struct dirty_proto_header *e = &gp->expect;

	if (gp->cfg.path)
		gp->fd = open(gp->cfg.path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	else
		gp->fd = memfd_create("libdirty-gp", MFD_CLOEXEC);
	if (gp->fd < 0)
		return __dirty_err(-errno, "cannot create the protocol region %s: %s",
				   gp->cfg.path ? gp->cfg.path : "(memfd)", strerror(errno));
	if (ftruncate(gp->fd, (off_t)gp->lay.region_size) < 0)
		return __dirty_err(-errno, "cannot size the protocol region to %llu bytes: %s",
				   (unsigned long long)gp->lay.region_size, strerror(errno));
	gp->base = mmap(NULL, gp->lay.region_size, PROT_READ | PROT_WRITE,
			MAP_SHARED, gp->fd, 0);
	if (gp->base == MAP_FAILED) {
		gp->base = NULL;
		return __dirty_err(-errno, "cannot map the protocol region: %s", strerror(errno));
	}
	gp->hdr = (struct dirty_proto_header *)gp->base;
	gp->dirty = (uint64_t *)(gp->base + gp->lay.dirty_off);
	gp->summary = (uint64_t *)(gp->base + gp->lay.summary_off);
	gp->pin = (uint64_t *)(gp->base + gp->lay.pin_off);

	memset(e, 0, sizeof(*e));
	e->magic = DIRTY_PROTO_MAGIC;
	e->major = DIRTY_PROTO_MAJOR;
	e->minor = DIRTY_PROTO_MINOR;
	e->header_size = DIRTY_PROTO_HEADER_SIZE;
	e->page_shift = gp->shift;
	e->gpa_base = gp->gpa;
	e->npages = gp->npages;
	e->region_size = gp->lay.region_size;
	e->dirty_off = gp->lay.dirty_off;
	e->dirty_len = gp->lay.dirty_len;
	e->summary_off = gp->lay.summary_off;
	e->summary_len = gp->lay.summary_len;
	e->pin_off = gp->lay.pin_off;
	e->pin_len = gp->lay.pin_len;
	/* Everything but the magic, then the magic with release: a guest
	 * that sees the magic sees a complete header. */
	memcpy((uint8_t *)gp->hdr + 8, (uint8_t *)e + 8, sizeof(*e) - 8);
	__atomic_store_n(&gp->hdr->magic, e->magic, __ATOMIC_RELEASE);
	return 0;
}

DIRTY_API int dirty_gp_create(struct dirty_view *view,
			      const struct dirty_gp_config *cfg,
			      struct dirty_gp **out)
{
	struct dirty_range range;
	struct dirty_gp *gp;
	uint64_t ps;
	int err;

	if (!cfg)
		return __dirty_err(-EINVAL, "dirty_gp_create: NULL config");
	ps = cfg->page_size ? cfg->page_size : DIRTY_MIN_PAGE_SIZE;
	if (ps < DIRTY_MIN_PAGE_SIZE || (ps & (ps - 1)) || !cfg->len ||
	    (cfg->gpa | cfg->len) & (ps - 1) || cfg->gpa + cfg->len < cfg->gpa)
		return __dirty_err(-EINVAL, "guest protocol range [%#llx, +%#llx) must be non-empty and aligned to a power-of-two page size >= 4 KiB",
				   (unsigned long long)cfg->gpa, (unsigned long long)cfg->len);
	if (cfg->pinned > DIRTY_GP_PINNED_DEFER || cfg->fallback > DIRTY_GP_FALLBACK_ABORT)
		return __dirty_err(-EINVAL, "unknown pinned policy %u or fallback %u",
				   cfg->pinned, cfg->fallback);
	gp = calloc(1, sizeof(*gp));
	if (!gp)
		return __dirty_err(-ENOMEM, "dirty_gp_create: out of memory");
	gp->fd = -1;
	gp->cfg = *cfg;
	gp->cfg.path = NULL;	/* not kept: the caller owns the string */
	if (!gp->cfg.ack_timeout_ms)
		gp->cfg.ack_timeout_ms = 1000;
	gp->page_size = ps;
	gp->shift = (unsigned int)__builtin_ctzll(ps);
	gp->gpa = cfg->gpa;
	gp->npages = cfg->len >> gp->shift;
	gp->healthy = true;
	gp->last_hb_change = __dirty_now();
	pthread_mutex_init(&gp->lock, NULL);
	pthread_mutex_init(&gp->carry_lock, NULL);
	if (dirty_proto_layout(gp->npages, &gp->lay)) {
		err = __dirty_err(-E2BIG, "guest protocol range of %llu pages is too large",
				  (unsigned long long)gp->npages);
		goto fail;
	}
	err = hbm_init(&gp->carried, gp->npages);
	if (err) {
		err = __dirty_err(err, "dirty_gp_create: cannot allocate the carry-over bitmap");
		goto fail;
	}
	gp->cfg.path = cfg->path;
	err = create_region(gp);
	gp->cfg.path = NULL;
	if (err)
		goto fail;
	range.gpa = gp->gpa;
	range.len = gp->npages << gp->shift;
	err = dirty_source_attach(view, gp->cfg.pinned == DIRTY_GP_PINNED_DEFER ?
				  &gp_defer_ops : &gp_ops, gp, &range, 1, &gp->src);
	if (err)
		goto fail;
	*out = gp;
	return 0;
fail:
	if (gp->fd >= 0 && cfg->path)
		unlink(cfg->path);
	gp_free(gp);
	return err;
}

DIRTY_API void dirty_gp_destroy(struct dirty_gp *gp)
{
	if (gp)
		dirty_source_detach(gp->src);	/* frees gp through gp_destroy */
}

DIRTY_API int dirty_gp_fd(const struct dirty_gp *gp)
{
	return gp->fd;
}

DIRTY_API uint64_t dirty_gp_size(const struct dirty_gp *gp)
{
	return gp->lay.region_size;
}

DIRTY_API struct dirty_source *dirty_gp_source(struct dirty_gp *gp)
{
	return gp->src;
}

DIRTY_API int dirty_gp_track(struct dirty_gp *gp, int on)
{
	pthread_mutex_lock(&gp->lock);
	gp->gen++;
	gp->tracking = on != 0;
	gp->gen_time = __dirty_now();
	gp->expect.host.flags = on ? DIRTY_PROTO_HOST_TRACKING : 0;
	gp->expect.host.track_gen = gp->gen;
	/* The flag first, then the generation (release): a guest that reads
	 * the new generation with acquire reads the new flag too. */
	__atomic_store_n(&gp->hdr->host.flags, gp->expect.host.flags, __ATOMIC_RELEASE);
	__atomic_store_n(&gp->hdr->host.track_gen, gp->gen, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&gp->lock);
	return 0;
}

DIRTY_API int dirty_gp_acked(struct dirty_gp *gp)
{
	int ret;

	pthread_mutex_lock(&gp->lock);
	if (LDA(&gp->hdr->guest.ack_gen) == gp->gen) {
		ret = 1;
	} else {
		check_health(gp);
		ret = (__dirty_now() - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms ?
			-ETIMEDOUT : 0;
	}
	pthread_mutex_unlock(&gp->lock);
	if (ret == -ETIMEDOUT)
		return __dirty_err(ret, "guest did not acknowledge tracking generation %llu within %u ms; is the guest agent running?",
				   (unsigned long long)gp->gen, gp->cfg.ack_timeout_ms);
	return ret;
}

DIRTY_API int dirty_gp_pinned(struct dirty_gp *gp, uint64_t gpa)
{
	uint64_t p;

	if (gpa < gp->gpa || (gpa - gp->gpa) >> gp->shift >= gp->npages)
		return __dirty_err(-ERANGE, "%#llx is outside the guest protocol range",
				   (unsigned long long)gpa);
	p = (gpa - gp->gpa) >> gp->shift;
	return (LDA(&gp->pin[p / 64]) >> (p % 64)) & 1;
}

DIRTY_API int dirty_gp_health(struct dirty_gp *gp, struct dirty_gp_health *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_lock(&gp->lock);
	check_health(gp);
	h->healthy = gp->healthy;
	snprintf(h->reason, sizeof(h->reason), "%s", gp->healthy ? "" : gp->reason);
	h->heartbeat_age_ms = (uint64_t)((__dirty_now() - gp->last_hb_change) * 1000);
	pthread_mutex_unlock(&gp->lock);
	h->guest_state = LDA(&gp->hdr->guest.state);
	h->pin_conflicts = LDA(&gp->hdr->guest.pin_conflicts);
	h->pin_leaks = LDA(&gp->hdr->guest.pin_leaks);
	h->bad_ranges = LDA(&gp->hdr->guest.bad_ranges);
	h->pages_harvested = atomic_load_explicit(&gp->harvested, memory_order_relaxed);
	h->pages_pinned_sent = atomic_load_explicit(&gp->pinned_sent, memory_order_relaxed);
	h->pages_kept_back = atomic_load_explicit(&gp->kept_back, memory_order_relaxed);
	h->pages_carried = hbm_count(&gp->carried);
	h->pages_carried_sent = atomic_load_explicit(&gp->carried_sent, memory_order_relaxed);
	return 0;
}
