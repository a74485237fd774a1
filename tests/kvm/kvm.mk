# tests/kvm/kvm.mk - the real-KVM test suites: they drive the test VMM and
# 32-bit payload of support/kvm/ against /dev/kvm. Included by the top
# Makefile after support/support.mk; uses BUILD, CC, CFLAGS, BASE_CFLAGS,
# ALL_ARLIBS, SUPPORT_AR, SUPPORT_CFLAGS, CHECK_LIBS and LIB_LIBS.
#
#   $(KVM_TEST_BINS)        the test binaries (the runner's list has them)

KVM_TEST_SRCS := $(wildcard tests/kvm/test_*.c)
KVM_TEST_BINS := $(patsubst tests/kvm/%.c,$(BUILD)/tests/%,$(KVM_TEST_SRCS))

tests: $(KVM_TEST_BINS)

$(KVM_TEST_BINS): $(BUILD)/tests/%: tests/kvm/%.c $(SUPPORT_AR) $(ALL_ARLIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Itests $(SUPPORT_CFLAGS) -o $@ $< $(SUPPORT_AR) \
	  $(ALL_ARLIBS) $(CHECK_LIBS) $(LIB_LIBS)
