# libdirty - dirty-page tracking for live migration with pass-through devices.
#
#   make            library (shared + static), tools, tests, benchmarks
#   make check      every test suite through tests/run-tests.sh
#   make asan|tsan  the same suites under AddressSanitizer+UBSan / ThreadSanitizer
#   make tsan-long  the concurrency suites under TSAN, longer and repeated
#   make soak       randomized migrations for SOAK_MINUTES (default 30)
#   make demo       the main job on an embedded default
#   make install    honours DESTDIR, PREFIX, LIBDIR, INCLUDEDIR
#   make deps       installs missing Debian packages (as root) or says how

# The version is written once, in include/libdirty/version.h.
version_part = $(shell sed -n 's/^\#define LIBDIRTY_VERSION_$(1) \([0-9]*\)$$/\1/p' include/libdirty/version.h)
VERSION_MAJOR := $(call version_part,MAJOR)
VERSION_MINOR := $(call version_part,MINOR)
VERSION_PATCH := $(call version_part,PATCH)
VERSION       := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR     ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR    ?=

BUILD  ?= build
CC     ?= gcc
CFLAGS ?= -O2 -g
SAN    ?=

# Debian packages the build and tests need; `make deps` installs the missing.
DEPS_PKGS := liburcu-dev liburing-dev libpci-dev check pkg-config python3 spin clang libclang-rt-dev gnuplot-nox iproute2 \
	qemu-system-x86 xz-utils zstd

# FAULT=1: the fault-injection sites of libdirty/fault.h (tests only; never
# in a default or installed build).
FAULT ?=
FAULT_FLAGS := $(if $(FAULT),-DDIRTY_FAULT_INJECTION)

ifeq ($(SAN),asan)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
else ifeq ($(SAN),tsan)
SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
SAN_FLAGS :=
endif

# -MMD -MP: every object and binary tracks the headers it includes.
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wstrict-prototypes -Wmissing-prototypes -Iinclude -Ilibdirty -MMD -MP $(SAN_FLAGS) $(FAULT_FLAGS)
LIB_CFLAGS  := $(BASE_CFLAGS) -fPIC -fvisibility=hidden

# Recursive on purpose: pkg-config runs only after `deps` installed it.
URCU_LIBS  = $$(pkg-config --libs liburcu-bp)
CHECK_LIBS = $$(pkg-config --libs check)
LIB_LIBS   = $(URCU_LIBS) -pthread

