/* SPDX-License-Identifier: MIT */
/*
 * guest.c - the guest side of the bitmap protocol: open and validate a
 * region, map/unmap/sync with per-page pin reference counts, heartbeat
 * and the tracking handshake. Writes only the guest-owned words and the
 * three bitmaps (a connected handle, guest_connect.c, not even the
 * guest-owned control words: the dirty-agent daemon owns those); reads
 * the host-owned words; never trusts a header it has not checked against
 * the layout it computes itself.
 *
 * Pin counts live in a pin table (pintable.h): a flat array of 32-bit
 * atomics, one per page. Opened alone (dirty_guest_open_*) the table is
 * this process's, mapped lazily (MAP_NORESERVE: memory follows the pages
 * ever mapped); connected to the agent (dirty_guest_connect) it is the
 * one table every client of the region shares, so the algorithm below
 * runs unchanged among processes as among threads. A count word holds
 * the reference count, OWNED (this table's clients set the pin bit) and
 * BUSY (a 0<->1 transition is in progress; everyone else waits). The
 * races it is built around (checked by tests/model/gproto.pml, where BUSY
 * is a word held with count 0 and the clients of one table are threads):
 *  - A page's pin bit must be set before any caller's map returns. The
 *    first map takes 0 -> BUSY, so every other map of the page waits;
 *    only then is the bit set, and count 1 published.
 *  - The last unmap takes 1 -> BUSY, clears the pin bit if this table's
 *    clients set it, then publishes 0. A map that arrives meanwhile
 *    waits, and its own set of the bit comes after the clear: the last
 *    write. (Setting the bit before claiming the word loses: a map that
 *    read 0 sets a bit that is still set, then wins 0 -> 1 after the
 *    previous holder cleared it, and returns with the page unpinned.)
 *  - "This table's clients set it" (OWNED) is decided by that one set: a
 *    bit found already set belongs to a client of another table (a
 *    process that opened the region alone) and is never cleared.
 * (liburcu's lock-free hash table was the first choice; its 0.13 resize
 * can stop for good - the launch flag is set after the work is queued -
 * and lookups then walk chains of thousands: 20 us per unmap.)
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <urcu/urcu-bp.h>

#include "guest_priv.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "pintable.h"

/* Guest-owned counters: relaxed adds, the host only reads them. */
static void count(uint64_t *ctr)
{
	__atomic_fetch_add(ctr, 1, __ATOMIC_RELAXED);
}

/* Check the header at g->base against the layout v1 computes; fill geometry. */
static int validate(struct dirty_guest *g, uint64_t size)
{
	const struct dirty_proto_header *h = (const void *)g->base;
	uint64_t magic, gpa, npages, end;
	uint32_t hsize, shift;
	uint16_t major, minor;

	if (size < DIRTY_PROTO_HEADER_SIZE)
		return __dirty_guest_err(-EINVAL, "region of %llu bytes is smaller than its 4096-byte header",
				   (unsigned long long)size);
	/* Acquire: pairs with the host publishing the magic after the header. */
	magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
	if (magic != DIRTY_PROTO_MAGIC)
		return __dirty_guest_err(-EPROTO, "not a libdirty region (magic %#llx, want %#llx); is the host's region attached?",
				   (unsigned long long)magic, DIRTY_PROTO_MAGIC);
	major = h->major;
	minor = h->minor;
	if (major != DIRTY_PROTO_MAJOR)
		return __dirty_guest_err(-EPROTONOSUPPORT, "region speaks protocol v%u.%u; this guest library speaks v%u.x: upgrade the guest side",
				   major, minor, DIRTY_PROTO_MAJOR);
	hsize = h->header_size;
	shift = h->page_shift;
	gpa = h->gpa_base;
	npages = h->npages;
	if (hsize != DIRTY_PROTO_HEADER_SIZE || shift < 12 || shift > 40)
		return __dirty_guest_err(-EPROTO, "region header is malformed (header_size %u, page_shift %u)",
				   hsize, shift);
	if (dirty_proto_layout(npages, &g->lay) ||
	    gpa & ((1ull << shift) - 1) ||
	    __builtin_add_overflow(gpa, npages << shift, &end) ||
	    (npages << shift) >> shift != npages)
		return __dirty_guest_err(-EPROTO, "region covers an impossible range (base %#llx, %llu pages of 2^%u)",
				   (unsigned long long)gpa, (unsigned long long)npages, shift);
	if (h->dirty_off != g->lay.dirty_off || h->dirty_len != g->lay.dirty_len ||
	    h->summary_off != g->lay.summary_off || h->summary_len != g->lay.summary_len ||
	    h->pin_off != g->lay.pin_off || h->pin_len != g->lay.pin_len ||
	    h->region_size != g->lay.region_size)
		return __dirty_guest_err(-EPROTO, "region bitmaps are not where protocol v1 puts them for %llu pages",
				   (unsigned long long)npages);
	if (g->lay.region_size > size)
		return __dirty_guest_err(-EINVAL, "region needs %llu bytes but only %llu are mapped",
				   (unsigned long long)g->lay.region_size,
				   (unsigned long long)size);
	g->gpa_base = gpa;
	g->npages = npages;
	g->page_shift = shift;
	g->host_major = major;
	g->host_minor = minor;
	return 0;
}

