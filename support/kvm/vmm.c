/* SPDX-License-Identifier: MIT */
/*
 * support/kvm/vmm.c - the test VMM behind vmm.h: /dev/kvm, the VM and its
 * pre-vCPU capabilities, memslots, 32-bit vCPUs, the payload image and the
 * command round trip. Touches only the kernel objects it creates and the
 * guest memory the caller registered; installs one real-time signal handler
 * (KVM_VM_TIMEOUT_SIGNAL) that only interrupts KVM_RUN.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "clock.h"
#include "vmm.h"

/* payload-blob.S: the flat image of payload.c, built by kvm.mk. */
extern const unsigned char kvm_payload_image[], kvm_payload_image_end[];

/* Interrupts KVM_RUN at a command's deadline; the handler does nothing. */
#define KVM_VM_TIMEOUT_SIGNAL (SIGRTMIN + 4)

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

static _Thread_local char last_error[768];

const char *kvm_vm_last_error(void)
{
	return last_error;
}

__attribute__((format(printf, 2, 3)))
static int fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err;
}

const char *kvm_exit_reason_name(uint32_t reason)
{
	static const char *const names[] = {
		[KVM_EXIT_UNKNOWN] = "UNKNOWN", [KVM_EXIT_EXCEPTION] = "EXCEPTION",
		[KVM_EXIT_IO] = "IO", [KVM_EXIT_HYPERCALL] = "HYPERCALL",
		[KVM_EXIT_DEBUG] = "DEBUG", [KVM_EXIT_HLT] = "HLT",
		[KVM_EXIT_MMIO] = "MMIO", [KVM_EXIT_IRQ_WINDOW_OPEN] = "IRQ_WINDOW_OPEN",
		[KVM_EXIT_SHUTDOWN] = "SHUTDOWN", [KVM_EXIT_FAIL_ENTRY] = "FAIL_ENTRY",
		[KVM_EXIT_INTR] = "INTR", [KVM_EXIT_INTERNAL_ERROR] = "INTERNAL_ERROR",
		[KVM_EXIT_SYSTEM_EVENT] = "SYSTEM_EVENT",
		[KVM_EXIT_X86_RDMSR] = "X86_RDMSR", [KVM_EXIT_X86_WRMSR] = "X86_WRMSR",
		[KVM_EXIT_DIRTY_RING_FULL] = "DIRTY_RING_FULL",
		[KVM_EXIT_X86_BUS_LOCK] = "X86_BUS_LOCK", [KVM_EXIT_NOTIFY] = "NOTIFY",
	};

	if (reason < sizeof(names) / sizeof(names[0]) && names[reason])
		return names[reason];
	return "(unnamed)";
}

/* ---- skipping and capabilities ------------------------------------------ */

/*
 * KVM_CREATE_VM fails with EINTR when a signal is pending (a timer of the
 * process, a sibling thread's SIGCHLD): asking again is the answer, as QEMU
 * does. Returns the VM fd or -1 with errno.
 */
static int create_vm(int kvm_fd)
{
	int vm;

	do
		vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	while (vm < 0 && errno == EINTR);
	return vm;
}

static int open_kvm(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return fail(-errno, "/dev/kvm: %s", strerror(errno));
	if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		close(fd);
		return fail(-ENOTSUP, "/dev/kvm: KVM_GET_API_VERSION is not %d", KVM_API_VERSION);
	}
	return fd;
}

void kvm_require(void)
{
	int fd = open_kvm(), vm;

	if (fd < 0) {
		printf("SKIP: %s\n", last_error);
		exit(77);
	}
	/* A module another hypervisor holds opens fine but cannot create VMs. */
	vm = create_vm(fd);
	if (vm < 0) {
		printf("SKIP: KVM_CREATE_VM: %s\n", strerror(errno));
		exit(77);
	}
	close(vm);
	close(fd);
}

