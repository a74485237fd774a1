/* SPDX-License-Identifier: MIT */
/*
 * agent_mkregion.c - create a guest-protocol region file with the host
 * library, as a VMM would before starting QEMU, and leave it there (for
 * tests/t_agent_pci.sh's fake BARs and tests/t_agent_cli.sh).
 *
 *   agent_mkregion PATH [--ram-mib N] [--gpa BASE]
 *
 * PATH must not exist. The file is a power of two (what ivshmem needs),
 * exactly dirty_gp_size() bytes; its size is printed. Exit 0 or 1.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libdirty.h"

int main(int argc, char **argv)
{
	struct dirty_gp_config cfg = { .pinned = DIRTY_GP_PINNED_DEFER };
	uint64_t ram = 64ull << 20, gpa = 0;
	struct dirty_view *v;
	struct dirty_gp *gp;

	if (argc < 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: agent_mkregion PATH [--ram-mib N] [--gpa BASE]\n");
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--ram-mib"))
			ram = strtoull(argv[i + 1], NULL, 0) << 20;
		else if (!strcmp(argv[i], "--gpa"))
			gpa = strtoull(argv[i + 1], NULL, 0);
	}
	cfg.gpa = gpa;
	cfg.len = ram;
	cfg.path = argv[1];
	if (dirty_view_new(&v) || dirty_view_add_region(v, gpa, ram, 4096, 0) || dirty_gp_create(v, &cfg, &gp)) {
		fprintf(stderr, "agent_mkregion: %s: %s\n", argv[1], dirty_last_error());
		return 1;
	}
	printf("%" PRIu64 "\n", dirty_gp_size(gp));
	dirty_gp_destroy(gp);
	dirty_view_free(v);
	return 0;
}
