/* SPDX-License-Identifier: MIT */
/*
 * status.c - what `dirty-agent status` shows: the agent renders its state
 * into one STATUS_TEXT (human, or JSON with --json) for a status query
 * (HELLO with AGENT_HELLO_STATUS, then STATUS), and the status command
 * is that query's client. The same text goes to the log on SIGHUP.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "libdirty/version.h"
#include "state.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#define AGENT_VERSION STR(LIBDIRTY_VERSION_MAJOR) "." STR(LIBDIRTY_VERSION_MINOR) "." STR(LIBDIRTY_VERSION_PATCH)

/* ---- a bounded string builder ------------------------------------------- */

void sb_init(struct sbuf *b, char *mem, size_t cap)
{
	b->p = mem;
	b->len = 0;
	b->cap = cap;
	b->full = false;
	if (cap)
		mem[0] = 0;
}

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->full || b->len + 1 >= b->cap) {
		b->full = true;
		return;
	}
	va_start(ap, fmt);
	n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= b->cap - b->len) {
		/* Cut at the last whole line: the reader gets lines, never halves. */
		char *nl;

		b->p[b->len] = 0;
		nl = strrchr(b->p, '\n');
		b->len = nl ? (size_t)(nl - b->p + 1) : 0;
		b->p[b->len] = 0;
		b->full = true;
		return;
	}
	b->len += (size_t)n;
}

void sb_json_str(struct sbuf *b, const char *s)
{
	sb_printf(b, "\"");
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			sb_printf(b, "\\%c", ch);
		else if (ch < 0x20)
			sb_printf(b, "\\u%04x", ch);
		else
			sb_printf(b, "%c", ch);
	}
	sb_printf(b, "\"");
}

/* ---- rendering ------------------------------------------------------------ */

const char *status_health(const struct agent_state *st, char *buf, size_t len)
{
	double now = agent_now_ms();

	if (!st->pending)
		snprintf(buf, len, "ok");
	else if (st->waiting_pid)
		snprintf(buf, len, "waiting on client pid %llu for tracking generation %llu (%.0f ms): not acknowledged",
			 (unsigned long long)st->waiting_pid, (unsigned long long)st->pending_gen,
			 now - st->pending_since_ms);
	else
		snprintf(buf, len, "acknowledging tracking generation %llu (%.0f ms)",
			 (unsigned long long)st->pending_gen, now - st->pending_since_ms);
	return buf;
}

static const char *health_word(const struct agent_state *st)
{
	return !st->pending ? "ok" : st->waiting_pid ? "waiting" : "acknowledging";
}

static uint64_t refs_of(const struct agent_state *st, int s)
{
	return atomic_load_explicit(&st->t->hdr->slot[s].refs, memory_order_relaxed);
}

