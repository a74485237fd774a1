/* SPDX-License-Identifier: MIT */
/*
 * migration.c - one migration from the source's side: the callbacks
 * dirty_migrate() drives (send pages into the stream, end a round and
 * wait for the ACK, stop the NIC, stop the vCPUs and driver, resume),
 * the live progress line, and the page-by-page comparison afterwards.
 * The rounds themselves are libdirty's (migrate/migrate.c), not ours.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "clock.h"
#include "libdirty/proto.h"
#include "migration.h"
#include "stream.h"

struct run {
	const struct dm_run_config *cfg;
	struct dm_run_result *res;
	struct workload w;
	struct tracking t;
	struct dm_tx tx;
	double t0;
	char why[300];		/* a callback's own failure, if any */
};

static int op_send(void *opaque, uint64_t gpa, uint64_t len)
{
	struct run *r = opaque;
	int err;

	for (uint64_t off = 0; off < len; off += DM_PAGE) {
		void *slot;

		if ((err = dm_tx_page(&r->tx, gpa + off, &slot)))
			return err;
		wl_read_page(&r->w, gpa + off, slot);
	}
	return 0;
}

/*
 * Test faults on the guest's side of the protocol. The region: one
 * host-owned word changed (as a guest that scribbles over the header
 * would); the host must stop trusting the guest for good and fall back.
 */
static void inject(struct run *r)
{
	if (r->cfg->fault == DM_FAULT_AGENT_STOP) {
		nic_silence_agent(&r->w.nic);
	} else if (r->cfg->fault == DM_FAULT_CORRUPT_REGION && r->t.gp) {
		size_t len = DIRTY_PROTO_HEADER_SIZE;
		struct dirty_proto_header *h = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
						    dirty_gp_fd(r->t.gp), 0);

		if (h == MAP_FAILED)
			return;
		__atomic_store_n(&h->npages, h->npages + 1, __ATOMIC_RELAXED);
		munmap(h, len);
	}
	fprintf(stderr, "dirtymig: fault injected after pre-copy round %u: %s\n", r->cfg->fault_round,
		r->cfg->fault == DM_FAULT_AGENT_STOP ? "the guest's agent stopped" :
		"a host-owned word of the guest region overwritten");
}

int dm_fault_parse(const char *s, struct dm_run_config *cfg)
{
	const char *at = strchr(s, '@');
	char *end;
	unsigned long n;

	if (!at)
		return -EINVAL;
	if (!strncmp(s, "corrupt-region@", 15))
		cfg->fault = DM_FAULT_CORRUPT_REGION;
	else if (!strncmp(s, "agent-stop@", 11))
		cfg->fault = DM_FAULT_AGENT_STOP;
	else
		return -EINVAL;
	n = strtoul(at + 1, &end, 10);
	if (end == at + 1 || *end || n > 100000)
		return -EINVAL;
	cfg->fault_round = (unsigned int)n;
	return 0;
}

static int op_end_round(void *opaque, unsigned int round, int final)
{
	struct run *r = opaque;
	int err = dm_tx_end_round(&r->tx, round, final);

	/* Once, on the first attempt only: a retry migrates a guest that has the fault already. */
	if (!err && !final && r->cfg->fault && round == r->cfg->fault_round && r->res->attempts <= 1)
		inject(r);
	return err;
}

static int op_stop_device(void *opaque)
{
	return wl_stop_device(&((struct run *)opaque)->w);
}

static int op_stop_vcpus(void *opaque)
{
	return wl_stop_vcpus(&((struct run *)opaque)->w);
}

static int op_resume(void *opaque)
{
	return wl_start(&((struct run *)opaque)->w);
}

