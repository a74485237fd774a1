/* SPDX-License-Identifier: MIT */
/*
 * main.c - the dirtymig command line: `dest` (a destination on a TCP
 * port), `source` (migrate to one), and `demo` (both on loopback, the
 * destination forked, every tracking mode on the same workload, then the
 * table and the targets). Option parsing, defaults and exit codes live
 * here; everything else is in the files named for it.
 *
 * Exit: 0 done; 1 a migration failed, a stream was refused, or a mode
 * that must be exact (libdirty, all-mapped) lost pages; 2 usage; 77 the
 * kernel lacks what the harness needs (userfaultfd WP-async with
 * PAGEMAP_SCAN, io_uring), said on stderr.
 */
#include <errno.h>
#include <liburing.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "conn.h"
#include "dest.h"
#include "libdirty.h"
#include "migration.h"
#include "opts.h"
#include "report.h"
#include "stream.h"

#define EXIT_USAGE 2
#define EXIT_SKIP 77

struct opts {
	const char *cmd;
	const char *listen, *to, *plot;
	enum dm_mode modes[DM_NMODES];
	int nmodes;
	bool json, quick, quiet, keep_going;
	struct dm_dest_opts fault;	/* dest (and demo's): --drop-at, test only */
	/* Set explicitly? --quick only changes what was not given. */
	bool set_mem, set_pool, set_ring, set_rate, set_pkt, set_time, set_target;
	double mem_mib, pool_mib, link_mbps;
	struct dm_run_config run;
};