static void render_json(const struct agent_state *st, struct sbuf *b)
{
	const struct region *r = st->r;
	const struct dirty_proto_header *h = r->hdr;
	double now = agent_now_ms();
	char health[200];
	bool first = true;

	sb_printf(b, "{\"agent\": {\"version\": \"%s\", \"pid\": %d, \"uptime_ms\": %.0f, \"heartbeat_ms\": %u, "
		  "\"grace_timeout_ms\": %u, \"socket\": ", AGENT_VERSION, (int)getpid(), now - st->start_ms,
		  st->o->heartbeat_ms, st->o->grace_timeout_ms);
	sb_json_str(b, st->o->socket);
	sb_printf(b, "},\n \"region\": {\"kind\": \"%s\", \"bdf\": ", r->bdf[0] ? "pci" : "file");
	sb_json_str(b, r->bdf);
	sb_printf(b, ", \"path\": ");
	sb_json_str(b, r->path);
	sb_printf(b, ", \"bytes\": %llu, \"gpa_base\": %llu, \"gpa_end\": %llu, \"pages\": %llu, \"page_size\": %llu, "
		  "\"host_major\": %u, \"host_minor\": %u},\n",
		  (unsigned long long)r->map_size, (unsigned long long)r->gpa_base,
		  (unsigned long long)(r->gpa_base + (r->npages << r->page_shift)), (unsigned long long)r->npages,
		  1ull << r->page_shift, r->host_major, r->host_minor);
	sb_printf(b, " \"tracking\": %s, \"host_generation\": %llu, \"acked_generation\": %llu,\n",
		  __atomic_load_n(&h->host.flags, __ATOMIC_ACQUIRE) & DIRTY_PROTO_HOST_TRACKING ? "true" : "false",
		  (unsigned long long)__atomic_load_n(&h->host.track_gen, __ATOMIC_ACQUIRE),
		  (unsigned long long)__atomic_load_n(&h->guest.ack_gen, __ATOMIC_ACQUIRE));
	sb_printf(b, " \"handshake\": {\"pending\": %s, \"generation\": %llu, \"pending_ms\": %.0f, \"waiting_pid\": %llu, "
		  "\"acks\": %llu, \"last_ms\": %.1f},\n", st->pending ? "true" : "false",
		  (unsigned long long)(st->pending ? st->pending_gen : 0),
		  st->pending ? now - st->pending_since_ms : 0.0, (unsigned long long)st->waiting_pid,
		  (unsigned long long)st->acks, st->last_ack_ms);
	sb_printf(b, " \"heartbeat\": %llu,\n", (unsigned long long)__atomic_load_n(&h->guest.heartbeat, __ATOMIC_RELAXED));
	sb_printf(b, " \"pin_table\": {\"path\": ");
	sb_json_str(b, st->t->path);
	sb_printf(b, ", \"adopted\": %s, \"slots\": %u, \"repinned\": %llu, \"stray_pins\": %llu},\n",
		  st->t->adopted ? "true" : "false", PINTABLE_SLOTS, (unsigned long long)st->t->repinned,
		  (unsigned long long)st->t->stray_pins);
	sb_printf(b, " \"connected\": %d, \"orphaned\": %d,\n \"clients\": [", st->ndma, st->norphans);
	for (int s = 0; s < NSLOTS; s++) {
		const struct slotinfo *si = &st->slots[s];

		if (si->kind == S_CLIENT && si->client >= 0) {
			const struct client *c = &st->clients[si->client];
			bool late = c->waiting && now - c->grace_sent_ms >= st->o->grace_timeout_ms;

			sb_printf(b, "%s\n  {\"pid\": %d, \"uid\": %u, \"slot\": %d, \"refs\": %llu, \"state\": \"connected\", "
				  "\"waiting\": %s, \"late\": %s, \"waiting_ms\": %.0f, \"answered_generation\": %lld, "
				  "\"connected_ms\": %.0f}", first ? "" : ",", (int)c->pid, (unsigned int)c->uid, s,
				  (unsigned long long)refs_of(st, s), c->waiting ? "true" : "false",
				  late ? "true" : "false", c->waiting ? now - c->grace_sent_ms : 0.0,
				  c->answered ? (long long)c->done_gen : -1LL, now - c->since_ms);
			first = false;
		} else if (si->kind == S_ORPHAN) {
			sb_printf(b, "%s\n  {\"pid\": %d, \"uid\": %lld, \"slot\": %d, \"refs\": %llu, \"state\": \"orphaned\", "
				  "\"waiting\": %s, \"why\": ", first ? "" : ",", (int)si->pid,
				  si->uid == (uid_t)-1 ? -1LL : (long long)si->uid, s,
				  (unsigned long long)refs_of(st, s), si->waiting ? "true" : "false");
			sb_json_str(b, si->why);
			sb_printf(b, ", \"orphaned_ms\": %.0f}", now - si->since_ms);
			first = false;
		}
	}
	sb_printf(b, "],\n \"pinned_pages\": %llu,\n", (unsigned long long)region_pinned(r));
	sb_printf(b, " \"leaks\": {\"events\": %llu, \"references\": %llu, \"recent\": [",
		  (unsigned long long)st->nleaks, (unsigned long long)st->leaked_refs);
	for (uint64_t i = st->nleaks > MAX_LEAKS ? st->nleaks - MAX_LEAKS : 0; i < st->nleaks; i++) {
		const struct leak *l = &st->leaks[i % MAX_LEAKS];

		sb_printf(b, "%s\n  {\"pid\": %d, \"uid\": %lld, \"slot\": %d, \"refs\": %llu, \"how\": ",
			  i == (st->nleaks > MAX_LEAKS ? st->nleaks - MAX_LEAKS : 0) ? "" : ",", (int)l->pid,
			  l->uid == (uid_t)-1 ? -1LL : (long long)l->uid, l->slot, (unsigned long long)l->refs);
		sb_json_str(b, l->how);
		sb_printf(b, ", \"ago_ms\": %.0f}", now - l->at_ms);
	}
	sb_printf(b, "]},\n \"repairs\": %llu,\n", (unsigned long long)st->repairs);
	sb_printf(b, " \"region_counters\": {\"pin_conflicts\": %llu, \"pin_leaks\": %llu, \"bad_ranges\": %llu},\n",
		  (unsigned long long)__atomic_load_n(&h->guest.pin_conflicts, __ATOMIC_RELAXED),
		  (unsigned long long)__atomic_load_n(&h->guest.pin_leaks, __ATOMIC_RELAXED),
		  (unsigned long long)__atomic_load_n(&h->guest.bad_ranges, __ATOMIC_RELAXED));
	sb_printf(b, " \"connections\": {\"accepted\": %llu, \"refused\": %llu, \"protocol_errors\": %llu, "
		  "\"status_queries\": %llu},\n", (unsigned long long)st->connects, (unsigned long long)st->refused,
		  (unsigned long long)st->protocol_errors, (unsigned long long)st->status_queries);
	sb_printf(b, " \"health\": \"%s\", \"health_text\": ", health_word(st));
	sb_json_str(b, status_health(st, health, sizeof(health)));
	sb_printf(b, "}\n");
}

