/* SPDX-License-Identifier: MIT */
/*
 * support/kvm/payload.c - the freestanding 32-bit guest payload: a command
 * loop that stamps pages (CPU writes KVM must log) and runs the guest side
 * of the libdirty bitmap protocol on a region the host put in guest memory.
 *
 * Runs in flat 32-bit protected mode without paging, so a GPA below 4 GiB
 * is its own pointer. Writes only: its command block, its stack, the pages
 * WRITE_PAGES names and the protocol region. No globals (payload.ld refuses
 * them), so the host knows every page the payload dirties on its own.
 *
 * Built -m32 -ffreestanding -mno-80387 -mno-sse: the protocol's 64-bit
 * atomics become calls into payload-atomic.c (lock cmpxchg8b, which this
 * KVM's emulator runs); the image is linked alone, so any other call
 * (libgcc, libatomic, memset) fails the link.
 */
#include <stdint.h>

#include <libdirty/proto.h>

#include "payload-abi.h"

void payload_main(volatile struct payload_cmd *cmd) __attribute__((noreturn, used));

static inline void outl(uint16_t port, uint32_t v)
{
	/* "memory": every result store is done before the host looks. */
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

/* Is [gpa, gpa + len) addressable without paging (below 4 GiB)? */
static int below_4g(uint64_t gpa, uint64_t len)
{
	return gpa <= (1ull << 32) && len <= (1ull << 32) - gpa;
}

static int write_pages(volatile struct payload_cmd *c)
{
	uint32_t n = c->count, words = c->words, i, j;
	uint64_t stamp = c->stamp, list_gpa = c->list_gpa;
	const volatile uint64_t *list;

	if (words == 0 || words > PAYLOAD_MAX_WORDS || !below_4g(list_gpa, (uint64_t)n * 8))
		return PAYLOAD_E_ARG;
	list = (const volatile uint64_t *)(uintptr_t)list_gpa;
	for (i = 0; i < n; i++) {
		uint64_t pfn = list[i];
		volatile uint32_t *w;

		if (pfn >= (1ull << 20)) {
			c->done_count = i;
			return PAYLOAD_E_ARG;
		}
		w = (volatile uint32_t *)(uintptr_t)(pfn << 12);
		/* Two 32-bit stores per word: plain movs any emulator handles. */
		for (j = 0; j < words; j++) {
			uint64_t v = stamp + j;

			w[2 * j] = (uint32_t)v;
			w[2 * j + 1] = (uint32_t)(v >> 32);
		}
	}
	c->done_count = n;
	return PAYLOAD_OK;
}

/* The region as this guest sees it; geometry re-read and checked per command. */
struct region {
	struct dirty_proto_header *h;	/* touched with __atomic builtins only */
	uint64_t *dirty, *summary, *pin;
	uint64_t base, npages;
	uint32_t shift;
};

/* Accept the region only if it is a v1 header with v1's layout (as guest.c does). */
static int region_open(volatile struct payload_cmd *c, struct region *r)
{
	uint64_t rg = c->region_gpa, end;
	volatile struct dirty_proto_header *h;
	struct dirty_proto_layout l;
	uint8_t *b;

	if (!below_4g(rg, DIRTY_PROTO_HEADER_SIZE))
		return PAYLOAD_E_ARG;
	h = (volatile struct dirty_proto_header *)(uintptr_t)rg;
	if (h->magic != DIRTY_PROTO_MAGIC || h->major != DIRTY_PROTO_MAJOR ||
	    h->header_size != DIRTY_PROTO_HEADER_SIZE || h->page_shift < 12 ||
	    h->page_shift > 31)
		return PAYLOAD_E_PROTO;
	r->shift = h->page_shift;
	r->base = h->gpa_base;
	r->npages = h->npages;
	if (dirty_proto_layout(r->npages, &l) || (r->base & ((1ull << r->shift) - 1)) ||
	    (r->npages << r->shift) >> r->shift != r->npages ||
	    __builtin_add_overflow(r->base, r->npages << r->shift, &end))
		return PAYLOAD_E_PROTO;
	if (h->dirty_off != l.dirty_off || h->dirty_len != l.dirty_len ||
	    h->summary_off != l.summary_off || h->summary_len != l.summary_len ||
	    h->pin_off != l.pin_off || h->pin_len != l.pin_len ||
	    h->region_size != l.region_size)
		return PAYLOAD_E_PROTO;
	if (!below_4g(rg, l.region_size))
		return PAYLOAD_E_ARG;
	b = (uint8_t *)(uintptr_t)rg;
	r->h = (struct dirty_proto_header *)b;
	r->dirty = (uint64_t *)(b + (uint32_t)l.dirty_off);
	r->summary = (uint64_t *)(b + (uint32_t)l.summary_off);
	r->pin = (uint64_t *)(b + (uint32_t)l.pin_off);
	return PAYLOAD_OK;
}

/* Pages [*first, *first + *n) of range e, or PAYLOAD_E_RANGE (like guest.c pages_of). */
static int range_pages(const struct region *r, const volatile struct payload_range *e,
		       uint64_t *first, uint64_t *n)
{
	uint64_t gpa = e->gpa, len = e->len, end, ps = 1ull << r->shift;

	if (__builtin_add_overflow(gpa, len, &end) || gpa < r->base ||
	    end > r->base + (r->npages << r->shift))
		return PAYLOAD_E_RANGE;
	*first = (gpa - r->base) >> r->shift;
	*n = len ? ((end - r->base + ps - 1) >> r->shift) - *first : 0;
	return PAYLOAD_OK;
}

static int tracking_on(const struct region *r)
{
	/* Acquire: pairs with the host publishing the flag before the generation. */
	return (__atomic_load_n(&r->h->host.flags, __ATOMIC_ACQUIRE) & DIRTY_PROTO_HOST_TRACKING) != 0;
}

/*
 * MAP, SYNC_FOR_CPU and UNMAP over the command's range list. Every range
 * is checked before any bit changes, so a bad list leaves the region as
 * it was. Unmap dirties first and unpins after: the protocol's order.
 * The payload is its guest's only client and does not count references:
 * a test maps a page once before it unmaps it.
 */
static int proto_ranges(volatile struct payload_cmd *c, const struct region *r)
{
	uint32_t n = c->count, dir = c->dir, i;
	const volatile struct payload_range *list;
	uint64_t first, np, p, pages = 0, conflicts = 0;
	int dirty, err;

	if (dir < PAYLOAD_DIR_TO_DEVICE || dir > PAYLOAD_DIR_BIDIRECTIONAL ||
	    !below_4g(c->list_gpa, (uint64_t)n * sizeof(struct payload_range)))
		return PAYLOAD_E_ARG;
	list = (const volatile struct payload_range *)(uintptr_t)c->list_gpa;
	for (i = 0; i < n; i++) {
		err = range_pages(r, &list[i], &first, &np);
		if (err)
			return err;
	}
	dirty = c->cmd != PAYLOAD_CMD_PROTO_MAP && (dir & PAYLOAD_DIR_FROM_DEVICE) &&
		tracking_on(r);
	for (i = 0; i < n; i++) {
		range_pages(r, &list[i], &first, &np);
		pages += np;
		if (c->cmd == PAYLOAD_CMD_PROTO_MAP) {
			for (p = first; p < first + np; p++)
				conflicts += dirty_proto_pin(r->pin, p);
			continue;
		}
		if (dirty && np)
			dirty_proto_set_dirty_range(r->dirty, r->summary, first, np);
		if (c->cmd == PAYLOAD_CMD_PROTO_UNMAP)
			for (p = first; p < first + np; p++)
				dirty_proto_unpin(r->pin, p);
	}
	c->done_count = pages;
	c->result = conflicts;
	return PAYLOAD_OK;
}

static int proto(volatile struct payload_cmd *c)
{
	struct region r;
	struct dirty_proto_guest *g;
	uint64_t gen;
	int err = region_open(c, &r);

	if (err)
		return err;
	g = &r.h->guest;
	switch (c->cmd) {
	case PAYLOAD_CMD_PROTO_OPEN:
		__atomic_store_n(&g->major, DIRTY_PROTO_MAJOR, __ATOMIC_RELAXED);
		__atomic_store_n(&g->minor, DIRTY_PROTO_MINOR, __ATOMIC_RELAXED);
		/* Release: a host that sees RUNNING sees the version too. */
		__atomic_store_n(&g->state, DIRTY_PROTO_GUEST_RUNNING, __ATOMIC_RELEASE);
		return PAYLOAD_OK;
	case PAYLOAD_CMD_PROTO_POLL:
		__atomic_fetch_add(&g->heartbeat, 1, __ATOMIC_RELEASE);
		gen = __atomic_load_n(&r.h->host.track_gen, __ATOMIC_ACQUIRE);
		/*
		 * No operation is in flight between commands (one vCPU, one
		 * client), so every later one sees the flag: ack at once.
		 */
		__atomic_store_n(&g->ack_gen, gen, __ATOMIC_RELEASE);
		c->result = gen;
		return PAYLOAD_OK;
	case PAYLOAD_CMD_PROTO_CLOSE:
		__atomic_store_n(&g->state, DIRTY_PROTO_GUEST_STOPPED, __ATOMIC_RELEASE);
		return PAYLOAD_OK;
	default:
		return proto_ranges(c, &r);
	}
}

static int execute(volatile struct payload_cmd *c)
{
	c->done_count = 0;
	c->result = 0;
	switch (c->cmd) {
	case PAYLOAD_CMD_NOP:
	case PAYLOAD_CMD_HALT:
		return PAYLOAD_OK;
	case PAYLOAD_CMD_WRITE_PAGES:
		return write_pages(c);
	case PAYLOAD_CMD_PROTO_OPEN:
	case PAYLOAD_CMD_PROTO_POLL:
	case PAYLOAD_CMD_PROTO_MAP:
	case PAYLOAD_CMD_PROTO_SYNC_FOR_CPU:
	case PAYLOAD_CMD_PROTO_UNMAP:
	case PAYLOAD_CMD_PROTO_CLOSE:
		return proto(c);
	default:
		return PAYLOAD_E_BADCMD;
	}
}

void payload_main(volatile struct payload_cmd *cmd)
{
	/* The host never reuses a seq, so the first command differs from this. */
	uint32_t last = cmd->done_seq;

	for (;;) {
		uint32_t seq = cmd->seq;

		if (seq == last) {
			outl(PAYLOAD_PORT_IDLE, seq);
			continue;
		}
		cmd->status = execute(cmd);
		cmd->done_seq = seq;
		last = seq;
		if (cmd->cmd == PAYLOAD_CMD_HALT)
			for (;;)
				__asm__ volatile("cli; hlt" : : : "memory");
		outl(PAYLOAD_PORT_DONE, seq);
	}
}
