/* SPDX-License-Identifier: MIT */
/*
 * guest_err.c - the guest library's per-thread error message. Its own,
 * not the host library's dirty_last_error(): a process may link both (a
 * test, a harness playing guest and host) and each reports its own.
 */
#include <stdarg.h>
#include <stdio.h>

#include "guest_priv.h"
#include "libdirty/guest.h"

static _Thread_local char msg[512];

int __dirty_guest_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return err;
}

GUEST_API const char *dirty_guest_last_error(void)
{
	return msg;
}
