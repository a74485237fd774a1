/* SPDX-License-Identifier: MIT */
/*
 * report.c - output of dirtymig: a table for people, JSON for scripts
 * (one object per mode, one line each), the targets the demo is judged
 * against (reported, never enforced here), and a gnuplot figure of the
 * dirty pages left per round and the downtime per mode.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "report.h"
#include "stream.h"

void dm_report_setup(FILE *f, const struct dm_run_config *c)
{
	char link[64] = "uncapped";

	if (c->link_bytes_per_s > 0)
		snprintf(link, sizeof(link), "%.0f Mbit/s", c->link_bytes_per_s * 8 / 1e6);
	if (c->wl.vcpu_kind == WL_VCPU_KVM)
		fprintf(f, "guest %" PRIu64 " MiB; 1 KVM vCPU x %.0f pages/s (KVM dirty log, mode %s); NIC %.0f packets/s x %u B\n",
			c->wl.mem_bytes >> 20, c->wl.dirty_rate * c->wl.vcpus,
			dirty_kvm_mode_name((enum dirty_kvm_mode)c->wl.kvm_mode), c->wl.pkt_rate, c->wl.pkt_size);
	else
		fprintf(f, "guest %" PRIu64 " MiB; %u vCPU threads x %.0f pages/s (uffd-tracked); NIC %.0f packets/s x %u B\n",
			c->wl.mem_bytes >> 20, c->wl.vcpus, c->wl.dirty_rate, c->wl.pkt_rate, c->wl.pkt_size);
	fprintf(f, "into a %u-descriptor ring over a %" PRIu64 " MiB buffer pool (DMA mapping), driver completes\n"
		"with %s, pinned pages %s; link %s; downtime target %.0f ms; pre-copy caps %u rounds, %.1f s\n\n",
		c->wl.ring, c->wl.pool_bytes >> 20, nic_completion_name(c->wl.nic_completion),
		c->pinned == DIRTY_GP_PINNED_DEFER ? "deferred" : "sent every round",
		link, c->mig.downtime_target_ms,
		c->mig.max_rounds ? c->mig.max_rounds : 30, c->mig.max_time_s);
}

static const char *converged_name(const struct dirty_migrate_result *m)
{
	switch (m->stop) {
	case DIRTY_MIGRATE_CONVERGED: return "yes";
	case DIRTY_MIGRATE_HELD: return "no (held)";
	case DIRTY_MIGRATE_TIME_CAP: return "no (time)";
	default: return "no (cap)";
	}
}

void dm_report_table(FILE *f, const struct dm_run_result *r, int n)
{
	fprintf(f, "%-10s %-13s %9s %11s %9s %8s %6s %9s %10s %9s %11s %10s\n", "mode", "cpu log",
		"total ms", "downtime ms", "limit ms", "final ms", "rounds", "converged", "pages sent",
		"MiB sent", "final pages", "lost pages");
	for (int i = 0; i < n; i++) {
		const struct dm_run_result *x = &r[i];
		char log[32];

		if (x->err) {
			fprintf(f, "%-10s failed: %s\n", dm_mode_name(x->mode), x->error);
			continue;
		}
		snprintf(log, sizeof(log), "%s/%s", x->vcpu,
			 strcmp(x->vcpu, "kvm") ? "uffd" : x->kvm_mode);
		fprintf(f, "%-10s %-13s %9.1f %11.1f %9.1f %8.2f %6u %9s %10" PRIu64 " %9.1f %11" PRIu64 " %10" PRIu64 "\n",
			dm_mode_name(x->mode), log, x->mig.total_ms, x->mig.downtime_ms, x->limit_ms,
			x->mig.final_sync_ms, x->mig.rounds, converged_name(&x->mig), x->mig.pages_sent,
			(double)x->mig.bytes_sent / (1 << 20), x->mig.final_pages, x->lost_pages);
	}
	for (int i = 0; i < n; i++) {
		const struct dm_run_result *x = &r[i];

		if (x->err)
			continue;
		fprintf(f, "%s%-10s %" PRIu64 " packets DMA-written (%" PRIu64 " dropped, ring full), %" PRIu64
			" vCPU writes", i ? "" : "\n", dm_mode_name(x->mode), x->dma_packets, x->dma_drops,
			x->vcpu_writes);
		if (x->lost_pages)
			fprintf(f, "; lost %" PRIu64 " pages (%" PRIu64 " in the NIC's ring and pool), first at gpa %#" PRIx64,
				x->lost_pages, x->lost_nic_pages, x->first_lost_gpa);
		if (x->gp_used)
			fprintf(f, "; guest protocol %s%s%s", x->gp_healthy ? "healthy" : "UNHEALTHY: ",
				x->gp_healthy ? "" : x->gp_reason, "");
		if (x->nic_errors)
			fprintf(f, "; NIC errors %" PRIu64 ": %s", x->nic_errors, x->nic_err);
		fputc('\n', f);
	}
}

static const struct dm_run_result *find(const struct dm_run_result *r, int n, enum dm_mode m)
{
	for (int i = 0; i < n; i++)
		if (r[i].mode == m && !r[i].err)
			return &r[i];
	return NULL;
}

static const char *met(int ok)
{
	return ok ? "met" : "NOT met";
}

void dm_report_targets(FILE *f, const struct dm_run_result *r, int n)
{
	const struct dm_run_result *ld = find(r, n, DM_MODE_LIBDIRTY);
	const struct dm_run_result *co = find(r, n, DM_MODE_CPU_ONLY);
	const struct dm_run_result *am = find(r, n, DM_MODE_ALL_MAPPED);

	if (ld || co || am)
		fputc('\n', f);
	if (ld && am)
		fprintf(f, "target libdirty downtime <= 1/10 of all-mapped's: %.1f ms vs %.1f ms (%.3fx) -- %s\n",
			ld->mig.downtime_ms, am->mig.downtime_ms,
			am->mig.downtime_ms > 0 ? ld->mig.downtime_ms / am->mig.downtime_ms : 0,
			met(ld->mig.downtime_ms * 10 <= am->mig.downtime_ms));
	if (ld) {
		double bound = 1.5 * ld->limit_ms + 5;

		fprintf(f, "target libdirty downtime <= 1.5 x limit + 5 ms: %.1f ms <= %.1f ms -- %s\n",
			ld->mig.downtime_ms, bound, met(ld->mig.downtime_ms <= bound));
		fprintf(f, "target libdirty lost pages = 0: %" PRIu64 " -- %s\n", ld->lost_pages,
			met(ld->lost_pages == 0));
	}
	if (co)
		fprintf(f, "target cpu-only lost pages > 0 (DMA writes the CPU log never sees): %" PRIu64 " -- %s\n",
			co->lost_pages, met(co->lost_pages > 0));
	if (am)
		fprintf(f, "check all-mapped lost pages = 0: %" PRIu64 " -- %s\n", am->lost_pages,
			met(am->lost_pages == 0));
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

void dm_report_json(FILE *f, const struct dm_run_result *r, int n,
		    const struct dm_run_config *cfg)
{
	for (int i = 0; i < n; i++) {
		const struct dm_run_result *x = &r[i];

		fprintf(f, "{\"mode\":\"%s\",\"vcpu\":\"%s\",\"kvm_mode\":\"%s\",\"nic_completion\":\"%s\","
			"\"pinned\":\"%s\",\"ok\":%s,\"error\":", dm_mode_name(x->mode), x->vcpu, x->kvm_mode,
			nic_completion_name(cfg->wl.nic_completion),
			cfg->pinned == DIRTY_GP_PINNED_DEFER ? "defer" : "send", x->err ? "false" : "true");
		if (x->err)
			json_str(f, x->error);
		else
			fputs("null", f);
		fprintf(f, ",\"total_ms\":%.3f,\"downtime_ms\":%.3f,\"final_sync_ms\":%.3f,"
			"\"expected_downtime_ms\":%.3f,"
			"\"rounds\":%u,\"converged\":%s,\"stop\":\"%s\",\"pages_sent\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
			",\"final_pages\":%" PRIu64 ",\"final_bytes\":%" PRIu64 ",\"lost_pages\":%" PRIu64
			",\"lost_nic_pages\":%" PRIu64 ",\"link_bytes_per_s\":%.0f,\"limit_ms\":%.3f"
			",\"bandwidth\":%.0f,\"guest_bytes\":%" PRIu64 ",\"dma_packets\":%" PRIu64
			",\"dma_drops\":%" PRIu64 ",\"vcpu_writes\":%" PRIu64 ",\"nic_errors\":%" PRIu64
			",\"still_dirty\":%" PRIu64 ",\"attempts\":%u,\"downtime_target_ms\":%.3f"
			",\"gp_pinned_sent\":%" PRIu64 ",\"gp_kept_back\":%" PRIu64,
			x->mig.total_ms, x->mig.downtime_ms, x->mig.final_sync_ms,
			x->mig.expected_downtime_ms, x->mig.rounds,
			x->mig.converged ? "true" : "false",
			x->mig.stop == DIRTY_MIGRATE_HELD ? "held" : x->mig.stop == DIRTY_MIGRATE_TIME_CAP ?
			"time-cap" : x->mig.stop == DIRTY_MIGRATE_ROUND_CAP ? "round-cap" : "converged", x->mig.pages_sent, x->mig.bytes_sent,
			x->mig.final_pages, x->mig.final_bytes, x->lost_pages, x->lost_nic_pages,
			x->link_bytes_per_s, x->limit_ms, x->mig.bandwidth, cfg->wl.mem_bytes,
			x->dma_packets, x->dma_drops, x->vcpu_writes, x->nic_errors, x->still_dirty,
			x->attempts, cfg->mig.downtime_target_ms, x->gp_pinned_sent, x->gp_kept_back);
		if (x->gp_used) {
			fprintf(f, ",\"gp_healthy\":%s,\"gp_reason\":", x->gp_healthy ? "true" : "false");
			json_str(f, x->gp_healthy ? "" : x->gp_reason);
		}
		fputs(",\"round_dirty_pages\":[", f);
		for (unsigned int k = 0; k < x->nrounds; k++)
			fprintf(f, "%s%" PRIu64, k ? "," : "", x->round[k].dirty_pages);
		fputs("],\"round_expected_ms\":[", f);
		for (unsigned int k = 0; k < x->nrounds; k++)
			fprintf(f, "%s%.3f", k ? "," : "", x->round[k].expected_ms);
		fputs("]}\n", f);
	}
}

/* gnuplot on PATH? */
static int have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char buf[4096];

	while (path && *path) {
		const char *end = strchr(path, ':');
		size_t len = end ? (size_t)(end - path) : strlen(path);

		snprintf(buf, sizeof(buf), "%.*s/gnuplot", (int)len, path);
		if (len && !access(buf, X_OK))
			return 1;
		path = end ? end + 1 : NULL;
	}
	return 0;
}

