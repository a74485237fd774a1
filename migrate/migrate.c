/* SPDX-License-Identifier: MIT */
/*
 * migrate.c - the pre-copy migration driver: rounds of sync, claim and
 * send through the caller's callbacks, the stop decision, the stop
 * sequence, and the undo on failure. Uses only the public view API; owns
 * nothing but its bookkeeping of what was sent and not yet acknowledged.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "fault.h"
#include "libdirty/migrate.h"

/* Runs sent since the destination's last acknowledgement. */
struct unacked {
	struct dirty_range *r;
	size_t n, cap;
};

static int unacked_add(struct unacked *u, uint64_t gpa, uint64_t len)
{
	int injected = DIRTY_FAULT("claim.alloc");	/* the host out of memory mid-batch */

	if (injected)
		return __dirty_err(injected, "migration: out of memory for the unacknowledged list");
	if (u->n && u->r[u->n - 1].gpa + u->r[u->n - 1].len == gpa) {
		u->r[u->n - 1].len += len;
		return 0;
	}
	if (u->n == u->cap) {
		size_t c = u->cap ? u->cap * 2 : 1024;
		struct dirty_range *n = realloc(u->r, c * sizeof(*n));

		if (!n)
			return __dirty_err(-ENOMEM, "migration: out of memory for the unacknowledged list");
		u->r = n;
		u->cap = c;
	}
	u->r[u->n].gpa = gpa;
	u->r[u->n++].len = len;
	return 0;
}

struct mig {
	struct dirty_view *view;
	const struct dirty_migrate_ops *ops;
	void *opaque;
	struct dirty_claim *cl;
	struct dirty_run *runs;
	unsigned int batch;
	struct unacked un;
	struct dirty_migrate_result *res;
};

/*
 * Claim and send what is dirty; bytes sent go to *bytes, the seconds spent
 * in claims (not sends) to *claim_s. budget > 0 (pre-copy): stop once that
 * many bytes went out, about what was dirty when the round began, and give
 * the cursor's unsent claims back: a source that marks faster than the
 * link sends (a ring reaper) would otherwise keep one round going forever
 * and no cap would be checked. 0 (the final round): everything.
 */
static int send_all(struct mig *m, uint64_t *bytes, double *claim_s, uint64_t budget)
{
	double t0 = __dirty_now(), t1;
	uint64_t start = *bytes;
	ssize_t n = 0;

	for (; (!budget || *bytes - start < budget) &&
	       (n = dirty_claim_next(m->cl, m->runs, m->batch)) > 0; t0 = __dirty_now()) {
		t1 = __dirty_now();
		*claim_s += t1 - t0;
		for (ssize_t i = 0; i < n; i++) {
			int err;

			/*
			 * Recorded before sending: a run the send fails on is
			 * marked again with the rest, never dropped.
			 */
			err = unacked_add(&m->un, m->runs[i].gpa, m->runs[i].len);
			if (!err)
				err = m->ops->send(m->opaque, m->runs[i].gpa, m->runs[i].len);
			if (err) {
				for (ssize_t j = i + 1; j < n; j++)
					dirty_view_mark(m->view, m->runs[j].gpa, m->runs[j].len);
				return err < 0 ? err : -EIO;
			}
			*bytes += m->runs[i].len;
		}
	}
	*claim_s += __dirty_now() - t0;
	if (budget && n > 0)
		dirty_claim_release(m->cl);	/* the rest goes next round */
	return n < 0 ? (int)n : 0;
}

static int end_round(struct mig *m, unsigned int round, int final)
{
	int err = m->ops->end_round(m->opaque, round, final);

	if (err)
		return err < 0 ? err : -EIO;
	m->un.n = 0;	/* acknowledged: nothing to give back any more */
	return 0;
}

static int check_args(const struct dirty_migrate_config *cfg,
		      const struct dirty_migrate_ops *ops)
{
	if (!cfg || !ops)
		return __dirty_err(-EINVAL, "dirty_migrate: NULL config or ops");
	if (ops->version != DIRTY_MIGRATE_OPS_VERSION)
		return __dirty_err(-EINVAL, "migrate ops version %u, this libdirty speaks %u",
				   ops->version, DIRTY_MIGRATE_OPS_VERSION);
	if (!ops->send || !ops->end_round)
		return __dirty_err(-EINVAL, "dirty_migrate: send and end_round are required");
	if (cfg->downtime_target_ms < 0 || cfg->max_time_s < 0)
		return __dirty_err(-EINVAL, "dirty_migrate: negative downtime target or time cap");
	return 0;
}

DIRTY_API int dirty_migrate(struct dirty_view *view,
			    const struct dirty_migrate_config *cfg,
			    const struct dirty_migrate_ops *ops, void *opaque,
			    struct dirty_migrate_result *res)
{
	struct mig m = { .view = view, .ops = ops, .opaque = opaque, .res = res };
	struct dirty_migrate_progress p = { 0 };
	unsigned int max_rounds;
	double start = __dirty_now(), t_stop = 0, t_final, claim_s = 0;
	bool stopped = false, synced = false;
	uint64_t dirty_bytes = 0, held, round_bytes = 0;
	int err;

