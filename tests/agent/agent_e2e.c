/* SPDX-License-Identifier: MIT */
/*
 * agent_e2e.c - dirty-agent end to end on this host (run by
 * tests/t_agent_dma.sh and tests/t_agent_handshake.sh).
 *
 *   agent_e2e --agent BIN --dir DIR [--no-agent] SCENARIO
 *
 * The host side is the host library: guest RAM is a memfd mapped twice
 * (a "device" writes through one mapping, invisible to any CPU-side
 * tracking, as DMA is; the host reads the other), a view over it, and a
 * guest-protocol region created at a /dev/shm path (dirty_gp_create,
 * policy DEFER). The daemon serves that file (--region). Clients are
 * processes of this program (exec'd, driven over a command socket) that
 * use libdirty-guest: dirty_guest_connect, map, unmap, close. Migration is
 * rounds of dirty_view_sync + claims copying pages to a destination
 * buffer, then dirty_view_final + claims; the destination is compared
 * with guest RAM page by page.
 *
 * Scenarios:
 *   two-clients  two processes map the same pages; the pin bit stays set
 *                until the LAST unmap; a device write between the first
 *                and the last unmap reaches the destination, both for a
 *                page unmapped before the final round and for one still
 *                mapped at device stop. --no-agent: the same with both
 *                processes opening the region alone (per-process pin
 *                counts): the first unmap clears the pin and the write
 *                is lost - the control that shows the test can fail.
 *   killed       a client mapping 8 pages is SIGKILLed while the device
 *                keeps writing them: its pins stay set, 0 pages lost,
 *                `dirty-agent status --json` reports its pid and its 8
 *                leaked references, the region's pin_leaks says 8.
 *   handshake    a slow client (a reader section held open) delays the
 *                acknowledgement (host WAITING, the agent's status names
 *                it), then TRUSTED; a silent client (SIGSTOP) makes the
 *                host's health reason name its pid and nothing is
 *                acknowledged early; once it is killed the agent is no
 *                longer waiting for it and the host trusts the guest again.
 *   restart      the agent is stopped while a client holds a page and
 *                started again: it adopts the pin table (the client is an
 *                orphan it waits for), a new client shares the same count
 *                word, the old client's unmap leaves the page pinned.
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <sys/mman.h>

#include <urcu/urcu-bp.h>

#include "agent_test.h"
#include "libdirty.h"
#include "libdirty/guest.h"

#define BASE 0x40000000ull
#define PS 4096ull
#define NPAGES 256ull

static const char *agent_bin, *dir, *self;

/* ---- the client process ---------------------------------------------------- */

struct holder {
	unsigned int ms;
	sem_t started;
};

static void *hold_main(void *arg)
{
	struct holder *h = arg;
	unsigned int ms = h->ms;

	urcu_bp_read_lock();
	sem_post(&h->started);
	t_sleep_ms(ms);
	urcu_bp_read_unlock();
	return NULL;
}

static enum dirty_dma_dir dir_of(const char *s)
{
	return !strcmp(s, "to") ? DIRTY_TO_DEVICE : !strcmp(s, "bi") ? DIRTY_BIDIRECTIONAL : DIRTY_FROM_DEVICE;
}

