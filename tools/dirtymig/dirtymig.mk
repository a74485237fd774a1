# dirtymig.mk - builds build/bin/dirtymig, the downtime harness (tools/dirtymig/):
# the simulated guest (guest/), the stream between source and destination
# (transport/), the migration and its report (top). Included by the top
# Makefile after its variables (BUILD, CC, CFLAGS, BASE_CFLAGS, ALL_ARLIBS,
# LIB_LIBS, DEPS_STAMP) and support/support.mk. One object per source, so
# each has its own -MMD dependency file; it links the static libraries like
# the benchmarks.

DIRTYMIG_DIR  := tools/dirtymig
DIRTYMIG_BIN  := $(BUILD)/bin/dirtymig
DIRTYMIG_SRCS := $(wildcard $(DIRTYMIG_DIR)/*.c $(DIRTYMIG_DIR)/guest/*.c $(DIRTYMIG_DIR)/transport/*.c)
DIRTYMIG_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(DIRTYMIG_SRCS))
DIRTYMIG_INC  := -I$(DIRTYMIG_DIR) -I$(DIRTYMIG_DIR)/guest -I$(DIRTYMIG_DIR)/transport

# Recursive on purpose, as in the top Makefile: pkg-config may arrive with `deps`.
URING_CFLAGS = $$(pkg-config --cflags liburing)
URING_LIBS   = $$(pkg-config --libs liburing)

.PHONY: dirtymig
dirtymig: $(DIRTYMIG_BIN)
tools: $(DIRTYMIG_BIN)

$(BUILD)/$(DIRTYMIG_DIR)/%.o: $(DIRTYMIG_DIR)/%.c $(DIRTYMIG_DIR)/dirtymig.mk | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(URING_CFLAGS) $(DIRTYMIG_INC) $(SUPPORT_CFLAGS) -c -o $@ $<

$(DIRTYMIG_BIN): $(DIRTYMIG_OBJS) $(ALL_ARLIBS) $(SUPPORT_AR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -o $@ $(DIRTYMIG_OBJS) $(SUPPORT_AR) $(ALL_ARLIBS) $(URING_LIBS) $(LIB_LIBS) -lm
