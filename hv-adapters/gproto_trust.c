/* SPDX-License-Identifier: MIT */
/*
 * gproto_trust.c - whether the guest protocol's bits can stand for the
 * guest's DMA right now: tracking generations, the guest's
 * acknowledgement and heartbeat, the region header, and the rules that
 * make trust follow the guest's life (libdirty.h, enum dirty_gp_state).
 *
 * The rules, and why each is safe:
 *  - Trusted = tracking on, header as the host wrote it, the guest's
 *    words sane, the current generation acknowledged, and the agent not
 *    silent longer than heartbeat_timeout_ms. The acknowledgement comes
 *    after a grace period in every client (guest.c dirty_guest_poll), so
 *    from then on every unmap of a device-written page sets its bit.
 *  - Silence before the guest first showed life, or while tracking is
 *    off, is no fault: the guest is waiting, not untrusted.
 *  - Losing trust raises a fresh generation: only an acknowledgement
 *    made after the loss proves the guest is back.
 *  - Gaining trust marks the whole range dirty (a new first pass): a
 *    guest that was not trusted may have let a device write anything, and
 *    the first gain, before any pass, costs nothing (the marks coalesce
 *    with the first pass's).
 *  - A header that no longer matches what the host wrote is fatal until
 *    the host rewrites it (dirty_gp_restore): the host cannot know what
 *    else the writer overwrote.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "gproto_state.h"

static void say(struct dirty_gp *gp, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void say(struct dirty_gp *gp, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(gp->reason, sizeof(gp->reason), fmt, ap);
	va_end(ap);
}

/* Every host-owned header field as the host wrote it? Else say which. */
static bool header_intact(struct dirty_gp *gp)
{
	const struct dirty_proto_header *h = gp->hdr;

#define FIELD(f)                                                               \
	do {                                                                   \
		uint64_t got = (uint64_t)LDA(&h->f);                           \
		if (got != (uint64_t)gp->expect.f) {                           \
			say(gp, "region header field " #f " was overwritten (%#llx, host wrote %#llx); " \
			    "dirty_gp_restore() rewrites it", (unsigned long long)got, \
			    (unsigned long long)gp->expect.f);                 \
			return false;                                          \
		}                                                              \
	} while (0)
	FIELD(magic);
	FIELD(major);
	FIELD(minor);
	FIELD(header_size);
	FIELD(page_shift);
	FIELD(gpa_base);
	FIELD(npages);
	FIELD(region_size);
	FIELD(dirty_off);
	FIELD(dirty_len);
	FIELD(summary_off);
	FIELD(summary_len);
	FIELD(pin_off);
	FIELD(pin_len);
	FIELD(host.track_gen);
	FIELD(host.flags);
#undef FIELD
	return true;
}

/* The guest's own words make sense? Else say why (not fatal: the guest's). */
static bool guest_sane(struct dirty_gp *gp)
{
	uint32_t state = LDA(&gp->hdr->guest.state);

	if (state > DIRTY_PROTO_GUEST_STOPPED) {
		say(gp, "guest state word holds %u, which no guest writes", state);
		return false;
	}
	if (state == DIRTY_PROTO_GUEST_RUNNING && LDA(&gp->hdr->guest.major) != DIRTY_PROTO_MAJOR) {
		say(gp, "guest speaks protocol v%u, the host v%u",
		    (unsigned int)LDA(&gp->hdr->guest.major), DIRTY_PROTO_MAJOR);
		return false;
	}
	return true;
}

/*
 * v1.1 guests run an agent daemon that names the client it waits on.
 * Only a hint for the message: any value is safe to print.
 */
static const char *waiting_on(struct dirty_gp *gp)
{
	uint64_t pid;

	if (LDA(&gp->hdr->guest.minor) < 1 || !(pid = LDA(&gp->hdr->guest.waiting_pid)))
		return "";
	snprintf(gp->waiting, sizeof(gp->waiting), " (the guest agent waits on client pid %llu)",
		 (unsigned long long)pid);
	return gp->waiting;
}

void __gp_raise_gen(struct dirty_gp *gp)
{
	gp->gen++;
	gp->gen_time = __dirty_now();
	gp->expect.host.flags = gp->tracking ? DIRTY_PROTO_HOST_TRACKING : 0;
	gp->expect.host.track_gen = gp->gen;
	/* The flag first, then the generation (release): a guest that reads
	 * the new generation with acquire reads the new flag too. */
	__atomic_store_n(&gp->hdr->host.flags, gp->expect.host.flags, __ATOMIC_RELEASE);
	__atomic_store_n(&gp->hdr->host.track_gen, gp->gen, __ATOMIC_RELEASE);
}

