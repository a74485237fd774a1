/* SPDX-License-Identifier: MIT */
/*
 * agent_bad.c - dirty-agent against bad clients (run by
 * tests/t_agent_badinput.sh).
 *
 *   agent_bad --agent BIN --dir DIR
 *
 * A region file made with the host library (dirty_gp_create), the daemon
 * serving it, and a GOOD client in this process (dirty_guest_connect)
 * holding 4 pages mapped for the whole run. Then bad clients, each a
 * child process of this program (exec'd, so sanitizers see clean
 * processes), one after the other:
 *
 *   malformed   short messages, a wrong magic, version, length field, type,
 *               a non-zero reserved field, unknown HELLO flags, 70 KB: each
 *               answered REFUSED (-EPROTO) and hung up on;
 *   fds         a HELLO carrying 8 fds: welcomed, and the agent's own fd
 *               count is back to what it was (the fds were not kept);
 *   uid         (root only) a client running as uid 65534: REFUSED with
 *               -EACCES naming --allow-uid; with the socket at 0660 the
 *               kernel refuses it first (EACCES); a second agent started
 *               with --allow-uid 65534 welcomes it;
 *   flood       a welcomed client sends 20,000 unsolicited GRACE_DONEs as
 *               fast as it can: dropped at the first; a connection flood
 *               (40 connections that never say HELLO, the agent allows 16):
 *               the extra ones refused, the idle ones closed after the
 *               HELLO timeout, then the good client and a status query
 *               are served as before;
 *   drop        clients that hang up right after HELLO, that send HELLO
 *               twice, that send STATUS on a DMA connection: each dropped,
 *               its slot freed once its process is gone;
 *   orphan      a welcomed client that pins 3 pages, then sends garbage
 *               while its process lives: dropped, its slot kept as an
 *               orphan, the handshake waits for it (guest.waiting_pid names
 *               it) until it exits; then its 3 references are reported as
 *               leaked, the pages stay pinned and the ack comes;
 *   busy        a client dies (SIGKILL) leaving a count word BUSY, as in the
 *               middle of a 0->1 transition: after the scan (3 looks 50 ms
 *               apart) the word is repaired to 1|OWNED and the pin bit is
 *               set; with another client SIGSTOPped meanwhile, the repair
 *               waits until it runs again.
 *
 * After every part: the agent process lives, the good client's pages are
 * still pinned, the good client still answers (a new tracking generation
 * is acknowledged), and at the end SIGTERM makes it exit 0.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "agent_test.h"
#include "libdirty.h"
#include "libdirty/guest.h"

#define BASE 0x100000000ull
#define PS 4096ull
#define NPAGES 512ull

static const char *agent_bin, *dir;
static char sock[108], region_path[256], state_dir[256], logpath[512];
static struct agent_proc ag;
static struct dirty_view *view;
static struct dirty_gp *gp;
static struct dirty_guest *good;
static uint64_t *pin;		/* the region's pin bitmap, as mapped here */
static _Atomic uint32_t *count;	/* the table's count words, for the busy part */

/* ---- the child: one bad behaviour per run ------------------------------------ */