static void usage(FILE *f)
{
	fputs(
"usage: dirtymig demo   [options]            source and destination on loopback\n"
"       dirtymig source --to HOST:PORT [options]\n"
"       dirtymig dest   --listen HOST:PORT [--keep-going] [--quiet]\n"
"                       [--drop-after-pages N]\n"
"       dirtymig --help\n\n"
"The downtime harness: a live migration of a guest with a simulated\n"
"pass-through NIC, through libdirty's pre-copy driver (dirty_migrate), over\n"
"TCP with io_uring, ending with a page-by-page hash comparison.\n\n"
"Guest: RAM is a memfd mapped twice. vCPU threads write the CPU mapping at a\n"
"set rate (tracked by the userfaultfd source); a NIC device thread DMA-writes\n"
"packets through the second mapping into RX buffers its guest driver maps\n"
"FROM_DEVICE through the guest bitmap protocol, completing each with\n"
"sync_for_cpu + unmap and posting a fresh buffer from its pool.\n\n"
"Tracking modes (--tracking):\n"
"  libdirty    the merged view: uffd (vCPU writes) + guest protocol (DMA)\n"
"  cpu-only    uffd alone, as a VMM trusting KVM's dirty log: loses DMA writes\n"
"  all-mapped  uffd + every DMA-mappable page (all RAM) dirty at every sync, as\n"
"              VFIO type1 reports without a vIOMMU: exact, never converges\n"
"  all         the three, one migration each (demo's default; source: libdirty)\n\n"
"Options (--opt VALUE or --opt=VALUE):\n"
"  --tracking MODES   libdirty | cpu-only | all-mapped | all, or a list:\n"
"                     --tracking=libdirty,cpu-only\n"
"  --vcpu kvm|threads kvm: one vCPU of a real KVM guest (support/kvm payload)\n"
"                     stamps pages, tracked by KVM's dirty log; threads:\n"
"                     host threads tracked by userfaultfd (default kvm\n"
"                     when /dev/kvm works)\n"
"  --kvm-mode MODE    with --vcpu=kvm, KVM's dirty log mode: auto (ring if the\n"
"                     kernel has it, else clear-log, else bitmap), bitmap,\n"
"                     clear-log (QEMU's default without a ring) or ring; a\n"
"                     mode the kernel lacks exits 77 naming the capability\n"
"  --mem-mib N        guest RAM (default 256)\n"
"  --vcpus N          vCPU writer threads (default 2)\n"
"  --dirty-rate N     pages each vCPU writes per second (default 2000)\n"
"  --pkt-rate N       packets the NIC receives per second (default 5000)\n"
"  --pkt-size N       bytes per packet, 64..4096 (default 1500)\n"
"  --ring N           RX descriptors (default 256)\n"
"  --pool-mib N       RX buffer pool the driver cycles through (default 8)\n"
"  --nic-completion C how the NIC's driver finishes a received buffer:\n"
"                     sync+unmap (default: sync_for_cpu, then unmap), unmap\n"
"                     (unmap alone), sync (sync_for_cpu and recycle the\n"
"                     buffer still mapped, as a page pool does)\n"
"  --pinned P         the guest protocol's pinned pages: send (every round,\n"
"                     default) or defer (kept back until unpinned or the stop)\n"
"  --link-mbps N      link cap in Mbit/s, a token bucket in the sender;\n"
"                     0 = uncapped (default 1000)\n"
"  --downtime-ms N    stop pre-copy when the expected downtime is under N (30)\n"
"  --max-rounds N     pre-copy round cap (default 30)\n"
"  --max-time S       pre-copy time cap in seconds (default 6)\n"
"  --seed N           workload seed (default 1); same seed, same workload\n"
"  --quick            a tiny guest for tests: 32 MiB, pool 2 MiB, ring 64,\n"
"                     1000 pages/s, 3000 packets/s, 1 s cap, 5 ms target\n"
"                     (unless given)\n"
"  --json             one JSON object per mode on stdout instead of the table\n"
"  --plot FILE        draw FILE.svg or FILE.png with gnuplot (if installed):\n"
"                     dirty pages per round and downtime per mode\n"
"  --quiet            no live progress line\n"
"  --retry N          source: after a failed attempt (a dropped connection, a\n"
"                     destination not up yet), reconnect and migrate again, up\n"
"                     to N more times, 200 ms x attempt apart; the guest keeps\n"
"                     running and every page is sent again (default 0)\n"
"  --keep-going       dest: after a refused stream, serve the next one\n"
"  --drop-at WHERE    dest (and demo), for tests: reset the first connection\n"
"                     at WHERE, then serve the next one: pages:N (once N\n"
"                     pages arrived), round:N (at round N's marker, before\n"
"                     acknowledging it), final (at the final marker: the\n"
"                     source's vCPUs are stopped); --drop-after-pages N is\n"
"                     pages:N\n"
"  --fault F@ROUND    source, for tests: after pre-copy round ROUND (first\n"
"                     attempt), corrupt-region (a host-owned word of the guest\n"
"                     region overwritten) or agent-stop (the guest's protocol\n"
"                     agent stops: no heartbeat); the migration must still\n"
"                     lose nothing (the host falls back to all pages dirty)\n\n"
"Table columns: total ms (whole migration), downtime ms (vCPU stop to the\n"
"destination's ACK of the final round), limit ms (final bytes / link rate:\n"
"the physical floor), rounds (pre-copy, first full pass included),\n"
"converged (expected downtime under target; else why it stopped: a round\n"
"or time cap, or held: only pages a source holds for the stop, pinned DMA\n"
"buffers, were over it), pages / MiB sent,\n"
"cpu log (what tracked the vCPU: kvm/<mode> or threads/uffd),\n"
"final pages (sent while stopped), lost pages (final contents differ).\n"
"JSON keys: mode vcpu kvm_mode nic_completion pinned ok error total_ms downtime_ms final_sync_ms\n"
"expected_downtime_ms rounds\n"
"converged stop pages_sent bytes_sent final_pages final_bytes lost_pages\n"
"lost_nic_pages link_bytes_per_s limit_ms bandwidth guest_bytes dma_packets\n"
"dma_drops vcpu_writes nic_errors still_dirty attempts downtime_target_ms\n"
"gp_pinned_sent gp_kept_back (guest-protocol statistics, libdirty mode)\n"
"round_dirty_pages round_expected_ms.\n\n"
"dest prints \"dirtymig dest: listening on IP:PORT\" (port 0 picks one), serves\n"
"migrations until one flagged last, and refuses a malformed or truncated\n"
"stream or another version with a message and exit 1.\n\n"
"Exit: 0 done; 1 a migration failed, a stream was refused, or libdirty or\n"
"all-mapped lost pages; 2 usage; 77 the kernel lacks userfaultfd WP-async +\n"
"PAGEMAP_SCAN or io_uring (the reason on stderr).\n", f);
}

