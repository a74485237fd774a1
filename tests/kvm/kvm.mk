# tests/kvm/kvm.mk - the real-KVM test tier: the 32-bit guest payload, the
# test VMM and the tests that run them. Included by the top Makefile after
# its own rules; uses BUILD, CC, CFLAGS, BASE_CFLAGS, ALL_ARLIBS,
# CHECK_LIBS, LIB_LIBS and DEPS_STAMP from it.
#
#   $(KVM_TEST_BINS)        the test binaries (add them to the runner's list)
#   make kvm-payload        just the guest image, $(BUILD)/tests/kvm/payload.bin
#
# The payload is built without the sanitizers or CFLAGS of the host build:
# it runs inside the guest, as flat 32-bit code with nothing linked in.

KVM_OUT := $(BUILD)/tests/kvm
KVM_PAYLOAD_CC ?= gcc
# No x87, SSE or MMX: this KVM emulates every guest memory access and its
# emulator has no fildll/fistpll or SSE movq, which gcc uses for 64-bit
# atomics; without them gcc calls __atomic_*_8, which payload-atomic.c
# implements with cmpxchg8b (i686). -fno-builtin and no loop-to-memset:
# nothing else to call.
KVM_PAYLOAD_CFLAGS := -m32 -march=i686 -mno-80387 -mno-sse -mno-mmx -ffreestanding -fno-pic \
	-fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin \
	-fno-tree-loop-distribute-patterns -nostdlib -O2 -std=c11 -Wall -Wextra \
	-Werror -Wshadow -Iinclude -Itests/kvm
KVM_PAYLOAD_HDRS := tests/kvm/payload-abi.h include/libdirty/proto.h
KVM_VMM_OBJS := $(KVM_OUT)/vmm.o $(KVM_OUT)/payload-blob.o
KVM_TEST_SRCS := $(wildcard tests/kvm/test_*.c)
KVM_TEST_BINS := $(patsubst tests/kvm/%.c,$(BUILD)/tests/%,$(KVM_TEST_SRCS))

.PHONY: kvm-payload
kvm-payload: $(KVM_OUT)/payload.bin
tests: $(KVM_TEST_BINS)

KVM_PAYLOAD_OBJS := $(KVM_OUT)/payload-start.o $(KVM_OUT)/payload.o $(KVM_OUT)/payload-atomic.o

$(KVM_OUT)/payload.o $(KVM_OUT)/payload-atomic.o: $(KVM_OUT)/%.o: tests/kvm/%.c $(KVM_PAYLOAD_HDRS)
	@mkdir -p $(@D)
	$(KVM_PAYLOAD_CC) $(KVM_PAYLOAD_CFLAGS) -c -o $@ $<

$(KVM_OUT)/payload-start.o: tests/kvm/payload-start.S
	@mkdir -p $(@D)
	$(KVM_PAYLOAD_CC) -m32 -c -o $@ $<

# Linked with nothing else: an unresolved call (libgcc, libatomic, memset)
# fails here. The objdump check is a second guard against x87/SSE/MMX
# instructions, which this KVM's emulator cannot run (see the flags above).
$(KVM_OUT)/payload.elf: $(KVM_PAYLOAD_OBJS) tests/kvm/payload.ld
	$(KVM_PAYLOAD_CC) -m32 -nostdlib -static -no-pie -Wl,--build-id=none \
	  -Wl,-T,tests/kvm/payload.ld -o $@ $(KVM_PAYLOAD_OBJS)
	@if objdump -d --no-show-raw-insn $@ | awk -F'\t' 'NF > 1 { print $$2 }' | \
	    grep -E '^f|^(emms|movq|movd) |%st|%xmm|%mm[0-7]'; then \
	  echo "$@: x87/SSE/MMX instructions in the payload (above); KVM cannot emulate them here" >&2; \
	  rm -f $@; exit 1; fi

$(KVM_OUT)/payload.bin: $(KVM_OUT)/payload.elf
	objcopy -O binary $< $@

# .incbin embeds the image, so test binaries need no file at run time.
$(KVM_OUT)/payload-blob.o: tests/kvm/payload-blob.S $(KVM_OUT)/payload.bin
	$(CC) -c -DKVM_PAYLOAD_BIN='"$(KVM_OUT)/payload.bin"' -o $@ $<

$(KVM_OUT)/vmm.o: tests/kvm/vmm.c tests/kvm/vmm.h tests/kvm/payload-abi.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests/kvm -c -o $@ $<

$(KVM_TEST_BINS): $(BUILD)/tests/%: tests/kvm/%.c $(KVM_VMM_OBJS) tests/kvm/vmm.h \
		$(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests -Itests/kvm -o $@ $< $(KVM_VMM_OBJS) \
	  $(ALL_ARLIBS) $(CHECK_LIBS) $(LIB_LIBS)

# kvm-bench drives the same test VMM and payload as the KVM suites.
$(BUILD)/bin/kvm-bench: bench/kvm-bench.c $(KVM_VMM_OBJS) $(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests/kvm -o $@ $< $(KVM_VMM_OBJS) $(ALL_ARLIBS) $(LIB_LIBS) -lm
