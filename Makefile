# libdirty - dirty-page tracking for live migration with pass-through devices.
#
#   make            library (shared + static), tools, tests, benchmarks
#   make check      every test suite through tests/run-tests.sh
#   make asan|tsan  the same suites under AddressSanitizer+UBSan / ThreadSanitizer
#   make demo       the main job on an embedded default
#   make install    honours DESTDIR, PREFIX, LIBDIR, INCLUDEDIR
#   make deps       installs missing Debian packages (as root) or says how

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
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

ifeq ($(SAN),asan)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
else ifeq ($(SAN),tsan)
SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
SAN_FLAGS :=
endif

BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wstrict-prototypes -Wmissing-prototypes -Iinclude -Ilibdirty \
	-DLIBDIRTY_VERSION_STRING='"$(VERSION)"' $(SAN_FLAGS)
LIB_CFLAGS  := $(BASE_CFLAGS) -fPIC -fvisibility=hidden

# Recursive on purpose: pkg-config runs only after `deps` installed it.
URCU_LIBS  = $$(pkg-config --libs liburcu-bp)
CHECK_LIBS = $$(pkg-config --libs check)
LIB_LIBS   = $(URCU_LIBS) -pthread

LIB_SRCS := $(wildcard libdirty/*.c) $(wildcard hv-adapters/*.c) $(wildcard migrate/*.c) \
	$(wildcard guest-agent/guest*.c)
LIB_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
LIB_HDRS := $(wildcard include/*.h include/libdirty/*.h libdirty/*.h hv-adapters/*.h)

SONAME   := libdirty.so.$(VERSION_MAJOR)
SOLIB    := $(BUILD)/lib/libdirty.so.$(VERSION)
ARLIB    := $(BUILD)/lib/libdirty.a
DEPS_STAMP := $(BUILD)/.deps-ok

TEST_SRCS  := $(wildcard tests/test_*.c)
TEST_BINS  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_SCRIPTS := $(wildcard tests/t_*.sh)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRCS))

.PHONY: all lib tests bench check asan tsan demo install uninstall deps clean

all: lib tests bench

lib: $(SOLIB) $(ARLIB)
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

$(BUILD)/obj/%.o: %.c $(LIB_HDRS) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c -o $@ $<

$(SOLIB): $(LIB_OBJS) libdirty/libdirty.map
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SAN_FLAGS) -shared -Wl,-soname,$(SONAME) \
	  -Wl,--version-script=libdirty/libdirty.map -Wl,-z,defs \
	  -o $@ $(LIB_OBJS) $(LIB_LIBS)
	ln -sf $(notdir $@) $(BUILD)/lib/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/lib/libdirty.so

$(ARLIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# Tests and benchmarks link the static library: they may use internal headers.
$(BUILD)/tests/%: tests/%.c tests/testutil.h $(ARLIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests -o $@ $< $(ARLIB) $(CHECK_LIBS) $(LIB_LIBS)

$(BUILD)/bin/%: bench/%.c bench/benchutil.h $(ARLIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -o $@ $< $(ARLIB) $(LIB_LIBS) -lm

check: all
	@BUILD=$(BUILD) SAN=$(SAN) CC="$(CC)" tests/run-tests.sh $(TEST_BINS) $(KVM_TEST_BINS) $(TEST_SCRIPTS) \
	  $(VM_TEST_SCRIPTS)

asan:
	$(MAKE) BUILD=build/asan SAN=asan check

tsan:
	$(MAKE) BUILD=build/tsan SAN=tsan check

# The main job: migrate a guest with a simulated pass-through NIC three ways
# (libdirty, CPU log only, everything mapped dirty) and compare downtime.
demo: all
	$(BUILD)/bin/dirtymig demo

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/libdirty $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0755 $(SOLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libdirty.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libdirty.so
	install -m 0644 $(ARLIB) $(DESTDIR)$(LIBDIR)/
	install -m 0644 include/libdirty.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 include/libdirty/*.h $(DESTDIR)$(INCLUDEDIR)/libdirty/
	# Generated here so it names the PREFIX/LIBDIR of this very install.
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    libdirty/libdirty.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/libdirty.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libdirty.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	      $(DESTDIR)$(LIBDIR)/libdirty.so $(DESTDIR)$(LIBDIR)/libdirty.a \
	      $(DESTDIR)$(INCLUDEDIR)/libdirty.h $(DESTDIR)$(PKGCONFIGDIR)/libdirty.pc \
	      $(addprefix $(DESTDIR)$(INCLUDEDIR)/libdirty/,$(notdir $(wildcard include/libdirty/*.h)))
	-rmdir $(DESTDIR)$(INCLUDEDIR)/libdirty 2>/dev/null

clean:
	rm -rf build

# After `all` and the variables they use: libFuzzer targets (make fuzz),
# the KVM test VMM, guest payload and KVM suites, the dirtymig harness, the
# VM tier (Debian kernels under QEMU TCG: VFIO and the guest side).
include tests/fuzz/fuzz.mk
include tests/kvm/kvm.mk
include bench/dirtymig/dirtymig.mk
include tests/vm/vm.mk
