/* mbox-guestlib.h - the mailbox of t_vm_guestlib.sh and the plan the host
 * half (tests/vm/host/gp_host.c) checks the guest half
 * (tests/vm/guest/vm_guestlib.c) against; vm-mbox.h says how it is used.
 */
#ifndef LIBDIRTY_TESTS_VM_MBOX_GUESTLIB_H
#define LIBDIRTY_TESTS_VM_MBOX_GUESTLIB_H

#include "vm-mbox.h"

#define GL_MBOX_MAGIC 0x31304f58424d4c47ull	/* "GLMBOX01" in memory */
#define GL_MBOX_MAX_PAGES 32u

struct gl_mbox {
	struct vm_mbox h;
	uint32_t nfrom, nto, nsynced;	/* entries of from[], to[], synced[] */
	uint32_t reserved;
	uint64_t from[GL_MBOX_MAX_PAGES];	/* page GPAs of the FROM_DEVICE mapping */
	uint64_t to[GL_MBOX_MAX_PAGES];	/* page GPAs of the TO_DEVICE mapping */
	uint64_t synced[GL_MBOX_MAX_PAGES];	/* FROM pages synced for the CPU while mapped */
};
_Static_assert(sizeof(struct gl_mbox) <= VM_MBOX_SIZE, "the mailbox fits its 4 KiB");

/* The guest's steps; vm_guestlib.c says what each one does. */
enum gl_step {
	STEP_OPENED = 1,
	STEP_AGENT,
	STEP_TO_MAPPED,
	STEP_TO_DONE,
	STEP_FROM_MAPPED,
	STEP_FROM_SYNCED,
	STEP_FROM_DONE,
	STEP_CLOSED,
};

/* The pages the guest's buffers' DMA touches. */
#define TO_PAGES 2u
#define FROM_PAGES 6u
#define SYNCED_PAGES 3u	/* of the FROM pages: synced for the CPU while mapped */

#endif
