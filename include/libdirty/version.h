/* SPDX-License-Identifier: MIT */
/*
 * libdirty/version.h - the one place the library's version is written:
 * the Makefile reads it (soname, .pc files, the symbol version node).
 */
#ifndef LIBDIRTY_VERSION_H
#define LIBDIRTY_VERSION_H

#define LIBDIRTY_VERSION_MAJOR 0
#define LIBDIRTY_VERSION_MINOR 2
#define LIBDIRTY_VERSION_PATCH 0

#endif /* LIBDIRTY_VERSION_H */
