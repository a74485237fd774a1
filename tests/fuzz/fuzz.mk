# tests/fuzz/fuzz.mk - libFuzzer targets; included at the end of the top
# Makefile (it uses LIB_SRCS, GUEST_SRCS, URCU_LIBS and DEPS_STAMP from it).
#
#   make fuzz-build   build/fuzz/fuzz_host_region, build/fuzz/fuzz_guest_open,
#                     build/fuzz/fuzz_agent_msg
#   make fuzz         run each for FUZZ_SECONDS (default 300) on a copy of its
#                     seeds in build/fuzz/corpus-<target> (kept between runs,
#                     so finds accumulate; tests/fuzz/corpus is never written)
#   FUZZ_ARGS=...     more libFuzzer flags, e.g. FUZZ_ARGS=-jobs=4
#
# The targets compile the library sources themselves: libFuzzer's coverage
# and the sanitizers must instrument the code under test, not just the
# harness. Crashes land in build/fuzz/<target>-crash-*; replay one with
# build/fuzz/<target> FILE.

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 300
FUZZ_ARGS    ?=
FUZZ_OUT     := build/fuzz
# Targets on the libraries' sources, and the migration stream's destination
# (tools/dirtymig/transport, with liburing).
FUZZ_LIB_TARGETS := fuzz_host_region fuzz_guest_open fuzz_agent_msg
FUZZ_TARGETS := $(FUZZ_LIB_TARGETS) fuzz_dest_stream
FUZZ_BINS    := $(addprefix $(FUZZ_OUT)/,$(FUZZ_TARGETS))
FUZZ_LIB_BINS := $(addprefix $(FUZZ_OUT)/,$(FUZZ_LIB_TARGETS))
FUZZ_DEST_SRCS := $(addprefix tools/dirtymig/transport/,dest.c conn.c stream.c)
FUZZ_CFLAGS  := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra \
	-Iinclude -Ilibdirty
# Timeouts and memory limits make hangs and blow-ups findings, not stalls.
FUZZ_RUN_FLAGS := -timeout=25 -rss_limit_mb=2048 -print_final_stats=1

.PHONY: fuzz fuzz-build

fuzz-build: $(FUZZ_BINS)

# One step from many sources, so no -MMD (its .d would name one source's
# headers only): every header of the tree is a prerequisite instead.
FUZZ_HDRS := $(wildcard include/*.h include/libdirty/*.h libdirty/*.h hv-adapters/*.h guest-agent/*.h)

$(FUZZ_LIB_BINS): $(FUZZ_OUT)/%: tests/fuzz/%.c $(LIB_SRCS) $(GUEST_SRCS) $(FUZZ_HDRS) tests/fuzz/fuzz.mk | $(DEPS_STAMP)
	@mkdir -p $(@D)
	rm -f $@.d
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(LIB_SRCS) $(GUEST_SRCS) $(URCU_LIBS) -pthread

$(FUZZ_OUT)/fuzz_dest_stream: tests/fuzz/fuzz_dest_stream.c $(FUZZ_DEST_SRCS) \
		$(wildcard tools/dirtymig/transport/*.h support/clock.h) tests/fuzz/fuzz.mk | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Itools/dirtymig/transport -Isupport $$(pkg-config --cflags liburing) \
	  -o $@ $< $(FUZZ_DEST_SRCS) $$(pkg-config --libs liburing) -pthread

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  c=$(FUZZ_OUT)/corpus-$$t; mkdir -p $$c && cp tests/fuzz/corpus/$$t/* $$c/ || exit 1; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s on $$c"; \
	  $(FUZZ_OUT)/$$t $(FUZZ_RUN_FLAGS) -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_OUT)/$$t- $(FUZZ_ARGS) $$c || exit 1; \
	done