static int child_main(int fd)
{
	struct dirty_guest *g = NULL;
	char cmd[256], arg[200], d[8];
	unsigned long long p, n;
	unsigned int ms;
	int rc;

	while (child_next(fd, cmd, sizeof(cmd))) {
		if (sscanf(cmd, "connect %199s", arg) == 1) {
			rc = dirty_guest_connect(arg, &g);
			if (rc) {
				child_reply(fd, "err %d %s", rc, dirty_guest_last_error());
			} else {
				struct dirty_guest_info info;

				dirty_guest_info(g, &info);
				child_reply(fd, "ok slot=%u connected=%d", info.slot, info.connected);
			}
		} else if (sscanf(cmd, "open %199s", arg) == 1) {
			rc = dirty_guest_open_path(arg, &g);
			if (!rc)
				rc = dirty_guest_agent_start(g, 1);
			if (rc)
				child_reply(fd, "err %d %s", rc, dirty_guest_last_error());
			else
				child_reply(fd, "ok");
		} else if (sscanf(cmd, "map %llu %llu %7s", &p, &n, d) == 3) {
			rc = g ? dirty_guest_map(g, BASE + p * PS, n * PS, dir_of(d)) : -EINVAL;
			if (rc)
				child_reply(fd, "err %d %s", rc, dirty_guest_last_error());
			else
				child_reply(fd, "ok");
		} else if (sscanf(cmd, "unmap %llu %llu %7s", &p, &n, d) == 3) {
			rc = g ? dirty_guest_unmap(g, BASE + p * PS, n * PS, dir_of(d)) : -EINVAL;
			if (rc)
				child_reply(fd, "err %d %s", rc, dirty_guest_last_error());
			else
				child_reply(fd, "ok");
		} else if (sscanf(cmd, "hold %u", &ms) == 1) {
			static struct holder h;
			pthread_t t;

			h.ms = ms;
			sem_init(&h.started, 0, 0);
			if (pthread_create(&t, NULL, hold_main, &h)) {
				child_reply(fd, "err cannot start a thread");
				continue;
			}
			pthread_detach(t);
			sem_wait(&h.started);
			child_reply(fd, "ok holding a reader section for %u ms", ms);
		} else if (!strcmp(cmd, "sync-rcu")) {
			double t0 = t_now_ms();

			urcu_bp_synchronize_rcu();
			child_reply(fd, "ok synchronize_rcu took %.1f ms", t_now_ms() - t0);
		} else if (!strcmp(cmd, "info")) {
			struct dirty_guest_info info;

			if (!g || dirty_guest_info(g, &info))
				child_reply(fd, "err no handle");
			else
				child_reply(fd, "ok refs=%llu slot=%u connected=%d",
					    (unsigned long long)info.pinned_pages, info.slot, info.connected);
		} else if (!strcmp(cmd, "close")) {
			dirty_guest_close(g);
			g = NULL;
			child_reply(fd, "ok");
		} else if (!strcmp(cmd, "exit")) {
			child_reply(fd, "ok");
			break;
		} else {
			child_reply(fd, "err unknown command '%s'", cmd);
		}
	}
	return 0;
}

/* ---- the host side ------------------------------------------------------------ */

struct host {
	struct dirty_view *v;
	struct dirty_gp *gp;
	int ram_fd;
	uint8_t *ram_dev, *ram_host, *dst;
	uint64_t size;
	char path[256];
	char sock[108];
	char state[256];
	char log[512];
	uint8_t *rmap;
	uint64_t rsize;
	struct dirty_proto_header *hdr;
};

static bool host_setup(struct host *h, const char *name, unsigned int ack_ms, unsigned int hb_ms)
{
	struct dirty_gp_config cfg = {
		.gpa = BASE, .len = NPAGES * PS, .pinned = DIRTY_GP_PINNED_DEFER,
		.fallback = DIRTY_GP_FALLBACK_ALL_DIRTY, .heartbeat_timeout_ms = hb_ms,
		.ack_timeout_ms = ack_ms,
	};
	int fd;

	memset(h, 0, sizeof(*h));
	h->size = NPAGES * PS;
	snprintf(h->path, sizeof(h->path), "/dev/shm/libdirty-agent-e2e-%d-%s", (int)getpid(), name);
	snprintf(h->sock, sizeof(h->sock), "%s/%s.sock", dir, name);
	snprintf(h->state, sizeof(h->state), "%s/%s-state", dir, name);
	snprintf(h->log, sizeof(h->log), "%s/%s-agent.log", dir, name);
	if (strlen(h->sock) >= 100)
		t_skip("the test directory %s is too deep for a socket path", dir);
	unlink(h->path);
	h->ram_fd = memfd_create("guest-ram", MFD_CLOEXEC);
	if (h->ram_fd < 0 || ftruncate(h->ram_fd, (off_t)h->size) < 0)
		return t_check(false, "guest RAM memfd: %s", strerror(errno));
	h->ram_dev = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, h->ram_fd, 0);
	h->ram_host = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, h->ram_fd, 0);
	h->dst = calloc(1, h->size);
	if (h->ram_dev == MAP_FAILED || h->ram_host == MAP_FAILED || !h->dst)
		return t_check(false, "mapping guest RAM twice");
	cfg.path = h->path;
	if (dirty_view_new(&h->v) || dirty_view_add_region(h->v, BASE, h->size, PS, 0) ||
	    dirty_gp_create(h->v, &cfg, &h->gp))
		return t_check(false, "view + dirty_gp_create(%s): %s", h->path, dirty_last_error());
	h->rsize = dirty_gp_size(h->gp);
	fd = open(h->path, O_RDWR | O_CLOEXEC);
	h->rmap = fd < 0 ? MAP_FAILED : mmap(NULL, h->rsize, PROT_READ, MAP_SHARED, fd, 0);
	if (fd >= 0)
		close(fd);
	if (h->rmap == MAP_FAILED)
		return t_check(false, "mapping %s: %s", h->path, strerror(errno));
	h->hdr = (struct dirty_proto_header *)h->rmap;
	t_note("host: region %s (%" PRIu64 " bytes) over %llu pages at %#llx", h->path, h->rsize, NPAGES, BASE);
	return true;
}