int dm_report_plot(const char *file, const struct dm_run_result *r, int n)
{
	const char *ext = strrchr(file, '.');
	const char *term;
	FILE *g;
	int rc;

	if (ext && !strcmp(ext, ".svg"))
		term = "svg size 1000,480 dynamic background rgb 'white'";
	else if (ext && !strcmp(ext, ".png"))
		term = "pngcairo size 1000,480";
	else {
		fprintf(stderr, "dirtymig: --plot %s: the file name must end in .svg or .png\n", file);
		return -EINVAL;
	}
	if (strpbrk(file, "'\n")) {
		fprintf(stderr, "dirtymig: --plot: a file name with a quote or newline is not supported\n");
		return -EINVAL;
	}
	if (!have_gnuplot()) {
		fprintf(stderr, "dirtymig: --plot %s: gnuplot is not installed, so no figure was drawn "
			"(Debian: apt-get install gnuplot-nox); the table and --json carry the same numbers\n", file);
		return -ENOENT;
	}
	g = popen("gnuplot", "w");
	if (!g) {
		fprintf(stderr, "dirtymig: --plot: cannot run gnuplot: %s\n", strerror(errno));
		return -errno;
	}
	for (int i = 0; i < n; i++) {
		fprintf(g, "$m%d << EOD\n", i);
		for (unsigned int k = 0; k < r[i].nrounds; k++)
			fprintf(g, "%u %" PRIu64 "\n", r[i].round[k].round, r[i].round[k].dirty_pages + 1);
		fprintf(g, "EOD\n");
	}
	fprintf(g, "$dt << EOD\n");
	for (int i = 0; i < n; i++)
		fprintf(g, "%s %.3f %.3f\n", dm_mode_name(r[i].mode),
			r[i].err ? 0 : r[i].mig.downtime_ms, r[i].err ? 0 : r[i].limit_ms);
	fprintf(g, "EOD\n"
		"set terminal %s\nset output '%s'\n"
		"set multiplot layout 1,2 title 'dirtymig: pre-copy and downtime per tracking mode'\n"
		"set title 'dirty pages left after each pre-copy round'\n"
		"set xlabel 'round'\nset ylabel 'pages (+1)'\nset logscale y\nset xtics 1\nset key bottom left\n"
		"plot ", term, file);
	for (int i = 0; i < n; i++)
		fprintf(g, "%s$m%d using 1:2 with linespoints lw 2 title '%s'", i ? ", " : "", i,
			dm_mode_name(r[i].mode));
	fprintf(g, "\nset title 'downtime (ms, log scale)'\nset xlabel ''\nset ylabel 'ms'\n"
		"set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8\n"
		"set yrange [0.1:*]\nset xtics autofreq\nset key top left\n"
		"plot $dt using 2:xtic(1) title 'measured downtime', '' using 3 title 'limit (final bytes / link)'\n"
		"unset multiplot\n");
	rc = pclose(g);
	if (rc) {
		fprintf(stderr, "dirtymig: --plot %s: gnuplot failed (status %d)\n", file, rc);
		return -EIO;
	}
	return 0;
}
