/* SPDX-License-Identifier: MIT */
/*
 * guest_priv.h - what the guest library's own files share: the export
 * macro and the error message. The guest library (libdirty-guest) is
 * built apart from the host library and uses none of it: a guest kernel
 * or VM image ships it alone. Nothing here is installed.
 */
#ifndef LIBDIRTY_GUEST_PRIV_H
#define LIBDIRTY_GUEST_PRIV_H

#define GUEST_API __attribute__((visibility("default")))

/* Record a message for dirty_guest_last_error() and return err (a -errno). */
int __dirty_guest_err(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif /* LIBDIRTY_GUEST_PRIV_H */
