/* SPDX-License-Identifier: MIT */
/*
 * support/kvm/vmm.h - a minimal test VMM for real-KVM tests: one VM, memslots
 * from caller memory, vCPUs in flat 32-bit protected mode running the
 * payload (payload-abi.h), and a command round trip with a timeout.
 *
 * The VMM owns every kernel object (VM fd, vCPU fds, kvm_run mappings,
 * memslots) and shows them in plain structs, so a libdirty KVM adapter under
 * test is handed the layout and fds and creates no hidden state. Capabilities
 * that KVM only accepts on a fresh VM (dirty ring, manual protect) are
 * options of kvm_vm_create().
 *
 * Every call returns 0 or -errno; the calling thread's message (what failed
 * and why, with the exit reason and registers for guest failures) is in
 * kvm_vm_last_error().
 */
#ifndef LIBDIRTY_TESTS_KVM_VMM_H
#define LIBDIRTY_TESTS_KVM_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/kvm.h>

#include "payload-abi.h"

/* Not in the 6.1 uapi headers installed here (added in 6.4). */
#ifndef KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP
#define KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP 225
#endif

#define KVM_VM_MAX_SLOTS 8
#define KVM_VM_MAX_VCPUS PAYLOAD_MAX_VCPUS

/* ---- skipping --------------------------------------------------------- */

/*
 * Exit 77 with "SKIP: <why>" unless /dev/kvm opens read-write and speaks
 * API 12 (e.g. "SKIP: /dev/kvm: Permission denied").
 */
void kvm_require(void);
/* Exit 77 with "SKIP: <name> not supported" unless the cap is non-zero. */
void kvm_require_cap_named(long cap, const char *name);
#define KVM_REQUIRE_CAP(cap) kvm_require_cap_named(cap, #cap)

/* KVM_CHECK_EXTENSION on /dev/kvm: the value (>= 0) or -errno. */
int kvm_check_cap(long cap);

const char *kvm_vm_last_error(void);
const char *kvm_exit_reason_name(uint32_t reason);

/* ---- guest memory ----------------------------------------------------- */

/*
 * Guest RAM as a memfd mapped MAP_SHARED: map fd again (mmap) for a second
 * view that KVM's dirty log never sees, as a device's DMA would write.
 */
struct kvm_vm_mem {
	void *hva;
	size_t size;
	int fd;
};
int kvm_vm_mem_create(struct kvm_vm_mem *m, size_t size, const char *name);
void kvm_vm_mem_destroy(struct kvm_vm_mem *m);

/* ---- the VM ------------------------------------------------------------- */

struct kvm_vm_opts {
	/*
	 * Dirty ring of this many bytes per vCPU (a power of two, a multiple
	 * of the page size); 0 = none. ACQ_REL is enabled when offered,
	 * otherwise plain DIRTY_LOG_RING.
	 */
	uint32_t dirty_ring_bytes;
	/* Also KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP (needs a ring). */
	bool ring_with_bitmap;
	/*
	 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with MANUAL_PROTECT_ENABLE only:
	 * never INITIALLY_SET (QEMU lost data combining it with the ring).
	 */
	bool manual_protect;
};

struct kvm_vm_slot {
	uint32_t slot;
	uint32_t flags;		/* KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY */
	uint64_t gpa, size;
	void *hva;
	int fd;			/* the backing fd or -1: for the caller, KVM never sees it */
	uint64_t fd_offset;
};

struct kvm_vm;

struct kvm_vm_vcpu {
	struct kvm_vm *vm;
	uint32_t id;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	uint32_t seq;		/* last command seq issued */
	volatile struct payload_cmd *cmd;	/* host view of its command block */
};

/*
 * Called on KVM_EXIT_DIRTY_RING_FULL: harvest and reset, return 0 to resume.
 * On the PVM-based KVM measured here every emulated guest store pushes an
 * entry (duplicates included) and the soft-full exit comes only when the
 * emulator yields, so a ring smaller than a vCPU's stores between exits
 * overflows: KVM WARNs in kvm_dirty_ring_push and entries are lost. Use
 * the largest ring KVM_CHECK_EXTENSION reports.
 */
