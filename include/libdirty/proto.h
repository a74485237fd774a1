/* SPDX-License-Identifier: MIT */
/*
 * libdirty/proto.h - the guest bitmap protocol, version 1: the layout of
 * the shared region and the bit operations both sides perform on it.
 *
 * Freestanding: it needs only fixed-width integer types and GCC/Clang
 * __atomic builtins, so a guest kernel, a bare guest payload and
 * userspace share these exact definitions. Define DIRTY_PROTO_NO_STDINT
 * when the environment provides uint*_t itself (a kernel). A 32-bit x86
 * guest built without x87/SSE (as kernels and bare payloads are) gets
 * calls to __atomic_*_8 for the 64-bit operations below and must provide
 * them (support/kvm/payload-atomic.c does, with cmpxchg8b).
 *
 * Region (created and sized by the host; every part page aligned):
 *
 *   0        header page: struct dirty_proto_header
 *   4096     dirty bitmap:   bit p = guest page p written by a device
 *   ...      dirty summary:  bit w = dirty word w may be non-zero
 *   ...      pin bitmap:     bit p = page p mapped for DMA by some client
 *
 * Ordering rules (DESIGN section 3), as the helpers below implement them:
 *  - dirty: set the dirty bit, then the summary bit, so a host that
 *    exchanges the summary word and then the dirty word finds the bit.
 *    The dirty OR, the guest's look at the summary word and the host's
 *    two exchanges are seq_cst (the look may skip the summary OR, see
 *    dirty_proto_set_dirty()); the summary OR itself is a release, which
 *    a host exchange that reads it acquires;
 *  - unmap: dirty and summary first, then clear the pin bit (release): a
 *    host that sees the pin clear (acquire) sees the dirty bit;
 *  - TO_DEVICE never dirties.
 *
 * Versions: `major` changes when a v1 reader would misread the region; a
 * reader refuses any major it does not know. `minor` grows when fields are
 * added in reserved space or new flags appear; a reader accepts a newer
 * minor and uses what its own minor defines (reserved bytes are zero when
 * written by a v1.0 writer and ignored by a v1.0 reader).
 */
#ifndef LIBDIRTY_PROTO_H
#define LIBDIRTY_PROTO_H

#ifndef DIRTY_PROTO_NO_STDINT
#include <stdint.h>
#endif

#define DIRTY_PROTO_MAGIC 0x595452494442494cull	/* "LIBDIRTY" in memory */
#define DIRTY_PROTO_MAJOR 1
#define DIRTY_PROTO_MINOR 1
#define DIRTY_PROTO_HEADER_SIZE 4096u
#define DIRTY_PROTO_ALIGN 4096u

/* Host-owned flags (host.flags). */
#define DIRTY_PROTO_HOST_TRACKING 0x1ull	/* guests must set dirty bits */

/* Guest-owned agent states (guest.state). */
#define DIRTY_PROTO_GUEST_ABSENT 0u	/* nobody has opened the region */
#define DIRTY_PROTO_GUEST_RUNNING 1u
#define DIRTY_PROTO_GUEST_STOPPED 2u	/* the last client closed cleanly */

/* Written by the host only. 128 bytes: its own pair of cache lines. */
struct dirty_proto_host {
	uint64_t track_gen;	/* raised to ask for tracking from now on */
	uint64_t flags;		/* DIRTY_PROTO_HOST_* */
	uint64_t reserved[14];
};

/* Written by guests only. */
struct dirty_proto_guest {
	uint64_t ack_gen;	/* track_gen every client has seen */
	uint64_t heartbeat;	/* bumped while a guest agent lives */
	uint32_t state;		/* DIRTY_PROTO_GUEST_* */
	uint16_t major, minor;	/* the protocol version the guest speaks */
	uint64_t pin_conflicts;	/* pin already set by another client */
	uint64_t pin_leaks;	/* pins left set because another client set them */
	uint64_t bad_ranges;	/* operations on pages outside the region */
	/*
	 * v1.1 (read only when guest.minor >= 1): the guest agent daemon's
	 * view of its clients. waiting_pid: a client that has not passed its
	 * grace period for track_gen in time, so ack_gen is held back (0:
	 * none); clients: how many are connected.
	 */
	uint64_t waiting_pid;
	uint64_t clients;
	uint64_t reserved[8];
};

struct dirty_proto_header {
	uint64_t magic;		/* DIRTY_PROTO_MAGIC */
	uint16_t major, minor;	/* the host's version */
	uint32_t header_size;	/* DIRTY_PROTO_HEADER_SIZE */
	uint32_t page_shift;	/* one bit per 1 << page_shift bytes */
	uint32_t flags;		/* reserved, 0 */
	uint64_t gpa_base;	/* first covered guest-physical address */
	uint64_t npages;	/* covered pages */
	uint64_t region_size;	/* bytes of the whole region */
	uint64_t dirty_off, dirty_len;	/* bytes, from the region start */
	uint64_t summary_off, summary_len;
	uint64_t pin_off, pin_len;
	uint64_t reserved0[4];
	struct dirty_proto_host host;	/* offset 128 */
	struct dirty_proto_guest guest;	/* offset 256 */
};