static int bad_arg(const char *a, const char *why)
{
	fprintf(stderr, "dirtymig: bad argument '%s'%s%s\n\n", a, why ? ": " : "", why ? why : "");
	usage(stderr);
	return EXIT_USAGE;
}

static void defaults(struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->mem_mib = 256;
	o->pool_mib = 8;
	o->link_mbps = 1000;
	o->run.wl.vcpus = 2;
	o->run.wl.dirty_rate = 2000;
	o->run.wl.pkt_rate = 5000;
	o->run.wl.pkt_size = 1500;
	o->run.wl.ring = 256;
	o->run.wl.seed = 1;
	o->run.mig.downtime_target_ms = 30;
	o->run.mig.max_rounds = 30;
	o->run.mig.max_time_s = 6;
}

/* "all", one mode, or a comma-separated list of modes. */
static int parse_tracking(struct opts *o, const char *v)
{
	char buf[128], *save = NULL;

	o->nmodes = 0;
	if (!strcmp(v, "all")) {
		for (int i = 0; i < DM_NMODES; i++)
			o->modes[i] = (enum dm_mode)i;
		o->nmodes = DM_NMODES;
		return 0;
	}
	snprintf(buf, sizeof(buf), "%s", v);
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (o->nmodes == DM_NMODES || dm_mode_parse(t, &o->modes[o->nmodes]))
			return -EINVAL;
		o->nmodes++;
	}
	return o->nmodes ? 0 : -EINVAL;
}

