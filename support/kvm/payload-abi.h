/* SPDX-License-Identifier: MIT */
/*
 * support/kvm/payload-abi.h - the contract between the test VMM (vmm.c, x86-64)
 * and the 32-bit guest payload (payload.c, -m32): the guest-physical layout
 * of the test VM's low memory, the command block, commands, status codes and
 * the I/O ports the payload signals on.
 *
 * Compiled by both sides, so every field is fixed width and every 64-bit
 * field sits at an 8-byte offset by construction: i386 aligns uint64_t to 4
 * in structs, x86-64 to 8, and the asserts below fail on either side if a
 * field ever moves.
 *
 * Low memory (one slot from GPA 0 must cover it; vCPU v < PAYLOAD_MAX_VCPUS):
 *
 *   0x01000            GDT the VMM writes         (guest only reads)
 *   0x02000 + v * 4K   command block of vCPU v   (guest writes: done fields)
 *   0x06000 + v * 4K   stack page of vCPU v      (guest writes: calls, locals)
 *   0x0a000 .. 0x10000 lists the host writes     (guest only reads)
 *   0x10000 .. 0x20000 payload image             (guest only reads/executes)
 *   0x100000 ..        free for tests (guest writes only what it is told)
 *
 * So the pages a payload dirties on its own are exactly its command blocks
 * and stack pages; the linker script refuses writable data in the image.
 */
#ifndef LIBDIRTY_TESTS_KVM_PAYLOAD_ABI_H
#define LIBDIRTY_TESTS_KVM_PAYLOAD_ABI_H

#include <stdint.h>

#define PAYLOAD_PAGE_SIZE 4096u
#define PAYLOAD_MAX_VCPUS 4u
#define PAYLOAD_GDT_GPA 0x1000u
#define PAYLOAD_CMD_GPA(v) (0x2000u + (uint32_t)(v) * PAYLOAD_PAGE_SIZE)
#define PAYLOAD_STACK_GPA(v) (0x6000u + (uint32_t)(v) * PAYLOAD_PAGE_SIZE)
#define PAYLOAD_STACK_TOP(v) (PAYLOAD_STACK_GPA(v) + PAYLOAD_PAGE_SIZE)
#define PAYLOAD_LIST_GPA 0xa000u
#define PAYLOAD_LIST_SIZE 0x6000u
#define PAYLOAD_LOAD_GPA 0x10000u	/* payload.ld links the image here */
#define PAYLOAD_MAX_SIZE 0x10000u
#define PAYLOAD_LOW_END 0x100000u	/* the low slot must cover [0, this) */

/*
 * Ports. The payload ends every command with `out %eax, PAYLOAD_PORT_DONE`
 * (eax = the command's seq): a KVM_EXIT_IO the host waits for. IDLE means
 * the host ran the vCPU without writing a new seq (a host bug).
 */
#define PAYLOAD_PORT_DONE 0x0f00u
#define PAYLOAD_PORT_IDLE 0x0f01u

enum payload_cmd_code {
	PAYLOAD_CMD_NOP = 1,		/* answer only: round trip, baseline dirtying */
	PAYLOAD_CMD_WRITE_PAGES = 2,	/* stamp each page of a list */
	PAYLOAD_CMD_PROTO_OPEN = 3,	/* validate the region, state RUNNING */
	PAYLOAD_CMD_PROTO_POLL = 4,	/* heartbeat; acknowledge track_gen */
	PAYLOAD_CMD_PROTO_MAP = 5,	/* pin every page of each range */
	PAYLOAD_CMD_PROTO_SYNC_FOR_CPU = 6,	/* dirty (FROM_DEVICE/BIDIR, tracking on) */
	PAYLOAD_CMD_PROTO_UNMAP = 7,	/* dirty as above, then unpin */
	PAYLOAD_CMD_PROTO_CLOSE = 8,	/* state STOPPED */
	PAYLOAD_CMD_HALT = 9,		/* done, then hlt forever (KVM_EXIT_HLT) */
};

/* cmd->status: 0 or one of these (positive, so they never look like -errno). */
enum payload_status {
	PAYLOAD_OK = 0,
	PAYLOAD_E_BADCMD = 1,	/* unknown command code */
	PAYLOAD_E_ARG = 2,	/* address above 4 GiB, bad count, words or dir */
	PAYLOAD_E_PROTO = 3,	/* the region header is not a valid v1 header */
	PAYLOAD_E_RANGE = 4,	/* a range lies outside the region's pages */
};

/* Protocol list entry: a DMA buffer [gpa, gpa + len). */
struct payload_range {
	uint64_t gpa;
	uint64_t len;
};

/* Directions: the values of enum dirty_dma_dir in libdirty/guest.h. */
#define PAYLOAD_DIR_TO_DEVICE 1u
#define PAYLOAD_DIR_FROM_DEVICE 2u
#define PAYLOAD_DIR_BIDIRECTIONAL 3u

#define PAYLOAD_MAX_WORDS (PAYLOAD_PAGE_SIZE / 8u)

/*
 * One per vCPU at PAYLOAD_CMD_GPA(v). The host fills the arguments, then
 * writes seq (a new value), then runs the vCPU; the guest fills the result
 * fields, then done_seq = seq, then signals PAYLOAD_PORT_DONE.
 */
struct payload_cmd {
	/* host -> guest */
	uint32_t seq;
	uint32_t cmd;		/* enum payload_cmd_code */
	uint64_t list_gpa;	/* WRITE_PAGES: uint64_t page numbers (gpa >> 12);
				 * PROTO_MAP/SYNC/UNMAP: struct payload_range */
	uint32_t count;		/* entries in the list */
	uint32_t words;		/* WRITE_PAGES: 64-bit words stamped per page, 1..512 */
	uint64_t stamp;		/* WRITE_PAGES: word i of each page gets stamp + i */
	uint64_t region_gpa;	/* PROTO_*: the protocol region in guest memory */
	uint32_t dir;		/* PROTO_*: PAYLOAD_DIR_* */
	uint32_t pad0;
	uint64_t reserved_in[2];
	/* guest -> host */
	uint32_t done_seq;
	int32_t status;		/* enum payload_status */
	uint64_t done_count;	/* pages (WRITE_PAGES, PROTO_*) handled */
	uint64_t result;	/* MAP: pins found already set; POLL: acked gen */
	uint64_t reserved_out;
};

_Static_assert(sizeof(struct payload_range) == 16, "payload_range is 16 bytes");
_Static_assert(sizeof(struct payload_cmd) == 96, "payload_cmd is 96 bytes");
_Static_assert(__builtin_offsetof(struct payload_cmd, list_gpa) == 8, "list_gpa at 8");
_Static_assert(__builtin_offsetof(struct payload_cmd, stamp) == 24, "stamp at 24");
_Static_assert(__builtin_offsetof(struct payload_cmd, region_gpa) == 32, "region_gpa at 32");
_Static_assert(__builtin_offsetof(struct payload_cmd, dir) == 40, "dir at 40");
_Static_assert(__builtin_offsetof(struct payload_cmd, done_seq) == 64, "done_seq at 64");
_Static_assert(__builtin_offsetof(struct payload_cmd, done_count) == 72, "done_count at 72");
_Static_assert(__builtin_offsetof(struct payload_cmd, result) == 80, "result at 80");

#endif /* LIBDIRTY_TESTS_KVM_PAYLOAD_ABI_H */