int __dirty_guest_attach(struct dirty_guest *g, void *base, uint64_t size)
{
	int err;

	g->base = base;
	g->map_size = size;
	if ((err = validate(g, size)))
		return err;
	g->hdr = (struct dirty_proto_header *)g->base;
	g->dirty = (uint64_t *)(g->base + g->lay.dirty_off);
	g->summary = (uint64_t *)(g->base + g->lay.summary_off);
	g->pin = (uint64_t *)(g->base + g->lay.pin_off);
	return 0;
}

GUEST_API int dirty_guest_open_mem(void *base, uint64_t size,
				   struct dirty_guest **out)
{
	struct dirty_guest *g;
	int err;

	if (!base)
		return __dirty_guest_err(-EINVAL, "dirty_guest_open_mem: NULL base");
	g = calloc(1, sizeof(*g));
	if (!g)
		return __dirty_guest_err(-ENOMEM, "dirty_guest_open: out of memory");
	err = __dirty_guest_attach(g, base, size);
	if (err) {
		free(g);
		return err;
	}
	/* This process's own pin table: the counts alone, no header. */
	g->pin_map_len = g->npages * sizeof(*g->pincnt);
	g->pin_map = mmap(NULL, g->pin_map_len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (g->pin_map == MAP_FAILED) {
		uint64_t n = g->npages;

		free(g);
		return __dirty_guest_err(-ENOMEM, "dirty_guest_open: cannot reserve pin counts for %llu pages",
				   (unsigned long long)n);
	}
	g->pincnt = g->pin_map;
	g->sock = -1;
	pthread_mutex_init(&g->poll_lock, NULL);
	__atomic_store_n(&g->hdr->guest.major, DIRTY_PROTO_MAJOR, __ATOMIC_RELAXED);
	__atomic_store_n(&g->hdr->guest.minor, DIRTY_PROTO_MINOR, __ATOMIC_RELAXED);
	/* Release: the host that sees RUNNING sees our version too. */
	__atomic_store_n(&g->hdr->guest.state, DIRTY_PROTO_GUEST_RUNNING,
			 __ATOMIC_RELEASE);
	*out = g;
	return 0;
}

GUEST_API int dirty_guest_open_fd(int fd, struct dirty_guest **out)
{
	struct stat st;
	void *base;
	int err;

	if (fstat(fd, &st) < 0)
		return __dirty_guest_err(-errno, "cannot stat the region fd: %s", strerror(errno));
	if (st.st_size < DIRTY_PROTO_HEADER_SIZE)
		return __dirty_guest_err(-EINVAL, "region file of %lld bytes is smaller than its header; did the host create it?",
				   (long long)st.st_size);
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return __dirty_guest_err(-errno, "cannot map the region: %s", strerror(errno));
	err = dirty_guest_open_mem(base, (uint64_t)st.st_size, out);
	if (err) {
		munmap(base, (size_t)st.st_size);
		return err;
	}
	(*out)->unmap_on_close = true;
	return 0;
}

GUEST_API int dirty_guest_open_path(const char *path, struct dirty_guest **out)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	int err;

