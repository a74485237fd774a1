# dirtymig.mk - builds build/bin/dirtymig, the downtime harness (bench/dirtymig/).
# Included by the top Makefile after its variables (BUILD, CC, CFLAGS,
# BASE_CFLAGS, ARLIB, LIB_LIBS, DEPS_STAMP). One compile-and-link step:
# a handful of small files, and the binary links the static library
# like the other benchmarks (so it may use internal headers).
# `bench` (hence `all` and `check`) builds it too.

DIRTYMIG_BIN  := $(BUILD)/bin/dirtymig
DIRTYMIG_SRCS := $(wildcard bench/dirtymig/*.c)
DIRTYMIG_HDRS := $(wildcard bench/dirtymig/*.h) bench/benchutil.h

# Recursive on purpose, as in the top Makefile: pkg-config may arrive with `deps`.
URING_CFLAGS = $$(pkg-config --cflags liburing)
URING_LIBS   = $$(pkg-config --libs liburing)

.PHONY: dirtymig
dirtymig: $(DIRTYMIG_BIN)
bench: $(DIRTYMIG_BIN)

$(DIRTYMIG_BIN): $(DIRTYMIG_SRCS) $(DIRTYMIG_HDRS) bench/dirtymig/dirtymig.mk $(ALL_ARLIBS) $(KVM_VMM_OBJS) tests/kvm/vmm.h tests/kvm/payload-abi.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(URING_CFLAGS) -Ibench -Ibench/dirtymig -Itests/kvm -Itests -o $@ \
	  $(DIRTYMIG_SRCS) $(KVM_VMM_OBJS) $(ALL_ARLIBS) $(URING_LIBS) $(LIB_LIBS) -lm
