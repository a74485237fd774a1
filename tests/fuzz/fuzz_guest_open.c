/* SPDX-License-Identifier: MIT */
/*
 * fuzz_guest_open.c - libFuzzer target: the guest library
 * (guest-agent/guest.c) opening a region of arbitrary bytes with
 * dirty_guest_open_mem(), then mapping, unmapping and syncing in it.
 *
 * The input is the region. It is copied into a heap buffer of exactly the
 * declared size (so ASan sees any access past it) and opened as is, one
 * byte short, and cut to whole pages; and, so that short inputs reach the
 * map/unmap paths too, zero-extended to the size its own header claims
 * (up to 4 MiB). Each one that opens runs the operations encoded in input
 * bytes [384, 4096) - the header page past the header struct, which
 * protocol v1 leaves to nobody - and is closed.
 *
 * Invariants (abort() on violation):
 *  - it opens iff the header is a v1 header whose layout is the one v1
 *    computes for its npages and fits in the declared size;
 *  - every call returns what its arguments call for (EINVAL for a bad
 *    direction, ERANGE outside the covered range, ENOENT for an unmap of
 *    pages not mapped, else 0);
 *  - the library writes only the guest block and the three bitmaps'
 *    valid bits: the host-owned header, the rest of the header page, bits
 *    past npages and bytes past the region stay as they were.
 *
 * Build and run: make fuzz-build; build/fuzz/fuzz_guest_open CORPUS_DIR
 * (or make fuzz). Seeds: tests/fuzz/corpus/fuzz_guest_open/.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libdirty/guest.h"
#include "libdirty/proto.h"

#define CHECK(c)                                                               \
	do {                                                                   \
		if (!(c)) {                                                    \
			fprintf(stderr, "fuzz_guest_open: invariant failed at line %d: %s\n", \
				__LINE__, #c);                                 \
			abort();                                               \
		}                                                              \
	} while (0)

#define OPS_OFF sizeof(struct dirty_proto_header)
#define MAX_PAD (4u << 20)
#define MAX_MAP_PAGES 4096u	/* per call: pin counts cost a node per page */

struct ops {
	const uint8_t *p;
	size_t left;
};

static uint64_t take(struct ops *o, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n && o->left; i++, o->left--)
		v |= (uint64_t)*o->p++ << (8 * i);
	return v;
}

/* What open must decide, from the protocol text, not from guest.c. */
static bool valid(const uint8_t *buf, uint64_t size, struct dirty_proto_layout *l)
{
	struct dirty_proto_header h;
	uint64_t end;

	if (size < DIRTY_PROTO_HEADER_SIZE)
		return false;
	memcpy(&h, buf, sizeof(h));
	return h.magic == DIRTY_PROTO_MAGIC && h.major == DIRTY_PROTO_MAJOR &&
	       h.header_size == DIRTY_PROTO_HEADER_SIZE &&
	       h.page_shift >= 12 && h.page_shift <= 40 &&
	       !dirty_proto_layout(h.npages, l) &&
	       !(h.gpa_base & ((1ull << h.page_shift) - 1)) &&
	       (h.npages << h.page_shift) >> h.page_shift == h.npages &&
	       !__builtin_add_overflow(h.gpa_base, h.npages << h.page_shift, &end) &&
	       h.dirty_off == l->dirty_off && h.dirty_len == l->dirty_len &&
	       h.summary_off == l->summary_off && h.summary_len == l->summary_len &&
	       h.pin_off == l->pin_off && h.pin_len == l->pin_len &&
	       h.region_size == l->region_size && l->region_size <= size;
}

/* Changed bits of [off, off + len) outside the first nvalid bits are a bug. */
static void same_past(const uint8_t *now, const uint8_t *was, uint64_t off,
		      uint64_t len, uint64_t nvalid)
{
	for (uint64_t w = 0; w < len / 8; w++) {
		uint64_t a, b, keep;

		memcpy(&a, now + off + w * 8, 8);
		memcpy(&b, was + off + w * 8, 8);
		keep = w * 64 >= nvalid ? ~0ull :
		       nvalid - w * 64 >= 64 ? 0 : ~0ull << (nvalid - w * 64);
		CHECK(!((a ^ b) & keep));
	}
}

static bool dir_ok(unsigned int d)
{
	return d >= DIRTY_TO_DEVICE && d <= DIRTY_BIDIRECTIONAL;
}

static void run_ops(struct dirty_guest *g, const struct dirty_guest_info *in,
		    struct ops o)
{
	uint64_t range = in->npages * in->page_size, span;

	/* The range may end at 2^64: a wrapped span would be a modulus of 0. */
	if (__builtin_add_overflow(range, 2 * in->page_size, &span))
		span = UINT64_MAX;

