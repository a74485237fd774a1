/* SPDX-License-Identifier: MIT */
/*
 * gproto.c - the host side of the guest bitmap protocol: creates the
 * shared region (sized for a PCI BAR when asked), attaches it to the view
 * as a PRECISE source and owns its lifetime. What a round does is
 * gproto_harvest.c's; whether the guest is trusted is gproto_trust.c's
 * (gproto_state.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gproto_state.h"

static int gp_start(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);

	pthread_mutex_lock(&gp->carry_lock);
	gp->final_started = false;
	pthread_mutex_unlock(&gp->carry_lock);
	return dirty_gp_track(gp, 1);
}

static int gp_stop(struct dirty_source *src)
{
	return dirty_gp_track(dirty_source_priv(src), 0);
}

static void gp_free(struct dirty_gp *gp)
{
	if (gp->base)
		munmap(gp->base, gp->lay.region_size);
	if (gp->fd >= 0)
		close(gp->fd);
	if (gp->path && gp->cfg.flags & DIRTY_GP_UNLINK)
		unlink(gp->path);
	free(gp->path);
	hbm_destroy(&gp->carried);
	pthread_mutex_destroy(&gp->lock);
	pthread_mutex_destroy(&gp->carry_lock);
	free(gp);
}

static void gp_destroy(struct dirty_source *src)
{
	gp_free(dirty_source_priv(src));
}

/* What both policies share. */
#define GP_OPS_COMMON \
	.version = DIRTY_SOURCE_OPS_VERSION, \
	.precision = DIRTY_PRECISE, \
	.name = "guest-protocol", \
	.start = gp_start, \
	.stop = gp_stop, \
	.sync = __gp_sync, \
	.final = __gp_final, \
	.destroy = gp_destroy, \
	.ready = __gp_ready, \
	.healthy = __gp_healthy

static const struct dirty_source_ops gp_ops = {
	GP_OPS_COMMON,
};

/* DEFER: claims keep pinned pages back; final adds them. */
static const struct dirty_source_ops gp_defer_ops = {
	GP_OPS_COMMON,
	.prepare_read = __gp_prepare_read,
	.held_bytes = __gp_held_bytes,
};

/* The file's size: the protocol's length, or the BAR-sized power of two. */
static uint64_t file_size(const struct dirty_gp *gp)
{
	uint64_t need = gp->lay.region_size, p = DIRTY_PROTO_ALIGN;
	bool pow2 = gp->cfg.size == DIRTY_GP_SIZE_POW2 ||
		    (gp->cfg.size == DIRTY_GP_SIZE_AUTO && gp->path);

	if (!pow2)
		return need;
	while (p < need)
		p <<= 1;
	return p;
}