	err = check_args(cfg, ops);
	if (err)
		return err;
	__dirty_err(0, "%s", "");	/* a failure below reports its own message */
	memset(res, 0, sizeof(*res));
	max_rounds = cfg->max_rounds ? cfg->max_rounds : 30;
	m.batch = cfg->batch_runs ? cfg->batch_runs : 256;
	m.runs = calloc(m.batch, sizeof(*m.runs));
	if (!m.runs)
		return __dirty_err(-ENOMEM, "dirty_migrate: out of memory");
	err = dirty_claim_new(view, &m.cl);
	if (err)
		goto out;
	err = dirty_view_start(view);
	if (err)
		goto fail;
	/* The first pass sends everything, whatever the sources say. */
	dirty_view_mark_all(view);
	dirty_view_count(view, NULL, &round_bytes);

	for (;;) {
		double t0 = __dirty_now(), dt;
		uint64_t bytes = 0;

		if (!synced && res->rounds > 0 && (err = dirty_view_sync(view)))
			goto fail;
		if ((err = send_all(&m, &bytes, &claim_s, round_bytes ? round_bytes : 1)) ||
		    (err = end_round(&m, res->rounds, 0)))
			goto fail;
		dt = __dirty_now() - t0;
		if (bytes && dt > 0)
			res->bandwidth = (double)bytes / dt;
		res->bytes_sent += bytes;
		res->rounds++;
		/* What the stop would leave: sync now, count, estimate. */
		if ((err = dirty_view_sync(view)))
			goto fail;
		synced = true;
		dirty_view_count(view, NULL, &dirty_bytes);
		round_bytes = dirty_bytes;	/* the next round's budget */
		/* Pages a source keeps back for final are sent in the downtime too. */
		held = dirty_view_held_bytes(view);
		dirty_bytes += held;
		res->expected_downtime_ms = res->bandwidth > 0 ?
			(double)dirty_bytes / res->bandwidth * 1000 : 0;
		if (ops->progress) {
			p.round = res->rounds - 1;
			p.bytes_sent = res->bytes_sent;
			p.pages_sent = res->bytes_sent / DIRTY_MIN_PAGE_SIZE;
			p.dirty_pages = dirty_bytes / DIRTY_MIN_PAGE_SIZE;
			p.bandwidth = res->bandwidth;
			p.expected_downtime_ms = res->expected_downtime_ms;
			ops->progress(opaque, &p);
		}
		if (res->expected_downtime_ms <= cfg->downtime_target_ms) {
			res->converged = 1;
			res->stop = DIRTY_MIGRATE_CONVERGED;
			break;
		}
		/*
		 * Held pages wait for the final round whatever pre-copy does:
		 * once the rest is under the target, more rounds gain nothing.
		 */
		if (held && res->bandwidth > 0 &&
		    (double)(dirty_bytes - held) / res->bandwidth * 1000 <= cfg->downtime_target_ms) {
			res->stop = DIRTY_MIGRATE_HELD;
			break;
		}
		if (res->rounds >= max_rounds) {
			res->stop = DIRTY_MIGRATE_ROUND_CAP;
			break;
		}
		if (cfg->max_time_s > 0 && __dirty_now() - start >= cfg->max_time_s) {
			res->stop = DIRTY_MIGRATE_TIME_CAP;
			break;
		}
	}

	/* The order matters: no DMA, then no CPU writes, then the last look. */
	stopped = true;
	if (ops->stop_device && (err = ops->stop_device(opaque)))
		goto fail;
	if (ops->stop_vcpus && (err = ops->stop_vcpus(opaque)))
		goto fail;
	t_stop = __dirty_now();
	if ((err = dirty_view_final(view)))
		goto fail;
	t_final = __dirty_now();
	claim_s = 0;
	if ((err = send_all(&m, &res->final_bytes, &claim_s, 0)) ||
	    (err = end_round(&m, res->rounds, 1)))
		goto fail;
	res->downtime_ms = (__dirty_now() - t_stop) * 1000;
	res->final_sync_ms = (t_final - t_stop + claim_s) * 1000;
	res->bytes_sent += res->final_bytes;
	res->final_pages = res->final_bytes / DIRTY_MIN_PAGE_SIZE;
	res->pages_sent = res->bytes_sent / DIRTY_MIN_PAGE_SIZE;
	res->total_ms = (__dirty_now() - start) * 1000;
	dirty_view_stop(view);
	goto out;
fail:
	{
		char why[400];

		snprintf(why, sizeof(why), "%s", dirty_last_error());
		/* Nothing is lost: unsent claims back, unacknowledged sends again. */
		dirty_claim_release(m.cl);
		dirty_view_mark_ranges(view, m.un.r, m.un.n);
		if (stopped && ops->resume)
			ops->resume(opaque);
		res->pages_sent = res->bytes_sent / DIRTY_MIN_PAGE_SIZE;
		res->total_ms = (__dirty_now() - start) * 1000;
		err = __dirty_err(err < 0 ? err : -EIO, "migration failed in round %u (%s); the source keeps its dirty state, a retry is safe",
				  res->rounds, *why ? why : strerror(err < 0 ? -err : EIO));
	}
out:
	dirty_claim_free(m.cl);
	free(m.un.r);
	free(m.runs);
	return err;
}