int kvm_check_cap(long cap)
{
	int fd = open_kvm(), r;

	if (fd < 0)
		return fd;
	r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
	if (r < 0)
		r = fail(-errno, "KVM_CHECK_EXTENSION(%ld): %s", cap, strerror(errno));
	close(fd);
	return r;
}

void kvm_require_cap_named(long cap, const char *name)
{
	int r;

	kvm_require();
	r = kvm_check_cap(cap);
	if (r <= 0) {
		printf("SKIP: %s not supported\n", name);
		exit(77);
	}
}

/* ---- guest memory -------------------------------------------------------- */

int kvm_vm_mem_create(struct kvm_vm_mem *m, size_t size, const char *name)
{
	m->fd = memfd_create(name, MFD_CLOEXEC);
	if (m->fd < 0)
		return fail(-errno, "memfd_create(%s): %s", name, strerror(errno));
	if (ftruncate(m->fd, (off_t)size) < 0) {
		int err = -errno;

		close(m->fd);
		return fail(err, "ftruncate(%s, %zu): %s", name, size, strerror(-err));
	}
	m->hva = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (m->hva == MAP_FAILED) {
		int err = -errno;

		close(m->fd);
		return fail(err, "mmap(%s, %zu): %s", name, size, strerror(-err));
	}
	m->size = size;
	return 0;
}

void kvm_vm_mem_destroy(struct kvm_vm_mem *m)
{
	if (m->hva && m->hva != MAP_FAILED)
		munmap(m->hva, m->size);
	if (m->fd >= 0)
		close(m->fd);
	m->hva = NULL;
	m->fd = -1;
}

/* ---- the VM --------------------------------------------------------------- */

static int enable_cap(struct kvm_vm *vm, uint32_t cap, const char *name, uint64_t arg0)
{
	struct kvm_enable_cap ec = { .cap = cap, .args = { arg0 } };

	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &ec) < 0)
		return fail(-errno, "KVM_ENABLE_CAP(%s, %#llx): %s", name,
			    (unsigned long long)arg0, strerror(errno));
	return 0;
}

/* Capabilities KVM takes only before the first memslot and vCPU. */
static int enable_pre_caps(struct kvm_vm *vm, const struct kvm_vm_opts *o)
{
	int r;

	if (o->manual_protect) {
		r = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
		if (r <= 0 || !(r & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
			return fail(-EOPNOTSUPP, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 not supported (value %d)", r);
		r = enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
			       "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
			       KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
		if (r)
			return r;
		vm->manual_protect = true;
	}
	if (o->dirty_ring_bytes) {
		long cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
		const char *name = "KVM_CAP_DIRTY_LOG_RING_ACQ_REL";
		/* The value is the largest ring the VM accepts, in bytes. */
		int max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, cap);

		if (max <= 0) {
			cap = KVM_CAP_DIRTY_LOG_RING;
			name = "KVM_CAP_DIRTY_LOG_RING";
			max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, cap);
		}
		if (max <= 0)
			return fail(-EOPNOTSUPP, "KVM_CAP_DIRTY_LOG_RING_ACQ_REL and KVM_CAP_DIRTY_LOG_RING not supported");
		if (o->dirty_ring_bytes > (uint32_t)max)
			return fail(-EINVAL, "%s: ring of %u bytes exceeds the maximum %d",
				    name, o->dirty_ring_bytes, max);
		r = enable_cap(vm, (uint32_t)cap, name, o->dirty_ring_bytes);
		if (r)
			return r;
		vm->ring_cap = cap;
		vm->ring_bytes = o->dirty_ring_bytes;
	}
	if (o->ring_with_bitmap) {
		if (!vm->ring_bytes)
			return fail(-EINVAL, "ring_with_bitmap needs dirty_ring_bytes");
		if (ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP) <= 0)
			return fail(-EOPNOTSUPP, "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP not supported");
		r = enable_cap(vm, KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
			       "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP", 0);
		if (r)
			return r;
		vm->ring_with_bitmap = true;
	}
	return 0;
}