static int child_main(int fd, const char *what, const char *path)
{
	char cmd[256], why[256];
	struct raw_client rc;

	if (!child_next(fd, cmd, sizeof(cmd)))	/* "go" */
		return 1;
	if (!strcmp(what, "drops")) {
		/* Hang up after HELLO; HELLO twice; STATUS on a DMA connection. */
		struct agent_status st;
		uint8_t buf[512];
		int s, fds[4], n, eof2, eof3;

		for (int i = 0; i < 5; i++) {
			s = raw_connect(path);
			raw_hello(s, 0);
			close(s);
		}
		s = raw_connect(path);
		raw_hello(s, 0);
		raw_recv(s, buf, sizeof(buf), fds, &n, 3000);
		for (int i = 0; i < n; i++)
			close(fds[i]);
		raw_hello(s, 0);
		eof2 = raw_recv(s, buf, sizeof(buf), NULL, NULL, 3000) == 0;
		close(s);
		s = raw_connect(path);
		raw_hello(s, 0);
		raw_recv(s, buf, sizeof(buf), fds, &n, 3000);
		for (int i = 0; i < n; i++)
			close(fds[i]);
		memset(&st, 0, sizeof(st));
		agent_wire_hdr(&st.h, AGENT_STATUS, sizeof(st));
		raw_send(s, &st, sizeof(st));
		eof3 = raw_recv(s, buf, sizeof(buf), NULL, NULL, 3000) == 0;
		close(s);
		child_reply(fd, "ok hello-twice-eof=%d status-on-dma-eof=%d", eof2, eof3);
		return 0;
	}
	if (!strcmp(what, "raw-pin-garbage")) {
		/* Welcomed, pins 3 pages, then garbage; lives on until told. */
		if (raw_client_open(&rc, path, why, sizeof(why))) {
			child_reply(fd, "err %s", why);
			return 1;
		}
		for (uint64_t p = 100; p < 103; p++)
			raw_pin(&rc, p);
		child_reply(fd, "ok slot=%u", rc.w.slot);
		while (child_next(fd, cmd, sizeof(cmd))) {
			if (!strcmp(cmd, "garbage")) {
				raw_send(rc.fd, "garbage!", 8);
				child_reply(fd, "ok");
			} else if (!strcmp(cmd, "exit")) {
				child_reply(fd, "ok");
				return 0;
			}
		}
		return 0;
	}
	if (!strcmp(what, "raw-busy")) {
		/* Welcomed; leaves page 200's count word BUSY, as mid-transition. */
		if (raw_client_open(&rc, path, why, sizeof(why))) {
			child_reply(fd, "err %s", why);
			return 1;
		}
		atomic_store(&rc.count[200], PIN_BUSY);
		atomic_fetch_add(&rc.tbl->slot[rc.w.slot].refs, 1);
		child_reply(fd, "ok slot=%u", rc.w.slot);
		while (child_next(fd, cmd, sizeof(cmd)))
			;	/* killed by the parent */
		return 0;
	}
	if (!strcmp(what, "raw-idle")) {
		/* Welcomed and quiet (answers nothing); stopped by the parent. */
		if (raw_client_open(&rc, path, why, sizeof(why))) {
			child_reply(fd, "err %s", why);
			return 1;
		}
		child_reply(fd, "ok slot=%u", rc.w.slot);
		while (child_next(fd, cmd, sizeof(cmd)))
			;
		return 0;
	}
	if (!strcmp(what, "flood")) {
		struct agent_gen m = { 0 };
		long sent = 0;

		if (raw_client_open(&rc, path, why, sizeof(why))) {
			child_reply(fd, "err %s", why);
			return 1;
		}
		agent_wire_hdr(&m.h, AGENT_GRACE_DONE, sizeof(m));
		m.gen = 12345;
		while (sent < 20000 && raw_send(rc.fd, &m, sizeof(m)) == 0)
			sent++;
		child_reply(fd, "ok sent %ld before the agent hung up", sent);
		return 0;
	}
	if (!strcmp(what, "as-nobody")) {
		char buf[512];
		struct agent_msg m;
		ssize_t n;
		int s;

		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) {
			child_reply(fd, "err setresuid: %s", strerror(errno));
			return 1;
		}
		s = raw_connect(path);
		if (s < 0) {
			child_reply(fd, "ok connect-error %d", -s);
			return 0;
		}
		raw_hello(s, 0);
		n = raw_recv(s, buf, sizeof(buf), NULL, NULL, 5000);
		if (n > 0 && agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why)) == AGENT_REFUSED)
			child_reply(fd, "ok refused %d %s", m.u.refused.err, m.u.refused.text);
		else if (n > 0 && agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why)) == AGENT_WELCOME)
			child_reply(fd, "ok welcome slot=%u", m.u.welcome.slot);
		else
			child_reply(fd, "ok other %zd", n);
		return 0;
	}
	child_reply(fd, "err unknown child %s", what);
	return 1;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* Connect, send one message, expect REFUSED (-EPROTO) and EOF. */
static void expect_refused(const char *name, const void *msg, size_t len)
{
	char buf[512], why[200];
	struct agent_msg m;
	ssize_t n;
	int fd = raw_connect(sock), type = -1;
	bool eof = false;

	if (fd < 0) {
		t_check(false, "%s: connect: %s", name, strerror(-fd));
		return;
	}
	raw_send(fd, msg, len);
	n = raw_recv(fd, buf, sizeof(buf), NULL, NULL, 3000);
	if (n > 0) {
		type = agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why));
		eof = raw_recv(fd, buf, sizeof(buf), NULL, NULL, 3000) == 0;
	}
	t_check(type == AGENT_REFUSED && m.u.refused.err == -EPROTO && eof,
		"%s: REFUSED -EPROTO then EOF%s%s", name, type == AGENT_REFUSED ? ": " : "",
		type == AGENT_REFUSED ? m.u.refused.text : "");
	close(fd);
}

