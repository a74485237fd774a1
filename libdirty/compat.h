/* SPDX-License-Identifier: MIT */
/*
 * compat.h - kernel uapi definitions newer than the installed headers
 * (Debian 12 ships 6.1 uapi; the kernels this runs on are newer). Each
 * value is the kernel's own, behind #ifndef so newer headers win. Runtime
 * probes decide whether the running kernel has the feature.
 */
#ifndef LIBDIRTY_COMPAT_H
#define LIBDIRTY_COMPAT_H

#include <linux/kvm.h>

/* include/uapi/linux/kvm.h, Linux 6.3 */
#ifndef KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP
#define KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP 225
#endif

#endif /* LIBDIRTY_COMPAT_H */
