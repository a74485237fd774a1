/* SPDX-License-Identifier: MIT */
/*
 * proto-bench.c - the guest bitmap protocol's costs in one run: a guest's
 * mark per page against a bare atomic OR and against the "dummy write"
 * into the page itself, the full library unmap and map + unmap path, and
 * the host's harvest and drain at 0.1 / 1 / 10 % dirty; and map + unmap
 * through the dirty-agent's shared pin table (dirty_guest_connect) against
 * the same calls on the library's private table.
 *
 * Owns the number behind "marking one page on unmap <= 2x a bare
 * uncontended atomic OR" (dirty_proto_set_dirty() against __atomic_fetch_or
 * on a plain bitmap). It reports and never fails on a missed target; it
 * exits 1 only on a wrong result (bits, pins, drained pages) or a library
 * error. Guest cases run on one thread, uncontended, on a real region
 * (dirty_gp_create + dirty_guest_open_fd); --help says what each does.
 * The agent case connects to a stand-in agent the bench runs itself (a
 * thread that answers HELLO with the region and a pin table in a memfd,
 * as guest-agent/pintable.h lays it out): no daemon needed, and the
 * client side measured is the real one. Target: <= 2x the in-process
 * map+unmap (the code is the same; only the table's memory differs).
 *
 * Reproduce:  make bench && build/bin/proto-bench [--json]
 *             build/bin/proto-bench --quick     (smoke test, under 1 s)
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "opts.h"
#include "rng.h"
#include "stats.h"
#include "libdirty.h"
#include "libdirty/guest.h"
#include "libdirty/proto.h"
#include "../guest-agent/agent_wire.h"
#include "../guest-agent/pintable.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ull << PAGE_SHIFT)
#define RUN_BATCH 256
#define NFRAC 3

enum { C_OR, C_PROTO, C_UNMAP, C_MAPUNMAP, C_MAPUNMAP_AGENT, C_MAPUNMAP_V, C_WRITE,
       C_WRITE_HOT, NCASE };
static const char *const case_names[NCASE] = {
	"atomic-or", "mark-proto", "unmap", "map+unmap", "map+unmap-agent", "map+unmap-v16",
	"dummy-write", "dummy-write-hot",
};
#define VEC 16	/* pieces per vectored call: a scatter-gather list of single pages */
static const char *const orders[2] = { "seq", "rand" };
static const double fractions[NFRAC] = { 0.001, 0.01, 0.10 };
static const char *const frac_labels[NFRAC] = { "0.1%", "1%", "10%" };

struct guest {
	uint64_t npages, wpages;	/* mark region, dummy-write buffer */
	uint32_t *idx[2], *widx[2];	/* page order: seq, rand */
	uint64_t *plain;		/* the atomic-or bitmap */
	uint8_t *region, *buf;
	uint64_t *dirty, *summary, *pin;	/* in region */
	struct dirty_proto_layout lay;
	struct dirty_guest *g;		/* opened alone: its private pin table */
	struct dirty_guest *ga;		/* connected: the agent's shared table */
	double ns[NCASE][2];		/* median ns per page */
	double agent_ratio[2];		/* map+unmap-agent / map+unmap, median of paired reps */
};

/*
 * The stand-in dirty-agent: one client, one WELCOME with the region and a
 * shared pin table, then it waits for the client's BYE or EOF.
 */
struct fake_agent {
	char dir[32], path[64];
	int lfd, table_fd, region_fd;
	uint64_t region_bytes, npages, tbytes;
	pthread_t thr;
	bool running;
	int err;
};

