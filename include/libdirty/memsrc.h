/* SPDX-License-Identifier: MIT */
/*
 * libdirty/memsrc.h - the in-memory source.
 */
#ifndef LIBDIRTY_MEMSRC_H
#define LIBDIRTY_MEMSRC_H

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the in-memory source --------------------------------------------- */

/*
 * A precise source kept in memory: any thread marks pages with
 * dirty_memsrc_mark(); sync moves them into the view. For writes a VMM
 * makes itself (emulated devices) and for tests.
 */
int dirty_memsrc_new(struct dirty_view *view, uint64_t gpa, uint64_t len,
		     uint64_t page_size, struct dirty_source **out);
int dirty_memsrc_mark(struct dirty_source *src, uint64_t gpa, uint64_t len);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_MEMSRC_H */