static bool good_pins(void)
{
	for (uint64_t p = 8; p < 12; p++)
		if (!region_pinned_bit(pin, p))
			return false;
	return true;
}

/* The agent lives, the good pins stay, a new generation is acknowledged. */
static void still_serving(const char *after)
{
	bool acked;

	t_check(agent_alive(&ag), "after %s: the agent runs", after);
	t_check(good_pins(), "after %s: the good client's 4 pages are still pinned", after);
	dirty_gp_track(gp, 1);
	acked = T_WAIT(dirty_gp_acked(gp) == 1, 3000);
	t_check(acked, "after %s: a new tracking generation is acknowledged", after);
}

static void hdr_msg(void *buf, enum agent_msg_type type, size_t len)
{
	memset(buf, 0, len);
	agent_wire_hdr(buf, type, len);
}

static int slots_used(void)
{
	char json[65536];

	if (agent_status(&ag, true, json, sizeof(json)))
		return -1;
	return (int)(json_num(json, "connected", NULL) + json_num(json, "orphaned", NULL));
}

/* ---- the parts --------------------------------------------------------------------- */

static void part_malformed(void)
{
	uint8_t big[70000];
	struct agent_hello h;
	struct agent_status s;

	expect_refused("3 bytes", "abc", 3);
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.h.magic ^= 1;
	expect_refused("wrong magic", &h, sizeof(h));
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.h.version = 2;
	expect_refused("version 2", &h, sizeof(h));
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.h.len = 16;
	expect_refused("a length field that lies", &h, sizeof(h));
	expect_refused("a header alone (a HELLO cut short)", &h, 16);
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.h.type = 99;
	expect_refused("unknown type 99", &h, sizeof(h));
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.h.reserved = 7;
	expect_refused("a non-zero reserved field", &h, sizeof(h));
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	h.flags = 0x80;
	expect_refused("HELLO with unknown flags", &h, sizeof(h));
	hdr_msg(&s, AGENT_STATUS, sizeof(s));
	expect_refused("STATUS before HELLO", &s, sizeof(s));
	memset(big, 0x41, sizeof(big));
	agent_wire_hdr((struct agent_hdr *)big, AGENT_HELLO, sizeof(big));
	expect_refused("a 70,000-byte message", big, sizeof(big));
	still_serving("malformed messages");
}

static void part_fds(void)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(8 * sizeof(int))];
	} ctl;
	struct agent_hello h;
	struct iovec iov = { .iov_base = &h, .iov_len = sizeof(h) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c;
	int fds[8], before, after = -1, fd, got[4], ngot = 0, type = -1;
	uint8_t buf[512];
	struct agent_msg m;
	char why[200];
	ssize_t n;

	before = fd_count(ag.pid);
	for (int i = 0; i < 8; i++)
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
	memset(&ctl, 0, sizeof(ctl));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	hdr_msg(&h, AGENT_HELLO, sizeof(h));
	fd = raw_connect(sock);
	if (fd >= 0 && sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)sizeof(h)) {
		n = raw_recv(fd, buf, sizeof(buf), got, &ngot, 3000);
		if (n > 0)
			type = agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why));
	}
	t_check(type == AGENT_WELCOME && ngot == 2, "a HELLO carrying 8 fds is a HELLO: WELCOME with 2 fds");
	for (int i = 0; i < ngot; i++)
		close(got[i]);
	for (int i = 0; i < 8; i++)
		close(fds[i]);
	if (fd >= 0) {
		struct agent_bye b;

		hdr_msg(&b, AGENT_BYE, sizeof(b));
		raw_send(fd, &b, sizeof(b));
		close(fd);
	}
	T_WAIT((after = fd_count(ag.pid)) == before, 2000);
	t_check(after == before, "the agent holds %d fds, as before (%d): the 8 it was sent were not kept", after, before);
	still_serving("a HELLO with fds");
}