static void lose(struct dirty_gp *gp)
{
	gp->state = DIRTY_GP_UNTRUSTED;
	gp->trust_lost++;
	__gp_raise_gen(gp);
}

static enum dirty_gp_state judge(struct dirty_gp *gp);

/* The judgement, remembering why trust was last lost (the state moves on). */
enum dirty_gp_state __gp_judge(struct dirty_gp *gp)
{
	uint64_t lost = gp->trust_lost;
	enum dirty_gp_state st = judge(gp);

	if (gp->trust_lost != lost)
		snprintf(gp->loss_reason, sizeof(gp->loss_reason), "%s", gp->reason);
	return st;
}

static enum dirty_gp_state judge(struct dirty_gp *gp)
{
	double now = __dirty_now(), since;
	uint64_t hb;
	bool sane, silent, acked;

	if (gp->state == DIRTY_GP_BROKEN)
		return gp->state;
	if (!header_intact(gp)) {
		gp->state = DIRTY_GP_BROKEN;
		gp->trust_lost++;
		return gp->state;
	}
	hb = LDA(&gp->hdr->guest.heartbeat);
	if (hb != gp->last_hb) {
		gp->last_hb = hb;
		gp->last_hb_change = now;
		gp->alive = true;
	}
	if (!gp->tracking) {
		gp->state = DIRTY_GP_IDLE;
		say(gp, "tracking is off");
		return gp->state;
	}
	sane = guest_sane(gp);
	since = now - (gp->last_hb_change > gp->track_time ? gp->last_hb_change : gp->track_time);
	silent = gp->cfg.heartbeat_timeout_ms && gp->alive &&
		 since * 1000 > gp->cfg.heartbeat_timeout_ms;
	acked = LDA(&gp->hdr->guest.ack_gen) == gp->gen;
	if (gp->state == DIRTY_GP_TRUSTED) {
		if (sane && !silent && acked)
			return gp->state;
		lose(gp);	/* the reason follows, for the new generation */
	} else if (sane && !silent && acked) {
		gp->state = DIRTY_GP_TRUSTED;
		gp->trust_gained++;
		gp->reason[0] = 0;
		/* A new first pass of the range: see the file comment. */
		dirty_source_mark(gp->src, gp->gpa, gp->npages << gp->shift);
		return gp->state;
	}
	if (!sane)
		gp->state = DIRTY_GP_UNTRUSTED;	/* guest_sane said why */
	else if (silent)
		say(gp, "guest agent silent for %.0f ms (timeout %u ms); is the agent running?",
		    since * 1000, gp->cfg.heartbeat_timeout_ms);
	else if (!gp->alive)
		say(gp, "waiting for the guest: no agent has shown life since tracking began");
	else if ((now - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms)
		/* A fault, but not a loss: this generation's ack still counts. */
		say(gp, "guest alive but did not acknowledge tracking generation %llu within %u ms%s",
		    (unsigned long long)gp->gen, gp->cfg.ack_timeout_ms, waiting_on(gp));
	else
		say(gp, "waiting for the guest to acknowledge tracking generation %llu",
		    (unsigned long long)gp->gen);
	if (!sane || silent || (gp->alive && (now - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms))
		gp->state = DIRTY_GP_UNTRUSTED;
	else if (gp->state != DIRTY_GP_UNTRUSTED)
		gp->state = DIRTY_GP_WAITING;
	return gp->state;
}

DIRTY_API int dirty_gp_track(struct dirty_gp *gp, int on)
{
	pthread_mutex_lock(&gp->lock);
	if (on && !gp->tracking) {
		gp->track_time = __dirty_now();
		gp->alive = LDA(&gp->hdr->guest.state) == DIRTY_PROTO_GUEST_RUNNING;
	}
	gp->tracking = on != 0;
	/* Trust is for a generation: a new one must be acknowledged anew. */
	if (gp->state != DIRTY_GP_BROKEN)
		gp->state = on ? DIRTY_GP_WAITING : DIRTY_GP_IDLE;
	__gp_raise_gen(gp);
	pthread_mutex_unlock(&gp->lock);
	return 0;
}

DIRTY_API int dirty_gp_restore(struct dirty_gp *gp)
{
	const size_t host_bytes = offsetof(struct dirty_proto_header, guest);

	pthread_mutex_lock(&gp->lock);
	/* Everything but the magic, then the magic (release), as at create. */
	memcpy((uint8_t *)gp->hdr + 8, (const uint8_t *)&gp->expect + 8, host_bytes - 8);
	__atomic_store_n(&gp->hdr->magic, gp->expect.magic, __ATOMIC_RELEASE);
	gp->state = gp->tracking ? DIRTY_GP_WAITING : DIRTY_GP_IDLE;
	__gp_raise_gen(gp);
	pthread_mutex_unlock(&gp->lock);
	return 0;
}

DIRTY_API int dirty_gp_acked(struct dirty_gp *gp)
{
	uint64_t gen;
	int ret;

	pthread_mutex_lock(&gp->lock);
	__gp_judge(gp);
	gen = gp->gen;
	if (LDA(&gp->hdr->guest.ack_gen) == gp->gen)
		ret = 1;
	else
		ret = (__dirty_now() - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms ?
			-ETIMEDOUT : 0;
	pthread_mutex_unlock(&gp->lock);
	if (ret == -ETIMEDOUT)
		return __dirty_err(ret, "guest did not acknowledge tracking generation %llu within %u ms; is the guest agent running?",
				   (unsigned long long)gen, gp->cfg.ack_timeout_ms);
	return ret;
}

/*
 * dirty_view_start() waits on this: for a live guest up to ack_timeout_ms;
 * a guest that has not shown life (not booted) is not waited for: its
 * late acknowledgement brings trust, and a new pass, then.
 */
int __gp_ready(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	int ret;

	pthread_mutex_lock(&gp->lock);
	switch (__gp_judge(gp)) {
	case DIRTY_GP_TRUSTED:
		ret = 1;
		break;
	case DIRTY_GP_WAITING:
		ret = !gp->alive ? -ENODEV :
			(__dirty_now() - gp->gen_time) * 1000 > gp->cfg.ack_timeout_ms ?
			-ETIMEDOUT : 0;
		break;
	default:
		ret = -EHOSTDOWN;
		break;
	}
	pthread_mutex_unlock(&gp->lock);
	return ret;
}

int __gp_healthy(struct dirty_source *src)
{
	struct dirty_gp *gp = dirty_source_priv(src);
	int ok;

	pthread_mutex_lock(&gp->lock);
	ok = __gp_judge(gp) == DIRTY_GP_TRUSTED;
	pthread_mutex_unlock(&gp->lock);
	return ok;
}

DIRTY_API int dirty_gp_health(struct dirty_gp *gp, struct dirty_gp_health *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_lock(&gp->lock);
	h->state = __gp_judge(gp);
	h->healthy = h->state == DIRTY_GP_TRUSTED;
	snprintf(h->reason, sizeof(h->reason), "%s", h->healthy ? "" : gp->reason);
	h->heartbeat_age_ms = gp->alive ?
		(uint64_t)((__dirty_now() - gp->last_hb_change) * 1000) : 0;
	h->generation = gp->gen;
	h->trust_gained = gp->trust_gained;
	h->trust_lost = gp->trust_lost;
	snprintf(h->last_loss, sizeof(h->last_loss), "%s", gp->loss_reason);
	pthread_mutex_unlock(&gp->lock);
	h->acked_generation = LDA(&gp->hdr->guest.ack_gen);
	h->guest_state = LDA(&gp->hdr->guest.state);
	h->pin_conflicts = LDA(&gp->hdr->guest.pin_conflicts);
	h->pin_leaks = LDA(&gp->hdr->guest.pin_leaks);
	h->bad_ranges = LDA(&gp->hdr->guest.bad_ranges);
	h->pages_harvested = atomic_load_explicit(&gp->harvested, memory_order_relaxed);
	h->pages_pinned_sent = atomic_load_explicit(&gp->pinned_sent, memory_order_relaxed);
	h->pages_kept_back = atomic_load_explicit(&gp->kept_back, memory_order_relaxed);
	h->pages_carried = hbm_count(&gp->carried);
	h->pages_carried_sent = atomic_load_explicit(&gp->carried_sent, memory_order_relaxed);
	return 0;
}