static void render_human(const struct agent_state *st, struct sbuf *b)
{
	const struct region *r = st->r;
	const struct dirty_proto_header *h = r->hdr;
	double now = agent_now_ms();
	char health[200];

	sb_printf(b, "dirty-agent %s (pid %d), up %.1f s, socket %s\n", AGENT_VERSION, (int)getpid(),
		  (now - st->start_ms) / 1000, st->o->socket);
	sb_printf(b, "region:       %s (%s, %llu bytes)\n", r->desc, r->path, (unsigned long long)r->map_size);
	sb_printf(b, "              guest-physical [%#llx, %#llx): %llu pages of %llu bytes; host protocol v%u.%u\n",
		  (unsigned long long)r->gpa_base, (unsigned long long)(r->gpa_base + (r->npages << r->page_shift)),
		  (unsigned long long)r->npages, 1ull << r->page_shift, r->host_major, r->host_minor);
	sb_printf(b, "tracking:     %s; host generation %llu, acknowledged %llu\n",
		  __atomic_load_n(&h->host.flags, __ATOMIC_ACQUIRE) & DIRTY_PROTO_HOST_TRACKING ? "on" : "off",
		  (unsigned long long)__atomic_load_n(&h->host.track_gen, __ATOMIC_ACQUIRE),
		  (unsigned long long)__atomic_load_n(&h->guest.ack_gen, __ATOMIC_ACQUIRE));
	if (st->pending)
		sb_printf(b, "handshake:    generation %llu pending for %.0f ms%s\n", (unsigned long long)st->pending_gen,
			  now - st->pending_since_ms, st->waiting_pid ? " (late clients below)" : "");
	else
		sb_printf(b, "handshake:    idle; %llu acknowledged, the last in %.1f ms\n",
			  (unsigned long long)st->acks, st->last_ack_ms);
	sb_printf(b, "heartbeat:    %llu (every %u ms); grace timeout %u ms\n",
		  (unsigned long long)__atomic_load_n(&h->guest.heartbeat, __ATOMIC_RELAXED), st->o->heartbeat_ms,
		  st->o->grace_timeout_ms);
	sb_printf(b, "pin table:    %s (%s), %u slots\n", st->t->path,
		  st->t->adopted ? "adopted from a previous agent" : "new", PINTABLE_SLOTS);
	sb_printf(b, "clients:      %d connected, %d orphaned\n", st->ndma, st->norphans);
	for (int s = 0; s < NSLOTS; s++) {
		const struct slotinfo *si = &st->slots[s];

		if (si->kind == S_CLIENT && si->client >= 0) {
			const struct client *c = &st->clients[si->client];

			sb_printf(b, "  pid %d  uid %u  slot %d  %llu reference(s)", (int)c->pid, (unsigned int)c->uid, s,
				  (unsigned long long)refs_of(st, s));
			if (c->waiting)
				sb_printf(b, "  WAITING for generation %llu for %.0f ms%s\n",
					  (unsigned long long)st->pending_gen, now - c->grace_sent_ms,
					  now - c->grace_sent_ms >= st->o->grace_timeout_ms ? " (late)" : "");
			else if (c->answered)
				sb_printf(b, "  answered generation %llu\n", (unsigned long long)c->done_gen);
			else
				sb_printf(b, "  connected %.0f ms ago\n", now - c->since_ms);
		} else if (si->kind == S_ORPHAN) {
			sb_printf(b, "  pid %d  slot %d  %llu reference(s)  ORPHANED (%s, %.0f ms ago)%s\n", (int)si->pid, s,
				  (unsigned long long)refs_of(st, s), si->why, now - si->since_ms,
				  si->waiting ? "; the handshake waits for it" : "");
		}
	}
	sb_printf(b, "pinned pages: %llu (pin bits set in the region)\n", (unsigned long long)region_pinned(r));
	sb_printf(b, "leaks:        %llu client(s) left %llu page reference(s) pinned%s\n",
		  (unsigned long long)st->nleaks, (unsigned long long)st->leaked_refs,
		  st->nleaks ? " (they stay pinned: resent, never lost)" : "");
	for (uint64_t i = st->nleaks > MAX_LEAKS ? st->nleaks - MAX_LEAKS : 0; i < st->nleaks; i++) {
		const struct leak *l = &st->leaks[i % MAX_LEAKS];

		sb_printf(b, "  pid %d  slot %d  %s holding %llu page reference(s), %.1f s ago\n", (int)l->pid, l->slot,
			  l->how, (unsigned long long)l->refs, (now - l->at_ms) / 1000);
	}
	sb_printf(b, "repairs:      %llu count word(s) left BUSY by dead clients, repaired as pinned\n",
		  (unsigned long long)st->repairs);
	sb_printf(b, "region words: pin_conflicts %llu, pin_leaks %llu, bad_ranges %llu\n",
		  (unsigned long long)__atomic_load_n(&h->guest.pin_conflicts, __ATOMIC_RELAXED),
		  (unsigned long long)__atomic_load_n(&h->guest.pin_leaks, __ATOMIC_RELAXED),
		  (unsigned long long)__atomic_load_n(&h->guest.bad_ranges, __ATOMIC_RELAXED));
	sb_printf(b, "connections:  %llu accepted, %llu refused, %llu protocol error(s), %llu status quer%s\n",
		  (unsigned long long)st->connects, (unsigned long long)st->refused,
		  (unsigned long long)st->protocol_errors, (unsigned long long)st->status_queries,
		  st->status_queries == 1 ? "y" : "ies");
	sb_printf(b, "health:       %s\n", status_health(st, health, sizeof(health)));
}