static void part_uid(void)
{
	char out[512], extra_sock[108], extra_log[600], extra_state[300];
	const char *argv_nobody[] = { "as-nobody", sock, NULL };
	struct child ch;
	struct agent_proc a2 = { 0 };

	if (geteuid() != 0) {
		t_note("uid part skipped: not root (setresuid needs it)");
		return;
	}
	chmod(sock, 0666);
	child_spawn(&ch, "agent_bad", argv_nobody);
	child_cmd(&ch, out, sizeof(out), "go");
	child_reap(&ch, 0);
	t_check(!strncmp(out, "ok refused -13", 14) && strstr(out, "--allow-uid 65534"),
		"uid 65534 on a 0666 socket: REFUSED -EACCES naming --allow-uid 65534 (%s)", out);
	chmod(sock, 0660);
	child_spawn(&ch, "agent_bad", argv_nobody);
	child_cmd(&ch, out, sizeof(out), "go");
	child_reap(&ch, 0);
	t_check(!strcmp(out, "ok connect-error 13"), "uid 65534 on the default 0660 socket: connect fails EACCES (%s)", out);
	chmod(sock, 0666);

	/* Allowed by a second agent on the same region. */
	snprintf(extra_sock, sizeof(extra_sock), "%s/allow.sock", dir);
	snprintf(extra_log, sizeof(extra_log), "%s/agent-allow.log", dir);
	snprintf(extra_state, sizeof(extra_state), "%s/state-allow", dir);
	{
		const char *args[] = { "--region", region_path, "--socket", extra_sock, "--state-dir", extra_state,
				       "--socket-mode", "0666", "--allow-uid", "65534", "--heartbeat-ms", "10", NULL };
		const char *argv2[] = { "as-nobody", extra_sock, NULL };

		if (!t_check(agent_start(&a2, agent_bin, extra_log, args), "a second agent with --allow-uid 65534 starts"))
			return;
		child_spawn(&ch, "agent_bad", argv2);
		child_cmd(&ch, out, sizeof(out), "go");
		child_reap(&ch, 0);
		t_check(!strncmp(out, "ok welcome", 10), "with --allow-uid 65534 that uid is welcomed (%s)", out);
		t_check(agent_stop(&a2) == 0, "the second agent exits 0");
	}
	still_serving("a refused uid");
}

static void part_flood(void)
{
	const char *argv_flood[] = { "flood", sock, NULL };
	char out[512], json[65536];
	struct child ch;
	int conns[40], refused = 0, closed_idle = 0, used;
	double t0;

	child_spawn(&ch, "agent_bad", argv_flood);
	child_cmd(&ch, out, sizeof(out), "go");
	child_reap(&ch, 0);
	t_check(!strncmp(out, "ok sent", 7) && atol(out + 8) < 20000,
		"a client flooding unsolicited GRACE_DONEs is dropped (%s)", out);
	used = T_WAIT(slots_used() == 1, 2000);
	t_check(used, "its slot is freed once it exited (%d in use: the good client)", slots_used());

	/*
	 * 40 silent connections against a limit of 16 (the good client holds
	 * one): 25 are refused at once (a REFUSED message), the 15 admitted
	 * ones are closed without a word after the HELLO timeout (500 ms).
	 */
	for (int i = 0; i < 40; i++)
		conns[i] = raw_connect(sock);
	t0 = t_now_ms();
	for (int i = 0; i < 40; i++) {
		char buf[512], why[200];
		struct agent_msg m;
		ssize_t n = conns[i] >= 0 ? raw_recv(conns[i], buf, sizeof(buf), NULL, NULL, 3000) : -1;

		if (n > 0 && agent_wire_parse(buf, (size_t)n, &m, why, sizeof(why)) == AGENT_REFUSED &&
		    m.u.refused.err == -EMFILE)
			refused++;
		else if (n == 0)
			closed_idle++;
		if (conns[i] >= 0)
			close(conns[i]);
	}
	t_check(refused == 25, "a connection flood: %d of 40 connections refused (limit 16, the good client holds one)",
		refused);
	t_check(closed_idle == 15, "the %d admitted silent connections are closed by the agent within %.0f ms (HELLO timeout 500 ms)",
		closed_idle, t_now_ms() - t0);
	used = slots_used();
	t_check(used == 1 && agent_status(&ag, true, json, sizeof(json)) == 0,
		"then a status query is answered and 1 client is connected (%d)", used);
	still_serving("floods");
}

