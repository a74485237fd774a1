/* SPDX-License-Identifier: MIT */
/*
 * core.h - what the rest of the library (the adapters in hv-adapters/,
 * the pre-copy driver) may use of the core beyond the public API: the
 * export macro, the error message, the clock, and the few questions about
 * the view a source needs. The view's layout stays in internal.h.
 * Nothing here is installed.
 */
#ifndef LIBDIRTY_CORE_H
#define LIBDIRTY_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "libdirty/source.h"
#include "libdirty/view.h"

#define DIRTY_API __attribute__((visibility("default")))

/* Record a message for dirty_last_error() and return err (a -errno). */
int __dirty_err(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Seconds on the monotonic clock. */
double __dirty_now(void);

/* Page size of the region holding gpa, 0 if none (any thread). */
uint64_t __dirty_page_size_at(struct dirty_view *view, uint64_t gpa);

/* Was src attached with this very ops table? (An adapter's own check.) */
bool __dirty_source_has_ops(const struct dirty_source *src,
			    const struct dirty_source_ops *ops);
/* The source's name, for messages. */
const char *__dirty_source_name(const struct dirty_source *src);

#endif /* LIBDIRTY_CORE_H */
