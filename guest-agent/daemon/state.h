/* SPDX-License-Identifier: MIT */
/*
 * state.h - the serving agent's state, shared by server.c (which changes
 * it, from its one thread) and status.c (which renders it). The agent is
 * single-threaded: nothing here needs a lock. What it shares with other
 * processes lives in the region (guest-owned words) and the pin table
 * (slot pid, read refs, the count words only when repairing), with the
 * atomics noted where they are touched.
 */
#ifndef DIRTY_AGENT_STATE_H
#define DIRTY_AGENT_STATE_H

#include <liburing.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "agent.h"

/* What a client may send: HELLO, GRACE_DONE, BYE, STATUS (<= 24 bytes). */
#define CLIENT_BUF 256
/* GRACE generations remembered per client (their answers are accepted). */
#define GRACE_HIST 8
/* Leak records kept for the status (the totals count all). */
#define MAX_LEAKS 64
/* BUSY words followed at once; more are taken by a later pass. */
#define NSLOTS ((int)PINTABLE_SLOTS)
#define SCAN_MAX 4096
#define SCAN_PERIOD_MS 50
#define SCAN_ROUNDS 3	/* BUSY and unchanged at this many looks: stuck */

enum cstate {
	C_FREE = 0,
	C_NEW,		/* connected, no HELLO yet */
	C_DMA,		/* a DMA client with a slot */
	C_STATUS,	/* a status query (HELLO with AGENT_HELLO_STATUS) */
	C_CLOSING,	/* fd closed, its receive not yet completed */
};

struct client {
	enum cstate state;
	uint32_t serial;	/* tells a stale completion from this client's */
	int fd;
	bool recv_inflight;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	int slot;		/* C_DMA: its pin table slot, else -1 */
	double since_ms;
	/* handshake */
	bool waiting;		/* in the wait set of the pending generation */
	bool grace_unsent;	/* GRACE could not be sent yet (socket full) */
	bool late_logged;
	double grace_sent_ms;
	uint64_t sent_gen[GRACE_HIST];	/* the last GRACE generations sent */
	unsigned int nsent;
	int64_t answers_due;	/* GRACEs sent minus GRACE_DONEs received */
	uint64_t done_gen;	/* last generation it answered */
	bool answered;		/* done_gen is valid */
	bool bye;
	uint64_t msgs;
	struct iovec iov;
	struct msghdr mh;
	uint8_t buf[CLIENT_BUF];
};

enum skind {
	S_FREE = 0,
	S_CLIENT,	/* a connected client holds it */
	S_ORPHAN,	/* its process lives but is not connected */
};

struct slotinfo {
	enum skind kind;
	int client;		/* S_CLIENT: index into clients[] */
	pid_t pid;
	uid_t uid;
	uint32_t serial;	/* tells a stale pidfd completion from this slot's */
	int pidfd;		/* -1: none (then /proc is polled at each tick) */
	bool poll_inflight;
	/* S_ORPHAN */
	bool waiting;		/* in the wait set of the pending generation */
	bool late_logged;
	double since_ms;
	char why[96];		/* how it became an orphan */
};

struct leak {
	pid_t pid;
	uid_t uid;
	int slot;
	uint64_t refs;
	double at_ms;
	char how[48];
};

struct agent_state {
	const struct agent_opts *o;
	struct region *r;
	struct table *t;
	struct io_uring ring;
	int lfd;		/* listening socket */
	ino_t sock_ino;		/* the socket file we bound (unlinked at exit if still ours) */
	int sigfd;
	bool accept_paused;	/* accept failed for want of fds: again at the next tick */
	bool stop;
	int stop_sig;
	double start_ms;

	struct client *clients;
	int nclients_max;	/* entries of clients[] */
	int nconn;		/* connections (any state but FREE/CLOSING) */
	int ndma;		/* connected DMA clients */
	struct slotinfo slots[PINTABLE_SLOTS];
	int norphans;

	/* handshake */
	uint64_t acked;		/* the generation last stored in guest.ack_gen */
	bool pending;
	uint64_t pending_gen;
	double pending_since_ms;
	uint64_t waiting_pid;	/* as last written to the region */
	uint64_t acks;
	double last_ack_ms;	/* how long the last handshake took */

	/* heartbeat */
	uint64_t beats;
	bool words_warned;

	/* the BUSY scan */
	bool scan_active;
	bool scan_timer_inflight;
	int scan_round;
	uint64_t scan_n, scan_total;
	uint64_t *scan_idx;
	uint32_t *scan_val;
	bool scan_postponed_logged;
	uint64_t repairs;

	/* leaks and counters */
	struct leak leaks[MAX_LEAKS];
	uint64_t nleaks;	/* events, all time */
	uint64_t leaked_refs;	/* references, all time */
	uint64_t protocol_errors, refused, connects, status_queries, drops;
	double refuse_logged_ms;

	/* the one STATUS_TEXT buffer */
	uint8_t *text_msg;

	/* the timespecs the kernel reads at submission */
	struct __kernel_timespec tick_ts, scan_ts;
	struct signalfd_siginfo siginfo;
};

/* status.c: render the status (human or JSON) into b. */
void status_render(const struct agent_state *st, bool json, struct sbuf *b);
const char *status_health(const struct agent_state *st, char *buf, size_t len);

#endif /* DIRTY_AGENT_STATE_H */