int kvm_vm_create(const struct kvm_vm_opts *opts, struct kvm_vm **out)
{
	static const struct kvm_vm_opts none;
	struct kvm_vm *vm = calloc(1, sizeof(*vm));
	int r;

	if (!vm)
		return fail(-ENOMEM, "kvm_vm_create: out of memory");
	vm->vm_fd = -1;
	vm->kvm_fd = open_kvm();
	if (vm->kvm_fd < 0) {
		r = vm->kvm_fd;
		free(vm);
		return r;
	}
	vm->vm_fd = create_vm(vm->kvm_fd);
	if (vm->vm_fd < 0) {
		r = fail(-errno, "KVM_CREATE_VM: %s", strerror(errno));
		goto err;
	}
	r = enable_pre_caps(vm, opts ? opts : &none);
	if (r)
		goto err;
	*out = vm;
	return 0;
err:
	kvm_vm_destroy(vm);
	return r;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
	unsigned int i;

	if (!vm)
		return;
	for (i = 0; i < vm->nvcpus; i++) {
		munmap(vm->vcpus[i].run, vm->vcpus[i].run_size);
		close(vm->vcpus[i].fd);
	}
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	close(vm->kvm_fd);
	free(vm);
}

/* ---- memslots --------------------------------------------------------------- */

static struct kvm_vm_slot *slot_of(struct kvm_vm *vm, uint32_t slot)
{
	unsigned int i;

	for (i = 0; i < vm->nslots; i++)
		if (vm->slots[i].slot == slot)
			return &vm->slots[i];
	return NULL;
}

const struct kvm_vm_slot *kvm_vm_find_slot(const struct kvm_vm *vm, uint32_t slot)
{
	return slot_of((struct kvm_vm *)vm, slot);
}

static int set_region(struct kvm_vm *vm, const struct kvm_vm_slot *s, uint32_t flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = s->slot, .flags = flags, .guest_phys_addr = s->gpa,
		.memory_size = s->size, .userspace_addr = (uintptr_t)s->hva,
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return fail(-errno, "KVM_SET_USER_MEMORY_REGION(slot %u, gpa %#llx, %llu bytes, flags %#x): %s",
			    s->slot, (unsigned long long)s->gpa,
			    (unsigned long long)s->size, flags, strerror(errno));
	return 0;
}

int kvm_vm_add_slot(struct kvm_vm *vm, const struct kvm_vm_slot *s)
{
	long ps = sysconf(_SC_PAGESIZE);
	int r;

	if (vm->nslots == KVM_VM_MAX_SLOTS)
		return fail(-ENOSPC, "kvm_vm_add_slot: all %d slots used", KVM_VM_MAX_SLOTS);
	if (slot_of(vm, s->slot))
		return fail(-EEXIST, "kvm_vm_add_slot: slot %u exists", s->slot);
	if (!s->size || (s->gpa | s->size | (uintptr_t)s->hva) & (uint64_t)(ps - 1))
		return fail(-EINVAL, "kvm_vm_add_slot: slot %u gpa %#llx size %#llx hva %p not page aligned",
			    s->slot, (unsigned long long)s->gpa,
			    (unsigned long long)s->size, s->hva);
	r = set_region(vm, s, s->flags);
	if (r)
		return r;
	vm->slots[vm->nslots++] = *s;
	return 0;
}

int kvm_vm_set_slot_flags(struct kvm_vm *vm, uint32_t slot, uint32_t flags)
{
	struct kvm_vm_slot *s = slot_of(vm, slot);
	int r;

	if (!s)
		return fail(-ENOENT, "kvm_vm_set_slot_flags: no slot %u", slot);
	r = set_region(vm, s, flags);
	if (!r)
		s->flags = flags;
	return r;
}

void *kvm_vm_gpa2hva(const struct kvm_vm *vm, uint64_t gpa, uint64_t len)
{
	unsigned int i;

	for (i = 0; i < vm->nslots; i++) {
		const struct kvm_vm_slot *s = &vm->slots[i];

		if (gpa >= s->gpa && len <= s->size && gpa - s->gpa <= s->size - len)
			return (char *)s->hva + (gpa - s->gpa);
	}
	return NULL;
}

