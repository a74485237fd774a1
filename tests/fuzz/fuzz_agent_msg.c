/* SPDX-License-Identifier: MIT */
/*
 * fuzz_agent_msg.c - libFuzzer target: agent_wire_parse()
 * (guest-agent/agent_wire.c), which both the dirty-agent daemon and
 * libdirty-guest run on every datagram the other side sends, on
 * arbitrary bytes.
 *
 * The input is one datagram. It is copied into a heap buffer of exactly
 * its size (so ASan sees any read past it) and parsed.
 *
 * Invariants (abort() on violation):
 *  - it is accepted iff it is a message as agent_wire.h describes it,
 *    decided here from the header text, not from agent_wire.c: magic,
 *    version, a length equal to the datagram's and to the type's size,
 *    zero reserved fields, known flags, a WELCOME with possible geometry,
 *    a REFUSED with an errno in [-4095, -1] and a NUL in its text, a
 *    STATUS_TEXT whose only NUL ends it;
 *  - a refusal returns -EBADMSG or -EPROTO with a non-empty,
 *    NUL-terminated reason that fits the caller's buffer (also a 1-byte
 *    buffer), and the same verdict without a buffer;
 *  - an accepted message round-trips: built again from the parsed fields
 *    alone (agent_wire_hdr + the fields) it is byte for byte the input,
 *    and parsing that gives the same fields; one byte less or one more
 *    is refused;
 *  - STATUS_TEXT's text points inside the input, text_len long.
 *
 * Build and run: make fuzz-build; build/fuzz/fuzz_agent_msg CORPUS_DIR
 * (or make fuzz). Seeds: tests/fuzz/corpus/fuzz_agent_msg/ (written by
 * tests/fuzz/gen-corpus.py).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../guest-agent/agent_wire.h"

#define CHECK(c)                                                               \
	do {                                                                   \
		if (!(c)) {                                                    \
			fprintf(stderr, "fuzz_agent_msg: invariant failed at line %d: %s\n", \
				__LINE__, #c);                                 \
			abort();                                               \
		}                                                              \
	} while (0)

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* What the parser must accept, from agent_wire.h's layout (host order). */
static bool expect_ok(const uint8_t *b, size_t n)
{
	const size_t H = 16;

	if (n < H || rd32(b) != 0x4741444cu || rd16(b + 4) != 1 || rd32(b + 8) != n ||
	    rd32(b + 12) != 0)
		return false;
	switch (rd16(b + 6)) {
	case 1:	/* HELLO {flags, reserved} */
	case 7:	/* STATUS {flags, reserved} */
		return n == H + 8 && !(rd32(b + 16) & ~1u) && rd32(b + 20) == 0;
	case 2:	/* WELCOME {slot, page_shift, gpa_base, npages, region_bytes, table_bytes} */
		return n == H + 40 && rd32(b + 16) < 1024 && rd32(b + 20) >= 12 &&
		       rd32(b + 20) <= 40 && rd64(b + 32) && rd64(b + 40) && rd64(b + 48);
	case 3: {	/* REFUSED {err, reserved, text[240]} */
		int32_t err;

		if (n != H + 8 + 240)
			return false;
		memcpy(&err, b + 16, 4);
		return err <= -1 && err >= -4095 && rd32(b + 20) == 0 && memchr(b + 24, 0, 240);
	}
	case 4:	/* GRACE {gen} */
	case 5:	/* GRACE_DONE {gen} */
		return n == H + 8;
	case 6:	/* BYE {} */
		return n == H;
	case 8:	/* STATUS_TEXT: text, its one NUL last */
		return n > H && n - H <= 65000 && memchr(b + H, 0, n - H) == b + n - 1;
	default:
		return false;
	}
}