static void op_progress(void *opaque, const struct dirty_migrate_progress *p)
{
	struct run *r = opaque;
	struct dm_run_result *res = r->res;
	struct dirty_region_stats st = { 0 };
	struct dm_round_info *ri;

	dirty_view_region_stats(r->t.view, 0, &st);
	if (res->nrounds < DM_MAX_ROUNDS) {
		ri = &res->round[res->nrounds++];
		ri->round = p->round;
		ri->t_ms = (now_s() - r->t0) * 1000;
		ri->dirty_pages = p->dirty_pages;
		ri->bandwidth = p->bandwidth;
		ri->dirty_rate = st.dirty_rate;
		ri->expected_ms = p->expected_downtime_ms;
	}
	if (r->cfg->progress) {
		fprintf(stderr, "\r%-10s round %2u  dirty %8" PRIu64 " pages  link %7.1f MB/s  "
			"dirtying %8.0f pages/s  expected downtime %8.1f ms\033[K",
			dm_mode_name(r->cfg->mode), p->round, p->dirty_pages, p->bandwidth / 1e6,
			st.dirty_rate, p->expected_downtime_ms);
		fflush(stderr);
	}
}

static const struct dirty_migrate_ops ops = {
	.version = DIRTY_MIGRATE_OPS_VERSION,
	.send = op_send,
	.end_round = op_end_round,
	.stop_device = op_stop_device,
	.stop_vcpus = op_stop_vcpus,
	.resume = op_resume,
	.progress = op_progress,
};

/* Every page, hashed here and at the destination: count the differences. */
static int compare(struct run *r)
{
	struct dm_run_result *res = r->res;
	uint64_t n = r->w.npages, *theirs = malloc(n * sizeof(*theirs));
	int err;

	if (!theirs) {
		snprintf(res->error, sizeof(res->error), "out of memory for %" PRIu64 " page hashes", n);
		return -ENOMEM;
	}
	if ((err = dm_tx_hashes(&r->tx, theirs, n))) {
		snprintf(res->error, sizeof(res->error), "%s", r->tx.err);
		free(theirs);
		return err;
	}
	res->first_lost_gpa = UINT64_MAX;
	for (uint64_t p = 0; p < n; p++) {
		if (dm_page_hash(r->w.cpu + p * DM_PAGE) == theirs[p])
			continue;
		if (!res->lost_pages++)
			res->first_lost_gpa = p * DM_PAGE;
		if (p * DM_PAGE >= r->w.nic_base && p * DM_PAGE < r->w.nic_base + r->w.nic_bytes)
			res->lost_nic_pages++;
	}
	free(theirs);
	return 0;
}

static void collect(struct run *r)
{
	struct dm_run_result *res = r->res;
	struct nic *n = &r->w.nic;

	res->dma_packets = atomic_load(&n->packets);
	res->dma_drops = atomic_load(&n->drops);
	res->nic_errors = atomic_load(&n->bad);
	snprintf(res->nic_err, sizeof(res->nic_err), "%s", n->err);
	res->vcpu_writes = wl_vcpu_writes(&r->w);
	snprintf(res->vcpu, sizeof(res->vcpu), "%s", r->w.kvm ? "kvm" : "threads");
	snprintf(res->kvm_mode, sizeof(res->kvm_mode), "%s", vkvm_mode_name(r->w.kvm));
	res->gp_used = r->t.gp_in_view;
	if (r->t.gp) {
		struct dirty_gp_health h;

		/*
		 * Asked after the migration, when tracking is off (IDLE): what
		 * counts is whether the guest was trusted and stayed so.
		 */
		dirty_gp_health(r->t.gp, &h);
		res->gp_healthy = h.trust_gained > 0 && h.trust_lost == 0;
		if (!h.trust_gained)
			snprintf(res->gp_reason, sizeof(res->gp_reason), "never trusted: %s", h.reason);
		else if (h.trust_lost)
			snprintf(res->gp_reason, sizeof(res->gp_reason), "trust lost %" PRIu64 " times (last: %s)",
				 h.trust_lost, h.last_loss);
		res->gp_pinned_sent = h.pages_pinned_sent;
		res->gp_kept_back = h.pages_kept_back;
	}
}