	while (o.left) {
		unsigned int op = (unsigned int)take(&o, 1) % 6;
		unsigned int dir = (unsigned int)take(&o, 1) % 5;	/* 0 and 4 are bad */
		unsigned int m = (unsigned int)take(&o, 1);
		uint64_t a = take(&o, 8), len = take(&o, 8), end;
		bool in_range;
		int r;

		/* Near the range (unaligned too), raw, or near 2^64. */
		if (m % 3 == 0)
			a = in->gpa_base - in->page_size + a % span;
		else if (m % 3 == 2)
			a = UINT64_MAX - a % (2 * in->page_size);
		if (m / 3 % 3 == 0)
			len %= 64 * in->page_size;
		else if (m / 3 % 3 == 2)
			len = UINT64_MAX - len % in->page_size;
		in_range = !__builtin_add_overflow(a, len, &end) && a >= in->gpa_base &&
			   end <= in->gpa_base + range;
		/* Long in-range maps only cost time: cut them to MAX_MAP_PAGES. */
		if (in_range && op < 2 && len / in->page_size > MAX_MAP_PAGES)
			len = (uint64_t)MAX_MAP_PAGES * in->page_size;
		switch (op) {
		case 0:
			r = dirty_guest_map(g, a, len, dir);
			break;
		case 1:
			r = dirty_guest_unmap(g, a, len, dir);
			CHECK(r != -ENOENT || (dir_ok(dir) && in_range));
			r = r == -ENOENT ? 0 : r;
			break;
		case 2:
			r = dirty_guest_sync_for_cpu(g, a, len, dir);
			break;
		case 3:
			r = dirty_guest_sync_for_device(g, a, len, dir);
			break;
		case 4:
			/* An RCU grace period: slow, so only now and then. */
			r = dirty_guest_poll(g);
			CHECK(r == 0 || r == 1);
			continue;
		default: {
			struct dirty_guest_info i2;

			CHECK(dirty_guest_info(g, &i2) == 0);
			CHECK(i2.npages == in->npages && i2.gpa_base == in->gpa_base &&
			      i2.page_size == in->page_size);
			continue;
		}
		}
		CHECK(r == (!dir_ok(dir) ? -EINVAL : !in_range ? -ERANGE : 0));
	}
}

/* Open a copy of in[0, min(n, size)) zero-extended to size bytes. */
static void try_open(const uint8_t *in, size_t n, uint64_t size)
{
	struct dirty_proto_layout l;
	struct dirty_guest_info info;
	struct dirty_guest *g;
	uint8_t *buf, *was;
	bool ok;
	int r;

	if (posix_memalign((void **)&buf, 4096, size ? size : 1))
		return;
	was = malloc(size ? size : 1);
	CHECK(was);
	memset(buf, 0, size);
	memcpy(buf, in, n < size ? n : size);
	memcpy(was, buf, size);
	ok = valid(buf, size, &l);
	r = dirty_guest_open_mem(buf, size, &g);
	CHECK(ok ? r == 0 : r < 0);
	if (r == 0) {
		struct ops o = { in + OPS_OFF, 0 };

		if (n > OPS_OFF)
			o.left = (n < DIRTY_PROTO_HEADER_SIZE ? n : DIRTY_PROTO_HEADER_SIZE) - OPS_OFF;
		CHECK(dirty_guest_info(g, &info) == 0);
		CHECK(info.npages == l.npages && info.pinned_pages == 0);
		run_ops(g, &info, o);
		dirty_guest_close(g);
		/* Host-owned header and the rest of the header page. */
		CHECK(!memcmp(buf, was, 256));
		CHECK(!memcmp(buf + OPS_OFF, was + OPS_OFF, DIRTY_PROTO_HEADER_SIZE - OPS_OFF));
		same_past(buf, was, l.dirty_off, l.dirty_len, l.npages);
		same_past(buf, was, l.summary_off, l.summary_len, l.dirty_words);
		same_past(buf, was, l.pin_off, l.pin_len, l.npages);
		CHECK(!memcmp(buf + l.region_size, was + l.region_size, size - l.region_size));
	} else {
		CHECK(!memcmp(buf, was, size));	/* a refusal writes nothing */
	}
	free(was);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dirty_proto_layout l;
	struct dirty_proto_header h = { 0 };
	struct dirty_guest *g;

	CHECK(dirty_guest_open_mem(NULL, size, &g) == -EINVAL);
	try_open(data, size, size);
	if (size)
		try_open(data, size, size - 1);
	if (size & 4095 && size > 4096)
		try_open(data, size, size & ~(uint64_t)4095);
	/* Zero-extended to the size the header claims, if it is sane. */
	memcpy(&h, data, size < sizeof(h) ? size : sizeof(h));
	if (!dirty_proto_layout(h.npages, &l) && l.region_size > size &&
	    l.region_size <= MAX_PAD)
		try_open(data, size, l.region_size);
	return 0;
}
