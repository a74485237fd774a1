/* SPDX-License-Identifier: MIT */
/*
 * libdirty/migrate.h - the pre-copy migration driver: rounds, the stop decision and
 * order, the final round, the undo on failure; over the public API.
 */
#ifndef LIBDIRTY_MIGRATE_H
#define LIBDIRTY_MIGRATE_H

#include <libdirty/source.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pre-copy migration driver ------------------------------------------ */

/*
 * Rounds of sync -> claim -> send until the expected downtime (dirty bytes
 * left / measured bandwidth) is under the target, or a round or time cap;
 * then, in this order: stop the device (no more DMA), stop the vCPUs, final
 * sync (guest pins included), send the rest, wait for the destination's
 * acknowledgement. Downtime is measured from the vCPU stop to that ack.
 *
 * Everything sent but not acknowledged is marked dirty again when the
 * migration fails or is cancelled, and claimed-but-unsent pages are given
 * back, so the source keeps running with its dirty state intact and a
 * retry is correct.
 */
#define DIRTY_MIGRATE_OPS_VERSION 1

struct dirty_migrate_progress {
	unsigned int round;	/* 0 is the first full pass */
	uint64_t pages_sent, bytes_sent;	/* so far, all rounds */
	uint64_t dirty_pages;	/* left after the last sync */
	double bandwidth;	/* bytes per second, measured */
	double expected_downtime_ms;
};

struct dirty_migrate_ops {
	uint32_t version;	/* DIRTY_MIGRATE_OPS_VERSION */
	/* Read and send [gpa, gpa + len) now. Required. */
	int (*send)(void *opaque, uint64_t gpa, uint64_t len);
	/*
	 * End of a round: flush, and return only once the destination
	 * acknowledged everything sent so far. Required.
	 */
	int (*end_round)(void *opaque, unsigned int round, int final);
	int (*stop_device)(void *opaque);	/* return: no DMA any more */
	int (*stop_vcpus)(void *opaque);	/* return: no guest write any more */
	/* Called when a failure happens after a stop: run the VM again. */
	int (*resume)(void *opaque);
	/* Called after each round; may be NULL. */
	void (*progress)(void *opaque, const struct dirty_migrate_progress *p);
};

struct dirty_migrate_config {
	double downtime_target_ms;	/* stop pre-copy when expected under this */
	unsigned int max_rounds;	/* 0: 30 */
	double max_time_s;		/* 0: no cap */
	unsigned int batch_runs;	/* runs per claim; 0: 256 */
};

struct dirty_migrate_result {
	unsigned int rounds;		/* pre-copy rounds, the full pass included */
	uint64_t pages_sent, bytes_sent;
	uint64_t final_pages, final_bytes;	/* sent while stopped */
	double bandwidth;		/* bytes per second, last measure */
	double expected_downtime_ms;	/* at the stop decision */
	double downtime_ms;		/* vCPU stop -> destination ack */
	double total_ms;
	int converged;			/* 1: under the target; 0: see stop */
	unsigned int stop;		/* enum dirty_migrate_stop: why pre-copy ended */
	/*
	 * The harvest inside the downtime: the final sync (every source's
	 * last look) plus the time spent claiming the final pages, sends
	 * excluded. It should follow the final dirty set, not memory size.
	 */
	double final_sync_ms;
};

enum dirty_migrate_stop {
	DIRTY_MIGRATE_CONVERGED = 0,	/* expected downtime under the target */
	DIRTY_MIGRATE_ROUND_CAP,	/* max_rounds reached */
	DIRTY_MIGRATE_TIME_CAP,		/* max_time_s reached */
	/*
	 * Under the target but for pages sources hold for the final round
	 * (pinned DMA buffers): more rounds could not reduce them.
	 */
	DIRTY_MIGRATE_HELD,
};

/*
 * Run one migration. Returns 0, or the first error from a callback or a
 * source (final's error included); on error the VM is resumed (if it was
 * stopped) and nothing is lost from the view.
 */
int dirty_migrate(struct dirty_view *view, const struct dirty_migrate_config *cfg,
		  const struct dirty_migrate_ops *ops, void *opaque,
		  struct dirty_migrate_result *res);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_MIGRATE_H */
