/* vm_agent.c - dirty-agent in a real Linux guest, guest side (run by
 * t_vm_agent.sh; the host side is tests/vm/host/agent_host.c).
 *
 * The host created a guest-protocol region at a /dev/shm path; QEMU exposes
 * it as an ivshmem-plain BAR 2 (on the 6.1 guest a second ivshmem-plain
 * device backed by a plain file sits next to it, so discovery has to tell
 * them apart). This program:
 *
 *   - starts /bin/dirty-agent with no device option: it finds the region
 *     itself with libpci (sysfs method), enables memory decoding if the
 *     firmware left it off, and listens on /run/dirty-agent/agent.sock;
 *   - maps the region's BAR itself only for the TEST-ONLY mailbox in its
 *     last 4 KiB (past the protocol region), to step with the host;
 *   - forks two client processes, each using the guest library's
 *     dirty_guest_connect, on one shared, mlocked 4-page buffer whose
 *     guest-physical pages come from dirty_guest_pieces;
 *   - prints the PCI config space of every device in `lspci -nx` format
 *     (from sysfs, busybox has no lspci) for tests/agent/dumps/.
 *
 * Steps (guest publishes, host checks, host acknowledges):
 *   1 AGENT_UP     the agent runs: guest state RUNNING, v1.1, heartbeat
 *                  moving, 0 clients
 *   2 CLIENTS      2 clients connected; client A holds an RCU reader section
 *                  open until the host sets `release`: the host's
 *                  dirty_view_start waits (WAITING, guest.waiting_pid = A
 *                  past the agent's grace timeout), then returns once A
 *                  let go: acknowledged, TRUSTED; the first pass drained
 *   3 MAPPED       both clients mapped the 4 pages FROM_DEVICE: exactly
 *                  those pinned, nothing dirty
 *   4 FIRST_UNMAP  the CPU wrote the pages (the "device"), A unmapped them:
 *                  still pinned (B maps them), 4 dirty, all kept back
 *   5 LAST_UNMAP   B unmapped: no pin, a sync + drain gives exactly the 4
 *   6 KILLED       A mapped 2 more pages and was SIGKILLed: they stay
 *                  pinned, the region's pin_leaks says 2, 1 client; the
 *                  guest's `dirty-agent status --json` names A's pid
 *   7 DONE         B closed; SIGTERM: the agent exits 0; the host sees
 *                  guest state STOPPED, 0 clients, the 2 pages still pinned
 */
#include "vfio-edu.h"
#include "mbox-agent.h"
#include "vm-check.h"
#include "vm-time.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include <urcu/urcu-bp.h>

#include <libdirty/guest.h>
#include <libdirty/proto.h>

#define P ((uint64_t)4096)

#define HOST_WAIT_MS 30000
#define AGENT "/bin/dirty-agent"
#define SOCK "/run/dirty-agent/agent.sock"

static volatile struct agent_mbox *mb;
static pid_t agent_pid;

/* Give up: say why on the console and in the mailbox; returns 1. */
__attribute__((format(printf, 1, 2)))
static int give_up(const char *fmt, ...)
{
	char msg[VM_MBOX_MSG];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("vm_agent: FAIL %s\n", msg);
	fflush(stdout);
	if (mb)
		vm_mbox_give_up(mb->h.guest_msg, &mb->h.guest_failed, msg);
	return 1;
}

static void publish(enum agent_step s)
{
	vm_mbox_publish(&mb->h.guest_step, s);
	say("step %d published", (int)s);
}

/* Wait until the host checked step s; false if it gave up or timed out. */
static bool host_checked(enum agent_step s)
{
	char msg[VM_MBOX_MSG];

	switch (vm_mbox_wait_host(&mb->h, s, HOST_WAIT_MS, msg)) {
	case 0:
		return true;
	case -ECANCELED:
		give_up("the host gave up at step %d: %s", (int)s, msg);
		return false;
	default:
		give_up("the host did not check step %d within %d ms", (int)s, HOST_WAIT_MS);
		return false;
	}
}