typedef int (*kvm_vm_ring_full_fn)(struct kvm_vm_vcpu *vcpu, void *arg);

struct kvm_vm {
	int kvm_fd, vm_fd;
	uint32_t ring_bytes;	/* enabled ring size per vCPU, 0 = none */
	long ring_cap;		/* KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) enabled, 0 = none */
	bool ring_with_bitmap, manual_protect;
	struct kvm_vm_slot slots[KVM_VM_MAX_SLOTS];
	unsigned int nslots;
	struct kvm_vm_vcpu vcpus[KVM_VM_MAX_VCPUS];
	unsigned int nvcpus;
	kvm_vm_ring_full_fn ring_full;
	void *ring_full_arg;
};

int kvm_vm_create(const struct kvm_vm_opts *opts, struct kvm_vm **out);
/* Closes vCPUs and the VM; caller memory stays the caller's. NULL is fine. */
void kvm_vm_destroy(struct kvm_vm *vm);

/* KVM_SET_USER_MEMORY_REGION; s->slot must be unused. */
int kvm_vm_add_slot(struct kvm_vm *vm, const struct kvm_vm_slot *s);
/* Change a slot's flags (e.g. start dirty logging mid-run). */
int kvm_vm_set_slot_flags(struct kvm_vm *vm, uint32_t slot, uint32_t flags);
const struct kvm_vm_slot *kvm_vm_find_slot(const struct kvm_vm *vm, uint32_t slot);
/* Host address of [gpa, gpa + len) if one slot holds it all, else NULL. */
void *kvm_vm_gpa2hva(const struct kvm_vm *vm, uint64_t gpa, uint64_t len);

/* ---- vCPUs and the payload --------------------------------------------- */

/*
 * Copy the embedded payload to PAYLOAD_LOAD_GPA; the slot holding
 * [0, PAYLOAD_LOW_END) must exist.
 */
int kvm_vm_load_payload(struct kvm_vm *vm);
/*
 * Create vCPU `id` (ids in order from 0), map its kvm_run, give it the
 * host's supported CPUID and enter the payload in flat 32-bit protected
 * mode with its own command block and stack page (payload-abi.h).
 */
int kvm_vm_vcpu_add(struct kvm_vm *vm, struct kvm_vm_vcpu **out);

/*
 * Run one command: fill *args' host fields (seq is assigned here), run
 * the vCPU until the payload's DONE exit (or the HLT of PAYLOAD_CMD_HALT)
 * or timeout_ms (-ETIMEDOUT). Returns 0, -EPROTO if the payload reported a
 * status (in *status if non-NULL, and in the message), or -errno for a
 * failed run or any unexpected exit (SHUTDOWN, FAIL_ENTRY, INTERNAL_ERROR,
 * MMIO, a foreign port) with its details in the message. The guest's
 * result fields are in vcpu->cmd afterwards.
 */
int kvm_vm_cmd(struct kvm_vm_vcpu *vcpu, const struct payload_cmd *args,
	       int timeout_ms, int *status);

/*
 * Copy a command's list (uint64_t pfns or struct payload_range) into this
 * vCPU's share of the list area (PAYLOAD_LIST_GPA), which the guest only
 * reads; its GPA in *gpa. -E2BIG if it does not fit: place larger lists
 * in your own guest memory and pass their GPA in the command.
 */
#define KVM_VM_LIST_BYTES (PAYLOAD_LIST_SIZE / PAYLOAD_MAX_VCPUS)
int kvm_vm_vcpu_write_list(struct kvm_vm_vcpu *vcpu, const void *entries,
			   size_t bytes, uint64_t *gpa);

/* WRITE_PAGES over pfns[0..n), `words` words of stamp, stamp + 1, ... each. */
int kvm_vm_write_pages(struct kvm_vm_vcpu *vcpu, const uint64_t *pfns, uint32_t n,
		       uint32_t words, uint64_t stamp, int timeout_ms);

#endif /* LIBDIRTY_TESTS_KVM_VMM_H */
