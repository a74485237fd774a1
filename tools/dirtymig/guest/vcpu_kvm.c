/* SPDX-License-Identifier: MIT */
/*
 * vcpu_kvm.c - the KVM guest of vcpu_kvm.h.
 *
 * KVM maps guest RAM through a mapping of its own (the memfd's other
 * mappings still show every guest write). The WRITE_PAGES lists are
 * written by the host, which KVM's log never sees, so they live in a
 * separate small memslot above RAM that is not migrated (host memory, as
 * a VMM's own queues would be).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "libdirty.h"
#include "pacer.h"
#include "rng.h"
#include "vcpu_kvm.h"
#include "vmm.h"
#include "worker.h"

#define LIST_SLOT 1u
#define LIST_BYTES (64u << 10)
#define MAX_BATCH 512u		/* pages per WRITE_PAGES command */
#define WORDS 8u		/* 64-bit words stamped per page */
#define RING_BYTES (1u << 20)	/* small rings lose entries on this kernel */

struct vkvm {
	struct vkvm_config cfg;
	struct kvm_vm *vm;
	struct kvm_vm_vcpu *vcpu;
	void *hva;		/* KVM's mapping of guest RAM */
	uint64_t *list;		/* host view of the list slot */
	uint64_t list_gpa;
	enum dirty_kvm_mode mode;
	uint32_t ring_bytes;
	struct dirty_kvm *dk;	/* while tracking */
	struct worker runner;	/* the thread running the vCPU */
	uint64_t seed, stamp;
	_Atomic uint64_t writes;
	_Atomic uint64_t errors;
};

int vkvm_usable(char *why, size_t len)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm;

	if (fd < 0) {
		snprintf(why, len, "/dev/kvm: %s", strerror(errno));
		return -errno;
	}
	vm = ioctl(fd, KVM_CREATE_VM, 0);
	if (vm < 0) {
		int e = errno;

		snprintf(why, len, "KVM_CREATE_VM: %s", strerror(e));
		close(fd);
		return -e;
	}
	close(vm);
	close(fd);
	return 0;
}

/* The ring this harness enables, or 0: a ring smaller than RING_BYTES loses entries here. */
static uint32_t ring_bytes_for(const struct dirty_kvm_caps *caps)
{
	int max = caps->ring_acq_rel > caps->ring ? caps->ring_acq_rel : caps->ring;

	return max >= (int)RING_BYTES ? RING_BYTES : 0;
}

/* AUTO: ring, else clear-log, else bitmap (DIRTY_KVM_AUTO's order, no small ring). */
static enum dirty_kvm_mode pick_mode(const struct dirty_kvm_caps *caps)
{
	if (ring_bytes_for(caps))
		return DIRTY_KVM_RING;
	return caps->manual_protect2 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE ?
		DIRTY_KVM_CLEAR_LOG : DIRTY_KVM_BITMAP;
}