	if (fd < 0)
		return __dirty_guest_err(-errno, "cannot open region %s: %s", path, strerror(errno));
	err = dirty_guest_open_fd(fd, out);
	close(fd);	/* the mapping keeps the region */
	return err;
}

/* Pages [*first, *first + *n) of [gpa, gpa + len), or -ERANGE. */
static int pages_of(struct dirty_guest *g, uint64_t gpa, uint64_t len,
		    uint64_t *first, uint64_t *n)
{
	uint64_t end, ps = 1ull << g->page_shift;

	if (__builtin_add_overflow(gpa, len, &end) || gpa < g->gpa_base ||
	    end > g->gpa_base + (g->npages << g->page_shift)) {
		count(&g->hdr->guest.bad_ranges);
		return __dirty_guest_err(-ERANGE, "[%#llx, +%#llx) is outside the tracked range [%#llx, +%#llx)",
				   (unsigned long long)gpa, (unsigned long long)len,
				   (unsigned long long)g->gpa_base,
				   (unsigned long long)(g->npages << g->page_shift));
	}
	*first = (gpa - g->gpa_base) >> g->page_shift;
	*n = len ? ((end - g->gpa_base + ps - 1) >> g->page_shift) - *first : 0;
	return 0;
}

static bool dir_ok(enum dirty_dma_dir dir)
{
	return dir == DIRTY_TO_DEVICE || dir == DIRTY_FROM_DEVICE ||
	       dir == DIRTY_BIDIRECTIONAL;
}

/*
 * Memory ordering of the count words (private or shared, the same): every
 * read-modify-write is seq_cst, the waits are acquire loads and the
 * publications after BUSY are release stores, each pairing with the
 * acquire of the next taker. The pin bit's own RMWs are in proto.h.
 */
#define CAS(c, v, n) atomic_compare_exchange_weak_explicit(c, v, n, memory_order_seq_cst, \
							  memory_order_seq_cst)

/*
 * The holder of BUSY does one atomic and a store: spin briefly, then
 * yield. Acquire: a word seen published carries the holder's pin bit
 * write (and OWNED) with it.
 */
static uint32_t wait_not_busy(_Atomic uint32_t *c)
{
	uint32_t v;

	for (unsigned int i = 0; (v = atomic_load_explicit(c, memory_order_acquire)) & PIN_BUSY; i++)
		if (i > 64)
			sched_yield();
	return v;
}

/* Take one reference on page p. */
static int pin_get(struct dirty_guest *g, uint64_t p)
{
	_Atomic uint32_t *c = &g->pincnt[p];
	uint32_t v = wait_not_busy(c);

	for (;;) {
		if (v & PIN_BUSY) {
			v = wait_not_busy(c);
			continue;
		}
		if ((v & PIN_COUNT) == PIN_COUNT)
			return -EOVERFLOW;
		if (v & PIN_COUNT) {
			if (CAS(c, &v, v + 1))
				return 0;
			continue;
		}
		if (!CAS(c, &v, PIN_BUSY))
			continue;
		/*
		 * The bit only now, with the word BUSY: a previous holder's
		 * clear came before it took 1 -> BUSY -> 0, so this set is
		 * the last write to the bit before any map of p returns.
		 */
		v = dirty_proto_pin(g->pin, p) ? 1 : (1 | PIN_OWNED);
		/* Release: whoever takes or drops a reference sees OWNED. */
		atomic_store_explicit(c, v, memory_order_release);
		/* Relaxed: a statistic (meaningful for a private table only). */
		atomic_fetch_add_explicit(&g->npinned, 1, memory_order_relaxed);
		return 0;
	}
}

/* Drop one reference on page p. */
static int pin_put(struct dirty_guest *g, uint64_t p)
{
	_Atomic uint32_t *c = &g->pincnt[p];
	uint32_t v = wait_not_busy(c);

	for (;;) {
		if (v & PIN_BUSY) {
			v = wait_not_busy(c);
			continue;
		}
		if (!(v & PIN_COUNT))
			return -ENOENT;	/* not mapped (or another unmap took the last) */
		if ((v & PIN_COUNT) > 1) {
			if (CAS(c, &v, v - 1))
				return 0;
			continue;
		}
		if (!CAS(c, &v, PIN_BUSY))
			continue;
		if (v & PIN_OWNED)
			dirty_proto_unpin(g->pin, p);
		else
			count(&g->hdr->guest.pin_conflicts);	/* another table's pin: left set */
		/*
		 * Release, after the unpin: a map waiting on BUSY sets the bit
		 * after it.
		 */
		atomic_store_explicit(c, 0, memory_order_release);
		atomic_fetch_sub_explicit(&g->npinned, 1, memory_order_relaxed);	/* statistic */
		return 0;
	}
}