/* ---- lspci -nx from sysfs ------------------------------------------------------ */

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int not_dot(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/*
 * The first 64 bytes of every function's config space, as `lspci -nx`
 * prints them (the domain left out, as lspci does when every domain is 0),
 * each line prefixed "vm_agent: lspci| " so the host can cut them out of
 * the console. libpci's dump method reads exactly this format.
 */
static void dump_lspci(void)
{
	struct dirent **names;
	int n = scandir("/sys/bus/pci/devices", &names, not_dot, by_name);

	for (int i = 0; i < n; i++) {
		unsigned int dom, bus, dev, fn;
		uint8_t cfg[64];
		char path[512];
		int fd;

		if (sscanf(names[i]->d_name, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4)
			goto next;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config", names[i]->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || pread(fd, cfg, sizeof(cfg), 0) != (ssize_t)sizeof(cfg)) {
			if (fd >= 0)
				close(fd);
			goto next;
		}
		close(fd);
		printf("vm_agent: lspci| %02x:%02x.%x %02x%02x: %02x%02x:%02x%02x", bus, dev, fn, cfg[11], cfg[10],
		       cfg[1], cfg[0], cfg[3], cfg[2]);
		if (cfg[8])
			printf(" (rev %02x)", cfg[8]);
		printf("\n");
		for (int off = 0; off < 64; off += 16) {
			printf("vm_agent: lspci| %02x:", off);
			for (int k = 0; k < 16; k++)
				printf(" %02x", cfg[off + k]);
			printf("\n");
		}
		printf("vm_agent: lspci| \n");
next:
		free(names[i]);
	}
	free(names);
	fflush(stdout);
}

/* ---- the clients ---------------------------------------------------------------- */

struct client {
	pid_t pid;
	int fd;
};

static uint64_t pages[BUF_PAGES], kill_pages[KILL_PAGES];

static void *hold_main(void *arg)
{
	(void)arg;
	urcu_bp_read_lock();
	while (!__atomic_load_n(&mb->release, __ATOMIC_ACQUIRE))
		sleep_ms(1);
	urcu_bp_read_unlock();
	return NULL;
}

/* The child: one command per message, one answer line. */
static void client_loop(int fd)
{
	struct dirty_guest *g = NULL;
	char cmd[128], out[256];
	int rc;

	for (;;) {
		ssize_t n = recv(fd, cmd, sizeof(cmd) - 1, 0);

		if (n <= 0)
			_exit(0);
		cmd[n] = 0;
		rc = 0;
		out[0] = 0;
		if (!strcmp(cmd, "connect")) {
			rc = dirty_guest_connect(NULL, &g);
		} else if (!strcmp(cmd, "hold")) {
			pthread_t t;

			rc = -pthread_create(&t, NULL, hold_main, NULL);
			if (!rc)
				pthread_detach(t);
			sleep_ms(20);	/* it holds the reader section now */
		} else if (!strcmp(cmd, "map") || !strcmp(cmd, "unmap")) {
			for (unsigned int i = 0; i < BUF_PAGES && !rc; i++)
				rc = cmd[0] == 'm' ? dirty_guest_map(g, pages[i], P, DIRTY_FROM_DEVICE) :
						     dirty_guest_unmap(g, pages[i], P, DIRTY_FROM_DEVICE);
		} else if (!strcmp(cmd, "map-kill")) {
			for (unsigned int i = 0; i < KILL_PAGES && !rc; i++)
				rc = dirty_guest_map(g, kill_pages[i], P, DIRTY_FROM_DEVICE);
		} else if (!strcmp(cmd, "close")) {
			dirty_guest_close(g);
			g = NULL;
		} else {
			rc = -EINVAL;
		}
		if (rc)
			snprintf(out, sizeof(out), "err %d %s", rc, dirty_guest_last_error());
		else
			snprintf(out, sizeof(out), "ok");
		send(fd, out, strlen(out), MSG_NOSIGNAL);
	}
}

static int client_start(struct client *c)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	c->pid = fork();
	if (c->pid < 0)
		return -errno;
	if (c->pid == 0) {
		close(sv[0]);
		client_loop(sv[1]);
	}
	close(sv[1]);
	c->fd = sv[0];
	return 0;
}

