/* SPDX-License-Identifier: MIT */
/*
 * main.c - dirty-agent's command line.
 *
 *   dirty-agent [options]                 serve the region (foreground, always)
 *   dirty-agent status [--json] [--socket PATH]
 *   dirty-agent list [--json] [--sysfs DIR] [--pci-dump FILE]
 *
 * The agent never daemonizes: systemd runs it (Type=notify, READY=1 once
 * the socket listens), a shell runs it with `&`. --foreground is accepted
 * for scripts written for daemons that fork.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "libdirty/version.h"

#define STR2(x) #x
#define STR(x) STR2(x)

static void usage(FILE *f)
{
	fprintf(f,
"usage: dirty-agent [options]                      serve the guest's region to DMA clients\n"
"       dirty-agent status [--json] [--socket PATH]  ask the running agent for its state\n"
"       dirty-agent list [--json] [--sysfs DIR] [--pci-dump FILE]\n"
"                                                  the ivshmem-plain devices and their BAR 2\n"
"\n"
"The guest agent of libdirty's bitmap protocol. It finds the region the host\n"
"exposes (an ivshmem-plain PCI device, 1af4:1110, whose BAR 2 starts with\n"
"\"LIBDIRTY\"), owns its guest-owned words (version, state, heartbeat, the\n"
"tracking acknowledgement), shares one pin table with every client process\n"
"(dirty_guest_connect) so a page stays pinned until the last client unmaps it,\n"
"and acknowledges a new tracking generation only after every client passed an\n"
"RCU grace period. Pins are never cleared by the agent: not at a client's\n"
"death, not at the agent's own exit or restart.\n"
"\n"
"Options:\n"
"  --device BDF           the ivshmem-plain device to serve (0000:00:03.0 or 00:03.0);\n"
"                         needed when several hold a region\n"
"  --region FILE          serve a region file instead of a PCI device (the /dev/shm\n"
"                         file the host library created: tests on the host)\n"
"  --socket PATH          where clients connect (default " AGENT_DEFAULT_SOCKET ")\n"
"  --socket-mode MODE     the socket's mode, octal (default 0660); the socket's group\n"
"                         is the first --allow-gid\n"
"  --state-dir DIR        where the pin table lives, pins-<device or file name>\n"
"                         (default " AGENT_DEFAULT_STATE_DIR "); a restarted agent adopts it\n"
"  --allow-uid U[,U...]   users allowed besides root and the agent's own (numbers or names)\n"
"  --allow-gid G[,G...]   groups allowed (a client's primary or supplementary group)\n"
"  --heartbeat-ms N       bump the heartbeat and look for a new tracking generation\n"
"                         every N ms (default 100)\n"
"  --grace-timeout-ms N   log a client that has not finished its grace period after\n"
"                         N ms and name it in the region (guest.waiting_pid) so the\n"
"                         host's health names it; the acknowledgement still waits for\n"
"                         it (default 1000)\n"
"  --sysfs DIR            the sysfs root (default /sys): devices are looked up in\n"
"                         DIR/bus/pci (libpci's sysfs method)\n"
"  --pci-dump FILE        read PCI config space from an `lspci -x` dump instead\n"
"                         (libpci's dump method; resource files still come from --sysfs)\n"
"  --foreground           accepted for compatibility: the agent always stays in the\n"
"                         foreground (systemd runs it with Type=notify)\n"
"  -v, --verbose          progress lines, each with the milliseconds since start\n"
"  -h, --help             this text\n"
"  --version              the version\n"
"\n"
"Exit status: 0 stopped by SIGTERM or SIGINT; 1 an error (the message says what to\n"
"do); 2 bad usage, or several devices hold a region and no --device chose one;\n"
"3 no region found (no ivshmem-plain device, or none holds a libdirty region);\n"
"4 another dirty-agent already serves the socket.\n"
"SIGHUP writes the status to the log. See dirty-agent(8).\n");
}

enum {
	OPT_DEVICE = 256, OPT_REGION, OPT_SOCKET, OPT_SOCKET_MODE, OPT_STATE_DIR, OPT_ALLOW_UID,
	OPT_ALLOW_GID, OPT_HEARTBEAT, OPT_GRACE, OPT_SYSFS, OPT_PCI_DUMP, OPT_FOREGROUND,
	OPT_VERSION, OPT_HELLO_TIMEOUT, OPT_MAX_CONNS, OPT_JSON,
};

static const struct option longopts[] = {
	{ "device", required_argument, NULL, OPT_DEVICE },
	{ "region", required_argument, NULL, OPT_REGION },
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
	{ "state-dir", required_argument, NULL, OPT_STATE_DIR },
	{ "allow-uid", required_argument, NULL, OPT_ALLOW_UID },
	{ "allow-gid", required_argument, NULL, OPT_ALLOW_GID },
	{ "heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT },
	{ "grace-timeout-ms", required_argument, NULL, OPT_GRACE },
	{ "sysfs", required_argument, NULL, OPT_SYSFS },
	{ "pci-dump", required_argument, NULL, OPT_PCI_DUMP },
	{ "foreground", no_argument, NULL, OPT_FOREGROUND },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	/* For tests (dirty-agent.8, TESTING). */
	{ "hello-timeout-ms", required_argument, NULL, OPT_HELLO_TIMEOUT },
	{ "max-connections", required_argument, NULL, OPT_MAX_CONNS },
	{ "json", no_argument, NULL, OPT_JSON },
	{ NULL, 0, NULL, 0 },
};