static int mode_check(const struct dirty_kvm_caps *caps, enum dirty_kvm_mode m,
		      char *why, size_t len)
{
	if (m == DIRTY_KVM_CLEAR_LOG && !(caps->manual_protect2 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
		snprintf(why, len, "--kvm-mode clear-log: this kernel lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
		return -EOPNOTSUPP;
	}
	if (m == DIRTY_KVM_RING && !ring_bytes_for(caps)) {
		snprintf(why, len, "--kvm-mode ring: this kernel lacks KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) "
			 "with a ring of %u bytes", RING_BYTES);
		return -EOPNOTSUPP;
	}
	return 0;
}

int vkvm_mode_supported(int mode, char *why, size_t len)
{
	struct dirty_kvm_caps caps;
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC), e;

	if (fd < 0) {
		snprintf(why, len, "/dev/kvm: %s", strerror(errno));
		return -errno;
	}
	dirty_kvm_probe(fd, &caps);
	close(fd);
	e = mode_check(&caps, (enum dirty_kvm_mode)mode, why, len);
	return e;
}

const char *vkvm_mode_name(const struct vkvm *k)
{
	return k ? dirty_kvm_mode_name(k->mode) : "none";
}

int vkvm_create(const struct vkvm_config *cfg, struct vkvm **out, char *err, size_t errlen)
{
	struct vkvm *k = calloc(1, sizeof(*k));
	struct dirty_kvm_caps caps;
	struct kvm_vm_slot ram = { .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .gpa = 0,
				   .size = cfg->bytes, .fd = cfg->memfd };
	struct kvm_vm_slot ls = { .slot = LIST_SLOT, .flags = 0, .size = LIST_BYTES, .fd = -1 };
	const char *what = "?";
	int e;

	*out = NULL;
	if (!k) {
		snprintf(err, errlen, "KVM guest: out of memory");
		return -ENOMEM;
	}
	k->cfg = *cfg;
	k->hva = MAP_FAILED;
	k->list = MAP_FAILED;
	k->seed = cfg->seed;
	if ((e = kvm_vm_create(NULL, &k->vm))) {
		what = "creating the VM";
		goto fail_vmm;
	}
	dirty_kvm_probe(k->vm->vm_fd, &caps);
	k->mode = cfg->mode == DIRTY_KVM_AUTO ? pick_mode(&caps) : (enum dirty_kvm_mode)cfg->mode;
	if ((e = mode_check(&caps, k->mode, err, errlen)))
		goto fail;
	k->ring_bytes = k->mode == DIRTY_KVM_RING ? RING_BYTES : 0;
	if ((e = dirty_kvm_enable(k->vm->vm_fd, k->mode, k->ring_bytes))) {
		snprintf(err, errlen, "KVM guest: enabling %s dirty logging: %s",
			 dirty_kvm_mode_name(k->mode), dirty_last_error());
		goto fail;
	}
	k->hva = mmap(NULL, cfg->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, cfg->memfd, 0);
	k->list = mmap(NULL, LIST_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (k->hva == MAP_FAILED || k->list == MAP_FAILED) {
		e = -errno;
		snprintf(err, errlen, "KVM guest: mapping memory: %s", strerror(-e));
		goto fail;
	}
	ram.hva = k->hva;
	k->list_gpa = (cfg->bytes + (1ull << 20) - 1) & ~((1ull << 20) - 1);
	ls.gpa = k->list_gpa;
	ls.hva = k->list;
	if (k->list_gpa + LIST_BYTES > (1ull << 32)) {
		snprintf(err, errlen, "KVM guest: the payload is 32-bit: at most 4 GiB of guest RAM");
		e = -EINVAL;
		goto fail;
	}
	what = "adding memslots";
	if ((e = kvm_vm_add_slot(k->vm, &ram)) || (e = kvm_vm_add_slot(k->vm, &ls)))
		goto fail_vmm;
	what = "loading the payload";
	if ((e = kvm_vm_load_payload(k->vm)))
		goto fail_vmm;
	what = "creating the vCPU";
	if ((e = kvm_vm_vcpu_add(k->vm, &k->vcpu)))
		goto fail_vmm;
	*out = k;
	return 0;
fail_vmm:
	snprintf(err, errlen, "KVM guest: %s: %s", what, kvm_vm_last_error());
fail:
	vkvm_destroy(k);
	return e;
}

void vkvm_destroy(struct vkvm *k)
{
	if (!k)
		return;
	vkvm_stop(k);
	kvm_vm_destroy(k->vm);
	if (k->hva != MAP_FAILED)
		munmap(k->hva, k->cfg.bytes);
	if (k->list != MAP_FAILED)
		munmap(k->list, LIST_BYTES);
	free(k);
}

static int ring_full(struct kvm_vm_vcpu *v, void *arg)
{
	struct vkvm *k = arg;

	(void)v;
	return k->dk ? dirty_kvm_ring_full(k->dk) : -EIO;
}

int vkvm_attach(struct vkvm *k, struct dirty_view *view, struct dirty_kvm **out)
{
	struct dirty_kvm_config cfg = { .mode = k->mode, .ring_bytes = k->ring_bytes };
	int e;

	cfg.vm_fd = fcntl(k->vm->vm_fd, F_DUPFD_CLOEXEC, 0);
	if (cfg.vm_fd < 0)
		return -errno;
	if ((e = dirty_kvm_create(view, &cfg, &k->dk))) {
		close(cfg.vm_fd);
		return e;
	}
	if ((e = dirty_kvm_add_slot(k->dk, 0, 0, k->cfg.bytes)))
		return e;
	if (k->mode == DIRTY_KVM_RING) {
		if ((e = dirty_kvm_add_vcpu(k->dk, k->vcpu->fd)) < 0)
			return e;
		k->vm->ring_full = ring_full;
		k->vm->ring_full_arg = k;
		if ((e = dirty_kvm_reaper_start(k->dk, 0)))
			return e;
	}
	*out = k->dk;
	return 0;
}

void vkvm_detach(struct vkvm *k)
{
	if (!k || !k->dk)
		return;
	vkvm_stop(k);
	if (k->mode == DIRTY_KVM_RING)
		dirty_kvm_reaper_stop(k->dk);
	k->vm->ring_full = NULL;
	k->vm->ring_full_arg = NULL;
	k->dk = NULL;	/* the view destroys the adapter */
}

/*
 * The vCPU: each tick, the pages due (--dirty-rate times --vcpus, the
 * same total as the threads) go in one WRITE_PAGES command; the guest
 * stamps WORDS fresh words into each. A stop waits for the command in
 * flight, so the guest is quiet when vkvm_stop returns.
 */
static void *kvm_vcpu_main(void *arg)
{
	struct vkvm *k = arg;
	struct pacer pc;
	uint64_t owed = 0;

	pacer_init(&pc, k->cfg.rate);
	while (!worker_stopping(&k->runner)) {
		struct payload_cmd c = { .cmd = PAYLOAD_CMD_WRITE_PAGES, .list_gpa = k->list_gpa,
					 .words = WORDS };
		uint32_t n;
		int e, st = 0;

		owed += pacer_tick(&pc);
		if (!owed)
			continue;
		/* A host too slow for the rate: drop the backlog, no endless catch-up. */
		n = owed > MAX_BATCH ? MAX_BATCH : (uint32_t)owed;
		owed = 0;
		for (uint32_t i = 0; i < n; i++)
			k->list[i] = k->cfg.first_page + rng_below(&k->seed, k->cfg.pages);
		c.count = n;
		c.stamp = (uint64_t)0xc0ull << 56 | (k->stamp += WORDS);
		e = kvm_vm_cmd(k->vcpu, &c, 5000, &st);
		if (e) {
			if (!atomic_fetch_add(&k->errors, 1))
				fprintf(stderr, "dirtymig: KVM vCPU: WRITE_PAGES: %s\n", kvm_vm_last_error());
			break;
		}
		atomic_fetch_add_explicit(&k->writes, n, memory_order_relaxed);
	}
	return NULL;
}

int vkvm_start(struct vkvm *k)
{
	return worker_start(&k->runner, kvm_vcpu_main, k);
}

void vkvm_stop(struct vkvm *k)
{
	if (k)
		worker_stop(&k->runner);
}

uint64_t vkvm_writes(const struct vkvm *k)
{
	return k ? atomic_load_explicit(&k->writes, memory_order_relaxed) : 0;
}