static bool cmd(struct client *c, const char *what)
{
	char out[256];
	ssize_t n;

	if (send(c->fd, what, strlen(what), MSG_NOSIGNAL) < 0)
		return !give_up("client %d: send %s: %s", (int)c->pid, what, strerror(errno));
	n = recv(c->fd, out, sizeof(out) - 1, 0);
	if (n <= 0)
		return !give_up("client %d hung up on %s", (int)c->pid, what);
	out[n] = 0;
	if (strncmp(out, "ok", 2))
		return !give_up("client %d: %s: %s", (int)c->pid, what, out);
	return true;
}

/* ---- the agent ------------------------------------------------------------------- */

static int start_agent(void)
{
	double start;

	agent_pid = fork();
	if (agent_pid < 0)
		return give_up("fork: %s", strerror(errno));
	if (agent_pid == 0) {
		execl(AGENT, AGENT, "-v", "--heartbeat-ms", "20", "--grace-timeout-ms", "300", (char *)NULL);
		fprintf(stderr, "vm_agent: exec " AGENT ": %s\n", strerror(errno));
		_exit(127);
	}
	start = now_ms();
	for (;;) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), st;

		strcpy(sa.sun_path, SOCK);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(fd);
			break;
		}
		if (fd >= 0)
			close(fd);
		if (waitpid(agent_pid, &st, WNOHANG) == agent_pid)
			return give_up("dirty-agent exited (status %#x) before it listened", st);
		if (now_ms() - start > 20000)
			return give_up("dirty-agent did not listen on " SOCK " within 20 s");
		sleep_ms(5);
	}
	say("dirty-agent pid %d listens on " SOCK " after %.0f ms", (int)agent_pid, now_ms() - start);
	return 0;
}

/* Find the ivshmem device whose BAR 2 holds the region; map it. */
static int map_region(volatile void **bar, size_t *len)
{
	char bdf[32];

	for (unsigned int i = 0; i < 4; i++) {
		if (vm_pci_find(0x1af4, 0x1110, i, bdf, sizeof(bdf)))
			break;
		if (vm_pci_map_bar(bdf, 2, bar, len))
			continue;
		if (*len >= P && ((volatile const uint64_t *)*bar)[0] == DIRTY_PROTO_MAGIC) {
			say("the region is BAR 2 of %s (%zu bytes)", bdf, *len);
			return 0;
		}
		say("ivshmem %s holds no region (its BAR 2 is %zu bytes)", bdf, *len);
		vm_pci_unmap_bar(*bar, *len);
	}
	return give_up("no ivshmem device holds the region");
}

/* `dirty-agent status --json`: does it list pid's leak with refs references? */
static bool status_names_leak(pid_t pid, unsigned int refs)
{
	char line[8192], want[96], want_refs[64];
	bool found = false;
	FILE *f = popen(AGENT " status --json", "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), "{\"pid\": %d,", (int)pid);
	snprintf(want_refs, sizeof(want_refs), "\"refs\": %u, \"how\": \"exited\"", refs);
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, want);

		printf("vm_agent: status| %s", line);
		if (p && strstr(p, want_refs))
			found = true;
	}
	pclose(f);
	fflush(stdout);
	return found;
}