static bool parse_uint(const char *s, unsigned long lo, unsigned long hi, int base, unsigned int *out)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(s, &end, base);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
		return false;
	*out = (unsigned int)v;
	return true;
}

/* "0,1000,alice": numbers, or names from the user (group) database. */
static bool parse_ids(const char *opt, const char *arg, bool groups, unsigned int *ids, int *n)
{
	char *copy = strdup(arg), *tok, *save = NULL;
	bool ok = copy != NULL;

	for (tok = copy ? strtok_r(copy, ",", &save) : NULL; ok && tok; tok = strtok_r(NULL, ",", &save)) {
		unsigned int v;

		if (*n >= AGENT_MAX_IDS) {
			fprintf(stderr, "dirty-agent: %s: more than %d ids\n", opt, AGENT_MAX_IDS);
			ok = false;
		} else if (parse_uint(tok, 0, 0xfffffffeul, 10, &v)) {
			ids[(*n)++] = v;
		} else if (!groups && getpwnam(tok)) {
			ids[(*n)++] = getpwnam(tok)->pw_uid;
		} else if (groups && getgrnam(tok)) {
			ids[(*n)++] = getgrnam(tok)->gr_gid;
		} else {
			fprintf(stderr, "dirty-agent: %s: '%s' is neither a number nor a known %s\n", opt, tok,
				groups ? "group" : "user");
			ok = false;
		}
	}
	free(copy);
	return ok;
}

static int bad_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, "dirty-agent: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n(dirty-agent --help lists the options)\n");
	return AGENT_EXIT_USAGE;
}