/* One option at argv[*i]; "--opt=value" or "--opt value". */
static int parse_one(struct opts *o, int argc, char **argv, int *i)
{
	char name[64], padded[72];
	const char *a = argv[*i], *eq = strchr(a, '='), *v;
	double x;

	if (strncmp(a, "--", 2))
		return bad_arg(a, "options start with --");
	snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
	/* Flags first: they take no value. */
	if (!strcmp(name, "--json")) { o->json = true; return 0; }
	if (!strcmp(name, "--quick")) { o->quick = true; return 0; }
	if (!strcmp(name, "--quiet")) { o->quiet = true; return 0; }
	if (!strcmp(name, "--keep-going")) { o->keep_going = true; return 0; }
	/* Unknown before reading a value: `--bogus x` must not eat x silently. */
	snprintf(padded, sizeof(padded), " %s ", name);
	if (!strstr(" --listen --to --plot --tracking --vcpu --kvm-mode --nic-completion --pinned --mem-mib --pool-mib --vcpus --dirty-rate"
		    " --pkt-rate --pkt-size --ring --link-mbps --downtime-ms --max-rounds --max-time --seed"
		    " --retry --drop-after-pages --drop-at --fault ",
		    padded))
		return bad_arg(a, "unknown option");
	v = eq ? eq + 1 : *i + 1 < argc ? argv[++*i] : NULL;
	if (!v)
		return bad_arg(a, "needs a value");
	if (!strcmp(name, "--listen")) { o->listen = v; return 0; }
	if (!strcmp(name, "--to")) { o->to = v; return 0; }
	if (!strcmp(name, "--plot")) { o->plot = v; return 0; }
	if (!strcmp(name, "--fault"))
		return dm_fault_parse(v, &o->run) ? bad_arg(v, "--fault is corrupt-region@ROUND or agent-stop@ROUND") : 0;
	if (!strcmp(name, "--drop-at"))
		return dm_dest_parse_drop(v, &o->fault) ? bad_arg(v, "--drop-at is pages:N, round:N or final") : 0;
	if (!strcmp(name, "--tracking"))
		return parse_tracking(o, v) ? bad_arg(v, "--tracking is libdirty, cpu-only, all-mapped, a comma-separated list of them, or all") : 0;
	if (!strcmp(name, "--vcpu")) {
		if (!strcmp(v, "threads")) { o->run.wl.vcpu_kind = WL_VCPU_THREADS; return 0; }
		if (!strcmp(v, "kvm")) { o->run.wl.vcpu_kind = WL_VCPU_KVM; return 0; }
		return bad_arg(v, "--vcpu is kvm or threads");
	}
	if (!strcmp(name, "--nic-completion")) {
		for (int c = NIC_SYNC_UNMAP; c <= NIC_SYNC; c++)
			if (!strcmp(v, nic_completion_name(c))) {
				o->run.wl.nic_completion = c;
				return 0;
			}
		return bad_arg(v, "--nic-completion is sync+unmap, unmap or sync");
	}
	if (!strcmp(name, "--pinned")) {
		if (!strcmp(v, "send")) { o->run.pinned = DIRTY_GP_PINNED_SEND; return 0; }
		if (!strcmp(v, "defer")) { o->run.pinned = DIRTY_GP_PINNED_DEFER; return 0; }
		return bad_arg(v, "--pinned is send or defer");
	}
	if (!strcmp(name, "--kvm-mode")) {
		static const enum dirty_kvm_mode m[] = { DIRTY_KVM_AUTO, DIRTY_KVM_BITMAP,
							 DIRTY_KVM_CLEAR_LOG, DIRTY_KVM_RING };

		for (size_t k = 0; k < sizeof(m) / sizeof(m[0]); k++)
			if (!strcmp(v, dirty_kvm_mode_name(m[k]))) {
				o->run.wl.kvm_mode = m[k];
				return 0;
			}
		return bad_arg(v, "--kvm-mode is auto, bitmap, clear-log or ring");
	}
#define NUMOPT(opt, lo, hi, dst, flag) \
	if (!strcmp(name, opt)) { \
		if (opts_number(v, lo, hi, false, &x)) \
			return bad_arg(v, opt " is out of range (" #lo ".." #hi ")"); \
		dst; flag; return 0; \
	}
	NUMOPT("--mem-mib", 4, 1 << 20, o->mem_mib = x, o->set_mem = true)
	NUMOPT("--pool-mib", 0.0625, 1 << 16, o->pool_mib = x, o->set_pool = true)
	NUMOPT("--vcpus", 0, WL_MAX_VCPUS, o->run.wl.vcpus = (unsigned int)x, (void)0)
	NUMOPT("--dirty-rate", 0, 1e8, o->run.wl.dirty_rate = x, o->set_rate = true)
	NUMOPT("--pkt-rate", 0, 1e8, o->run.wl.pkt_rate = x, o->set_pkt = true)
	NUMOPT("--pkt-size", 64, 4096, o->run.wl.pkt_size = (unsigned int)x, (void)0)
	NUMOPT("--ring", 1, 1 << 16, o->run.wl.ring = (unsigned int)x, o->set_ring = true)
	NUMOPT("--link-mbps", 0, 1e6, o->link_mbps = x, (void)0)
	NUMOPT("--downtime-ms", 0, 1e6, o->run.mig.downtime_target_ms = x, o->set_target = true)
	NUMOPT("--max-rounds", 1, 100000, o->run.mig.max_rounds = (unsigned int)x, (void)0)
	NUMOPT("--max-time", 0, 1e6, o->run.mig.max_time_s = x, o->set_time = true)
	NUMOPT("--seed", 0, 1e18, o->run.wl.seed = (uint64_t)x, (void)0)
	NUMOPT("--retry", 0, 1000, o->run.retry = (unsigned int)x, (void)0)
	NUMOPT("--drop-after-pages", 1, 1e15, o->fault.drop = DM_DROP_PAGES, o->fault.drop_arg = (uint64_t)x)
#undef NUMOPT
	return bad_arg(a, "unknown option");
}

static void finish(struct opts *o)
{
	if (o->quick) {
		if (!o->set_mem)
			o->mem_mib = 32;
		if (!o->set_pool)
			o->pool_mib = 2;
		if (!o->set_ring)
			o->run.wl.ring = 64;
		if (!o->set_rate)
			o->run.wl.dirty_rate = 1000;
		if (!o->set_pkt)
			o->run.wl.pkt_rate = 3000;
		if (!o->set_time)
			o->run.mig.max_time_s = 1;
		/* Low enough that pre-copy goes on past the first pass. */
		if (!o->set_target)
			o->run.mig.downtime_target_ms = 5;
	}
	o->run.wl.mem_bytes = (uint64_t)(o->mem_mib * (1 << 20)) / WL_PAGE * WL_PAGE;
	o->run.wl.pool_bytes = (uint64_t)(o->pool_mib * (1 << 20)) / WL_PAGE * WL_PAGE;
	o->run.link_bytes_per_s = o->link_mbps * 1e6 / 8;
	o->run.progress = !o->quiet && isatty(STDERR_FILENO);
}

/* 0, or EXIT_SKIP with the reason on stderr. */
static int probe(struct opts *o, bool uffd)
{
	struct io_uring ring;
	int err = io_uring_queue_init(2, &ring, 0);

	if (err) {
		fprintf(stderr, "dirtymig: io_uring is not available here: %s\n", strerror(-err));
		return EXIT_SKIP;
	}
	io_uring_queue_exit(&ring);
	if (uffd) {	/* the vCPU kind: kvm when /dev/kvm works, unless told */
		struct wl_config *wl = &o->run.wl;
		char why[200];
		int k = wl->vcpu_kind == WL_VCPU_THREADS ? -1 : vkvm_usable(why, sizeof(why));

		if (wl->vcpu_kind == WL_VCPU_KVM && k) {
			fprintf(stderr, "dirtymig: --vcpu=kvm: %s\n", why);
			return EXIT_SKIP;
		}
		if (wl->vcpu_kind == WL_VCPU_AUTO && !o->quiet)
			fprintf(stderr, "dirtymig: vCPUs: %s\n", k ? "host threads (uffd-tracked); KVM unusable" :
				"a KVM guest (KVM dirty log)");
		if (k && wl->vcpu_kind == WL_VCPU_AUTO)
			fprintf(stderr, "dirtymig: (%s)\n", why);
		wl->vcpu_kind = k ? WL_VCPU_THREADS : WL_VCPU_KVM;
		if (wl->vcpu_kind == WL_VCPU_THREADS && wl->kvm_mode != DIRTY_KVM_AUTO) {
			fprintf(stderr, "dirtymig: --kvm-mode needs --vcpu=kvm (the vCPUs are host threads here)\n");
			return EXIT_USAGE;
		}
		if (wl->vcpu_kind == WL_VCPU_KVM && vkvm_mode_supported(wl->kvm_mode, why, sizeof(why))) {
			fprintf(stderr, "dirtymig: %s\n", why);
			return EXIT_SKIP;
		}
	}
	if (uffd && o->run.wl.vcpu_kind == WL_VCPU_THREADS && dirty_uffd_probe() != 0) {
		fprintf(stderr, "dirtymig: %s\n", dirty_last_error());
		return EXIT_SKIP;
	}
	return 0;
}

static int cmd_dest(struct opts *o)
{
	struct dm_dest_opts d = o->fault;
	char bound[128], err[300];
	int lfd, rc;

	d.keep_going = o->keep_going;
	d.quiet = o->quiet;
	if (!o->listen)
		return bad_arg("dest", "--listen HOST:PORT is required");
	if ((rc = probe(o, false)))
		return rc;
	if (dm_listen(o->listen, &lfd, bound, sizeof(bound), err, sizeof(err))) {
		fprintf(stderr, "dirtymig dest: %s\n", err);
		return 1;
	}
	printf("dirtymig dest: listening on %s\n", bound);
	fflush(stdout);
	rc = dm_dest_serve(lfd, &d);
	close(lfd);
	return rc;
}

/* Run every requested mode against `to`; results into r[]. */
static void run_modes(struct opts *o, const char *to, struct dm_run_result *r)
{
	for (int i = 0; i < o->nmodes; i++) {
		struct dm_run_config c = o->run;

		c.to = to;
		c.mode = o->modes[i];
		c.last = i == o->nmodes - 1;
		if (dm_run_migration(&c, &r[i]))
			fprintf(stderr, "dirtymig: %s migration failed: %s\n", dm_mode_name(c.mode), r[i].error);
	}
}

static int verdict(const struct dm_run_result *r, int n)
{
	for (int i = 0; i < n; i++)
		if (r[i].err || (r[i].mode != DM_MODE_CPU_ONLY && r[i].lost_pages))
			return 1;
	return 0;
}

static void output(struct opts *o, const struct dm_run_result *r, double secs)
{
	if (o->json) {
		dm_report_json(stdout, r, o->nmodes, &o->run);
	} else {
		dm_report_setup(stdout, &o->run);
		dm_report_table(stdout, r, o->nmodes);
		dm_report_targets(stdout, r, o->nmodes);
		printf("\n%d migration%s in %.1f s\n", o->nmodes, o->nmodes > 1 ? "s" : "", secs);
	}
	fflush(stdout);
	if (o->plot)
		dm_report_plot(o->plot, r, o->nmodes);
}

static int cmd_source(struct opts *o)
{
	struct dm_run_result *r;
	uint64_t t0 = now_ns();
	int rc;

	if (!o->to)
		return bad_arg("source", "--to HOST:PORT is required");
	if ((rc = probe(o, true)))
		return rc;
	if (!(r = calloc(DM_NMODES, sizeof(*r))))
		return 1;
	run_modes(o, o->to, r);
	output(o, r, (double)(now_ns() - t0) * 1e-9);
	rc = verdict(r, o->nmodes);
	free(r);
	return rc;
}

/* Wait for the forked destination; after a failure it may wait forever. */
static int reap_dest(pid_t pid, bool ok)
{
	int st = 0;

	for (int i = 0; i < (ok ? 500 : 0); i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	return ok ? 1 : 0;
}

static int cmd_demo(struct opts *o)
{
	struct dm_run_result *r;
	char bound[128], err[300];
	uint64_t t0 = now_ns();
	pid_t parent = getpid(), pid;
	int lfd, rc, drc;

	if ((rc = probe(o, true)))
		return rc;
	if (dm_listen("127.0.0.1:0", &lfd, bound, sizeof(bound), err, sizeof(err))) {
		fprintf(stderr, "dirtymig demo: %s\n", err);
		return 1;
	}
	/* Fork before any thread or libdirty object exists: nothing to carry over. */
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "dirtymig demo: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		/* --drop-at reaches the forked destination too: faults in a demo. */
		struct dm_dest_opts d = o->fault;

		d.keep_going = true;
		d.quiet = true;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		_exit(dm_dest_serve(lfd, &d));
	}
	close(lfd);
	if (!(r = calloc(DM_NMODES, sizeof(*r)))) {
		reap_dest(pid, false);
		return 1;
	}
	if (!o->json && o->run.progress)
		fprintf(stderr, "dirtymig demo: destination (pid %d) on %s\n", (int)pid, bound);
	run_modes(o, bound, r);
	rc = verdict(r, o->nmodes);
	drc = reap_dest(pid, rc == 0);
	/*
	 * A failed attempt leaves the destination a truncated stream, which it
	 * refuses (and counts); the retry is what the verdict judged.
	 */
	for (int i = 0; i < o->nmodes; i++)
		if (r[i].attempts > 1)
			drc = 0;
	if (rc == 0 && drc)
		fprintf(stderr, "dirtymig demo: the destination exited with status %d\n", drc);
	output(o, r, (double)(now_ns() - t0) * 1e-9);
	free(r);
	return rc || drc ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	int rc;

	defaults(&o);
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	o.cmd = argv[1];
	if (!strcmp(o.cmd, "--help") || !strcmp(o.cmd, "-h") || !strcmp(o.cmd, "help")) {
		usage(stdout);
		return 0;
	}
	if (strcmp(o.cmd, "demo") && strcmp(o.cmd, "source") && strcmp(o.cmd, "dest"))
		return bad_arg(o.cmd, "the command is demo, source or dest");
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		}
		if ((rc = parse_one(&o, argc, argv, &i)))
			return rc;
	}
	if (!o.nmodes)
		parse_tracking(&o, strcmp(o.cmd, "demo") ? "libdirty" : "all");
	finish(&o);
	if (strcmp(o.cmd, "dest")) {
		char why[200];

		if (wl_check(&o.run.wl, why, sizeof(why))) {
			fprintf(stderr, "dirtymig: %s\n", why);
			return EXIT_USAGE;
		}
	}
	signal(SIGPIPE, SIG_IGN);	/* a vanished peer is an error return, not a death */
	if (!strcmp(o.cmd, "dest"))
		return cmd_dest(&o);
	return !strcmp(o.cmd, "source") ? cmd_source(&o) : cmd_demo(&o);
}