static void host_teardown(struct host *h)
{
	if (h->v)
		dirty_view_stop(h->v);
	if (h->gp)
		dirty_gp_destroy(h->gp);
	dirty_view_free(h->v);
	if (h->rmap && h->rmap != MAP_FAILED)
		munmap(h->rmap, h->rsize);
	if (h->ram_dev && h->ram_dev != MAP_FAILED)
		munmap(h->ram_dev, h->size);
	if (h->ram_host && h->ram_host != MAP_FAILED)
		munmap(h->ram_host, h->size);
	if (h->ram_fd > 0)
		close(h->ram_fd);
	free(h->dst);
	unlink(h->path);
}

static bool start_agent(struct host *h, struct agent_proc *a, const char *grace_ms)
{
	const char *args[] = { "--region", h->path, "--socket", h->sock, "--state-dir", h->state,
			       "--heartbeat-ms", "10", "--grace-timeout-ms", grace_ms, "-v", NULL };

	if (!agent_start(a, agent_bin, h->log, args)) {
		t_check(false, "dirty-agent starts on %s", h->path);
		agent_show_log(a, 30);
		return false;
	}
	t_note("dirty-agent pid %d serves %s on %s", (int)a->pid, h->path, h->sock);
	return true;
}

static bool pinned(struct host *h, uint64_t p)
{
	return dirty_gp_pinned(h->gp, BASE + p * PS) == 1;
}

/* The device writes a stamp into every word of page p (DMA). */
static void dma(struct host *h, uint64_t p, uint64_t stamp)
{
	_Atomic uint64_t *w = (_Atomic uint64_t *)(h->ram_dev + p * PS);

	for (uint64_t i = 0; i < PS / 8; i++)
		atomic_store_explicit(&w[i], stamp, memory_order_relaxed);
}

static uint64_t stamp_of(const uint8_t *page)
{
	uint64_t v;

	memcpy(&v, page, sizeof(v));
	return v;
}

/* Claim everything dirty and copy it (the send); pages copied. */
static uint64_t drain(struct host *h)
{
	struct dirty_claim *cl;
	struct dirty_run runs[64];
	uint64_t n = 0;
	ssize_t k;

	if (dirty_claim_new(h->v, &cl))
		return 0;
	while ((k = dirty_claim_next(cl, runs, 64)) > 0)
		for (ssize_t i = 0; i < k; i++)
			for (uint64_t a = runs[i].gpa; a < runs[i].gpa + runs[i].len; a += PS) {
				memcpy(h->dst + (a - BASE), h->ram_host + (a - BASE), PS);
				n++;
			}
	dirty_claim_free(cl);
	return n;
}

static uint64_t round_(struct host *h)
{
	if (dirty_view_sync(h->v))
		t_check(false, "dirty_view_sync: %s", dirty_last_error());
	return drain(h);
}

static uint64_t compare(struct host *h, int show)
{
	uint64_t bad = 0;

	for (uint64_t p = 0; p < NPAGES; p++)
		if (memcmp(h->ram_host + p * PS, h->dst + p * PS, PS)) {
			if (bad++ < (uint64_t)show)
				t_note("page %" PRIu64 " differs: guest RAM has stamp %#" PRIx64 ", the destination %#" PRIx64,
				       p, stamp_of(h->ram_host + p * PS), stamp_of(h->dst + p * PS));
		}
	return bad;
}

static const char *state_name(int s)
{
	static const char *const n[] = { "IDLE", "WAITING", "TRUSTED", "UNTRUSTED", "BROKEN" };

	return s >= 0 && s < 5 ? n[s] : "?";
}

static struct dirty_gp_health health(struct host *h)
{
	struct dirty_gp_health hh;

	dirty_gp_health(h->gp, &hh);
	return hh;
}

static bool client(struct child *c, const char *how, const char *arg)
{
	char out[512];

	if (!child_spawn(c, self, NULL))
		return t_check(false, "spawning a client");
	if (!child_cmd(c, out, sizeof(out), "%s %s", how, arg))
		return t_check(false, "client pid %d: %s %s: %s", (int)c->pid, how, arg, out);
	t_note("client pid %d: %s: %s", (int)c->pid, how, out);
	return true;
}