static bool tracking_on(struct dirty_guest *g)
{
	/* Acquire pairs with the host publishing the flag before the generation. */
	return __atomic_load_n(&g->hdr->host.flags, __ATOMIC_ACQUIRE) &
	       DIRTY_PROTO_HOST_TRACKING;
}

/* Pages [first, first + n) of one piece, once checked. */
struct span {
	uint64_t first, n;
};

/*
 * Small lists (the single-range calls, typical scatter-gather lists) use
 * the stack; long ones one allocation.
 */
#define STACK_SPANS 16

struct spans {
	struct span stack[STACK_SPANS];
	struct span *v;
	uint64_t pages;		/* the sum of v[].n */
};

/*
 * The common front of the vectored calls: check the direction and every
 * piece before anything changes (a list with a bad one changes nothing),
 * and turn the pieces into page spans. `call` names the caller in errors.
 */
static int spans_take(struct dirty_guest *g, const char *call, const struct dirty_dma_piece *pieces,
		      size_t n, enum dirty_dma_dir dir, struct spans *s)
{
	s->v = NULL;
	s->pages = 0;
	if (!dir_ok(dir))
		return __dirty_guest_err(-EINVAL, "%s: direction %d is not TO_DEVICE, FROM_DEVICE or BIDIRECTIONAL",
					 call, (int)dir);
	if (n && !pieces)
		return __dirty_guest_err(-EINVAL, "%s: NULL pieces", call);
	s->v = n <= STACK_SPANS ? s->stack : malloc(n * sizeof(struct span));
	if (!s->v)
		return __dirty_guest_err(-ENOMEM, "%s: out of memory for %zu pieces", call, n);
	for (size_t i = 0; i < n; i++) {
		int err = pages_of(g, pieces[i].gpa, pieces[i].len, &s->v[i].first, &s->v[i].n);

		if (err) {
			if (s->v != s->stack)
				free(s->v);
			s->v = NULL;
			return err;
		}
		s->pages += s->v[i].n;	/* <= npages per piece: no overflow in practice */
	}
	return 0;
}

static void spans_drop(struct spans *s)
{
	if (s->v != s->stack)
		free(s->v);
	s->v = NULL;
}

GUEST_API int dirty_guest_map_v(struct dirty_guest *g, const struct dirty_dma_piece *pieces,
				size_t n, enum dirty_dma_dir dir)
{
	struct spans s;
	struct span *sp;
	size_t k = 0;
	uint64_t i = 0;
	int err;

	if ((err = spans_take(g, "dirty_guest_map", pieces, n, dir, &s)))
		return err;
	sp = s.v;
	/*
	 * Connected: this client's references in its slot, counted before
	 * they are taken so the slot never shows fewer than the client holds
	 * (the agent reports them after a death). Relaxed: a statistic.
	 */
	if (g->refs)
		atomic_fetch_add_explicit(g->refs, s.pages, memory_order_relaxed);
	urcu_bp_read_lock();
	for (k = 0; k < n && !err; k++)
		for (i = 0; i < sp[k].n && !err; i++)
			err = pin_get(g, sp[k].first + i);
	if (err) {
		/* Undo, so a failed map leaves no reference behind. */
		k--;
		i--;
		for (;;) {
			while (i--)
				pin_put(g, sp[k].first + i);
			if (!k--)
				break;
			i = sp[k].n;
		}
	}
	urcu_bp_read_unlock();
	if (err && g->refs)	/* undone: none of them is held */
		atomic_fetch_sub_explicit(g->refs, s.pages, memory_order_relaxed);
	spans_drop(&s);
	if (err)
		return __dirty_guest_err(err, "dirty_guest_map: a page is mapped more than %u times",
				   PIN_COUNT - 1);
	return 0;
}

