/* mbox-agent.h - the mailbox of t_vm_agent.sh, between the host half
 * (tests/vm/host/agent_host.c) and the guest half
 * (tests/vm/guest/vm_agent.c); vm-mbox.h says how it is used.
 */
#ifndef LIBDIRTY_TESTS_VM_MBOX_AGENT_H
#define LIBDIRTY_TESTS_VM_MBOX_AGENT_H

#include "vm-mbox.h"

#define AGENT_MBOX_MAGIC 0x3130474142584d41ull	/* "AMXBAG01" in memory */
#define BUF_PAGES 4u	/* the buffer both clients map */
#define KILL_PAGES 2u	/* the pages client A dies holding */

struct agent_mbox {
	struct vm_mbox h;
	uint32_t release;	/* host: client A may end its reader section */
	uint32_t npages, nkill;
	uint32_t reserved;
	uint64_t pid_a, pid_b, agent_pid;
	uint64_t pages[8];	/* GPAs of the shared buffer's pages */
	uint64_t kill_pages[8];	/* GPAs A maps before it is killed */
};
_Static_assert(sizeof(struct agent_mbox) <= VM_MBOX_SIZE, "the mailbox fits its 4 KiB");

/* The guest's steps; vm_agent.c says what each one does. */
enum agent_step {
	STEP_AGENT_UP = 1,
	STEP_CLIENTS,
	STEP_MAPPED,
	STEP_FIRST_UNMAP,
	STEP_LAST_UNMAP,
	STEP_KILLED,
	STEP_DONE,
};

#endif