#define CMD(c, ...)                                                                   \
	({                                                                            \
		char out_[512];                                                       \
		bool ok_ = child_cmd(c, out_, sizeof(out_), __VA_ARGS__);              \
		if (!ok_)                                                             \
			t_check(false, "client pid %d: %s", (int)(c)->pid, out_);     \
		ok_;                                                                  \
	})

/* ---- scenario: two clients, one page ------------------------------------------- */

static int two_clients(bool no_agent)
{
	struct host h;
	struct agent_proc a = { 0 };
	struct child c1 = { 0 }, c2 = { 0 };
	const uint64_t p = 10, q = 20, r = 30;	/* p unmapped before final, q mapped at final */
	const uint64_t A = 0xa11a11a11a110000ull, B = 0xb22b22b22b220000ull;
	uint64_t bad, n;
	struct dirty_gp_health hh;
	bool ok;

	if (!host_setup(&h, no_agent ? "control" : "two", 10000, 10000))
		goto out;
	if (!no_agent && !start_agent(&h, &a, "1000"))
		goto out;
	if (!client(&c1, no_agent ? "open" : "connect", no_agent ? h.path : h.sock) ||
	    !client(&c2, no_agent ? "open" : "connect", no_agent ? h.path : h.sock))
		goto out;
	t_check(dirty_view_start(h.v) == 0, "dirty_view_start returns once the guest acknowledged: %s",
		dirty_last_error());
	hh = health(&h);
	t_check(dirty_gp_acked(h.gp) == 1 && hh.state == DIRTY_GP_TRUSTED,
		"the guest acknowledged tracking generation %" PRIu64 ": %s", hh.generation, state_name(hh.state));
	n = drain(&h);
	t_note("first pass: %" PRIu64 " pages", n);

	/* Both clients map p and q (FROM_DEVICE); c1 alone maps r. */
	ok = CMD(&c1, "map %" PRIu64 " 1 from", p) && CMD(&c1, "map %" PRIu64 " 1 from", q) &&
	     CMD(&c2, "map %" PRIu64 " 1 from", p) && CMD(&c2, "map %" PRIu64 " 1 from", q) &&
	     CMD(&c1, "map %" PRIu64 " 1 from", r);
	if (!ok)
		goto out;
	t_check(pinned(&h, p) && pinned(&h, q) && pinned(&h, r), "mapped by both clients: pages %" PRIu64
		", %" PRIu64 " pinned (and %" PRIu64 ", c1's alone)", p, q, r);
	dma(&h, p, A + p);
	dma(&h, q, A + q);
	dma(&h, r, A + r);
	n = round_(&h);
	t_check(n == 0, "a round while they are mapped sends %" PRIu64 " pages (want 0: nothing unmapped yet)", n);

	/* The first unmap: the other client still maps them. */
	ok = CMD(&c1, "unmap %" PRIu64 " 1 from", p) && CMD(&c1, "unmap %" PRIu64 " 1 from", q) &&
	     CMD(&c1, "unmap %" PRIu64 " 1 from", r);
	if (!ok)
		goto out;
	if (no_agent) {
		t_check(!pinned(&h, p) && !pinned(&h, q),
			"CONTROL (no agent, per-process pin counts): the first client's unmap cleared the pins of "
			"pages %" PRIu64 " and %" PRIu64 " though the second still maps them (pinned: %d, %d)",
			p, q, pinned(&h, p), pinned(&h, q));
	} else {
		t_check(pinned(&h, p) && pinned(&h, q),
			"after the first client's unmap, pages %" PRIu64 " and %" PRIu64 " stay pinned (the second still maps them)",
			p, q);
	}
	t_check(!pinned(&h, r), "page %" PRIu64 ", mapped by c1 alone, is unpinned by its unmap", r);
	n = round_(&h);
	t_note("round after the first unmap: %" PRIu64 " page(s) sent", n);

	/* The DMA write between the first and the last unmap. */
	dma(&h, p, B + p);
	dma(&h, q, B + q);
	n = round_(&h);
	t_note("round after the device wrote B: %" PRIu64 " page(s) sent", n);

	/* The last unmap of p: now, and only now, p's pin goes. */
	if (!CMD(&c2, "unmap %" PRIu64 " 1 from", p))
		goto out;
	t_check(!pinned(&h, p), "after the last unmap, page %" PRIu64 " is unpinned", p);
	t_check(pinned(&h, q) != no_agent, "page %" PRIu64 ", still mapped by the second client, is %s",
		q, no_agent ? "unpinned (CONTROL: its pin went with the first unmap)" : "pinned");
	n = round_(&h);
	t_check(stamp_of(h.dst + p * PS) == B + p,
		"page %" PRIu64 " reached the destination with the write made between the unmaps (stamp %#" PRIx64 ", want %#" PRIx64 ")",
		p, stamp_of(h.dst + p * PS), B + p);

	/* Device stop (no DMA any more), then final: pinned pages included. */
	t_check(dirty_view_final(h.v) == 0, "dirty_view_final: %s", dirty_last_error());
	n = drain(&h);
	t_note("final round: %" PRIu64 " page(s) sent", n);
	bad = compare(&h, 8);
	hh = health(&h);
	if (no_agent) {
		t_check(bad > 0, "CONTROL: %" PRIu64 " page(s) differ at the destination (want > 0: page %" PRIu64
			"'s last write is lost)", bad, q);
		t_check(hh.pin_conflicts > 0, "CONTROL: the guest counted %" PRIu64 " pin conflict(s)", hh.pin_conflicts);
	} else {
		t_check(bad == 0, "page by page over %llu pages: %" PRIu64 " differ (want 0)", NPAGES, bad);
		t_check(hh.pin_conflicts == 0 && hh.bad_ranges == 0,
			"one shared pin table: %" PRIu64 " pin conflicts, %" PRIu64 " bad ranges (want 0)",
			hh.pin_conflicts, hh.bad_ranges);
	}
	CMD(&c2, "unmap %" PRIu64 " 1 from", q);
	CMD(&c1, "close");
	CMD(&c2, "close");
	CMD(&c1, "exit");
	CMD(&c2, "exit");
out:
	child_reap(&c1, 0);
	child_reap(&c2, 0);
	if (a.pid) {
		int rc = agent_stop(&a);

		t_check(rc == 0, "dirty-agent exits 0 on SIGTERM (got %d)", rc);
		t_check(__atomic_load_n(&h.hdr->guest.state, __ATOMIC_ACQUIRE) == DIRTY_PROTO_GUEST_STOPPED,
			"with no client left the agent leaves guest state STOPPED");
		if (t_failures)
			agent_show_log(&a, 40);
	}
	host_teardown(&h);
	return t_failures ? 1 : 0;
}