/* ---- payload and vCPUs -------------------------------------------------------- */

int kvm_vm_load_payload(struct kvm_vm *vm)
{
	size_t n = (size_t)(kvm_payload_image_end - kvm_payload_image);
	uint64_t *gdt = kvm_vm_gpa2hva(vm, 0, PAYLOAD_LOW_END);
	char *dst;

	if (!gdt)
		return fail(-ENOENT, "kvm_vm_load_payload: no slot covers [0, %#x)", PAYLOAD_LOW_END);
	if (n == 0 || n > PAYLOAD_MAX_SIZE)
		return fail(-EINVAL, "kvm_vm_load_payload: payload image of %zu bytes", n);
	dst = (char *)gdt + PAYLOAD_LOAD_GPA;
	memcpy(dst, kvm_payload_image, n);
	/*
	 * The GDT matching the segment caches set in the vCPU: the caches are
	 * what runs, but an emulator reloading a selector finds the same.
	 */
	gdt = (uint64_t *)((char *)gdt + PAYLOAD_GDT_GPA);
	gdt[0] = 0;
	gdt[1] = 0x00cf9b000000ffffull;	/* 0x08: code, base 0, 4 GiB, 32-bit */
	gdt[2] = 0x00cf93000000ffffull;	/* 0x10: data, base 0, 4 GiB */
	gdt[3] = 0x00008b0000000067ull;	/* 0x18: busy 32-bit TSS at 0 (VMX wants a TR) */
	return 0;
}

static int set_cpuid(struct kvm_vm_vcpu *v)
{
	struct kvm_cpuid2 *c = NULL;
	int nent = 64, r;

	/* The guest sees what the host KVM supports (cmpxchg8b, x87, ...). */
	for (;;) {
		c = calloc(1, sizeof(*c) + (size_t)nent * sizeof(c->entries[0]));
		if (!c)
			return fail(-ENOMEM, "set_cpuid: out of memory");
		c->nent = (uint32_t)nent;
		if (ioctl(v->vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
			break;
		r = -errno;
		free(c);
		if (r != -E2BIG || nent >= 4096)
			return fail(r, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-r));
		nent *= 2;
	}
	r = ioctl(v->fd, KVM_SET_CPUID2, c) < 0 ? -errno : 0;
	free(c);
	if (r)
		return fail(r, "KVM_SET_CPUID2: %s", strerror(-r));
	return 0;
}

static void flat_seg(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	*s = (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = sel, .type = type,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
}

/* Flat 32-bit protected mode, no paging, entering the payload. */
static int boot32(struct kvm_vm_vcpu *v)
{
	struct kvm_sregs sr;
	struct kvm_regs regs = { 0 };

	if (ioctl(v->fd, KVM_GET_SREGS, &sr) < 0)
		return fail(-errno, "KVM_GET_SREGS: %s", strerror(errno));
	flat_seg(&sr.cs, 0x08, 0xb);	/* execute/read, accessed */
	flat_seg(&sr.ds, 0x10, 0x3);	/* read/write, accessed */
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	sr.tr = (struct kvm_segment){ .selector = 0x18, .limit = 0x67, .type = 0xb, .present = 1 };
	sr.ldt = (struct kvm_segment){ .type = 0x2, .unusable = 1 };
	sr.gdt.base = PAYLOAD_GDT_GPA;
	sr.gdt.limit = 4 * 8 - 1;
	/* No IDT: any exception triple-faults into KVM_EXIT_SHUTDOWN, loudly. */
	sr.idt.base = 0;
	sr.idt.limit = 0;
	sr.cr0 = 0x33;			/* PE | MP | ET | NE: x87 usable, no paging */
	sr.cr3 = 0;
	sr.cr4 = 0;
	sr.efer = 0;
	if (ioctl(v->fd, KVM_SET_SREGS, &sr) < 0)
		return fail(-errno, "KVM_SET_SREGS (32-bit protected mode): %s", strerror(errno));
	regs.rflags = 0x2;
	regs.rip = PAYLOAD_LOAD_GPA;
	regs.rsp = PAYLOAD_STACK_TOP(v->id);
	regs.rsi = PAYLOAD_CMD_GPA(v->id);
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return fail(-errno, "KVM_SET_REGS: %s", strerror(errno));
	return 0;
}

int kvm_vm_vcpu_add(struct kvm_vm *vm, struct kvm_vm_vcpu **out)
{
	struct kvm_vm_vcpu *v;
	int size, r;

	if (vm->nvcpus == KVM_VM_MAX_VCPUS)
		return fail(-ENOSPC, "kvm_vm_vcpu_add: the payload layout has room for %u vCPUs",
			    KVM_VM_MAX_VCPUS);
	v = &vm->vcpus[vm->nvcpus];
	*v = (struct kvm_vm_vcpu){ .vm = vm, .id = vm->nvcpus, .fd = -1 };
	v->cmd = kvm_vm_gpa2hva(vm, PAYLOAD_CMD_GPA(v->id), sizeof(*v->cmd));
	if (!v->cmd)
		return fail(-ENOENT, "kvm_vm_vcpu_add: no slot holds the command block at %#x",
			    PAYLOAD_CMD_GPA(v->id));
	size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size < (int)sizeof(struct kvm_run))
		return fail(size < 0 ? -errno : -EINVAL, "KVM_GET_VCPU_MMAP_SIZE: %s",
			    size < 0 ? strerror(errno) : "too small");
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)v->id);
	if (v->fd < 0)
		return fail(-errno, "KVM_CREATE_VCPU(%u): %s", v->id, strerror(errno));
	v->run_size = (size_t)size;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		r = fail(-errno, "mmap(kvm_run of vCPU %u): %s", v->id, strerror(errno));
		goto err;
	}
	r = set_cpuid(v);
	if (!r)
		r = boot32(v);
	if (r) {
		munmap(v->run, v->run_size);
		goto err;
	}
	memset((void *)v->cmd, 0, sizeof(*v->cmd));
	vm->nvcpus++;
	*out = v;
	return 0;
