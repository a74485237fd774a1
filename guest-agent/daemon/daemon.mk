# guest-agent/daemon/daemon.mk - dirty-agent, the guest agent daemon.
# Included by the top Makefile after its variables and rules (BUILD, CC,
# CFLAGS, BASE_CFLAGS, ALL_ARLIBS, LIB_LIBS, DEPS_STAMP, SUPPORT_CFLAGS).
#
#   make dirty-agent       $(BUILD)/bin/dirty-agent (also part of `tools`)
#   make install-agent     the daemon, its systemd unit, udev rule and man page
#   make uninstall-agent   removes them again
#
# The daemon is guest software: it links guest-agent/agent_wire.c (its own
# object here) with liburing and libpci (dynamic only: Debian ships no
# libpci.a), and nothing of libdirty or libdirty-guest. One object per
# source, each with its -MMD dependency file, as tools/dirtymig does.
#
# Its tests: tests/t_agent*.sh (make check) with helper programs from
# tests/agent/*.c, built here into $(BUILD)/tests/agent/ against both static
# libraries (they play the host, the clients and the device).

AGENT_DIR  := guest-agent/daemon
AGENT_BIN  := $(BUILD)/bin/dirty-agent
AGENT_SRCS := $(wildcard $(AGENT_DIR)/*.c)
AGENT_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(AGENT_SRCS)) $(BUILD)/$(AGENT_DIR)/agent_wire.o
# Recursive on purpose, as in the top Makefile: pkg-config may arrive with `deps`.
AGENT_CFLAGS = -Iguest-agent -I$(AGENT_DIR) $$(pkg-config --cflags liburing libpci)
AGENT_LIBS   = $$(pkg-config --libs liburing libpci)

AGENT_TEST_SRCS := $(wildcard tests/agent/*.c)
AGENT_TEST_BINS := $(patsubst tests/agent/%.c,$(BUILD)/tests/agent/%,$(AGENT_TEST_SRCS))

# Install locations (the top Makefile's DESTDIR and PREFIX).
AGENT_SBINDIR  ?= $(PREFIX)/sbin
AGENT_UNITDIR  ?= $(PREFIX)/lib/systemd/system
AGENT_UDEVDIR  ?= $(PREFIX)/lib/udev/rules.d
AGENT_MAN8DIR  ?= $(PREFIX)/share/man/man8

.PHONY: dirty-agent install-agent uninstall-agent
dirty-agent: $(AGENT_BIN)
tools: $(AGENT_BIN)
tests: $(AGENT_TEST_BINS)
# The VM tier runs the daemon in its guests (t_vm_agent.sh also makes a
# region file with agent_mkregion for its lspci cross-check).
vm-guest check-vm: $(AGENT_BIN) $(BUILD)/tests/agent/agent_mkregion

$(BUILD)/$(AGENT_DIR)/%.o: $(AGENT_DIR)/%.c $(AGENT_DIR)/daemon.mk | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(AGENT_CFLAGS) -c -o $@ $<

$(BUILD)/$(AGENT_DIR)/agent_wire.o: guest-agent/agent_wire.c $(AGENT_DIR)/daemon.mk | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) $(AGENT_CFLAGS) -c -o $@ $<

$(AGENT_BIN): $(AGENT_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -o $@ $(AGENT_OBJS) $(AGENT_LIBS)

$(AGENT_TEST_BINS): $(BUILD)/tests/agent/%: tests/agent/%.c $(wildcard tests/agent/*.h) $(ALL_ARLIBS) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests -Itests/agent -Iguest-agent $(SUPPORT_CFLAGS) -o $@ $< \
	  $(ALL_ARLIBS) $(LIB_LIBS)

install-agent: $(AGENT_BIN)
	install -d $(DESTDIR)$(AGENT_SBINDIR) $(DESTDIR)$(AGENT_UNITDIR) $(DESTDIR)$(AGENT_UDEVDIR) \
	  $(DESTDIR)$(AGENT_MAN8DIR)
	install -m 0755 $(AGENT_BIN) $(DESTDIR)$(AGENT_SBINDIR)/dirty-agent
	sed 's|@SBINDIR@|$(AGENT_SBINDIR)|g' guest-agent/systemd/dirty-agent.service \
	  > $(DESTDIR)$(AGENT_UNITDIR)/dirty-agent.service
	chmod 0644 $(DESTDIR)$(AGENT_UNITDIR)/dirty-agent.service
	install -m 0644 guest-agent/systemd/60-dirty-agent.rules $(DESTDIR)$(AGENT_UDEVDIR)/60-dirty-agent.rules
	install -m 0644 guest-agent/dirty-agent.8 $(DESTDIR)$(AGENT_MAN8DIR)/dirty-agent.8

uninstall-agent:
	rm -f $(DESTDIR)$(AGENT_SBINDIR)/dirty-agent $(DESTDIR)$(AGENT_UNITDIR)/dirty-agent.service \
	  $(DESTDIR)$(AGENT_UDEVDIR)/60-dirty-agent.rules $(DESTDIR)$(AGENT_MAN8DIR)/dirty-agent.8