static int create_region(struct dirty_gp *gp)
{
	struct dirty_proto_header *e = &gp->expect;

	if (gp->path)
		gp->fd = open(gp->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	else
		gp->fd = memfd_create("libdirty-gp", MFD_CLOEXEC);
	if (gp->fd < 0)
		return __dirty_err(-errno, "cannot create the protocol region %s: %s%s",
				   gp->path ? gp->path : "(memfd)", strerror(errno),
				   errno == EEXIST ? " (a leftover from an earlier run? remove it)" : "");
	gp->file_size = file_size(gp);
	/* The rest of a BAR-sized file stays zero: nobody reads it. */
	if (ftruncate(gp->fd, (off_t)gp->file_size) < 0)
		return __dirty_err(-errno, "cannot size the protocol region to %llu bytes: %s",
				   (unsigned long long)gp->file_size, strerror(errno));
	gp->base = mmap(NULL, gp->lay.region_size, PROT_READ | PROT_WRITE,
			MAP_SHARED, gp->fd, 0);
	if (gp->base == MAP_FAILED) {
		gp->base = NULL;
		return __dirty_err(-errno, "cannot map the protocol region: %s", strerror(errno));
	}
	gp->hdr = (struct dirty_proto_header *)gp->base;
	gp->dirty = (uint64_t *)(gp->base + gp->lay.dirty_off);
	gp->summary = (uint64_t *)(gp->base + gp->lay.summary_off);
	gp->pin = (uint64_t *)(gp->base + gp->lay.pin_off);

	memset(e, 0, sizeof(*e));
	e->magic = DIRTY_PROTO_MAGIC;
	e->major = DIRTY_PROTO_MAJOR;
	e->minor = DIRTY_PROTO_MINOR;
	e->header_size = DIRTY_PROTO_HEADER_SIZE;
	e->page_shift = gp->shift;
	e->gpa_base = gp->gpa;
	e->npages = gp->npages;
	e->region_size = gp->lay.region_size;
	e->dirty_off = gp->lay.dirty_off;
	e->dirty_len = gp->lay.dirty_len;
	e->summary_off = gp->lay.summary_off;
	e->summary_len = gp->lay.summary_len;
	e->pin_off = gp->lay.pin_off;
	e->pin_len = gp->lay.pin_len;
	/* Everything but the magic, then the magic with release: a guest
	 * that sees the magic sees a complete header. */
	memcpy((uint8_t *)gp->hdr + 8, (uint8_t *)e + 8, sizeof(*e) - 8);
	__atomic_store_n(&gp->hdr->magic, e->magic, __ATOMIC_RELEASE);
	return 0;
}

DIRTY_API int dirty_gp_create(struct dirty_view *view,
			      const struct dirty_gp_config *cfg,
			      struct dirty_gp **out)
{
	struct dirty_range range;
	struct dirty_gp *gp;
	uint64_t ps;
	int err;

	if (!cfg)
		return __dirty_err(-EINVAL, "dirty_gp_create: NULL config");
	ps = cfg->page_size ? cfg->page_size : DIRTY_MIN_PAGE_SIZE;
	if (ps < DIRTY_MIN_PAGE_SIZE || (ps & (ps - 1)) || !cfg->len ||
	    (cfg->gpa | cfg->len) & (ps - 1) || cfg->gpa + cfg->len < cfg->gpa)
		return __dirty_err(-EINVAL, "guest protocol range [%#llx, +%#llx) must be non-empty and aligned to a power-of-two page size >= 4 KiB",
				   (unsigned long long)cfg->gpa, (unsigned long long)cfg->len);
	if (cfg->pinned > DIRTY_GP_PINNED_DEFER || cfg->fallback > DIRTY_GP_FALLBACK_ABORT ||
	    cfg->size > DIRTY_GP_SIZE_POW2 || cfg->flags & ~DIRTY_GP_UNLINK)
		return __dirty_err(-EINVAL, "unknown pinned policy %u, fallback %u, size rule %u or flags %#x",
				   cfg->pinned, cfg->fallback, cfg->size, cfg->flags);
	gp = calloc(1, sizeof(*gp));
	if (!gp)
		return __dirty_err(-ENOMEM, "dirty_gp_create: out of memory");
	gp->fd = -1;
	gp->cfg = *cfg;
	gp->cfg.path = NULL;	/* the caller's string: ours is gp->path */
	if (cfg->path && !(gp->path = strdup(cfg->path))) {
		free(gp);
		return __dirty_err(-ENOMEM, "dirty_gp_create: out of memory");
	}
	if (!gp->cfg.ack_timeout_ms)
		gp->cfg.ack_timeout_ms = 1000;
	gp->page_size = ps;
	gp->shift = (unsigned int)__builtin_ctzll(ps);
	gp->gpa = cfg->gpa;
	gp->npages = cfg->len >> gp->shift;
	gp->state = DIRTY_GP_IDLE;
	pthread_mutex_init(&gp->lock, NULL);
	pthread_mutex_init(&gp->carry_lock, NULL);
	if (dirty_proto_layout(gp->npages, &gp->lay)) {
		err = __dirty_err(-E2BIG, "guest protocol range of %llu pages is too large",
				  (unsigned long long)gp->npages);
		goto fail;
	}
	err = hbm_init(&gp->carried, gp->npages);
	if (err) {
		err = __dirty_err(err, "dirty_gp_create: cannot allocate the carry-over bitmap");
		goto fail;
	}
	err = create_region(gp);
	if (err)
		goto fail;
	range.gpa = gp->gpa;
	range.len = gp->npages << gp->shift;
	err = dirty_source_attach(view, gp->cfg.pinned == DIRTY_GP_PINNED_DEFER ?
				  &gp_defer_ops : &gp_ops, gp, &range, 1, &gp->src);
	if (err)
		goto fail;
	*out = gp;
	return 0;
fail:
	/* We created the file: a failed create leaves nothing behind. */
	if (gp->fd >= 0 && gp->path)
		gp->cfg.flags |= DIRTY_GP_UNLINK;
	gp_free(gp);
	return err;
}

DIRTY_API void dirty_gp_destroy(struct dirty_gp *gp)
{
	if (gp)
		dirty_source_detach(gp->src);	/* frees gp through gp_destroy */
}

DIRTY_API int dirty_gp_fd(const struct dirty_gp *gp)
{
	return gp->fd;
}

DIRTY_API uint64_t dirty_gp_size(const struct dirty_gp *gp)
{
	return gp->file_size;
}

DIRTY_API struct dirty_source *dirty_gp_source(struct dirty_gp *gp)
{
	return gp->src;
}

DIRTY_API int dirty_gp_pinned(struct dirty_gp *gp, uint64_t gpa)
{
	uint64_t p;

	if (gpa < gp->gpa || (gpa - gp->gpa) >> gp->shift >= gp->npages)
		return __dirty_err(-ERANGE, "%#llx is outside the guest protocol range",
				   (unsigned long long)gpa);
	p = (gpa - gp->gpa) >> gp->shift;
	return (LDA(&gp->pin[p / 64]) >> (p % 64)) & 1;
}