void status_render(const struct agent_state *st, bool json, struct sbuf *b)
{
	if (json)
		render_json(st, b);
	else
		render_human(st, b);
}

/* ---- `dirty-agent status` ------------------------------------------------- */

static void status_usage(FILE *f)
{
	fprintf(f, "usage: dirty-agent status [--json] [--socket PATH]\n"
		   "Ask the running agent for its state: the region, the host's and the acknowledged\n"
		   "tracking generation, the heartbeat, every client (pid, uid, references, whether\n"
		   "the handshake waits for it), pinned pages, leaked references, repairs, health.\n"
		   "  --json         one JSON object instead of text\n"
		   "  --socket PATH  the agent's socket (default " AGENT_DEFAULT_SOCKET ")\n"
		   "Exit status: 0 answered; 1 no agent answered (the message says why); 2 bad usage.\n");
}

int status_command(int argc, char **argv)
{
	const char *path = AGENT_DEFAULT_SOCKET;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct agent_hello hello;
	struct agent_status req;
	struct pollfd pfd;
	struct agent_msg m;
	char why[200], *buf;
	bool json = false;
	ssize_t n;
	int fd, type, rc = AGENT_EXIT_FAIL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
			path = argv[++i];
		} else if (!strncmp(argv[i], "--socket=", 9)) {
			path = argv[i] + 9;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			status_usage(stdout);
			return AGENT_EXIT_OK;
		} else {
			fprintf(stderr, "dirty-agent status: unknown argument '%s'\n", argv[i]);
			status_usage(stderr);
			return AGENT_EXIT_USAGE;
		}
	}
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "dirty-agent status: socket path %s is too long\n", path);
		return AGENT_EXIT_USAGE;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "dirty-agent status: cannot connect to %s: %s; is dirty-agent running? "
			"(systemctl status dirty-agent; or pass its --socket)\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return AGENT_EXIT_FAIL;
	}
	memset(&hello, 0, sizeof(hello));
	agent_wire_hdr(&hello.h, AGENT_HELLO, sizeof(hello));
	hello.flags = AGENT_HELLO_STATUS;
	memset(&req, 0, sizeof(req));
	agent_wire_hdr(&req.h, AGENT_STATUS, sizeof(req));
	req.flags = json ? AGENT_STATUS_JSON : 0;
	buf = malloc(AGENT_MSG_MAX + 1);
	if (!buf || send(fd, &hello, sizeof(hello), MSG_NOSIGNAL) != (ssize_t)sizeof(hello) ||
	    send(fd, &req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req)) {
		fprintf(stderr, "dirty-agent status: cannot ask %s: %s\n", path, buf ? strerror(errno) : "out of memory");
		goto out;
	}
	pfd.fd = fd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 5000) != 1) {
		fprintf(stderr, "dirty-agent status: the agent on %s did not answer within 5 s\n", path);
		goto out;
	}
	n = recv(fd, buf, AGENT_MSG_MAX + 1, MSG_TRUNC);
	if (n <= 0 || n > (ssize_t)AGENT_MSG_MAX) {
		fprintf(stderr, "dirty-agent status: %s\n", n == 0 ? "the agent hung up without answering" :
			n < 0 ? strerror(errno) : "the answer is longer than any status");
		goto out;
	}
	type = agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why));
	if (type == AGENT_REFUSED) {
		fprintf(stderr, "dirty-agent status: the agent refused: %s\n", m.u.refused.text);
		goto out;
	}
	if (type != AGENT_STATUS_TEXT) {
		fprintf(stderr, "dirty-agent status: unexpected answer: %s\n", type < 0 ? why : "not a STATUS_TEXT");
		goto out;
	}
	fwrite(m.text, 1, m.text_len, stdout);
	if (m.text_len && m.text[m.text_len - 1] != '\n')
		putchar('\n');
	rc = AGENT_EXIT_OK;
out:
	free(buf);
	close(fd);
	return rc;
}