int main(void)
{
	struct client a = { 0 }, b = { 0 };
	volatile void *bar = NULL;
	size_t bar_len = 0;
	uint8_t *buf;
	int st, rc = 1;

	vm_check_init("vm_agent", true);
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (start_agent())
		goto out;
	if (map_region(&bar, &bar_len))
		goto out;
	mb = (volatile struct agent_mbox *)((volatile uint8_t *)bar + bar_len - VM_MBOX_SIZE);
	if (mb->h.magic != AGENT_MBOX_MAGIC) {
		mb = NULL;
		give_up("no test mailbox at the end of the BAR (magic %#" PRIx64 ")",
		        ((volatile struct agent_mbox *)((volatile uint8_t *)bar + bar_len - VM_MBOX_SIZE))->h.magic);
		goto out;
	}
	mb->h.bar_size = bar_len;
	mb->agent_pid = (uint64_t)agent_pid;

	/* The buffer both clients map: shared, resident, its pages' GPAs. */
	buf = mmap(NULL, (BUF_PAGES + KILL_PAGES) * P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || mlock(buf, (BUF_PAGES + KILL_PAGES) * P)) {
		give_up("buffer: %s", strerror(errno));
		goto out;
	}
	memset(buf, 0x5a, (BUF_PAGES + KILL_PAGES) * P);
	for (unsigned int i = 0; i < BUF_PAGES + KILL_PAGES; i++) {
		struct dirty_dma_piece pc;
		ssize_t n = dirty_guest_pieces(buf + i * P, P, &pc, 1);

		if (n != 1 || pc.len != P || pc.gpa % P) {
			give_up("dirty_guest_pieces of page %u: %zd: %s", i, n, dirty_guest_last_error());
			goto out;
		}
		if (i < BUF_PAGES)
			pages[i] = mb->pages[i] = pc.gpa;
		else
			kill_pages[i - BUF_PAGES] = mb->kill_pages[i - BUF_PAGES] = pc.gpa;
	}
	mb->npages = BUF_PAGES;
	mb->nkill = KILL_PAGES;
	publish(STEP_AGENT_UP);
	if (!host_checked(STEP_AGENT_UP))
		goto out;

	/* 2: two clients; A holds a reader section until the host releases it. */
	if (client_start(&a) || client_start(&b) || !cmd(&a, "connect") || !cmd(&b, "connect") ||
	    !cmd(&a, "hold"))
		goto out;
	mb->pid_a = (uint64_t)a.pid;
	mb->pid_b = (uint64_t)b.pid;
	publish(STEP_CLIENTS);
	if (!host_checked(STEP_CLIENTS))
		goto out;

	/* 3 */
	if (!cmd(&a, "map") || !cmd(&b, "map"))
		goto out;
	publish(STEP_MAPPED);
	if (!host_checked(STEP_MAPPED))
		goto out;

	/* 4: the "device" writes, the first client unmaps. */
	for (unsigned int i = 0; i < BUF_PAGES; i++)
		memset(buf + i * P, 0xd0 + (int)i, P);
	if (!cmd(&a, "unmap"))
		goto out;
	publish(STEP_FIRST_UNMAP);
	if (!host_checked(STEP_FIRST_UNMAP))
		goto out;

	/* 5 */
	if (!cmd(&b, "unmap"))
		goto out;
	publish(STEP_LAST_UNMAP);
	if (!host_checked(STEP_LAST_UNMAP))
		goto out;

	/* 6: A maps two more pages and dies holding them. */
	if (!cmd(&a, "map-kill"))
		goto out;
	kill(a.pid, SIGKILL);
	waitpid(a.pid, &st, 0);
	say("client A (pid %d) killed holding %u page references", (int)a.pid, KILL_PAGES);
	{
		double start = now_ms();
		bool named = false;

		while (!(named = status_names_leak(a.pid, KILL_PAGES)) && now_ms() - start < 5000)
			sleep_ms(100);
		if (!named) {
			give_up("`dirty-agent status --json` does not list pid %d with %u leaked references", (int)a.pid,
			     KILL_PAGES);
			goto out;
		}
		say("ok `dirty-agent status --json` lists pid %d with %u leaked references", (int)a.pid, KILL_PAGES);
	}
	a.pid = 0;
	publish(STEP_KILLED);
	if (!host_checked(STEP_KILLED))
		goto out;

	/* 7: B closes, the agent stops. */
	if (!cmd(&b, "close"))
		goto out;
	close(b.fd);
	waitpid(b.pid, NULL, 0);
	b.pid = 0;
	kill(agent_pid, SIGTERM);
	if (waitpid(agent_pid, &st, 0) != agent_pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
		give_up("dirty-agent did not exit 0 on SIGTERM (status %#x)", st);
		agent_pid = 0;
		goto out;
	}
	agent_pid = 0;
	say("ok dirty-agent exited 0 on SIGTERM");
	dump_lspci();
	publish(STEP_DONE);
	if (!host_checked(STEP_DONE))
		goto out;
	rc = 0;
out:
	if (a.pid)
		kill(a.pid, SIGKILL);
	if (b.pid)
		kill(b.pid, SIGKILL);
	if (agent_pid)
		kill(agent_pid, SIGTERM);
	printf("vm_agent: RESULT %s\n", rc ? "FAIL" : "ok");
	return rc;
}
