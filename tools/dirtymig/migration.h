/* SPDX-License-Identifier: MIT */
/*
 * migration.h - the source side of one migration: build the guest and the
 * tracking mode, run it, stream it with dirty_migrate() (libdirty's
 * pre-copy driver: rounds, stop decision, stop order, undo on failure),
 * then compare every page with the destination's hashes.
 */
#ifndef DIRTYMIG_MIGRATION_H
#define DIRTYMIG_MIGRATION_H

#include <stdbool.h>
#include <stdint.h>

#include "libdirty.h"
#include "modes.h"
#include "workload.h"

#define DM_MAX_ROUNDS 256

struct dm_round_info {
	unsigned int round;
	double t_ms;		/* since the migration began */
	uint64_t dirty_pages;	/* left after the round's sync */
	double bandwidth;	/* bytes per second, as the driver measured it */
	double dirty_rate;	/* pages per second marked, last sync interval */
	double expected_ms;
};

struct dm_run_config {
	const char *to;		/* destination ADDR:PORT */
	enum dm_mode mode;
	struct wl_config wl;
	double link_bytes_per_s;	/* 0: no cap */
	struct dirty_migrate_config mig;
	bool last;		/* the destination exits after this one */
	bool progress;		/* a live line on stderr */
	unsigned int retry;	/* attempts after a failed one (fresh connection, full resend) */
	unsigned int pinned;	/* enum dirty_gp_pinned for the guest protocol */
	int fault;		/* test only: DM_FAULT_*, at the end of pre-copy round fault_round */
	unsigned int fault_round;
};

#define DM_FAULT_NONE 0
#define DM_FAULT_CORRUPT_REGION 1	/* overwrite a host-owned word of the guest region */
#define DM_FAULT_AGENT_STOP 2		/* the guest's protocol agent stops (heartbeat too) */
/* "corrupt-region@N" or "agent-stop@N" into cfg; -EINVAL if not. */
int dm_fault_parse(const char *s, struct dm_run_config *cfg);

struct dm_run_result {
	enum dm_mode mode;
	int err;		/* 0, or -errno of the failure in error[] */
	char error[700];
	struct dirty_migrate_result mig;
	double link_bytes_per_s;	/* the cap, or the measured rate without one */
	double limit_ms;	/* final bytes / link rate: the floor for downtime */
	uint64_t npages;
	uint64_t lost_pages;	/* pages whose final contents differ */
	uint64_t lost_nic_pages;	/* of which in the NIC's ring and pool */
	uint64_t first_lost_gpa;
	uint64_t still_dirty;	/* after a failure: pages the view kept dirty */
	unsigned int attempts;	/* connections tried, the successful one included */
	uint64_t dma_packets, dma_drops, nic_errors, vcpu_writes;
	char nic_err[200];
	char vcpu[16];		/* "kvm" or "threads" */
	char kvm_mode[16];	/* the KVM dirty-log mode used, or "none" */
	bool gp_used;
	int gp_healthy;
	char gp_reason[256];
	uint64_t gp_pinned_sent;	/* pinned pages marked (SEND each round, final) */
	uint64_t gp_kept_back;		/* pinned pages claims kept back (DEFER) */
	unsigned int nrounds;
	struct dm_round_info round[DM_MAX_ROUNDS];
};

/* Run one migration to cfg->to. 0, or -errno with res->error set. */
int dm_run_migration(const struct dm_run_config *cfg, struct dm_run_result *res);

#endif /* DIRTYMIG_MIGRATION_H */
