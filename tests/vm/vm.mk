# tests/vm/vm.mk - the VM test tier: Debian kernels under qemu-system-x86_64
# (TCG) with an emulated Intel IOMMU, QEMU's edu DMA device and ivshmem; the
# tests for VFIO code run inside that guest (see tests/vm/README.md).
# Included by the top Makefile after its own rules; uses BUILD, CC, CFLAGS,
# SAN and the `tests` target from it.
#
#   make vm-guest       the guest programs, $(BUILD)/tests/vm/<name>
#   make vm-fetch       download and unpack the kernels, busybox and headers
#                       (into ~/.cache/libdirty/vm; needs apt, not root)
#   make vm-initramfs   $(BUILD)/tests/vm/initramfs-<kernel>.cpio.gz with all
#                       guest programs (the tests build their own as needed)
#   make check-vm       run tests/vm/t_vm_*.sh through tests/run-tests.sh
#   make vm-mdev        ldtest.ko, the TEST DMA device (tests/vm/mdev/), for
#                       the 6.1 guest: $(BUILD)/tests/vm/mdev/<release>/
#                       (t_vm_mdev.sh builds it itself when it runs)
#
# The guest programs run inside the guest: built without sanitizers, with
# nothing from the host build linked in. They use the installed (6.1) uapi
# headers only. Under SAN=asan|tsan the VM tests skip.
#
# Every guest program may use libdirty itself in the guest (the guest
# plays the VMM, or runs the guest library): they link
# $(VM_OUT)/lib/libdirty-vm.a, the library's sources ($(LIB_SRCS) of the
# top Makefile) compiled here with the guest's flags, never the host's
# possibly sanitized objects; plus liburcu-bp, a shared library
# mkinitramfs.sh copies into the guest. A program that uses none of it
# pulls nothing from the archive.

VM_OUT := $(BUILD)/tests/vm
VM_KERNELS := 6.1 6.12
VM_GUEST_CC ?= $(CC)
VM_GUEST_CFLAGS := $(filter-out -fsanitize=% -fno-sanitize-recover=%,$(CFLAGS)) \
	-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Iinclude -Isupport -Itests/vm/guest
# Of support/, the guest programs use only the header-only clock.h. These
# helpers are linked into every guest program; the rest of guest/*.c are
# the programs.
VM_GUEST_LIB_SRCS := tests/vm/guest/vfio-edu.c tests/vm/guest/mdev-dev.c \
	tests/vm/guest/vfio-group.c tests/vm/guest/vm-check.c tests/vm/guest/vm-pset.c
VM_GUEST_LIB_OBJS := $(patsubst tests/vm/guest/%.c,$(VM_OUT)/%.o,$(VM_GUEST_LIB_SRCS))
VM_GUEST_HDRS := $(wildcard tests/vm/guest/*.h) tests/vm/mdev/ldtest-regs.h
VM_GUEST_SRCS := $(filter-out $(VM_GUEST_LIB_SRCS),$(wildcard tests/vm/guest/*.c))
VM_GUEST_BINS := $(patsubst tests/vm/guest/%.c,$(VM_OUT)/%,$(VM_GUEST_SRCS))
VM_TEST_SCRIPTS := $(wildcard tests/vm/t_vm_*.sh)
VM_LIBDIRTY_BINS := $(VM_GUEST_BINS)
VM_LIBDIRTY_OBJS := $(patsubst %.c,$(VM_OUT)/libdirty-obj/%.o,$(LIB_SRCS) $(GUEST_SRCS))
VM_LIBDIRTY_AR := $(VM_OUT)/lib/libdirty-vm.a
VM_INITRDS := $(patsubst %,$(VM_OUT)/initramfs-%.cpio.gz,$(VM_KERNELS))
# Host-side halves of tier tests (tests/vm/host/*.c): they run on this host,
# outside QEMU, against the region file QEMU maps, with the host library.
# Each is built with what they all share (VM_HOST_COMMON_SRCS: vm_host.c and
# the check lines the guest programs print too), with the host's flags.
VM_HOST_COMMON_SRCS := tests/vm/host/vm_host.c tests/vm/guest/vm-check.c
VM_HOST_HDRS := tests/vm/host/vm_host.h $(addprefix tests/vm/guest/,vm-check.h vm-time.h \
	vm-mbox.h mbox-guestlib.h mbox-agent.h)
VM_HOST_SRCS := $(filter-out $(VM_HOST_COMMON_SRCS),$(wildcard tests/vm/host/*.c))
VM_HOST_BINS := $(patsubst tests/vm/host/%.c,$(VM_OUT)/host/%,$(VM_HOST_SRCS))

.PHONY: vm-guest vm-fetch vm-initramfs vm-mdev check-vm
vm-guest: $(VM_GUEST_BINS) $(VM_HOST_BINS)
tests: $(VM_GUEST_BINS) $(VM_HOST_BINS)

$(VM_HOST_BINS): $(VM_OUT)/host/%: tests/vm/host/%.c $(VM_HOST_COMMON_SRCS) $(VM_HOST_HDRS) $(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests $(SUPPORT_CFLAGS) -o $@ $< $(VM_HOST_COMMON_SRCS) \
	  $(ALL_ARLIBS) $(LIB_LIBS)

$(VM_GUEST_LIB_OBJS): $(VM_OUT)/%.o: tests/vm/guest/%.c $(VM_GUEST_HDRS)
	@mkdir -p $(@D)
	$(VM_GUEST_CC) $(VM_GUEST_CFLAGS) -c -o $@ $<

$(VM_LIBDIRTY_OBJS): $(VM_OUT)/libdirty-obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(VM_GUEST_CC) $(VM_GUEST_CFLAGS) -Ilibdirty -fvisibility=hidden -MMD -MP -c -o $@ $<

$(VM_LIBDIRTY_AR): $(VM_LIBDIRTY_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(VM_LIBDIRTY_BINS): $(VM_OUT)/%: tests/vm/guest/%.c $(VM_GUEST_LIB_OBJS) $(VM_GUEST_HDRS) $(VM_LIBDIRTY_AR)
	@mkdir -p $(@D)
	$(VM_GUEST_CC) $(VM_GUEST_CFLAGS) -o $@ $< $(VM_GUEST_LIB_OBJS) $(VM_LIBDIRTY_AR) \
	  $$(pkg-config --libs liburcu-bp) -pthread

vm-fetch:
	tests/vm/fetch.sh

vm-initramfs: $(VM_INITRDS)

# Needs the kernel headers (fetch.sh downloads them); build.sh rebuilds only
# when a source changed.
vm-mdev:
	BUILD=$(abspath $(BUILD)) tests/vm/mdev/build.sh --kernel 6.1

$(VM_INITRDS): $(VM_OUT)/initramfs-%.cpio.gz: $(VM_GUEST_BINS) tests/vm/mkinitramfs.sh tests/vm/fetch.sh
	tests/vm/fetch.sh --kernel $* >/dev/null
	tests/vm/mkinitramfs.sh --kernel $* --out $@ $(VM_GUEST_BINS)

# Each boot is ~3-5 s of a TCG guest; the whole tier stays under 3 minutes.
check-vm: $(VM_GUEST_BINS) $(VM_HOST_BINS)
	@BUILD=$(BUILD) SAN=$(SAN) CC="$(CC)" TEST_TIMEOUT=$${TEST_TIMEOUT:-300} tests/run-tests.sh $(VM_TEST_SCRIPTS)