static int parse(int argc, char **argv, struct agent_opts *o, bool *json)
{
	int ch;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_DEVICE: o->device = optarg; break;
		case OPT_REGION: o->region = optarg; break;
		case OPT_SOCKET: o->socket = optarg; break;
		case OPT_SOCKET_MODE:
			if (!parse_uint(optarg, 0, 0777, 8, &o->socket_mode))
				return bad_usage("--socket-mode wants an octal mode such as 0660, not '%s'", optarg);
			break;
		case OPT_STATE_DIR: o->state_dir = optarg; break;
		case OPT_ALLOW_UID:
			if (!parse_ids("--allow-uid", optarg, false, o->allow_uid, &o->nallow_uid))
				return AGENT_EXIT_USAGE;
			break;
		case OPT_ALLOW_GID:
			if (!parse_ids("--allow-gid", optarg, true, o->allow_gid, &o->nallow_gid))
				return AGENT_EXIT_USAGE;
			break;
		case OPT_HEARTBEAT:
			if (!parse_uint(optarg, 1, 60000, 10, &o->heartbeat_ms))
				return bad_usage("--heartbeat-ms wants 1..60000 ms, not '%s'", optarg);
			break;
		case OPT_GRACE:
			if (!parse_uint(optarg, 1, 3600000, 10, &o->grace_timeout_ms))
				return bad_usage("--grace-timeout-ms wants 1..3600000 ms, not '%s'", optarg);
			break;
		case OPT_SYSFS: o->sysfs = optarg; break;
		case OPT_PCI_DUMP: o->pci_dump = optarg; break;
		case OPT_FOREGROUND: break;
		case OPT_HELLO_TIMEOUT:
			if (!parse_uint(optarg, 1, 3600000, 10, &o->hello_timeout_ms))
				return bad_usage("--hello-timeout-ms wants 1..3600000 ms, not '%s'", optarg);
			break;
		case OPT_MAX_CONNS:
			if (!parse_uint(optarg, 1, 4096, 10, &o->max_conns))
				return bad_usage("--max-connections wants 1..4096, not '%s'", optarg);
			break;
		case OPT_JSON:
			if (!json)
				return bad_usage("%s is an option of `dirty-agent status` and `list`", "--json");
			*json = true;
			break;
		case 'v': o->verbose++; break;
		case 'h': usage(stdout); exit(AGENT_EXIT_OK);
		case OPT_VERSION:
			printf("dirty-agent %s (libdirty guest protocol v%u.%u)\n",
			       STR(LIBDIRTY_VERSION_MAJOR) "." STR(LIBDIRTY_VERSION_MINOR) "." STR(LIBDIRTY_VERSION_PATCH),
			       DIRTY_PROTO_MAJOR, DIRTY_PROTO_MINOR);
			exit(AGENT_EXIT_OK);
		default:
			fprintf(stderr, "(dirty-agent --help lists the options)\n");
			return AGENT_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return bad_usage("unexpected argument '%s'", argv[optind]);
	if (o->device && o->region)
		return bad_usage("--device and --region %s: choose one", o->region);
	return AGENT_EXIT_OK;
}

static int serve(struct agent_opts *o)
{
	struct region r;
	struct table t;
	char why[400], tmp[PATH_MAX];
	ino_t ino;
	int rc, lfd;

	memset(&r, 0, sizeof(r));
	r.fd = -1;
	if (o->region) {
		if (region_open(&r, o->region, 0, why, sizeof(why))) {
			log_err("--region %s: %s", o->region, why);
			return AGENT_EXIT_FAIL;
		}
		snprintf(tmp, sizeof(tmp), "%s", o->region);
		snprintf(r.name, sizeof(r.name), "%s", basename(tmp));
		snprintf(r.desc, sizeof(r.desc), "region file %s", o->region);
	} else if ((rc = discover_open(o, &r))) {
		return rc;
	}
	rc = agent_listen(o, &lfd, &ino);
	if (rc) {
		region_close(&r);
		return rc;
	}
	if (table_open(&t, &r, o->state_dir)) {
		close(lfd);
		unlink(o->socket);
		region_close(&r);
		return AGENT_EXIT_FAIL;
	}
	rc = agent_serve(o, &r, &t, lfd, ino);
	table_close(&t);
	region_close(&r);
	return rc;
}

int main(int argc, char **argv)
{
	struct agent_opts o = {
		.socket = AGENT_DEFAULT_SOCKET,
		.socket_mode = 0660,
		.state_dir = AGENT_DEFAULT_STATE_DIR,
		.sysfs = AGENT_DEFAULT_SYSFS,
		.heartbeat_ms = 100,
		.grace_timeout_ms = 1000,
		.hello_timeout_ms = 5000,
		.max_conns = 256,
	};
	bool json = false;
	int rc;

	agent_log_init();
	if (argc > 1 && !strcmp(argv[1], "status"))
		return status_command(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "list")) {
		rc = parse(argc - 1, argv + 1, &o, &json);
		agent_verbose = o.verbose;
		return rc ? rc : discover_list(&o, json);
	}
	rc = parse(argc, argv, &o, NULL);
	if (rc)
		return rc;
	agent_verbose = o.verbose;
	return serve(&o);
}