err:
	close(v->fd);
	return r;
}

/* ---- running commands ------------------------------------------------------ */

static void on_timeout_signal(int sig)
{
	(void)sig;	/* only there so KVM_RUN returns -EINTR */
}

static pthread_once_t signal_once = PTHREAD_ONCE_INIT;

static void install_handler(void)
{
	struct sigaction sa = { .sa_handler = on_timeout_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(KVM_VM_TIMEOUT_SIGNAL, &sa, NULL);	/* no SA_RESTART: KVM_RUN must return */
}

/*
 * A timer that signals this thread at the deadline and then every 20 ms,
 * so a signal landing between two KVM_RUNs cannot be lost for good.
 */
static int arm_timer(timer_t *t, int timeout_ms)
{
	struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID,
				.sigev_signo = KVM_VM_TIMEOUT_SIGNAL };
	struct itimerspec its = {
		.it_value = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L },
		.it_interval = { 0, 20 * 1000000L },
	};
	sigset_t set;

	pthread_once(&signal_once, install_handler);
	sigemptyset(&set);
	sigaddset(&set, KVM_VM_TIMEOUT_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	sev.sigev_notify_thread_id = gettid();
	if (timer_create(CLOCK_MONOTONIC, &sev, t) < 0)
		return fail(-errno, "timer_create: %s", strerror(errno));
	if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
		its.it_value.tv_nsec = 1;
	if (timer_settime(*t, 0, &its, NULL) < 0) {
		int err = -errno;

		timer_delete(*t);
		return fail(err, "timer_settime: %s", strerror(-err));
	}
	return 0;
}