static void part_drop(void)
{
	const char *argv_d[] = { "drops", sock, NULL };
	char out[512];
	struct child ch;

	child_spawn(&ch, "agent_bad", argv_d);
	child_cmd(&ch, out, sizeof(out), "go");
	child_reap(&ch, 0);
	t_check(strstr(out, "hello-twice-eof=1") != NULL, "a second HELLO on a DMA connection: dropped (EOF)");
	t_check(strstr(out, "status-on-dma-eof=1") != NULL, "STATUS on a DMA connection: dropped (EOF)");
	bool freed = T_WAIT(slots_used() == 1, 2000);

	t_check(freed, "5 clients that hung up right after HELLO, and those two: no slot left once their process exited (%d in use)",
		slots_used());
	still_serving("dropped connections");
}

static void part_orphan(void)
{
	const char *argv_o[] = { "raw-pin-garbage", sock, NULL };
	char out[512], json[65536];
	struct child ch;
	const char *e;
	bool all;
	int victim;

	if (!child_spawn(&ch, "agent_bad", argv_o) || !child_cmd(&ch, out, sizeof(out), "go")) {
		t_check(false, "orphan child: %s", out);
		return;
	}
	victim = ch.pid;
	child_cmd(&ch, out, sizeof(out), "garbage");
	t_sleep_ms(50);
	agent_status(&ag, true, json, sizeof(json));
	e = json_entry(json, "\"clients\"", victim);
	t_check(e && strstr(e, "\"state\": \"orphaned\"") && json_num(e, "refs", NULL) == 3,
		"a client dropped for garbage while alive is kept as an orphan with its 3 references");
	dirty_gp_track(gp, 1);
	t_sleep_ms(400);
	t_check(dirty_gp_acked(gp) != 1, "while it lives, a new generation is not acknowledged");
	agent_status(&ag, true, json, sizeof(json));
	t_check(json_num(json, "waiting_pid", NULL) == victim, "the agent names it: waiting_pid %lld (pid %d)",
		json_num(json, "waiting_pid", NULL), victim);
	child_cmd(&ch, out, sizeof(out), "exit");
	child_reap(&ch, 0);
	t_check(T_WAIT(dirty_gp_acked(gp) == 1, 2000), "once it exited, the generation is acknowledged");
	agent_status(&ag, true, json, sizeof(json));
	e = json_entry(json, "\"leaks\"", victim);
	t_check(e && json_num(e, "refs", NULL) == 3, "its 3 references are reported leaked: %s", json_obj(e));
	all = region_pinned_bit(pin, 100) && region_pinned_bit(pin, 101) && region_pinned_bit(pin, 102);
	t_check(all, "and its 3 pages stay pinned");
	still_serving("an orphan");
}

static void part_busy(void)
{
	const char *argv_b[] = { "raw-busy", sock, NULL }, *argv_i[] = { "raw-idle", sock, NULL };
	char out[512], json[65536];
	struct child ch, idle;
	bool repaired;

	/* A stopped live client: the repair must wait for it. */
	child_spawn(&idle, "agent_bad", argv_i);
	child_cmd(&idle, out, sizeof(out), "go");
	kill(idle.pid, SIGSTOP);
	child_spawn(&ch, "agent_bad", argv_b);
	if (!child_cmd(&ch, out, sizeof(out), "go")) {
		t_check(false, "busy child: %s", out);
		kill(idle.pid, SIGCONT);
		child_reap(&idle, SIGKILL);
		return;
	}
	t_check(!region_pinned_bit(pin, 200) && atomic_load(&count[200]) == PIN_BUSY,
		"a client leaves page 200's count word BUSY, its pin bit not yet set");
	child_reap(&ch, SIGKILL);
	t_sleep_ms(400);
	t_check(atomic_load(&count[200]) == PIN_BUSY,
		"with another client stopped (it could be the holder), the BUSY word is left alone");
	kill(idle.pid, SIGCONT);
	repaired = T_WAIT(atomic_load(&count[200]) == (1u | PIN_OWNED) && region_pinned_bit(pin, 200), 2000);
	t_check(repaired, "once it runs again, the word left BUSY by the dead client is repaired: count %#x, pin bit %d",
		atomic_load(&count[200]), region_pinned_bit(pin, 200));
	agent_status(&ag, true, json, sizeof(json));
	t_check(json_num(json, "repairs", NULL) == 1, "status counts 1 repair");
	child_reap(&idle, SIGKILL);
	still_serving("a client that died holding a BUSY word");
}