/* Dirty the pages if the device may have written them and tracking is on. */
static void dirty_if(struct dirty_guest *g, uint64_t first, uint64_t n,
		     enum dirty_dma_dir dir)
{
	if ((dir & DIRTY_FROM_DEVICE) && n && tracking_on(g))
		dirty_proto_set_dirty_range(g->dirty, g->summary, first, n);
}

GUEST_API int dirty_guest_unmap_v(struct dirty_guest *g, const struct dirty_dma_piece *pieces,
				  size_t n, enum dirty_dma_dir dir)
{
	struct spans s;
	struct span *sp;
	uint64_t unmapped = 0, total;
	int err;

	if ((err = spans_take(g, "dirty_guest_unmap", pieces, n, dir, &s)))
		return err;
	sp = s.v;
	total = s.pages;
	urcu_bp_read_lock();
	/* Dirty (and summary) strictly before any pin bit is cleared. */
	for (size_t k = 0; k < n; k++)
		dirty_if(g, sp[k].first, sp[k].n, dir);
	for (size_t k = 0; k < n; k++)
		for (uint64_t i = 0; i < sp[k].n; i++)
			if (pin_put(g, sp[k].first + i))
				unmapped++;
	urcu_bp_read_unlock();
	/* Connected: the references dropped, after they are (relaxed: a statistic). */
	if (g->refs)
		atomic_fetch_sub_explicit(g->refs, total - unmapped, memory_order_relaxed);
	spans_drop(&s);
	if (unmapped) {
		count(&g->hdr->guest.bad_ranges);
		return __dirty_guest_err(-ENOENT, "dirty_guest_unmap: %llu of %llu pages were not mapped",
				   (unsigned long long)unmapped, (unsigned long long)total);
	}
	return 0;
}

GUEST_API int dirty_guest_sync_for_cpu_v(struct dirty_guest *g,
					 const struct dirty_dma_piece *pieces,
					 size_t n, enum dirty_dma_dir dir)
{
	struct spans s;
	int err;

	if ((err = spans_take(g, "dirty_guest_sync_for_cpu", pieces, n, dir, &s)))
		return err;
	urcu_bp_read_lock();
	for (size_t k = 0; k < n; k++)
		dirty_if(g, s.v[k].first, s.v[k].n, dir);
	urcu_bp_read_unlock();
	spans_drop(&s);
	return 0;
}

GUEST_API int dirty_guest_map(struct dirty_guest *g, uint64_t gpa, uint64_t len,
			      enum dirty_dma_dir dir)
{
	const struct dirty_dma_piece p = { gpa, len };

	return dirty_guest_map_v(g, &p, 1, dir);
}

GUEST_API int dirty_guest_unmap(struct dirty_guest *g, uint64_t gpa, uint64_t len,
				enum dirty_dma_dir dir)
{
	const struct dirty_dma_piece p = { gpa, len };

	return dirty_guest_unmap_v(g, &p, 1, dir);
}

GUEST_API int dirty_guest_sync_for_cpu(struct dirty_guest *g, uint64_t gpa,
				       uint64_t len, enum dirty_dma_dir dir)
{
	const struct dirty_dma_piece p = { gpa, len };

	return dirty_guest_sync_for_cpu_v(g, &p, 1, dir);
}

GUEST_API int dirty_guest_sync_for_device(struct dirty_guest *g, uint64_t gpa,
					  uint64_t len, enum dirty_dma_dir dir)
{
	uint64_t first, n;

	/* Nothing to record: the pages stay pinned while the device owns them. */
	if (!dir_ok(dir))
		return __dirty_guest_err(-EINVAL, "dirty_guest_sync_for_device: bad direction %d", (int)dir);
	return pages_of(g, gpa, len, &first, &n);
}

