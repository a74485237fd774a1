/* vm-check.c - the VM tier's check lines; see vm-check.h. */
#include "vm-check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vm-time.h"

int checks, failures;
char result[1024];

static const char *prog = "?";
static bool timed;
static double t0;

void vm_check_init(const char *name, bool with_time)
{
	prog = name;
	timed = with_time;
	t0 = now_ms();
}

double vm_elapsed_ms(void)
{
	return now_ms() - t0;
}

static void vline(const char *tag, const char *fmt, va_list ap)
{
	printf("%s: %s", prog, tag);
	if (timed)
		printf("[%7.1f ms] ", vm_elapsed_ms());
	vprintf(fmt, ap);
	putchar('\n');
	fflush(stdout);
}

void ok(const char *fmt, ...)
{
	va_list ap;

	checks++;
	va_start(ap, fmt);
	vline("ok   ", fmt, ap);
	va_end(ap);
}

void fail(const char *fmt, ...)
{
	va_list ap;

	checks++;
	failures++;
	va_start(ap, fmt);
	vline("FAIL ", fmt, ap);
	va_end(ap);
}

bool vm_check(bool cond, const char *fmt, ...)
{
	va_list ap;

	checks++;
	failures += !cond;
	va_start(ap, fmt);
	vline(cond ? "ok   " : "FAIL ", fmt, ap);
	va_end(ap);
	return cond;
}

void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline("     ", fmt, ap);
	va_end(ap);
}

void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vline("", fmt, ap);
	va_end(ap);
}

void add_result(const char *fmt, ...)
{
	size_t len = strlen(result);
	va_list ap;

	if (len >= sizeof(result) - 1)
		return;
	va_start(ap, fmt);
	vsnprintf(result + len, sizeof(result) - len, fmt, ap);
	va_end(ap);
}
