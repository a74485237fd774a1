/* SPDX-License-Identifier: MIT */
/*
 * log.c - dirty-agent's log lines: one line per event on stderr, which
 * journald collects under systemd (it adds the time and the unit). With
 * -v every line carries the milliseconds since start, so a test log shows
 * the order and spacing of events; -v also enables log_debug lines.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

int agent_verbose;
static double t_start;

double agent_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void agent_log_init(void)
{
	t_start = agent_now_ms();
	setvbuf(stderr, NULL, _IOLBF, 0);
}

static void vlog(const char *level, const char *fmt, va_list ap)
{
	char line[2048];
	int n;

	if (agent_verbose)
		n = snprintf(line, sizeof(line), "dirty-agent[%d]: [%9.1f ms] %s", (int)getpid(),
			     agent_now_ms() - t_start, level);
	else
		n = snprintf(line, sizeof(line), "dirty-agent[%d]: %s", (int)getpid(), level);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	/* One write per line: lines of concurrent processes do not interleave. */
	fprintf(stderr, "%s\n", line);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog("", fmt, ap);
	va_end(ap);
}

void log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog("warning: ", fmt, ap);
	va_end(ap);
}

void log_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog("error: ", fmt, ap);
	va_end(ap);
}

void log_debug(const char *fmt, ...)
{
	va_list ap;

	if (!agent_verbose)
		return;
	va_start(ap, fmt);
	vlog("", fmt, ap);
	va_end(ap);
}