/* ---- scenario: a client killed mid-DMA ------------------------------------------- */

struct device {
	struct host *h;
	pthread_t t;
	_Atomic bool stop;
	_Atomic uint64_t writes;
	uint64_t pages[16];
	int npages;
};

static void *device_main(void *arg)
{
	struct device *d = arg;
	uint64_t seq = 1;

	while (!atomic_load(&d->stop)) {
		for (int i = 0; i < d->npages; i++)
			dma(d->h, d->pages[i], (d->pages[i] << 40) | seq);
		seq++;
		atomic_fetch_add(&d->writes, (uint64_t)d->npages);
		t_sleep_ms(0.3);
	}
	return NULL;
}

static void rounds_for(struct host *h, double ms)
{
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < ms) {
		round_(h);
		t_sleep_ms(2);
	}
}

static int killed(void)
{
	struct host h;
	struct agent_proc a = { 0 };
	struct child c1 = { 0 }, c2 = { 0 };
	struct device dev = { 0 };
	char json[65536], text[16384];
	const char *e;
	bool all, dev_started = false;
	uint64_t bad, before_kill;
	pid_t victim;
	int st;

	if (!host_setup(&h, "killed", 10000, 10000) || !start_agent(&h, &a, "1000"))
		goto out;
	if (!client(&c1, "connect", h.sock) || !client(&c2, "connect", h.sock))
		goto out;
	t_check(dirty_view_start(h.v) == 0, "dirty_view_start: %s", dirty_last_error());
	drain(&h);
	if (!CMD(&c1, "map 16 8 from") || !CMD(&c2, "map 40 1 from"))
		goto out;
	all = true;
	for (uint64_t p = 16; p < 24; p++)
		all &= pinned(&h, p);
	t_check(all && pinned(&h, 40), "the victim maps pages 16-23, the bystander page 40: all pinned");
	dev.h = &h;
	for (int i = 0; i < 8; i++)
		dev.pages[dev.npages++] = 16 + (uint64_t)i;
	dev.pages[dev.npages++] = 40;
	if (pthread_create(&dev.t, NULL, device_main, &dev)) {
		t_check(false, "device thread");
		goto out;
	}
	dev_started = true;
	rounds_for(&h, 150);

	/* Mid-DMA: the device keeps writing the victim's pages. */
	victim = c1.pid;
	before_kill = atomic_load(&dev.writes);
	kill(victim, SIGKILL);
	waitpid(victim, &st, 0);
	close(c1.fd);
	c1.pid = 0;
	all = true;
	for (uint64_t p = 16; p < 24; p++)
		all &= pinned(&h, p);
	t_check(all, "right after SIGKILL of client pid %d, its 8 pages are still pinned", (int)victim);

	/* The agent notices, reports, scans; pins stay through all of it. */
	t_check(T_WAIT(agent_status(&a, true, json, sizeof(json)) == 0 && json_num(json, "events", NULL) >= 1, 3000),
		"the agent reports a leak within 3 s");
	e = json_entry(json, "\"leaks\"", (int)victim);
	t_check(e && json_num(e, "refs", NULL) == 8,
		"`dirty-agent status --json` lists pid %d with 8 leaked references: %s", (int)victim, json_obj(e));
	t_check(json_num(json, "references", NULL) == 8, "status: 8 references leaked in all (%lld)",
		json_num(json, "references", NULL));
	t_check(agent_status(&a, false, text, sizeof(text)) == 0 && strstr(text, "exited holding 8 page reference(s)"),
		"`dirty-agent status` says the client exited holding 8 page references");
	rounds_for(&h, 250);	/* past the BUSY scan (3 looks, 50 ms apart) */
	all = true;
	for (uint64_t p = 16; p < 24; p++)
		all &= pinned(&h, p);
	t_check(all && pinned(&h, 40), "250 ms of rounds later, the dead client's pages are still pinned");
	t_check(health(&h).pin_leaks == 8, "the region's pin_leaks word is %" PRIu64 " (want 8)", health(&h).pin_leaks);
	t_check(atomic_load(&dev.writes) > before_kill + 8 * 10,
		"the device wrote the dead client's pages after the kill (%" PRIu64 " page writes since)",
		atomic_load(&dev.writes) - before_kill);

	/* Device stop; final: the pinned pages carry the writes made after the kill. */
	atomic_store(&dev.stop, true);
	pthread_join(dev.t, NULL);
	dev_started = false;
	t_check(dirty_view_final(h.v) == 0, "dirty_view_final: %s", dirty_last_error());
	drain(&h);
	bad = compare(&h, 8);
	t_check(bad == 0, "page by page over %llu pages: %" PRIu64 " lost (want 0)", NPAGES, bad);
	CMD(&c2, "unmap 40 1 from");
	CMD(&c2, "close");
	CMD(&c2, "exit");
out:
	if (dev_started) {
		atomic_store(&dev.stop, true);
		pthread_join(dev.t, NULL);
	}
	child_reap(&c1, SIGKILL);
	child_reap(&c2, 0);
	if (a.pid) {
		t_check(agent_stop(&a) == 0, "dirty-agent exits 0 on SIGTERM");
		if (t_failures)
			agent_show_log(&a, 40);
	}
	host_teardown(&h);
	return t_failures ? 1 : 0;
}