static void *fake_agent_main(void *arg)
{
	struct fake_agent *a = arg;
	union {
		struct cmsghdr align;
		char b[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	struct agent_welcome w = {
		.slot = 0, .page_shift = PAGE_SHIFT, .gpa_base = 0, .npages = a->npages,
		.region_bytes = a->region_bytes, .table_bytes = a->tbytes,
	};
	struct iovec iov = { .iov_base = &w, .iov_len = sizeof(w) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c;
	int fds[2] = { a->region_fd, a->table_fd }, fd;
	char buf[256];
	struct agent_msg m;
	ssize_t n;

	fd = accept(a->lfd, NULL, NULL);
	if (fd < 0 || (n = recv(fd, buf, sizeof(buf), 0)) <= 0 ||
	    agent_wire_parse(buf, (size_t)n, &m, NULL, 0) != AGENT_HELLO) {
		a->err = -EPROTO;
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	memset(&ctl, 0, sizeof(ctl));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	agent_wire_hdr(&w.h, AGENT_WELCOME, sizeof(w));
	if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof(w))
		a->err = -errno;
	while (recv(fd, buf, sizeof(buf), 0) > 0)	/* BYE, then EOF */
		;
	close(fd);
	return NULL;
}

/* Listen, make the table (magic last, as the daemon does), start the thread. */
static int fake_agent_start(struct fake_agent *a, int region_fd, uint64_t region_bytes,
			    uint64_t npages)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pintable_header *t;

	memset(a, 0, sizeof(*a));
	a->lfd = a->table_fd = -1;
	a->region_fd = region_fd;
	a->region_bytes = region_bytes;
	a->npages = npages;
	a->tbytes = pintable_bytes(npages);
	strcpy(a->dir, "/tmp/proto-bench-XXXXXX");
	if (!mkdtemp(a->dir))
		return -errno;
	snprintf(a->path, sizeof(a->path), "%s/agent.sock", a->dir);
	memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
	a->table_fd = memfd_create("proto-bench-pintable", MFD_CLOEXEC);
	if (a->table_fd < 0 || ftruncate(a->table_fd, (off_t)a->tbytes) < 0)
		return -errno;
	t = mmap(NULL, PINTABLE_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, a->table_fd, 0);
	if (t == MAP_FAILED)
		return -errno;
	t->version = PINTABLE_VERSION;
	t->header_size = PINTABLE_HEADER_SIZE;
	t->npages = npages;
	t->gpa_base = 0;
	t->page_shift = PAGE_SHIFT;
	t->nslots = PINTABLE_SLOTS;
	__atomic_store_n(&t->magic, PINTABLE_MAGIC, __ATOMIC_RELEASE);
	munmap(t, PINTABLE_HEADER_SIZE);
	a->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (a->lfd < 0 || bind(a->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(a->lfd, 1) < 0)
		return -errno;
	if (pthread_create(&a->thr, NULL, fake_agent_main, a))
		return -EAGAIN;
	a->running = true;
	return 0;
}

/* After the client closed (or never connected: shut the listener down). */
static void fake_agent_stop(struct fake_agent *a)
{
	if (a->running) {
		shutdown(a->lfd, SHUT_RDWR);	/* wakes an accept that nobody will satisfy */
		pthread_join(a->thr, NULL);
	}
	if (a->lfd >= 0)
		close(a->lfd);
	if (a->table_fd >= 0)
		close(a->table_fd);
	if (a->path[0])
		unlink(a->path);
	if (a->dir[0])
		rmdir(a->dir);
}

struct harvest {
	uint64_t pages, idxsum;		/* the set pages: count, sum of indices */
	double sync_ns, drain_ns;
};

static int reps;
static double *samples;		/* 2 * reps */

static uint64_t popcount(const uint64_t *w, uint64_t nwords)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < nwords; i++)
		n += (uint64_t)__builtin_popcountll(w[i]);
	return n;
}

/* idx[0]: 0..n-1; idx[1]: a fixed random permutation of it. */
static int make_orders(uint32_t **idx, uint64_t n, uint64_t seed)
{
	if (!(idx[0] = malloc(n * sizeof(uint32_t))) || !(idx[1] = malloc(n * sizeof(uint32_t))))
		return -ENOMEM;
	for (uint64_t i = 0; i < n; i++)
		idx[0][i] = idx[1][i] = (uint32_t)i;
	for (uint64_t i = n - 1; i > 0; i--) {
		uint64_t j = splitmix64(&seed) % (i + 1);
		uint32_t t = idx[1][i];

		idx[1][i] = idx[1][j];
		idx[1][j] = t;
	}
	return 0;
}

/* Evict the dummy-write lines: a device's DMA left them out of the cache. */
static void flush_lines(struct guest *G)
{
#if defined(__x86_64__) || defined(__i386__)
	for (uint64_t p = 0; p < G->wpages; p++)
		__asm__ volatile("clflush %0" : "+m"(*(volatile uint64_t *)(G->buf + (p << PAGE_SHIFT))));
	__asm__ volatile("mfence" ::: "memory");
#else
	(void)G;	/* no portable flush: dummy-write then equals dummy-write-hot */
#endif
}

/* One rep of case c in order o: set up, time the loop, then verify. */
static int guest_rep(struct guest *G, int c, int o, double *ns_per_page)
{
	bool wr = c >= C_WRITE;
	const uint32_t *ix = wr ? G->widx[o] : G->idx[o];
	uint64_t n = wr ? G->wpages : G->npages, t0, bits = 0;
	struct dirty_guest_info info = { 0 };
	struct dirty_guest *g = c == C_MAPUNMAP_AGENT ? G->ga : G->g;
	int err = 0;

	memset(G->plain, 0, G->lay.dirty_words * 8);
	memset(G->dirty, 0, G->lay.dirty_words * 8);
	memset(G->summary, 0, G->lay.summary_words * 8);
	if (c == C_WRITE)
		flush_lines(G);
	for (uint64_t i = 0; c == C_UNMAP && i < n && !err; i++)
		err = dirty_guest_map(G->g, i << PAGE_SHIFT, PAGE_SIZE, DIRTY_FROM_DEVICE);

	/* One loop per case: no per-page dispatch inside the timed part. */
	t0 = now_ns();
	if (c == C_OR) {
		for (uint64_t i = 0; i < n; i++)
			__atomic_fetch_or(&G->plain[ix[i] >> 6], 1ull << (ix[i] & 63), __ATOMIC_SEQ_CST);
	} else if (c == C_PROTO) {
		for (uint64_t i = 0; i < n; i++)
			dirty_proto_set_dirty(G->dirty, G->summary, ix[i]);
	} else if (c == C_UNMAP) {
		for (uint64_t i = 0; i < n && !err; i++)
			err = dirty_guest_unmap(G->g, (uint64_t)ix[i] << PAGE_SHIFT, PAGE_SIZE, DIRTY_FROM_DEVICE);
	} else if (c == C_MAPUNMAP || c == C_MAPUNMAP_AGENT) {
		/* The same loop; g is the private-table or the shared-table handle. */
		for (uint64_t i = 0; i < n && !err; i++) {
			uint64_t gpa = (uint64_t)ix[i] << PAGE_SHIFT;

			if (!(err = dirty_guest_map(g, gpa, PAGE_SIZE, DIRTY_FROM_DEVICE)))
				err = dirty_guest_unmap(g, gpa, PAGE_SIZE, DIRTY_FROM_DEVICE);
		}
	} else if (c == C_MAPUNMAP_V) {
		struct dirty_dma_piece v[VEC];

		for (uint64_t i = 0; i < n && !err; i += VEC) {
			size_t k = n - i < VEC ? (size_t)(n - i) : VEC;

			for (size_t j = 0; j < k; j++)
				v[j] = (struct dirty_dma_piece){ (uint64_t)ix[i + j] << PAGE_SHIFT, PAGE_SIZE };
			if (!(err = dirty_guest_map_v(G->g, v, k, DIRTY_FROM_DEVICE)))
				err = dirty_guest_unmap_v(G->g, v, k, DIRTY_FROM_DEVICE);
		}
	} else {
		for (uint64_t i = 0; i < n; i++)
			*(volatile uint64_t *)(G->buf + ((uint64_t)ix[i] << PAGE_SHIFT)) = i;
	}
	*ns_per_page = (double)(now_ns() - t0) / (double)n;
	if (err) {
		fprintf(stderr, "proto-bench: %s: %s\n", case_names[c], dirty_guest_last_error());
		return err;
	}

	/* Each page marked once; nothing left pinned; summary complete. */
	if (wr) {
		for (uint64_t i = 0; i < n; i++)
			if (*(uint64_t *)(G->buf + ((uint64_t)ix[i] << PAGE_SHIFT)) != i)
				err = -EIO;
	} else {
		bits = popcount(c == C_OR ? G->plain : G->dirty, G->lay.dirty_words);
		dirty_guest_info(g, &info);
		if (bits != n || info.pinned_pages || popcount(G->pin, G->lay.dirty_words) ||
		    (c != C_OR && popcount(G->summary, G->lay.summary_words) != G->lay.dirty_words))
			err = -EIO;
	}
	if (err)
		fprintf(stderr, "proto-bench: %s (%s): wrong result (%llu of %llu bits, %llu pins left)\n",
			case_names[c], orders[o], (unsigned long long)bits, (unsigned long long)n,
			(unsigned long long)info.pinned_pages);
	return err;
}

/*
 * Host: set the first fraction of a random page order through proto.h
 * (untimed), then time the sync (the harvest) and the drain.
 */
static int run_harvest(struct dirty_view *view, struct dirty_gp *gp, const uint32_t *order,
		       uint64_t npages, double fraction, struct harvest *h)
{
	uint8_t *base = mmap(NULL, dirty_gp_size(gp), PROT_READ | PROT_WRITE, MAP_SHARED,
			     dirty_gp_fd(gp), 0);	/* the guest's side of the region */
	struct dirty_claim *cl = NULL;
	struct dirty_proto_layout lay = { 0 };
	int err;

	memset(h, 0, sizeof(*h));
	h->pages = (uint64_t)(fraction * (double)npages + 0.5);
	for (uint64_t i = 0; i < h->pages; i++)
		h->idxsum += order[i];
	dirty_proto_layout(npages, &lay);
	if (base == MAP_FAILED || (err = dirty_claim_new(view, &cl))) {
		fprintf(stderr, "proto-bench: harvest: cannot map the region or make a cursor\n");
		err = -EIO;
		goto out;
	}
	for (int rep = -1; rep < reps; rep++) {
		struct dirty_run runs[RUN_BATCH];
		uint64_t t0, t1, t2, pages = 0, idxsum = 0;
		ssize_t n = 0;

		for (uint64_t i = 0; i < h->pages; i++)	/* what guests' unmaps leave */
			dirty_proto_set_dirty((uint64_t *)(base + lay.dirty_off),
					      (uint64_t *)(base + lay.summary_off), order[i]);
		t0 = now_ns();
		err = dirty_view_sync(view);
		t1 = now_ns();
		while (!err && (n = dirty_claim_next(cl, runs, RUN_BATCH)) > 0) {
			for (ssize_t i = 0; i < n; i++) {
				uint64_t f = runs[i].gpa >> PAGE_SHIFT, k = runs[i].len >> PAGE_SHIFT;

				pages += k;
				idxsum += k * f + k * (k - 1) / 2;
			}
		}
		t2 = now_ns();
		if (err || n < 0) {
			err = err ? err : (int)n;
			fprintf(stderr, "proto-bench: harvest %g: %s\n", fraction, dirty_last_error());
			goto out;
		}
		if (pages != h->pages || idxsum != h->idxsum) {
			fprintf(stderr, "proto-bench: harvest %g: drained %llu pages (index sum %#llx), set %llu (%#llx)\n",
				fraction, (unsigned long long)pages, (unsigned long long)idxsum,
				(unsigned long long)h->pages, (unsigned long long)h->idxsum);
			err = -EIO;
			goto out;
		}
		if (rep >= 0) {
			samples[rep] = (double)(t1 - t0);
			samples[reps + rep] = (double)(t2 - t1);
		}
	}
	h->sync_ns = median(samples, reps);
	h->drain_ns = median(samples + reps, reps);
out:
	if (base != MAP_FAILED)
		munmap(base, dirty_gp_size(gp));
	dirty_claim_free(cl);
	return err;
}

static void usage(FILE *f)
{
	fputs("usage: proto-bench [--json] [--reps N] [--guest-mib N] [--write-mib N]\n"
"                   [--harvest-gib N] [--quick] [--help]\n\n"
"Guest: ns per page to mark each page of a region once, in address order\n"
"(seq) or a fixed random order (rand), one thread, tracking on:\n"
"  atomic-or        __atomic_fetch_or of the page's bit in a plain bitmap\n"
"  mark-proto       dirty_proto_set_dirty(): dirty bit, summary check/set\n"
"  unmap            dirty_guest_unmap(FROM_DEVICE) of one page; every page\n"
"                   of the region was mapped first, untimed\n"
"  map+unmap        dirty_guest_map then _unmap of one page: a driver's cost\n"
"                   per single-page DMA buffer, pin reference table included\n"
"  map+unmap-agent  the same on a handle connected to dirty-agent (a stand-in\n"
"                   run by the bench): the shared pin table in a memfd and the\n"
"                   client's slot count; \"vs in-process\" is its ratio to\n"
"                   map+unmap of the same order, each rep timed beside one\n"
"                   of map+unmap (median of the pairs; target <= 2x)\n"
"  map+unmap-v16    dirty_guest_map_v then _unmap_v of 16 single-page pieces\n"
"                   (the same pages, in the same order): a scatter-gather list\n"
"  dummy-write      volatile 8-byte store to the page's first word, its line\n"
"                   flushed first (as after DMA); no hypervisor fault included\n"
"  dummy-write-hot  the same store, line still cached\n"
"Host: a guest-protocol source with 0.1%, 1%, 10% of its pages set through\n"
"proto.h (random, fixed seed); times dirty_view_sync (the harvest) and the\n"
"drain (one claim cursor until empty), which must give exactly those pages.\n\n"
"  --json           one JSON object per case on stdout instead of the table\n"
"  --reps N         timed reps per case after a warm-up (default 5); each\n"
"                   number is the median\n"
"  --guest-mib N    mark-case region (default 4096: 1 Mi pages of 4 KiB)\n"
"  --write-mib N    dummy-write buffer, 4 KiB pages (default 1024)\n"
"  --harvest-gib N  host region (default 16: 4 Mi pages)\n"
"  --quick          256 MiB, 64 MiB, 2 GiB, 3 reps unless given (smoke test)\n"
"  --help           this text\n\n"
"Guest columns: case, order, pages, ns/page, ratio to atomic-or of the same\n"
"order, and for map+unmap-agent its ratio to map+unmap (JSON:\n"
"ratio_vs_in_process). Host columns: case; dirty %; dirty pages; sync us; Mpages/s (dirty\n"
"pages per second of sync); guest GiB/s (memory covered per second of sync);\n"
"ns/dirty (sync ns per dirty page); drain us; drain ns (per page). Target\n"
"lines follow. Exit 1 on a wrong result or library error, 2 on bad usage.\n", f);
}

static void print_results(const struct guest *G, const struct harvest *H, bool json, long hgib)
{
	if (!json)
		printf("guest: %llu MiB region (%llu pages), dummy writes over %llu MiB, median of %d reps\n\n"
		       "%-16s %5s %9s %9s %13s %14s\n", (unsigned long long)(G->npages >> 8),
		       (unsigned long long)G->npages, (unsigned long long)(G->wpages >> 8), reps,
		       "case", "order", "pages", "ns/page", "vs atomic-or", "vs in-process");
	for (int c = 0; c < NCASE * 2; c++) {
		double ns = G->ns[c / 2][c % 2], r = ns / G->ns[C_OR][c % 2];
		unsigned long long n = c / 2 >= C_WRITE ? G->wpages : G->npages;
		bool agent = c / 2 == C_MAPUNMAP_AGENT;
		double ri = G->agent_ratio[c % 2];

		printf(json ? "{\"case\":\"%s\",\"order\":\"%s\",\"pages\":%llu,\"ns_per_page\":%.3f,"
			      "\"ratio_vs_atomic_or\":%.3f" : "%-16s %5s %9llu %9.2f %12.2fx",
		       case_names[c / 2], orders[c % 2], n, ns, r);
		if (agent)
			printf(json ? ",\"ratio_vs_in_process\":%.3f" : " %13.2fx", ri);
		printf(json ? "}\n" : "\n");
	}
	if (!json)
		printf("\nhost: %ld GiB guest-protocol region (%llu pages), median of %d reps\n\n"
		       "%-12s %7s %11s %9s %9s %11s %8s %9s %8s\n", hgib,
		       (unsigned long long)hgib << (30 - PAGE_SHIFT), reps, "case", "dirty %",
		       "dirty pages", "sync us", "Mpages/s", "guest GiB/s", "ns/dirty", "drain us",
		       "drain ns");
	for (int f = 0; f < NFRAC; f++) {
		const struct harvest *h = &H[f];
		double pps = (double)h->pages / (h->sync_ns / 1e9), gps = (double)hgib / (h->sync_ns / 1e9);

		if (json)
			printf("{\"case\":\"harvest-%s\",\"dirty_fraction\":%g,\"pages\":%llu,\"guest_pages\":%llu,"
			       "\"sync_ns\":%.0f,\"drain_ns\":%.0f,\"pages_per_s\":%.0f,\"guest_gib_per_s\":%.2f,"
			       "\"ns_per_dirty_page\":%.2f,\"drain_ns_per_page\":%.2f}\n",
			       frac_labels[f], fractions[f], (unsigned long long)h->pages,
			       (unsigned long long)hgib << (30 - PAGE_SHIFT), h->sync_ns, h->drain_ns,
			       pps, gps, h->sync_ns / (double)h->pages, h->drain_ns / (double)h->pages);
		else
			printf("harvest-%-4s %7g %11llu %9.1f %9.1f %11.1f %8.2f %9.1f %8.2f\n",
			       frac_labels[f], fractions[f] * 100, (unsigned long long)h->pages,
			       h->sync_ns / 1e3, pps / 1e6, gps, h->sync_ns / (double)h->pages,
			       h->drain_ns / 1e3, h->drain_ns / (double)h->pages);
	}
	if (json)
		return;
	/* The target's ratio: the worse of the two orders. */
	double ms = G->ns[C_PROTO][0] / G->ns[C_OR][0], mr = G->ns[C_PROTO][1] / G->ns[C_OR][1];
	double m = ms > mr ? ms : mr;

	printf("\ntarget mark <= 2x atomic OR: %.2fx \u2014 %s (seq %.2fx, rand %.2fx)\n",
	       m, m <= 2 ? "met" : "not met", ms, mr);
	printf("full library path, x atomic OR (seq / rand): unmap %.1fx / %.1fx, map+unmap %.1fx / %.1fx\n",
	       G->ns[C_UNMAP][0] / G->ns[C_OR][0], G->ns[C_UNMAP][1] / G->ns[C_OR][1],
	       G->ns[C_MAPUNMAP][0] / G->ns[C_OR][0], G->ns[C_MAPUNMAP][1] / G->ns[C_OR][1]);
	printf("vectored calls, per page, x single calls (seq / rand): %.2fx / %.2fx\n",
	       G->ns[C_MAPUNMAP_V][0] / G->ns[C_MAPUNMAP][0], G->ns[C_MAPUNMAP_V][1] / G->ns[C_MAPUNMAP][1]);
	{
		double as = G->agent_ratio[0], ar = G->agent_ratio[1];
		double am = as > ar ? as : ar;

		printf("target map+unmap through the agent's shared table <= 2x in-process: %.2fx \u2014 %s "
		       "(seq %.2fx, rand %.2fx)\n", am, am <= 2 ? "met" : "not met", as, ar);
	}
}

int main(int argc, char **argv)
{
	struct dirty_view *gview = NULL, *hview = NULL;
	struct dirty_gp *ggp = NULL, *hgp = NULL;
	struct dirty_gp_config cfg = { 0 };
	struct harvest H[NFRAC];
	struct guest G = { 0 };
	struct fake_agent fa = { .lfd = -1, .table_fd = -1 };
	uint32_t *hidx[2] = { NULL, NULL };	/* host pages: [1] is the random order */
	bool json = false, quick = false, tty = isatty(STDERR_FILENO);
	double gmib = 0, wmib = 0, hgib = 0, nreps = 0;
	int err = -ENOMEM;

	/* The caps keep page numbers inside the 32-bit orders. */
	const struct opt opts[] = {
		OPT_FLAG_("--json", &json),
		OPT_FLAG_("--quick", &quick),
		OPT_NUM_("--reps", &nreps, 1, 1000, true),
		OPT_NUM_("--guest-mib", &gmib, 1, 1 << 20, true),
		OPT_NUM_("--write-mib", &wmib, 1, 1 << 16, true),
		OPT_NUM_("--harvest-gib", &hgib, 1, 1024, true),
	};
	int rc = opts_parse("proto-bench", argc, argv, 1, opts, sizeof(opts) / sizeof(opts[0]), usage);

	if (rc)
		return rc == OPTS_HELP ? 0 : 2;
	reps = (int)(nreps ? nreps : quick ? 3 : 5);
	G.npages = (uint64_t)(gmib ? gmib : quick ? 256 : 4096) << (20 - PAGE_SHIFT);
	G.wpages = (uint64_t)(wmib ? wmib : quick ? 64 : 1024) << (20 - PAGE_SHIFT);
	hgib = hgib ? hgib : quick ? 2 : 16;
	dirty_proto_layout(G.npages, &G.lay);

	samples = calloc(2 * (size_t)reps, sizeof(double));
	G.plain = calloc(G.lay.dirty_words, 8);
	G.buf = mmap(NULL, G.wpages << PAGE_SHIFT, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!samples || !G.plain || G.buf == MAP_FAILED ||
	    make_orders(G.idx, G.npages, 0x70726f746f31ull) ||
	    make_orders(G.widx, G.wpages, 0x70726f746f32ull)) {
		fprintf(stderr, "proto-bench: out of memory\n");
		goto out;
	}
	madvise(G.buf, G.wpages << PAGE_SHIFT, MADV_NOHUGEPAGE);	/* 4 KiB pages */
	memset(G.buf, 0, G.wpages << PAGE_SHIFT);			/* faulted in, untimed */

	/* Guest side: a real region, opened by the guest library; the bench's
	 * own mapping of it runs the proto.h helpers on the very same bits. */
	cfg.len = G.npages << PAGE_SHIFT;
	if ((err = dirty_view_new(&gview)) ||
	    (err = dirty_view_add_region(gview, 0, cfg.len, PAGE_SIZE, 0)) ||
	    (err = dirty_gp_create(gview, &cfg, &ggp)) || (err = dirty_gp_track(ggp, 1)) ||
	    (err = dirty_guest_open_fd(dirty_gp_fd(ggp), &G.g))) {
		fprintf(stderr, "proto-bench: guest setup: %s%s\n", dirty_last_error(),
			dirty_guest_last_error());
		goto out;
	}
	/* The same region through the agent: a connected handle on the shared table. */
	if ((err = fake_agent_start(&fa, dirty_gp_fd(ggp), dirty_gp_size(ggp), G.npages)) ||
	    (err = dirty_guest_connect(fa.path, &G.ga)) || (err = fa.err)) {
		fprintf(stderr, "proto-bench: agent setup: %s%s\n", err == fa.err ? "stand-in agent failed: " : "",
			err == fa.err ? strerror(-err) : dirty_guest_last_error());
		goto out;
	}
	G.region = mmap(NULL, G.lay.region_size, PROT_READ | PROT_WRITE, MAP_SHARED, dirty_gp_fd(ggp), 0);
	if (G.region == MAP_FAILED) {
		err = -errno;
		fprintf(stderr, "proto-bench: cannot map the region: %s\n", strerror(errno));
		goto out;
	}
	G.dirty = (uint64_t *)(G.region + G.lay.dirty_off);
	G.summary = (uint64_t *)(G.region + G.lay.summary_off);
	G.pin = (uint64_t *)(G.region + G.lay.pin_off);
	for (int c = 0; c < NCASE * 2 && !err; c++) {
		if (tty)
			fprintf(stderr, "proto-bench: %s (%s)...\n", case_names[c / 2], orders[c % 2]);
		for (int rep = -1; rep < reps && !err; rep++) {
			double ns, in_ns = 0;

			/*
			 * The agent case runs each rep beside an in-process one
			 * (in alternating order): its ratio is the median of the
			 * pairs', so a busy machine slows both sides alike.
			 */
			if (c / 2 == C_MAPUNMAP_AGENT && rep & 1)
				err = guest_rep(&G, C_MAPUNMAP, c % 2, &in_ns);
			if (!err)
				err = guest_rep(&G, c / 2, c % 2, &ns);
			if (!err && c / 2 == C_MAPUNMAP_AGENT && !(rep & 1))
				err = guest_rep(&G, C_MAPUNMAP, c % 2, &in_ns);
			if (rep >= 0) {
				samples[rep] = ns;
				samples[reps + rep] = in_ns ? ns / in_ns : 0;
			}
		}
		if (!err)
			G.ns[c / 2][c % 2] = median(samples, reps);
		if (!err && c / 2 == C_MAPUNMAP_AGENT)
			G.agent_ratio[c % 2] = median(samples + reps, reps);
	}

	/* Host side. */
	cfg.len = (uint64_t)hgib << 30;
	if (!err && ((err = dirty_view_new(&hview)) ||
		     (err = dirty_view_add_region(hview, 0, cfg.len, PAGE_SIZE, 0)) ||
		     (err = dirty_gp_create(hview, &cfg, &hgp)) || (err = dirty_gp_track(hgp, 1))))
		fprintf(stderr, "proto-bench: host setup: %s\n", dirty_last_error());
	if (!err && (err = make_orders(hidx, cfg.len >> PAGE_SHIFT, 0x6861727665737400ull)))
		fprintf(stderr, "proto-bench: out of memory\n");
	for (int f = 0; f < NFRAC && !err; f++) {
		if (tty)
			fprintf(stderr, "proto-bench: harvest-%s...\n", frac_labels[f]);
		err = run_harvest(hview, hgp, hidx[1], cfg.len >> PAGE_SHIFT, fractions[f], &H[f]);
	}
	if (!err)
		print_results(&G, H, json, (long)hgib);
out:
	dirty_guest_close(G.ga);
	fake_agent_stop(&fa);
	dirty_guest_close(G.g);
	dirty_view_free(gview);		/* and the gp sources with them */
	dirty_view_free(hview);
	if (G.region && G.region != MAP_FAILED)
		munmap(G.region, G.lay.region_size);
	if (G.buf && G.buf != MAP_FAILED)
		munmap(G.buf, G.wpages << PAGE_SHIFT);
	for (int o = 0; o < 2; o++) {
		free(G.idx[o]);
		free(G.widx[o]);
		free(hidx[o]);
	}
	free(G.plain);
	free(samples);
	return err ? 1 : 0;
}
