# support/support.mk - what tests, benchmarks and tools share and the
# library never uses: the test VMM and its freestanding 32-bit guest
# payload (support/kvm/), option parsing (support/opts.c), and the
# header-only clock, generator and median. Included by the top Makefile
# after its own rules; uses BUILD, CC, CFLAGS, BASE_CFLAGS, DEPS_STAMP.
#
#   $(SUPPORT_AR)        libsupport.a: link it after the objects using it
#   SUPPORT_CFLAGS       the include paths (support/, support/kvm/)
#   make kvm-payload     just the guest image, $(BUILD)/support/kvm/payload.bin
#
# The payload is built without the sanitizers or CFLAGS of the host build:
# it runs inside the guest, as flat 32-bit code with nothing linked in.

SUPPORT_OUT := $(BUILD)/support
SUPPORT_AR := $(SUPPORT_OUT)/libsupport.a
SUPPORT_CFLAGS := -Isupport -Isupport/kvm
KVM_OUT := $(SUPPORT_OUT)/kvm
KVM_PAYLOAD_CC ?= gcc
# No x87, SSE or MMX: this KVM emulates every guest memory access and its
# emulator has no fildll/fistpll or SSE movq, which gcc uses for 64-bit
# atomics; without them gcc calls __atomic_*_8, which payload-atomic.c
# implements with cmpxchg8b (i686). -fno-builtin and no loop-to-memset:
# nothing else to call.
KVM_PAYLOAD_CFLAGS := -m32 -march=i686 -mno-80387 -mno-sse -mno-mmx -ffreestanding -fno-pic \
	-fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin \
	-fno-tree-loop-distribute-patterns -nostdlib -O2 -std=c11 -Wall -Wextra \
	-Werror -Wshadow -Iinclude -Isupport/kvm -MMD -MP
KVM_PAYLOAD_OBJS := $(KVM_OUT)/payload-start.o $(KVM_OUT)/payload.o $(KVM_OUT)/payload-atomic.o
SUPPORT_OBJS := $(SUPPORT_OUT)/opts.o $(KVM_OUT)/vmm.o $(KVM_OUT)/payload-blob.o

.PHONY: kvm-payload
kvm-payload: $(KVM_OUT)/payload.bin

$(KVM_OUT)/payload.o $(KVM_OUT)/payload-atomic.o: $(KVM_OUT)/%.o: support/kvm/%.c
	@mkdir -p $(@D)
	$(KVM_PAYLOAD_CC) $(KVM_PAYLOAD_CFLAGS) -c -o $@ $<

$(KVM_OUT)/payload-start.o: support/kvm/payload-start.S
	@mkdir -p $(@D)
	$(KVM_PAYLOAD_CC) -m32 -c -o $@ $<

# Linked with nothing else: an unresolved call (libgcc, libatomic, memset)
# fails here. The objdump check is a second guard against x87/SSE/MMX
# instructions, which this KVM's emulator cannot run (see the flags above).
$(KVM_OUT)/payload.elf: $(KVM_PAYLOAD_OBJS) support/kvm/payload.ld
	$(KVM_PAYLOAD_CC) -m32 -nostdlib -static -no-pie -Wl,--build-id=none \
	  -Wl,-T,support/kvm/payload.ld -o $@ $(KVM_PAYLOAD_OBJS)
	@if objdump -d --no-show-raw-insn $@ | awk -F'\t' 'NF > 1 { print $$2 }' | \
	    grep -E '^f|^(emms|movq|movd) |%st|%xmm|%mm[0-7]'; then \
	  echo "$@: x87/SSE/MMX instructions in the payload (above); KVM cannot emulate them here" >&2; \
	  rm -f $@; exit 1; fi

$(KVM_OUT)/payload.bin: $(KVM_OUT)/payload.elf
	objcopy -O binary $< $@

# .incbin embeds the image, so binaries need no file at run time.
$(KVM_OUT)/payload-blob.o: support/kvm/payload-blob.S $(KVM_OUT)/payload.bin
	$(CC) -c -DKVM_PAYLOAD_BIN='"$(KVM_OUT)/payload.bin"' -o $@ $<

$(KVM_OUT)/vmm.o $(SUPPORT_OUT)/opts.o: $(SUPPORT_OUT)/%.o: support/%.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(SUPPORT_CFLAGS) -c -o $@ $<

$(SUPPORT_AR): $(SUPPORT_OBJS)
	rm -f $@ && ar rcs $@ $^
