/* SPDX-License-Identifier: MIT */
/*
 * pintable.h - the pin-count table: one 32-bit count word per page of the
 * region, in memory every client of one region shares (the dirty-agent
 * daemon creates it and passes it to its clients), or private to one
 * process when the library is used alone (dirty_guest_open_*).
 *
 * A count word holds the references to the page (PIN_COUNT), OWNED (the
 * table's clients set the region's pin bit, so the last of them clears
 * it) and BUSY (a 0 <-> 1 transition is in progress; everyone waits).
 * guest.c's pin_get/pin_put are the only writers in normal operation;
 * tests/model/gproto.pml checks them over every interleaving of threads
 * sharing one table, which is what processes sharing it are.
 *
 * Shared layout (a file or memfd, created by the agent):
 *   0       struct pintable_header (PINTABLE_HEADER_SIZE bytes), with one
 *           slot per connected client
 *   4096    _Atomic uint32_t count[npages]
 *
 * A process that dies between claiming a word (BUSY) and publishing it
 * leaves the word BUSY for good; the agent repairs such a word after the
 * death (pin bit set, count 1, OWNED: the page stays pinned, as the
 * device may still write it) and reports it. Nothing ever unpins early.
 */
#ifndef LIBDIRTY_PINTABLE_H
#define LIBDIRTY_PINTABLE_H

#include <stdatomic.h>
#include <stdint.h>

#define PIN_BUSY 0x80000000u	/* 0<->1 transition in progress */
#define PIN_OWNED 0x40000000u	/* this table's clients set the pin bit */
#define PIN_COUNT 0x3fffffffu	/* references */

#define PINTABLE_MAGIC 0x4c4254504c44ull	/* "LDPTBL" in memory */
#define PINTABLE_VERSION 1u
#define PINTABLE_HEADER_SIZE 4096u
#define PINTABLE_SLOTS 60u

/*
 * One connected client. The agent writes pid when it admits the client
 * (and clears it when the slot is freed); refs is 0 when a new client is
 * admitted, and kept when a process whose connection broke (an agent
 * restart, a dropped socket) reconnects and gets its own slot back:
 * counting is per process. The client adds the references it takes and
 * subtracts those it drops, one relaxed add per map or unmap call:
 * added before a map takes them, subtracted after an unmap dropped them,
 * so refs is never below what the client holds (a map that fails takes
 * its count back). Relaxed: a statistic the agent reads after the client
 * is gone (its exit orders everything before), to report the pins it
 * left; nothing is released or unpinned by it.
 */
struct pintable_slot {
	_Atomic uint32_t pid;
	uint32_t reserved0;
	_Atomic uint64_t refs;
	uint64_t reserved[6];
};

struct pintable_header {
	uint64_t magic;			/* PINTABLE_MAGIC, written last by the agent */
	uint32_t version;		/* PINTABLE_VERSION */
	uint32_t header_size;		/* PINTABLE_HEADER_SIZE */
	uint64_t npages;		/* the region's */
	uint64_t gpa_base;		/* the region's: the table belongs to one region */
	uint32_t page_shift;
	uint32_t nslots;		/* PINTABLE_SLOTS */
	uint64_t reserved[11];		/* to 128 bytes */
	struct pintable_slot slot[PINTABLE_SLOTS];
};

_Static_assert(sizeof(struct pintable_slot) == 64, "a slot is one cache line");
_Static_assert(sizeof(struct pintable_header) <= PINTABLE_HEADER_SIZE, "header fits its page");

/* Bytes of a shared table for npages pages. */
static inline uint64_t pintable_bytes(uint64_t npages)
{
	return PINTABLE_HEADER_SIZE + npages * sizeof(uint32_t);
}

#endif /* LIBDIRTY_PINTABLE_H */
