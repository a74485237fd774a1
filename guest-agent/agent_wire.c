/* SPDX-License-Identifier: MIT */
/*
 * agent_wire.c - checking and building the agent's messages (agent_wire.h).
 * Linked into both the daemon and libdirty-guest; pure functions, so the
 * fuzzer (tests/fuzz/fuzz_agent_msg.c) drives them directly.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent_wire.h"

static int bad(int err, char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return err;
}

void agent_wire_hdr(struct agent_hdr *h, enum agent_msg_type type, size_t len)
{
	h->magic = AGENT_WIRE_MAGIC;
	h->version = AGENT_WIRE_VERSION;
	h->type = (uint16_t)type;
	h->len = (uint32_t)len;
	h->reserved = 0;
}

/* The fixed size of each type; 0 for the variable STATUS_TEXT. */
static size_t size_of(unsigned int type)
{
	switch (type) {
	case AGENT_HELLO: return sizeof(struct agent_hello);
	case AGENT_WELCOME: return sizeof(struct agent_welcome);
	case AGENT_REFUSED: return sizeof(struct agent_refused);
	case AGENT_GRACE:
	case AGENT_GRACE_DONE: return sizeof(struct agent_gen);
	case AGENT_BYE: return sizeof(struct agent_bye);
	case AGENT_STATUS: return sizeof(struct agent_status);
	default: return 0;
	}
}

int agent_wire_parse(const void *buf, size_t len, struct agent_msg *out,
		     char *why, size_t whylen)
{
	struct agent_hdr h;
	size_t want;

	if (!buf || len < sizeof(h))
		return bad(-EBADMSG, why, whylen, "message of %zu bytes is shorter than its header", len);
	memcpy(&h, buf, sizeof(h));
	if (h.magic != AGENT_WIRE_MAGIC)
		return bad(-EPROTO, why, whylen, "not an agent message (magic %#x)", h.magic);
	if (h.version != AGENT_WIRE_VERSION)
		return bad(-EPROTO, why, whylen, "agent message version %u, this side speaks %u",
			   h.version, AGENT_WIRE_VERSION);
	if (h.len != len)
		return bad(-EBADMSG, why, whylen, "message header says %u bytes, %zu arrived", h.len, len);
	if (h.reserved)
		return bad(-EBADMSG, why, whylen, "message header with reserved field %#x (must be 0)",
			   h.reserved);
	memset(out, 0, sizeof(*out));
	out->type = (enum agent_msg_type)h.type;
	if (h.type == AGENT_STATUS_TEXT) {
		const char *t = (const char *)buf + sizeof(h);
		size_t n = len - sizeof(h);

		if (n == 0 || n > AGENT_TEXT_MAX || memchr(t, 0, n) != t + n - 1)
			return bad(-EBADMSG, why, whylen, "status text of %zu bytes is not one NUL-terminated string", n);
		out->text = t;
		out->text_len = n - 1;
		return AGENT_STATUS_TEXT;
	}
	want = size_of(h.type);
	if (!want)
		return bad(-EPROTO, why, whylen, "unknown agent message type %u", h.type);
	if (len != want)
		return bad(-EBADMSG, why, whylen, "type %u message of %zu bytes, expected %zu", h.type, len, want);
	memcpy(&out->u, buf, len);
	switch (h.type) {
	case AGENT_HELLO:
		if (out->u.hello.reserved || out->u.hello.flags & ~AGENT_HELLO_STATUS)
			return bad(-EBADMSG, why, whylen, "HELLO with unknown flags %#x or reserved %#x",
				   out->u.hello.flags, out->u.hello.reserved);
		break;
	case AGENT_WELCOME: {
		const struct agent_welcome *w = &out->u.welcome;

		if (w->page_shift < 12 || w->page_shift > 40 || !w->npages ||
		    w->slot >= 1024 || !w->region_bytes || !w->table_bytes)
			return bad(-EBADMSG, why, whylen, "WELCOME with impossible geometry");
		break;
	}
	case AGENT_REFUSED:
		/* A -errno: Linux errno values are below 4096 (MAX_ERRNO). */
		if (out->u.refused.err >= 0 || out->u.refused.err < -4095 || out->u.refused.reserved ||
		    !memchr(out->u.refused.text, 0, sizeof(out->u.refused.text)))
			return bad(-EBADMSG, why, whylen, "REFUSED without an error in [-4095, -1] and a NUL-terminated reason");
		break;
	case AGENT_STATUS:
		if (out->u.status.reserved || out->u.status.flags & ~AGENT_STATUS_JSON)
			return bad(-EBADMSG, why, whylen, "STATUS with unknown flags %#x or reserved %#x",
				   out->u.status.flags, out->u.status.reserved);
		break;
	default:
		break;
	}
	return (int)h.type;
}
