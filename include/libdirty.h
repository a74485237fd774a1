/* SPDX-License-Identifier: MIT */
/*
 * libdirty.h - the host library, all of it: the merged dirty view and the
 * sources that feed it, and the pre-copy driver that drains it.
 *
 * A *view* holds guest-physical regions, each with a hierarchical atomic
 * bitmap. *Sources* (KVM dirty log, VFIO, the guest bitmap protocol, ...)
 * OR their dirty bits in; migration threads *claim* runs of dirty pages out.
 * Marking and claiming are lock-free and may run on any number of threads
 * while regions are added and removed.
 *
 * One header per part, each usable alone: libdirty/view.h, source.h,
 * memsrc.h, gproto.h, kvm.h, uffd.h, vfio.h (type1, DMA logging), iommufd.h,
 * migrate.h; version.h. The
 * guest side is a separate library (libdirty-guest: libdirty/guest.h).
 */
#ifndef LIBDIRTY_H
#define LIBDIRTY_H

#include <libdirty/version.h>
#include <libdirty/view.h>
#include <libdirty/source.h>
#include <libdirty/memsrc.h>
#include <libdirty/gproto.h>
#include <libdirty/kvm.h>
#include <libdirty/uffd.h>
#include <libdirty/vfio.h>
#include <libdirty/iommufd.h>
#include <libdirty/migrate.h>

#endif /* LIBDIRTY_H */
