/* vm-mbox.h - the TEST-ONLY mailbox of the VM tier's two-sided tests
 * (t_vm_guestlib.sh, t_vm_agent.sh), no part of the guest protocol: the
 * last VM_MBOX_SIZE bytes of the ivshmem file, past the protocol region
 * (a power-of-two file leaves room there; both sides check), where a host
 * program (tests/vm/host/) and its guest program step each other.
 *
 * One writer per field. Each side publishes its step with a release store
 * after the data of that step and waits, with a timeout, for the other's;
 * the step and failure words are the only ones read while the other side
 * may write. A test's mailbox is struct vm_mbox followed by its own
 * fields, in one header both halves include (mbox-guestlib.h,
 * mbox-agent.h). Header-only: the host halves are built apart from the
 * guest programs.
 */
#ifndef LIBDIRTY_TESTS_VM_MBOX_H
#define LIBDIRTY_TESTS_VM_MBOX_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "vm-time.h"

#define VM_MBOX_SIZE 4096u
#define VM_MBOX_MSG 512u

struct vm_mbox {
	uint64_t magic;		/* host, before boot: the test's own */
	uint64_t bar_size;	/* guest: BAR 2 bytes as it mapped them */
	uint32_t guest_step;	/* guest: last step reached (release) */
	uint32_t host_step;	/* host: last step it checked (release) */
	uint32_t guest_failed;	/* guest gave up; guest_msg says why */
	uint32_t host_failed;	/* host gave up; host_msg says why */
	char guest_msg[VM_MBOX_MSG];
	char host_msg[VM_MBOX_MSG];
};

static inline uint32_t vm_mbox_load(volatile const uint32_t *word)
{
	return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/* Step s reached (guest) or checked (host), after its data. */
static inline void vm_mbox_publish(volatile uint32_t *step, uint32_t s)
{
	__atomic_store_n(step, s, __ATOMIC_RELEASE);
}

/* Give up: why into this side's message, then its failed word. */
static inline void vm_mbox_give_up(volatile char *msg_field, volatile uint32_t *failed,
				   const char *msg)
{
	for (size_t i = 0; i < VM_MBOX_MSG; i++) {
		msg_field[i] = msg[i];
		if (!msg[i])
			break;
	}
	msg_field[VM_MBOX_MSG - 1] = '\0';
	__atomic_store_n(failed, 1, __ATOMIC_RELEASE);
}

/* The other side's message into out: bounded, its text may lack its NUL. */
static inline void vm_mbox_read_msg(volatile const char *msg_field, char out[VM_MBOX_MSG])
{
	for (size_t i = 0; i < VM_MBOX_MSG; i++)
		out[i] = msg_field[i];
	out[VM_MBOX_MSG - 1] = '\0';
}

/*
 * Guest: wait until the host checked step s. 0; -ECANCELED when the host
 * gave up (its message into msg); -ETIMEDOUT after timeout_ms.
 */
static inline int vm_mbox_wait_host(volatile struct vm_mbox *m, uint32_t s, double timeout_ms,
				    char msg[VM_MBOX_MSG])
{
	double start = now_ms();

	for (;;) {
		if (vm_mbox_load(&m->host_failed)) {
			vm_mbox_read_msg(m->host_msg, msg);
			return -ECANCELED;
		}
		if (vm_mbox_load(&m->host_step) >= s)
			return 0;
		if (now_ms() - start > timeout_ms)
			return -ETIMEDOUT;
		sleep_ms(1);
	}
}

#endif