/* Registers for a failure message: where the guest was. */
static void where(struct kvm_vm_vcpu *v, char *buf, size_t n)
{
	struct kvm_regs r;

	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0)
		snprintf(buf, n, "(KVM_GET_REGS: %s)", strerror(errno));
	else
		snprintf(buf, n, "eip=%#llx esp=%#llx eax=%#llx eflags=%#llx",
			 (unsigned long long)r.rip, (unsigned long long)r.rsp,
			 (unsigned long long)r.rax, (unsigned long long)r.rflags);
}

/* One exit: 1 = the command is done, 0 = run again, <0 = failure. */
static int handle_exit(struct kvm_vm_vcpu *v, uint32_t seq, bool halt_done)
{
	struct kvm_run *run = v->run;
	char at[160];
	int r;

	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		uint32_t data = 0;

		memcpy(&data, (char *)run + run->io.data_offset,
		       run->io.size < 4 ? run->io.size : 4);
		if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == PAYLOAD_PORT_DONE) {
			if (data == seq)
				return 1;
			return fail(-EPROTO, "vCPU %u: payload finished seq %u, expected %u",
				    v->id, data, seq);
		}
		if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == PAYLOAD_PORT_IDLE)
			return fail(-EPROTO, "vCPU %u: payload found no new command (seq %u)",
				    v->id, data);
		where(v, at, sizeof(at));
		return fail(-EPROTO, "vCPU %u: unexpected I/O %s port %#x size %u data %#x; %s",
			    v->id, run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
			    run->io.port, run->io.size, data, at);
	}
	case KVM_EXIT_HLT:
		if (halt_done)
			return 1;
		where(v, at, sizeof(at));
		return fail(-EPROTO, "vCPU %u: guest halted unexpectedly; %s", v->id, at);
	case KVM_EXIT_INTR:
		return 0;
	case KVM_EXIT_DIRTY_RING_FULL:
		if (!v->vm->ring_full)
			return fail(-ENOBUFS, "vCPU %u: KVM_EXIT_DIRTY_RING_FULL and no ring_full handler set",
				    v->id);
		r = v->vm->ring_full(v, v->vm->ring_full_arg);
		return r < 0 ? r : 0;
	case KVM_EXIT_SHUTDOWN:
		where(v, at, sizeof(at));
		return fail(-EFAULT, "vCPU %u: KVM_EXIT_SHUTDOWN (triple fault: an exception with no IDT); %s",
			    v->id, at);
	case KVM_EXIT_FAIL_ENTRY:
		return fail(-EFAULT, "vCPU %u: KVM_EXIT_FAIL_ENTRY hardware_entry_failure_reason=%#llx cpu=%u",
			    v->id,
			    (unsigned long long)run->fail_entry.hardware_entry_failure_reason,
			    run->fail_entry.cpu);
	case KVM_EXIT_INTERNAL_ERROR: {
		char data[200] = "";
		size_t off = 0;
		uint32_t i;

		for (i = 0; i < run->internal.ndata && i < 8; i++)
			off += (size_t)snprintf(data + off, sizeof(data) - off, " %#llx",
						(unsigned long long)run->internal.data[i]);
		where(v, at, sizeof(at));
		return fail(-EFAULT, "vCPU %u: KVM_EXIT_INTERNAL_ERROR suberror=%u%s ndata=%u data:%s; %s",
			    v->id, run->internal.suberror,
			    run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ?
			    " (emulation failed: an instruction KVM cannot emulate)" : "",
			    run->internal.ndata, data, at);
	}
	case KVM_EXIT_MMIO:
		where(v, at, sizeof(at));
		return fail(-EFAULT, "vCPU %u: KVM_EXIT_MMIO %s %u bytes at gpa %#llx (no memslot there); %s",
			    v->id, run->mmio.is_write ? "write" : "read", run->mmio.len,
			    (unsigned long long)run->mmio.phys_addr, at);
	default:
		where(v, at, sizeof(at));
		return fail(-EPROTO, "vCPU %u: unexpected exit %u (KVM_EXIT_%s); %s", v->id,
			    run->exit_reason, kvm_exit_reason_name(run->exit_reason), at);
	}
}