# The host library: the core, every source, the pre-copy driver.
LIB_SRCS := $(wildcard libdirty/*.c) $(wildcard hv-adapters/*.c) $(wildcard migrate/*.c)
LIB_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
# The guest library, apart: nothing of the host library in it.
GUEST_SRCS := $(wildcard guest-agent/guest*.c) guest-agent/agent_wire.c
GUEST_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(GUEST_SRCS))

SONAME   := libdirty.so.$(VERSION_MAJOR)
SOLIB    := $(BUILD)/lib/libdirty.so.$(VERSION)
ARLIB    := $(BUILD)/lib/libdirty.a
GUEST_SONAME := libdirty-guest.so.$(VERSION_MAJOR)
GUEST_SOLIB  := $(BUILD)/lib/libdirty-guest.so.$(VERSION)
GUEST_ARLIB  := $(BUILD)/lib/libdirty-guest.a
# What tests, benchmarks and tools link: both libraries, statically.
ALL_ARLIBS   := $(ARLIB) $(GUEST_ARLIB)
DEPS_STAMP := $(BUILD)/.deps-ok

TEST_SRCS  := $(wildcard tests/test_*.c)
TEST_BINS  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_SCRIPTS := $(wildcard tests/t_*.sh)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRCS))

# Shared by tests, benchmarks and tools (never the library); its variables
# are used by the rules below.
include support/support.mk

.PHONY: all lib tests bench tools check asan tsan tsan-long soak demo install uninstall deps clean

all: lib tests bench tools

lib: $(SOLIB) $(ARLIB) $(GUEST_SOLIB) $(GUEST_ARLIB)
tests: $(TEST_BINS)
bench: $(BENCH_BINS)

deps: $(DEPS_STAMP)

$(DEPS_STAMP): Makefile
	@missing=""; \
	for p in $(DEPS_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "deps: installing$$missing"; \
	    apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing >/dev/null \
	      || { echo "deps: apt-get failed; run: apt-get install$$missing" >&2; exit 1; }; \
	  else \
	    echo "libdirty needs these Debian packages:$$missing" >&2; \
	    echo "run: sudo apt-get install$$missing   (then make again)" >&2; exit 1; \
	  fi; \
	fi
	@mkdir -p $(@D) && touch $@

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c -o $@ $<

# Version scripts: one node per library, named after the major version.
$(BUILD)/lib/%.map: libdirty/%.map.in include/libdirty/version.h
	@mkdir -p $(@D)
	sed 's/@NODE@/LIBDIRTY_$(VERSION_MAJOR)/' $< > $@
$(BUILD)/lib/libdirty-guest.map: guest-agent/libdirty-guest.map.in include/libdirty/version.h
	@mkdir -p $(@D)
	sed 's/@NODE@/LIBDIRTY_GUEST_$(VERSION_MAJOR)/' $< > $@

# A shared library from objects: $(call shlib,soname,map,objects)
define shlib
	$(CC) $(CFLAGS) $(SAN_FLAGS) -shared -Wl,-soname,$(1) \
	  -Wl,--version-script=$(2) -Wl,-z,defs -o $@ $(3) $(LIB_LIBS)
	ln -sf $(notdir $@) $(@D)/$(1)
	ln -sf $(1) $(@D)/$(basename $(1))
endef

$(SOLIB): $(LIB_OBJS) $(BUILD)/lib/libdirty.map
	$(call shlib,$(SONAME),$(BUILD)/lib/libdirty.map,$(LIB_OBJS))

$(GUEST_SOLIB): $(GUEST_OBJS) $(BUILD)/lib/libdirty-guest.map
	$(call shlib,$(GUEST_SONAME),$(BUILD)/lib/libdirty-guest.map,$(GUEST_OBJS))

$(ARLIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(GUEST_ARLIB): $(GUEST_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# Tests and benchmarks link the static libraries: they may use internal
# headers (the core's, and the adapters' uapi fallbacks in compat.h).
$(BUILD)/tests/%: tests/%.c $(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests -Ihv-adapters $(SUPPORT_CFLAGS) -o $@ $< $(ALL_ARLIBS) $(CHECK_LIBS) $(LIB_LIBS)

$(BUILD)/bin/%: bench/%.c $(SUPPORT_AR) $(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(SUPPORT_CFLAGS) -o $@ $< $(SUPPORT_AR) $(ALL_ARLIBS) $(LIB_LIBS) -lm

check: all
	@BUILD=$(BUILD) SAN=$(SAN) CC="$(CC)" tests/run-tests.sh $(TEST_BINS) $(KVM_TEST_BINS) $(TEST_SCRIPTS) \
	  $(VM_TEST_SCRIPTS)

asan:
	$(MAKE) BUILD=build/asan SAN=asan check

tsan:
	$(MAKE) BUILD=build/tsan SAN=tsan check

# Randomized back-to-back migrations (tests/soak/soak.py): SOAK_MINUTES
# (default 30), SOAK_SEED (default: from the clock, printed) to replay.
SOAK_MINUTES ?= 30
soak: tools
	BUILD=$(BUILD) SOAK_MINUTES=$(SOAK_MINUTES) python3 tests/soak/soak.py --json $(BUILD)/soak.json

# The concurrency suites under ThreadSanitizer at TSAN_SCALE times their
# normal work (make tsan runs them at 0.2), TSAN_ROUNDS times over.
TSAN_SCALE ?= 3
TSAN_ROUNDS ?= 3
TSAN_LONG := test_view_stress test_gproto_mp test_gproto_order test_hbm test_migrate test_kvm_dirty
tsan-long:
	$(MAKE) BUILD=build/tsan SAN=tsan tests
	@for i in $$(seq $(TSAN_ROUNDS)); do \
	  echo "tsan-long: round $$i of $(TSAN_ROUNDS), scale $(TSAN_SCALE)"; \
	  BUILD=build/tsan SAN=tsan DIRTY_TEST_SCALE=$(TSAN_SCALE) tests/run-tests.sh \
	    $(addprefix build/tsan/tests/,$(TSAN_LONG)) || exit 1; \
	done

# The main job: migrate a guest with a simulated pass-through NIC three ways
# (libdirty, CPU log only, everything mapped dirty) and compare downtime.
demo: all
	$(BUILD)/bin/dirtymig demo

# Generated at install so the .pc names the PREFIX/LIBDIR of this very install.
define install_lib
	install -m 0755 $(1) $(DESTDIR)$(LIBDIR)/
	ln -sf $(notdir $(1)) $(DESTDIR)$(LIBDIR)/$(2)
	ln -sf $(2) $(DESTDIR)$(LIBDIR)/$(basename $(2))
	install -m 0644 $(3) $(DESTDIR)$(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    $(4) > $(DESTDIR)$(PKGCONFIGDIR)/$(notdir $(basename $(4)))
endef

INSTALLED_LIBS := libdirty.so.$(VERSION) $(SONAME) libdirty.so libdirty.a \
	libdirty-guest.so.$(VERSION) $(GUEST_SONAME) libdirty-guest.so libdirty-guest.a

install: lib install-agent
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/libdirty $(DESTDIR)$(PKGCONFIGDIR)
	$(call install_lib,$(SOLIB),$(SONAME),$(ARLIB),libdirty/libdirty.pc.in)
	$(call install_lib,$(GUEST_SOLIB),$(GUEST_SONAME),$(GUEST_ARLIB),guest-agent/libdirty-guest.pc.in)
	install -m 0644 include/libdirty.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 include/libdirty/*.h $(DESTDIR)$(INCLUDEDIR)/libdirty/

uninstall: uninstall-agent
	rm -f $(addprefix $(DESTDIR)$(LIBDIR)/,$(INSTALLED_LIBS)) \
	      $(DESTDIR)$(PKGCONFIGDIR)/libdirty.pc $(DESTDIR)$(PKGCONFIGDIR)/libdirty-guest.pc \
	      $(DESTDIR)$(INCLUDEDIR)/libdirty.h \
	      $(addprefix $(DESTDIR)$(INCLUDEDIR)/libdirty/,$(notdir $(wildcard include/libdirty/*.h)))
	-rmdir $(DESTDIR)$(INCLUDEDIR)/libdirty 2>/dev/null

# BUILD=build/asan (make asan) lives inside the default build directory.
clean:
	rm -rf $(BUILD)

# After `all` and the variables they use: libFuzzer targets (make fuzz),
# the KVM suites, the dirtymig harness (tools), the
# VM tier (Debian kernels under QEMU TCG: VFIO and the guest side).
include tests/fuzz/fuzz.mk
include tests/kvm/kvm.mk
include tools/dirtymig/dirtymig.mk
include guest-agent/daemon/daemon.mk
include tests/vm/vm.mk

# Header dependencies that -MMD wrote last time (none on a first build).
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
