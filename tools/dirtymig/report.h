/* SPDX-License-Identifier: MIT */
/*
 * report.h - what dirtymig prints after its migrations: the table, the
 * targets, one JSON object per mode, and the optional gnuplot figure.
 */
#ifndef DIRTYMIG_REPORT_H
#define DIRTYMIG_REPORT_H

#include <stdio.h>

#include "migration.h"

/* One line saying what was migrated and under which limits. */
void dm_report_setup(FILE *f, const struct dm_run_config *cfg);
void dm_report_table(FILE *f, const struct dm_run_result *r, int n);
/* The demo's targets, measured; each line says met or not met. */
void dm_report_targets(FILE *f, const struct dm_run_result *r, int n);
void dm_report_json(FILE *f, const struct dm_run_result *r, int n,
		    const struct dm_run_config *cfg);
/* Draw FILE (.svg or .png) with gnuplot: 0, or -errno with a message on stderr. */
int dm_report_plot(const char *file, const struct dm_run_result *r, int n);

#endif /* DIRTYMIG_REPORT_H */