/* ---- scenario: the handshake ---------------------------------------------------- */

static int handshake(void)
{
	struct host h;
	struct agent_proc a = { 0 };
	struct child slow = { 0 }, quick = { 0 }, silent = { 0 };
	struct dirty_gp_health hh;
	char json[65536], pidtxt[32];
	double t0, t_ack = -1;
	bool early = false, saw_waiting = false, named = false;
	const unsigned int hold_ms = 600, ack_ms = 1500;

	/* Host: a live guest must acknowledge within 1.5 s; the agent's grace timeout is 300 ms. */
	if (!host_setup(&h, "hs", ack_ms, 10000) || !start_agent(&h, &a, "300"))
		goto out;
	if (!client(&slow, "connect", h.sock) || !client(&quick, "connect", h.sock) ||
	    !client(&silent, "connect", h.sock))
		goto out;
	t_check(T_WAIT(__atomic_load_n(&h.hdr->guest.clients, __ATOMIC_ACQUIRE) == 3, 2000),
		"the region's clients word says 3");

	/* 1. Slow: a reader section open in the client delays its grace period. */
	if (!CMD(&slow, "hold %u", hold_ms))
		goto out;
	t0 = t_now_ms();
	t_check(dirty_gp_track(h.gp, 1) == 0, "the host raises tracking (generation %" PRIu64 ")", health(&h).generation);
	while (t_now_ms() - t0 < 5000) {
		int acked = dirty_gp_acked(h.gp);

		hh = health(&h);
		if (acked == 1) {
			t_ack = t_now_ms() - t0;
			break;
		}
		if (t_now_ms() - t0 > 150 && t_now_ms() - t0 < hold_ms - 150)
			saw_waiting |= hh.state == DIRTY_GP_WAITING;
		t_sleep_ms(5);
	}
	t_check(saw_waiting, "while the slow client's reader section is open the host sees WAITING");
	t_check(t_ack >= hold_ms - 50, "the acknowledgement came %.0f ms after the generation, not before the reader "
		"section ended (%u ms)", t_ack, hold_ms);
	hh = health(&h);
	t_check(hh.state == DIRTY_GP_TRUSTED, "then the host trusts the guest: %s %s", state_name(hh.state), hh.reason);

	/* The agent names the slow client while it waits (grace timeout 300 ms). */
	if (!CMD(&slow, "hold %u", hold_ms))
		goto out;
	dirty_gp_track(h.gp, 1);
	t_sleep_ms(450);
	agent_status(&a, true, json, sizeof(json));
	t_check(json_num(json, "waiting_pid", NULL) == slow.pid,
		"past the agent's grace timeout its status names the slow client: waiting_pid %lld (pid %d)",
		json_num(json, "waiting_pid", NULL), (int)slow.pid);
	t_check(__atomic_load_n(&h.hdr->guest.waiting_pid, __ATOMIC_ACQUIRE) == (uint64_t)slow.pid,
		"and so does the region's guest.waiting_pid");
	t_check(T_WAIT(dirty_gp_acked(h.gp) == 1, 3000), "acknowledged once it answers");
	t_check(__atomic_load_n(&h.hdr->guest.waiting_pid, __ATOMIC_ACQUIRE) == 0, "guest.waiting_pid back to 0");

	/* 2. Silent: a stopped client answers nothing; nothing is acknowledged early. */
	kill(silent.pid, SIGSTOP);
	t0 = t_now_ms();
	dirty_gp_track(h.gp, 1);
	snprintf(pidtxt, sizeof(pidtxt), "pid %d", (int)silent.pid);
	while (t_now_ms() - t0 < ack_ms + 3000) {
		int acked = dirty_gp_acked(h.gp);

		early |= acked == 1;
		hh = health(&h);
		if (hh.state == DIRTY_GP_UNTRUSTED && strstr(hh.reason, pidtxt)) {
			named = true;
			break;
		}
		t_sleep_ms(10);
	}
	t_check(!early, "with a stopped client, the agent never acknowledged");
	t_check(named, "the host's health names the silent client after %.0f ms: %s: \"%s\"", t_now_ms() - t0,
		state_name(hh.state), hh.reason);
	t_sleep_ms(100);
	t_check(dirty_gp_acked(h.gp) != 1, "still not acknowledged");

	/* 3. Dead: once it is gone it is not waited for. */
	kill(silent.pid, SIGKILL);
	waitpid(silent.pid, NULL, 0);
	close(silent.fd);
	silent.pid = 0;
	{
		bool trusted = T_WAIT(health(&h).state == DIRTY_GP_TRUSTED, 3000);

		t_check(trusted, "after the silent client is killed the agent acknowledges and the host trusts the guest: %s",
			state_name(health(&h).state));
	}
	t_check(__atomic_load_n(&h.hdr->guest.waiting_pid, __ATOMIC_ACQUIRE) == 0 &&
		T_WAIT(__atomic_load_n(&h.hdr->guest.clients, __ATOMIC_ACQUIRE) == 2, 1000),
		"guest.waiting_pid 0, clients 2");
	CMD(&slow, "close");
	CMD(&quick, "close");
	CMD(&slow, "exit");
	CMD(&quick, "exit");
out:
	if (silent.pid) {
		kill(silent.pid, SIGCONT);
		child_reap(&silent, SIGKILL);
	}
	child_reap(&slow, 0);
	child_reap(&quick, 0);
	if (a.pid) {
		t_check(agent_stop(&a) == 0, "dirty-agent exits 0 on SIGTERM");
		if (t_failures)
			agent_show_log(&a, 40);
	}
	host_teardown(&h);
	return t_failures ? 1 : 0;
}

