/* vm-check.h - the lines every test program of the VM tier prints, the
 * guest programs and the host halves alike, so that the t_vm_*.sh scripts
 * read them all one way: "PROG: ok   ..." and "PROG: FAIL ..." per check
 * (counted in checks and failures), "PROG: RESULT ..." last.
 *
 * A program that steps with the other half of its test (vm_check_init
 * with timed) also prints the milliseconds since its start after the tag,
 * "PROG: ok   [  123.4 ms] ...", so both halves' lines can be put in order.
 */
#ifndef LIBDIRTY_TESTS_VM_CHECK_H
#define LIBDIRTY_TESTS_VM_CHECK_H

#include <stdbool.h>

extern int checks, failures;
/* What the RESULT line says besides the counts (add_result appends). */
extern char result[1024];

/* Before any line: the program's name and whether lines carry the time. */
void vm_check_init(const char *prog, bool timed);
/* Milliseconds since vm_check_init. */
double vm_elapsed_ms(void);

/* A check that held or not; vm_check prints whichever cond says, returns it. */
__attribute__((format(printf, 1, 2))) void ok(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void fail(const char *fmt, ...);
__attribute__((format(printf, 2, 3))) bool vm_check(bool cond, const char *fmt, ...);
#define CHECK(cond, ...) ((void)vm_check((cond), __VA_ARGS__))
/* Counts, byte sizes and -errno values: all fit a long long. */
#define CHECK_EQ(what, want, got) do { \
		long long w_ = (long long)(want), g_ = (long long)(got); \
		if (w_ == g_) \
			ok("%s: %lld", what, g_); \
		else \
			fail("%s: expected %lld, got %lld", what, w_, g_); \
	} while (0)

/* A line that is no check: "PROG:      ..." (note), "PROG: ..." (say). */
__attribute__((format(printf, 1, 2))) void note(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void say(const char *fmt, ...);

__attribute__((format(printf, 1, 2))) void add_result(const char *fmt, ...);

#endif