int dm_run_migration(const struct dm_run_config *cfg, struct dm_run_result *res)
{
	struct run *r = calloc(1, sizeof(*r));
	char err[300] = "";
	int e;

	memset(res, 0, sizeof(*res));
	res->mode = cfg->mode;
	if (!r) {
		snprintf(res->error, sizeof(res->error), "out of memory");
		return res->err = -ENOMEM;
	}
	r->cfg = cfg;
	r->res = res;
	r->tx.c.fd = -1;
	if ((e = wl_create(&r->w, &cfg->wl, err, sizeof(err))) ||
	    (e = tracking_create(&r->t, cfg->mode, &r->w, cfg->pinned, err, sizeof(err))) ||
	    (e = wl_nic_attach(&r->w, dirty_gp_fd(r->t.gp), err, sizeof(err)))) {
		snprintf(res->error, sizeof(res->error), "%s", err);
		goto out;
	}
	res->npages = r->w.npages;
	if ((e = wl_start(&r->w))) {
		snprintf(res->error, sizeof(res->error), "cannot start the guest's threads: %s", strerror(-e));
		goto out;
	}
	/* Let the ring reach its steady state before the migration begins. */
	nanosleep(&(struct timespec){ 0, 200000000 }, NULL);
	for (unsigned int attempt = 0;; attempt++) {
		res->attempts = attempt + 1;
		if (attempt) {
			/*
			 * A fresh destination session starts with empty guest
			 * memory: what the last one acknowledged is not there,
			 * so everything goes again (the view kept the rest).
			 */
			useconds_t backoff = 200000u * attempt;

			dm_tx_close(&r->tx);
			fprintf(stderr, "dirtymig: %s attempt %u failed: %s; retrying in %u ms (attempt %u of %u)\n",
				dm_mode_name(cfg->mode), attempt, res->error, backoff / 1000, attempt + 1,
				cfg->retry + 1);
			usleep(backoff);
			if ((e = dirty_view_mark_all(r->t.view))) {
				snprintf(res->error, sizeof(res->error), "cannot mark the guest dirty for a retry: %s",
					 dirty_last_error());
				goto out;
			}
			r->why[0] = 0;
			res->error[0] = 0;
			res->still_dirty = 0;
			res->nrounds = 0;
			memset(&res->mig, 0, sizeof(res->mig));
		}
		if ((e = dm_tx_open(&r->tx, cfg->to, cfg->link_bytes_per_s, r->w.bytes,
				    dm_mode_name(cfg->mode), cfg->last ? DM_HELLO_LAST : 0))) {
			snprintf(res->error, sizeof(res->error), "%s", r->tx.err);
			if (attempt < cfg->retry)
				continue;
			goto out;
		}
		r->t0 = now_s();
		e = dirty_migrate(r->t.view, &cfg->mig, &ops, r, &res->mig);
		if (cfg->progress)
			fprintf(stderr, "\r\033[K");
		if (!e)
			break;
		{
			uint64_t left = 0;

			/* The driver kept every unacknowledged page dirty: show it. */
			dirty_view_count(r->t.view, &left, NULL);
			res->still_dirty = left;
			snprintf(res->error, sizeof(res->error), "%s%s%s; %" PRIu64 " pages stay dirty in the view for a retry",
				 r->tx.err[0] ? r->tx.err : r->why, r->tx.err[0] || r->why[0] ? " -- " : "",
				 dirty_last_error(), left);
		}
		if (attempt >= cfg->retry)
			goto out;
	}
	res->link_bytes_per_s = cfg->link_bytes_per_s > 0 ? cfg->link_bytes_per_s : res->mig.bandwidth;
	res->limit_ms = res->link_bytes_per_s > 0 ?
		(double)res->mig.final_bytes / res->link_bytes_per_s * 1000 : 0;
	if ((e = compare(r)))
		goto out;
	if ((e = dm_tx_bye(&r->tx)))
		snprintf(res->error, sizeof(res->error), "%s", r->tx.err);
out:
	wl_stop_device(&r->w);
	wl_stop_vcpus(&r->w);
	collect(r);
	dm_tx_close(&r->tx);
	nic_fini(&r->w.nic);		/* the driver lets go of the region first */
	tracking_destroy(&r->t);	/* then the sources (uffd on the CPU mapping) */
	wl_destroy(&r->w);		/* then the memory */
	free(r);
	return res->err = e;
}
