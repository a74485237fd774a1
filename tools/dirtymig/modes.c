/* SPDX-License-Identifier: MIT */
/*
 * modes.c - the view and sources of each tracking mode (modes.h), and
 * the all-mapped source: a COARSE source standing in for VFIO type1's
 * VFIO_IOMMU_DIRTY_PAGES, which reports every mapped page on every query
 * when no vendor driver pins pages (DESIGN section 1).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modes.h"

static const char *const names[DM_NMODES] = { "libdirty", "cpu-only", "all-mapped" };

const char *dm_mode_name(enum dm_mode m)
{
	return m < DM_NMODES ? names[m] : "?";
}

int dm_mode_parse(const char *s, enum dm_mode *m)
{
	for (int i = 0; i < DM_NMODES; i++)
		if (!strcmp(s, names[i])) {
			*m = (enum dm_mode)i;
			return 0;
		}
	return -EINVAL;
}

/* ---- all-mapped: every page of the range, every time ------------------ */

struct all_mapped {
	uint64_t gpa, len;
};

static int all_mapped_sync(struct dirty_source *src)
{
	struct all_mapped *a = dirty_source_priv(src);

	return dirty_source_mark(src, a->gpa, a->len);
}

static void all_mapped_destroy(struct dirty_source *src)
{
	free(dirty_source_priv(src));
}

static const struct dirty_source_ops all_mapped_ops = {
	.version = DIRTY_SOURCE_OPS_VERSION,
	.precision = DIRTY_COARSE,
	.name = "type1-all-mapped",
	.sync = all_mapped_sync,
	.final = all_mapped_sync,
	.destroy = all_mapped_destroy,
};

/* ---- building a mode ---------------------------------------------------- */

int tracking_create(struct tracking *t, enum dm_mode m, struct workload *w,
		    unsigned int pinned, char *err, size_t errlen)
{
	struct dirty_gp_config gc = {
		.gpa = 0, .len = w->bytes,
		/* SEND: pinned pages resent every round; DEFER: at the stop. */
		.pinned = pinned,
		/* A silent guest costs downtime, never correctness. */
		.fallback = DIRTY_GP_FALLBACK_ALL_DIRTY,
		.heartbeat_timeout_ms = 2000,
		.ack_timeout_ms = 5000,
	};
	struct dirty_range all = { 0, w->bytes };
	int e;

	memset(t, 0, sizeof(*t));
	t->mode = m;
	if ((e = dirty_view_new(&t->view)) ||
	    (e = dirty_view_add_region(t->view, 0, w->bytes, WL_PAGE, 0)))
		goto fail;
	if (w->kvm) {	/* a real guest: KVM's dirty log is the CPU side */
		if ((e = vkvm_attach(w->kvm, t->view, &t->kvm)))
			goto fail;
		t->w = w;
	} else if ((e = dirty_uffd_create(t->view, &t->uffd)) ||
		   (e = dirty_uffd_add_range(t->uffd, w->cpu, w->bytes, 0)))
		goto fail;
	t->gp_in_view = m == DM_MODE_LIBDIRTY;
	if (!t->gp_in_view && (e = dirty_view_new(&t->decoy)))
		goto fail;
	if ((e = dirty_gp_create(t->gp_in_view ? t->view : t->decoy, &gc, &t->gp)))
		goto fail;
	if (m == DM_MODE_ALL_MAPPED) {
		struct all_mapped *am = malloc(sizeof(*am));

		if (!am) {
			snprintf(err, errlen, "setting up %s tracking: out of memory", dm_mode_name(m));
			tracking_destroy(t);
			return -ENOMEM;
		}
		am->gpa = all.gpa;
		am->len = all.len;
		if ((e = dirty_source_attach(t->view, &all_mapped_ops, am, &all, 1, &t->all_mapped))) {
			free(am);
			goto fail;
		}
	}
	return 0;
fail:
	snprintf(err, errlen, "setting up %s tracking: %s", dm_mode_name(m), dirty_last_error());
	tracking_destroy(t);
	return e;
}

void tracking_destroy(struct tracking *t)
{
	if (t->kvm)	/* the reaper and ring-full callback go before the adapter */
		vkvm_detach(t->w->kvm);
	/* The views free their sources: uffd or KVM, protocol region, all-mapped. */
	if (t->view)
		dirty_view_free(t->view);
	if (t->decoy)
		dirty_view_free(t->decoy);
	memset(t, 0, sizeof(*t));
}