GUEST_API int dirty_guest_poll(struct dirty_guest *g)
{
	uint64_t gen;
	int acked = 0;

	/*
	 * Connected: the dirty-agent daemon owns heartbeat and ack_gen and
	 * acknowledges once every client answered its GRACE (the library's
	 * server thread answers for this one); nothing to do here.
	 */
	if (g->connected)
		return 0;
	pthread_mutex_lock(&g->poll_lock);
	__atomic_fetch_add(&g->hdr->guest.heartbeat, 1, __ATOMIC_RELEASE);
	gen = __atomic_load_n(&g->hdr->host.track_gen, __ATOMIC_ACQUIRE);
	if (gen != g->acked_gen) {
		/*
		 * Every operation that could have read the tracking flag
		 * before the host set it ends before this returns; every one
		 * that starts later reads it set.
		 */
		urcu_bp_synchronize_rcu();
		__atomic_store_n(&g->hdr->guest.ack_gen, gen, __ATOMIC_RELEASE);
		g->acked_gen = gen;
		acked = 1;
	}
	pthread_mutex_unlock(&g->poll_lock);
	return acked;
}

static void *agent_main(void *arg)
{
	struct dirty_guest *g = arg;
	struct timespec ts = {
		.tv_sec = g->agent_interval_ms / 1000,
		.tv_nsec = (long)(g->agent_interval_ms % 1000) * 1000000L,
	};

	while (!atomic_load(&g->agent_stop)) {
		dirty_guest_poll(g);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

GUEST_API int dirty_guest_agent_start(struct dirty_guest *g,
				      unsigned int interval_ms)
{
	int err;

	if (g->connected)
		return __dirty_guest_err(-EINVAL, "dirty_guest_agent_start: the dirty-agent daemon answers for connected clients "
					 "(heartbeat and acknowledgements are its own); nothing to start");
	if (g->agent_running)
		return __dirty_guest_err(-EBUSY, "dirty_guest_agent_start: already running");
	g->agent_interval_ms = interval_ms ? interval_ms : 1;
	atomic_store(&g->agent_stop, false);
	err = pthread_create(&g->agent, NULL, agent_main, g);
	if (err)
		return __dirty_guest_err(-err, "dirty_guest_agent_start: %s", strerror(err));
	g->agent_running = true;
	return 0;
}

GUEST_API int dirty_guest_agent_stop(struct dirty_guest *g)
{
	if (!g->agent_running)
		return __dirty_guest_err(-EINVAL, "dirty_guest_agent_stop: no agent thread runs");
	atomic_store(&g->agent_stop, true);
	pthread_join(g->agent, NULL);
	g->agent_running = false;
	return 0;
}

GUEST_API int dirty_guest_info(struct dirty_guest *g,
			       struct dirty_guest_info *info)
{
	info->gpa_base = g->gpa_base;
	info->npages = g->npages;
	info->page_size = 1ull << g->page_shift;
	info->host_major = g->host_major;
	info->host_minor = g->host_minor;
	info->tracking = tracking_on(g);
	/*
	 * Relaxed: statistics. Connected, the shared table's counts are every
	 * client's, so this client's own number is its slot's references.
	 */
	info->pinned_pages = g->connected ?
		atomic_load_explicit(g->refs, memory_order_relaxed) :
		atomic_load_explicit(&g->npinned, memory_order_relaxed);
	info->connected = g->connected;
	info->slot = g->connected ? g->slot : 0;
	return 0;
}

GUEST_API void dirty_guest_close(struct dirty_guest *g)
{
	uint64_t left;

	if (!g)
		return;
	if (g->connected) {
		/*
		 * References still held stay in the shared table, their pins
		 * set; the agent reports them from the slot. The guest-owned
		 * words (state, pin_leaks) are the agent's to write.
		 */
		g->disconnect(g);
	} else {
		if (g->agent_running) {
			atomic_store(&g->agent_stop, true);
			pthread_join(g->agent, NULL);
		}
		/* Open mappings keep their pins: the host resends them, never loses them. */
		left = atomic_load_explicit(&g->npinned, memory_order_relaxed);
		if (left)
			__atomic_fetch_add(&g->hdr->guest.pin_leaks, left, __ATOMIC_RELAXED);
		/* Release: a host that sees STOPPED sees the leak count. */
		__atomic_store_n(&g->hdr->guest.state, DIRTY_PROTO_GUEST_STOPPED,
				 __ATOMIC_RELEASE);
	}
	munmap(g->pin_map, g->pin_map_len);
	pthread_mutex_destroy(&g->poll_lock);
	if (g->unmap_on_close)
		munmap(g->base, g->map_size);
	free(g);
}