#define DIRTY_PROTO_SA(c, m) _Static_assert(c, m)
DIRTY_PROTO_SA(sizeof(struct dirty_proto_host) == 128, "host block is 128 bytes");
DIRTY_PROTO_SA(sizeof(struct dirty_proto_guest) == 128, "guest block is 128 bytes");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, major) == 8, "major at 8");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, header_size) == 12, "header_size at 12");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, page_shift) == 16, "page_shift at 16");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, gpa_base) == 24, "gpa_base at 24");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, npages) == 32, "npages at 32");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, region_size) == 40, "region_size at 40");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, dirty_off) == 48, "dirty_off at 48");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, summary_off) == 64, "summary_off at 64");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, pin_off) == 80, "pin_off at 80");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, host) == 128, "host block at 128");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_header, guest) == 256, "guest block at 256");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_guest, heartbeat) == 8, "heartbeat at guest+8");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_guest, pin_conflicts) == 24, "conflicts at guest+24");
DIRTY_PROTO_SA(__builtin_offsetof(struct dirty_proto_guest, waiting_pid) == 48, "waiting_pid at guest+48");
DIRTY_PROTO_SA(sizeof(struct dirty_proto_header) == 384, "header struct is 384 bytes");

/*
 * The one layout both sides derive from (page_shift, npages). Each side
 * computes it itself: the host never reads offsets back from the region.
 */
struct dirty_proto_layout {
	uint64_t npages, dirty_words, summary_words;
	uint64_t dirty_off, dirty_len;
	uint64_t summary_off, summary_len;
	uint64_t pin_off, pin_len;
	uint64_t region_size;
};

static inline uint64_t dirty_proto_align(uint64_t v)
{
	return (v + DIRTY_PROTO_ALIGN - 1) & ~(uint64_t)(DIRTY_PROTO_ALIGN - 1);
}

/* 0, or -1 when npages is 0 or the region would not fit in 2^48 bytes. */
static inline int dirty_proto_layout(uint64_t npages,
				     struct dirty_proto_layout *l)
{
	if (npages == 0 || npages > (1ull << 50))
		return -1;
	l->npages = npages;
	l->dirty_words = (npages + 63) / 64;
	l->summary_words = (l->dirty_words + 63) / 64;
	l->dirty_off = DIRTY_PROTO_HEADER_SIZE;
	l->dirty_len = dirty_proto_align(l->dirty_words * 8);
	l->summary_off = l->dirty_off + l->dirty_len;
	l->summary_len = dirty_proto_align(l->summary_words * 8);
	l->pin_off = l->summary_off + l->summary_len;
	l->pin_len = l->dirty_len;
	l->region_size = l->pin_off + l->pin_len;
	return 0;
}

/* ---- guest-side bit operations ------------------------------------------ */

/* Mark page p dirty: dirty bit (seq_cst), then its summary bit (release). */
static inline void dirty_proto_set_dirty(uint64_t *dirty, uint64_t *summary,
					 uint64_t p)
{
	uint64_t w = p >> 6;

	__atomic_fetch_or(&dirty[w], 1ull << (p & 63), __ATOMIC_SEQ_CST);
	/*
	 * Look before setting: on a busy summary word most marks find the
	 * bit set, and a load keeps the line shared instead of bouncing it.
	 * Skipping is safe only because the RMW above and this load are both
	 * seq_cst and the host exchanges summary then dirty words seq_cst: if
	 * this load saw the bit, the host's later exchange of the dirty word
	 * sees our bit. (On x86 a seq_cst RMW costs what a release one does.)
	 */
	if (!(__atomic_load_n(&summary[w >> 6], __ATOMIC_SEQ_CST) & (1ull << (w & 63))))
		__atomic_fetch_or(&summary[w >> 6], 1ull << (w & 63), __ATOMIC_RELEASE);
}

/* Mark pages [first, first + n) dirty, a word at a time. */
static inline void dirty_proto_set_dirty_range(uint64_t *dirty,
					       uint64_t *summary,
					       uint64_t first, uint64_t n)
{
	while (n) {
		uint64_t s = first & 63, c = n < 64 - s ? n : 64 - s;
		uint64_t m = (c == 64 ? ~0ull : ((1ull << c) - 1)) << s;
		uint64_t w = first >> 6;

		__atomic_fetch_or(&dirty[w], m, __ATOMIC_SEQ_CST);
		if (!(__atomic_load_n(&summary[w >> 6], __ATOMIC_SEQ_CST) & (1ull << (w & 63))))
			__atomic_fetch_or(&summary[w >> 6], 1ull << (w & 63),
					  __ATOMIC_RELEASE);
		first += c;
		n -= c;
	}
}

/* Set pin bit p; returns 1 if it was already set (by anyone). */
static inline int dirty_proto_pin(uint64_t *pin, uint64_t p)
{
	uint64_t b = 1ull << (p & 63);

	return (__atomic_fetch_or(&pin[p >> 6], b, __ATOMIC_SEQ_CST) & b) != 0;
}

/*
 * Clear pin bit p. Release: the dirty and summary bits set before it are
 * visible to a host that reads the pin clear with acquire.
 */
static inline void dirty_proto_unpin(uint64_t *pin, uint64_t p)
{
	__atomic_fetch_and(&pin[p >> 6], ~(1ull << (p & 63)), __ATOMIC_RELEASE);
}

#endif /* LIBDIRTY_PROTO_H */