static int run_until_done(struct kvm_vm_vcpu *v, uint32_t seq, bool halt_done,
			  int timeout_ms)
{
	double deadline = now_ms() + timeout_ms;
	timer_t t;
	int r;

	r = arm_timer(&t, timeout_ms);
	if (r)
		return r;
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno != EINTR && errno != EAGAIN) {
				r = fail(-errno, "vCPU %u: KVM_RUN: %s", v->id, strerror(errno));
				break;
			}
			r = 0;
		} else {
			r = handle_exit(v, seq, halt_done);
			if (r)
				break;
		}
		if (now_ms() >= deadline) {
			char at[160];

			where(v, at, sizeof(at));
			r = fail(-ETIMEDOUT, "vCPU %u: command seq %u not done after %d ms; %s",
				 v->id, seq, timeout_ms, at);
			break;
		}
	}
	timer_delete(t);
	return r < 0 ? r : 0;
}

int kvm_vm_cmd(struct kvm_vm_vcpu *v, const struct payload_cmd *args,
	       int timeout_ms, int *status)
{
	volatile struct payload_cmd *c = v->cmd;
	uint32_t seq = v->seq + 1;
	int r;

	if (seq == 0)
		seq = 1;	/* 0 is what the block starts with */
	c->cmd = args->cmd;
	c->list_gpa = args->list_gpa;
	c->count = args->count;
	c->words = args->words;
	c->stamp = args->stamp;
	c->region_gpa = args->region_gpa;
	c->dir = args->dir;
	/* Arguments before the seq that announces them. */
	__atomic_store_n(&c->seq, seq, __ATOMIC_RELEASE);
	v->seq = seq;
	r = run_until_done(v, seq, args->cmd == PAYLOAD_CMD_HALT, timeout_ms);
	if (r)
		return r;
	if (c->done_seq != seq)
		return fail(-EPROTO, "vCPU %u: payload signalled seq %u but its block says done_seq %u",
			    v->id, seq, c->done_seq);
	if (status)
		*status = c->status;
	if (c->status)
		return fail(-EPROTO, "vCPU %u: payload command %u failed with status %d (%s) after %llu",
			    v->id, args->cmd, c->status,
			    c->status == PAYLOAD_E_BADCMD ? "unknown command" :
			    c->status == PAYLOAD_E_ARG ? "bad argument" :
			    c->status == PAYLOAD_E_PROTO ? "region header is not protocol v1" :
			    c->status == PAYLOAD_E_RANGE ? "range outside the region" : "?",
			    (unsigned long long)c->done_count);
	return 0;
}

int kvm_vm_vcpu_write_list(struct kvm_vm_vcpu *v, const void *entries, size_t bytes,
			   uint64_t *gpa)
{
	uint64_t g = PAYLOAD_LIST_GPA + (uint64_t)v->id * KVM_VM_LIST_BYTES;
	void *dst;

	if (bytes > KVM_VM_LIST_BYTES)
		return fail(-E2BIG, "list of %zu bytes exceeds the %u-byte list area of a vCPU",
			    bytes, (unsigned int)KVM_VM_LIST_BYTES);
	dst = kvm_vm_gpa2hva(v->vm, g, KVM_VM_LIST_BYTES);
	if (!dst)
		return fail(-ENOENT, "no slot holds the list area at %#llx", (unsigned long long)g);
	memcpy(dst, entries, bytes);
	*gpa = g;
	return 0;
}

int kvm_vm_write_pages(struct kvm_vm_vcpu *v, const uint64_t *pfns, uint32_t n,
		       uint32_t words, uint64_t stamp, int timeout_ms)
{
	struct payload_cmd a = { .cmd = PAYLOAD_CMD_WRITE_PAGES, .count = n,
				 .words = words, .stamp = stamp };
	int r = kvm_vm_vcpu_write_list(v, pfns, (size_t)n * sizeof(*pfns), &a.list_gpa);

	return r ? r : kvm_vm_cmd(v, &a, timeout_ms, NULL);
}