int main(int argc, char **argv)
{
	struct dirty_gp_config cfg = {
		.gpa = BASE, .len = NPAGES * PS, .pinned = DIRTY_GP_PINNED_DEFER,
		.heartbeat_timeout_ms = 10000, .ack_timeout_ms = 10000,
	};
	struct dirty_proto_layout lay;
	uint8_t *rmap, *tmap;
	char tpath[600];
	int fd, rc;

	t_zero = t_now_ms();
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 5 && !strcmp(argv[1], "child"))
		return child_main(atoi(argv[2]), argv[3], argv[4]);
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--agent"))
			agent_bin = argv[i + 1];
		else if (!strcmp(argv[i], "--dir"))
			dir = argv[i + 1];
	}
	if (!agent_bin || !dir) {
		fprintf(stderr, "usage: agent_bad --agent BIN --dir DIR\n");
		return 2;
	}
	/* A client running as another uid must reach the socket. */
	chmod(dir, 0755);
	snprintf(sock, sizeof(sock), "%s/bad.sock", dir);
	snprintf(region_path, sizeof(region_path), "/dev/shm/libdirty-agent-bad-%d", (int)getpid());
	snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
	snprintf(logpath, sizeof(logpath), "%s/agent.log", dir);
	cfg.path = region_path;
	unlink(region_path);
	if (dirty_view_new(&view) || dirty_view_add_region(view, BASE, NPAGES * PS, PS, 0) ||
	    dirty_gp_create(view, &cfg, &gp)) {
		printf("FAIL host region: %s\n", dirty_last_error());
		return 1;
	}
	dirty_proto_layout(NPAGES, &lay);
	fd = open(region_path, O_RDWR | O_CLOEXEC);
	rmap = mmap(NULL, dirty_gp_size(gp), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	pin = (uint64_t *)(rmap + lay.pin_off);
	{
		const char *args[] = { "--region", region_path, "--socket", sock, "--state-dir", state_dir,
				       "--socket-mode", "0666", "--heartbeat-ms", "10", "--grace-timeout-ms", "200",
				       "--hello-timeout-ms", "500", "--max-connections", "16", "-v", NULL };

		if (!agent_start(&ag, agent_bin, logpath, args)) {
			printf("FAIL dirty-agent did not start\n");
			agent_show_log(&ag, 30);
			unlink(region_path);
			return 1;
		}
	}
	snprintf(tpath, sizeof(tpath), "%s/pins-%s", state_dir, strrchr(region_path, '/') + 1);
	fd = open(tpath, O_RDWR | O_CLOEXEC);
	tmap = fd < 0 ? MAP_FAILED : mmap(NULL, PINTABLE_HEADER_SIZE + NPAGES * 4, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fd >= 0)
		close(fd);
	if (tmap == MAP_FAILED) {
		printf("FAIL cannot map the pin table %s\n", tpath);
		agent_stop(&ag);
		unlink(region_path);
		return 1;
	}
	count = (_Atomic uint32_t *)(tmap + PINTABLE_HEADER_SIZE);

	/* The good client, in this process, for the whole run. */
	rc = dirty_guest_connect(sock, &good);
	t_check(rc == 0, "the good client connects: %s", rc ? dirty_guest_last_error() : "slot given");
	if (rc)
		goto out;
	t_check(dirty_view_start(view) == 0, "the host starts tracking: %s", dirty_last_error());
	t_check(dirty_guest_map(good, BASE + 8 * PS, 4 * PS, DIRTY_FROM_DEVICE) == 0 && good_pins(),
		"the good client maps pages 8-11: pinned");

	part_malformed();
	part_fds();
	part_uid();
	part_flood();
	part_drop();
	part_orphan();
	part_busy();

	dirty_guest_unmap(good, BASE + 8 * PS, 4 * PS, DIRTY_FROM_DEVICE);
	dirty_guest_close(good);
out:
	rc = agent_stop(&ag);
	t_check(rc == 0, "after all that, the agent exits 0 on SIGTERM (got %d)", rc);
	if (t_failures)
		agent_show_log(&ag, 60);
	else {
		char cmd[700];

		snprintf(cmd, sizeof(cmd), "grep -c 'protocol error' '%s'", logpath);
		printf("     agent log: ");
		fflush(stdout);
		if (system(cmd) != 0)
			printf("\n");
	}
	dirty_view_stop(view);
	dirty_gp_destroy(gp);
	dirty_view_free(view);
	unlink(region_path);
	printf("RESULT badinput: %d checks, %d failed\n", t_checks, t_failures);
	return t_failures ? 1 : 0;
}
