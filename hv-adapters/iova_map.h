/* SPDX-License-Identifier: MIT */
/*
 * iova_map.h - the IOVA -> GPA table the VFIO-family adapters (vfio_type1.c,
 * vfio_devlog.c, iommufd.c) share: the mappings the VMM registers, and the
 * marking of their guest pages from a kernel's dirty bitmap.
 *
 * A kernel reports dirty pages by IOVA; the view wants guest-physical
 * addresses, and only the VMM knows which IOVA is which GPA. A set bit
 * whose page no registration holds has no known guest page: it is never
 * dropped, the caller gets -EPROTO and applies the view's error rule
 * (iova_map_mark_all: every registered page dirty).
 *
 * Internal to the library. No lock of its own: the adapter's lock guards
 * the table and every call that takes one.
 */
#ifndef LIBDIRTY_IOVA_MAP_H
#define LIBDIRTY_IOVA_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "libdirty/source.h"

/* Guest-physical runs gathered before one dirty_source_mark_ranges(). */
#define IOVA_RUN_BATCH 256

/* One registration: IOVA [iova, +len) is GPA [gpa, +len). */
struct iova_reg {
	uint64_t iova, gpa, len;
	uint32_t flags;		/* the adapter's own bits */
};

struct iova_map {
	const char *name;	/* for messages: "<name> mapping IOVA ..." */
	uint64_t align;		/* every registration is aligned to it */
	unsigned int shift;	/* log2(align) */
	struct iova_reg *regs;	/* sorted by iova, never overlapping */
	size_t n, cap;
	uint64_t *bitmap;	/* the scratch of iova_map_bitmap() */
	size_t bitmap_words;
	struct dirty_range runs[IOVA_RUN_BATCH];	/* empty between calls */
	size_t nruns;
};

/* One kernel bitmap: bit b is the IOVA page [base + (b << shift), +(1 << shift)). */
struct iova_bits {
	const uint64_t *bm;	/* little-endian u64 words */
	uint64_t base;		/* aligned to 1 << shift; the window must not wrap */
	uint64_t nbits;		/* a set bit at or past it is the kernel's error */
	unsigned int shift;
	uint64_t set;		/* out: the set bits below nbits */
	uint64_t bad;		/* out, on -EPROTO: IOVA of the first untranslatable bit */
};

/* An empty table whose registrations align to align (a power of two). */
void iova_map_init(struct iova_map *m, const char *name, uint64_t align);
/* Frees what the table holds; it is empty (and initialised) again. */
void iova_map_free(struct iova_map *m);

/*
 * -EINVAL (said) unless len is non-zero, all three aligned, and neither side
 * wraps. iova_map_add() runs it too; an adapter with a limit of its own runs
 * it first, so that a registration is refused for the plainest reason.
 */
int iova_map_check(const struct iova_map *m, uint64_t iova, uint64_t gpa, uint64_t len);
/* Registers IOVA [iova, +len) as GPA gpa: iova_map_check(), -EEXIST on overlap, -ENOMEM (said). */
int iova_map_add(struct iova_map *m, uint64_t iova, uint64_t gpa, uint64_t len,
		 uint32_t flags);
/*
 * The registrations inside [iova, +len) as regs[*lo, *hi); -EINVAL (said)
 * for an empty, unaligned or wrapping range or one that splits a registration.
 */
int iova_map_range(const struct iova_map *m, uint64_t iova, uint64_t len,
		   size_t *lo, size_t *hi);
/* Drops regs[i, i + n). */
void iova_map_remove(struct iova_map *m, size_t i, size_t n);
/* Drops the registration of exactly [iova, +len) into *out; -ENOENT (said) if none. */
int iova_map_take(struct iova_map *m, uint64_t iova, uint64_t len, struct iova_reg *out);
/* The GPA of iova; -ENOENT (said) if no registration holds it. */
int iova_map_lookup(const struct iova_map *m, uint64_t iova, uint64_t *gpa);
/* Total bytes registered. */
uint64_t iova_map_bytes(const struct iova_map *m);
/*
 * End of the run of IOVA-adjacent registrations from regs[i] (below hi)
 * holding at most max_pages pages; *pages gets its size. A registration
 * larger than that is a run of its own: registrations are never split.
 */
size_t iova_map_piece(const struct iova_map *m, size_t i, size_t hi, uint64_t max_pages,
		      uint64_t *pages);

/* A zeroed scratch bitmap of nbits bits, valid until the next call; NULL (said) if no memory. */
uint64_t *iova_map_bitmap(struct iova_map *m, uint64_t nbits);
/*
 * Marks at their GPAs the pages of b's set bits, each on every registration
 * it overlaps (a bit larger than the registrations' alignment may straddle
 * a hole). -EPROTO, not said (the caller knows what the bits were), if a
 * set bit overlaps no registration or lies at or past nbits; all the rest
 * is marked either way.
 */
int iova_map_mark_bits(struct iova_map *m, struct dirty_source *src, struct iova_bits *b);
/* Marks regs[i, j) whole except those with a flag in skip; returns the bytes marked. */
uint64_t iova_map_mark(struct iova_map *m, struct dirty_source *src, size_t i, size_t j,
		       uint32_t skip);
/* The error rule: every registered page dirty; returns the bytes marked. */
uint64_t iova_map_mark_all(struct iova_map *m, struct dirty_source *src);

#endif /* LIBDIRTY_IOVA_MAP_H */