/* ---- scenario: an agent restart --------------------------------------------------- */

static int restart(void)
{
	struct host h;
	struct agent_proc a = { 0 };
	struct child c1 = { 0 }, c2 = { 0 };
	char json[65536];
	const char *e;
	int rc;

	if (!host_setup(&h, "restart", 10000, 10000) || !start_agent(&h, &a, "200"))
		goto out;
	if (!client(&c1, "connect", h.sock))
		goto out;
	t_check(dirty_view_start(h.v) == 0, "dirty_view_start: %s", dirty_last_error());
	if (!CMD(&c1, "map 50 1 from"))
		goto out;
	rc = agent_stop(&a);
	t_check(rc == 0, "the first agent exits 0 on SIGTERM with a client connected");
	t_check(pinned(&h, 50), "its exit leaves the client's page pinned");
	t_check(__atomic_load_n(&h.hdr->guest.state, __ATOMIC_ACQUIRE) == DIRTY_PROTO_GUEST_RUNNING,
		"with a client left the guest state stays RUNNING (the host sees the heartbeat stop)");
	if (!start_agent(&h, &a, "200"))
		goto out;
	agent_status(&a, true, json, sizeof(json));
	t_check(strstr(json, "\"adopted\": true") != NULL, "the second agent adopted the pin table");
	e = json_entry(json, "\"clients\"", (int)c1.pid);
	t_check(e && strstr(e, "\"state\": \"orphaned\"") && json_num(e, "refs", NULL) == 1,
		"the first agent's client is an orphan holding 1 reference: %s", json_obj(e));
	if (!client(&c2, "connect", h.sock) || !CMD(&c2, "map 50 1 from"))
		goto out;
	if (!CMD(&c1, "unmap 50 1 from"))
		goto out;
	t_check(pinned(&h, 50), "the old client's unmap leaves the page pinned: the new client shares its count word");
	/* The orphan cannot be asked for a grace period: the ack waits for its exit. */
	dirty_gp_track(h.gp, 1);
	t_sleep_ms(400);
	t_check(dirty_gp_acked(h.gp) != 1 &&
		__atomic_load_n(&h.hdr->guest.waiting_pid, __ATOMIC_ACQUIRE) == (uint64_t)c1.pid,
		"a new generation is not acknowledged while the orphan lives; guest.waiting_pid names it");
	CMD(&c1, "close");
	CMD(&c1, "exit");
	child_reap(&c1, 0);
	t_check(T_WAIT(dirty_gp_acked(h.gp) == 1, 2000), "acknowledged once the orphan exited");
	if (!CMD(&c2, "unmap 50 1 from"))
		goto out;
	t_check(!pinned(&h, 50), "the last unmap (the new client's) unpins it");
	CMD(&c2, "close");
	CMD(&c2, "exit");
out:
	child_reap(&c1, SIGKILL);
	child_reap(&c2, 0);
	if (a.pid) {
		t_check(agent_stop(&a) == 0, "dirty-agent exits 0 on SIGTERM");
		if (t_failures)
			agent_show_log(&a, 40);
	}
	host_teardown(&h);
	return t_failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	bool no_agent = false;
	const char *scenario = NULL;
	int rc;

	t_zero = t_now_ms();
	setvbuf(stdout, NULL, _IOLBF, 0);
	self = argv[0];
	if (argc >= 3 && !strcmp(argv[1], "child"))
		return child_main(atoi(argv[2]));
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--agent") && i + 1 < argc)
			agent_bin = argv[++i];
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--no-agent"))
			no_agent = true;
		else if (argv[i][0] != '-' && !scenario)
			scenario = argv[i];
		else {
			fprintf(stderr, "usage: agent_e2e --agent BIN --dir DIR [--no-agent] two-clients|killed|handshake|restart\n");
			return 2;
		}
	}
	if (!scenario || !dir || (!agent_bin && !no_agent)) {
		fprintf(stderr, "usage: agent_e2e --agent BIN --dir DIR [--no-agent] two-clients|killed|handshake|restart\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(scenario, "two-clients"))
		rc = two_clients(no_agent);
	else if (!strcmp(scenario, "killed"))
		rc = killed();
	else if (!strcmp(scenario, "handshake"))
		rc = handshake();
	else if (!strcmp(scenario, "restart"))
		rc = restart();
	else {
		fprintf(stderr, "agent_e2e: unknown scenario %s\n", scenario);
		return 2;
	}
	printf("RESULT %s%s: %d checks, %d failed\n", scenario, no_agent ? " (control, no agent)" : "", t_checks,
	       t_failures);
	return rc;
}