/* The message again, from the parsed fields only. */
static size_t encode(const struct agent_msg *m, uint8_t *out, size_t cap)
{
	size_t len;

	switch (m->type) {
	case AGENT_HELLO: {
		struct agent_hello h = { .flags = m->u.hello.flags };

		agent_wire_hdr(&h.h, AGENT_HELLO, len = sizeof(h));
		memcpy(out, &h, len);
		break;
	}
	case AGENT_WELCOME: {
		struct agent_welcome w = {
			.slot = m->u.welcome.slot, .page_shift = m->u.welcome.page_shift,
			.gpa_base = m->u.welcome.gpa_base, .npages = m->u.welcome.npages,
			.region_bytes = m->u.welcome.region_bytes,
			.table_bytes = m->u.welcome.table_bytes,
		};

		agent_wire_hdr(&w.h, AGENT_WELCOME, len = sizeof(w));
		memcpy(out, &w, len);
		break;
	}
	case AGENT_REFUSED: {
		struct agent_refused r = { .err = m->u.refused.err };

		/* The whole text field: bytes past its NUL are the sender's, kept as sent. */
		memcpy(r.text, m->u.refused.text, sizeof(r.text));
		agent_wire_hdr(&r.h, AGENT_REFUSED, len = sizeof(r));
		memcpy(out, &r, len);
		break;
	}
	case AGENT_GRACE:
	case AGENT_GRACE_DONE: {
		struct agent_gen g = { .gen = m->u.gen.gen };

		agent_wire_hdr(&g.h, m->type, len = sizeof(g));
		memcpy(out, &g, len);
		break;
	}
	case AGENT_BYE: {
		struct agent_bye b;

		agent_wire_hdr(&b.h, AGENT_BYE, len = sizeof(b));
		memcpy(out, &b, len);
		break;
	}
	case AGENT_STATUS: {
		struct agent_status s = { .flags = m->u.status.flags };

		agent_wire_hdr(&s.h, AGENT_STATUS, len = sizeof(s));
		memcpy(out, &s, len);
		break;
	}
	case AGENT_STATUS_TEXT: {
		struct agent_hdr h;

		len = sizeof(h) + m->text_len + 1;
		CHECK(len <= cap);
		agent_wire_hdr(&h, AGENT_STATUS_TEXT, len);
		memcpy(out, &h, sizeof(h));
		memcpy(out + sizeof(h), m->text, m->text_len);
		out[len - 1] = 0;
		break;
	}
	default:
		CHECK(!"parse returned an unknown type");
		return 0;
	}
	return len;
}

/* The fields two parses of the same message must agree on. */
static void same_fields(const struct agent_msg *a, const struct agent_msg *b)
{
	CHECK(a->type == b->type);
	if (a->type == AGENT_STATUS_TEXT) {
		CHECK(a->text_len == b->text_len && !memcmp(a->text, b->text, a->text_len));
		return;
	}
	/* The parser copies each fixed message whole: compare its bytes. */
	switch (a->type) {
	case AGENT_HELLO: CHECK(!memcmp(&a->u.hello, &b->u.hello, sizeof(a->u.hello))); break;
	case AGENT_WELCOME: CHECK(!memcmp(&a->u.welcome, &b->u.welcome, sizeof(a->u.welcome))); break;
	case AGENT_REFUSED: CHECK(!memcmp(&a->u.refused, &b->u.refused, sizeof(a->u.refused))); break;
	case AGENT_GRACE:
	case AGENT_GRACE_DONE: CHECK(a->u.gen.gen == b->u.gen.gen); break;
	case AGENT_STATUS: CHECK(a->u.status.flags == b->u.status.flags); break;
	default: break;
	}
}

static void refused_reason(const uint8_t *buf, size_t n, int r)
{
	struct agent_msg m;
	char why[96], one[1] = { 'x' };

	CHECK(r == -EBADMSG || r == -EPROTO);
	memset(why, 'x', sizeof(why));
	CHECK(agent_wire_parse(buf, n, &m, why, sizeof(why)) == r);
	CHECK(memchr(why, 0, sizeof(why)) && why[0]);
	CHECK(agent_wire_parse(buf, n, &m, one, 1) == r && one[0] == 0);
	CHECK(agent_wire_parse(buf, n, &m, NULL, 0) == r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct agent_msg m, m2;
	uint8_t *buf, *again, *more;
	size_t n;
	int r;

	if (size > AGENT_MSG_MAX + 16)
		return 0;
	buf = malloc(size ? size : 1);
	CHECK(buf);
	memcpy(buf, data, size);
	r = agent_wire_parse(buf, size, &m, NULL, 0);
	CHECK((r > 0) == expect_ok(buf, size));
	if (r < 0) {
		refused_reason(buf, size, r);
		free(buf);
		return 0;
	}
	CHECK((int)m.type == r);
	if (r == AGENT_STATUS_TEXT) {
		CHECK((const uint8_t *)m.text == buf + sizeof(struct agent_hdr));
		CHECK(strlen(m.text) == m.text_len && m.text_len + sizeof(struct agent_hdr) + 1 == size);
	}

	/* Built again from the fields alone: the same bytes, the same fields. */
	again = malloc(AGENT_MSG_MAX);
	CHECK(again);
	n = encode(&m, again, AGENT_MSG_MAX);
	CHECK(n == size && !memcmp(again, buf, size));
	CHECK(agent_wire_parse(again, n, &m2, NULL, 0) == r);
	same_fields(&m, &m2);

	/* One byte short or one byte long is another message's length: refused. */
	refused_reason(buf, size - 1, agent_wire_parse(buf, size - 1, &m2, NULL, 0));
	more = malloc(size + 1);
	CHECK(more);
	memcpy(more, buf, size);
	more[size] = data[size / 2];
	r = agent_wire_parse(more, size + 1, &m2, NULL, 0);
	CHECK(r < 0);
	refused_reason(more, size + 1, r);
	free(more);
	free(again);
	free(buf);
	return 0;
}
