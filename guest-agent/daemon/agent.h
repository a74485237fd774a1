/* SPDX-License-Identifier: MIT */
/*
 * agent.h - dirty-agent, the guest agent daemon: what its files share.
 *
 *   main.c      command line, subcommands (run, status, list), exit codes
 *   log.c       log lines on stderr (journald adds the time under systemd)
 *   region.c    open, map and validate a region (a file or a PCI BAR)
 *   discover.c  libpci discovery of ivshmem-plain devices (1af4:1110)
 *   table.c     the shared pin table: create or adopt; the BUSY repair
 *   server.c    the io_uring event loop: socket, clients, handshake
 *   status.c    the STATUS_TEXT (human or JSON) and `dirty-agent status`
 *   notify.c    sd_notify("READY=1") without libsystemd
 *
 * The daemon links guest-agent/agent_wire.c and nothing of either library.
 */
#ifndef DIRTY_AGENT_H
#define DIRTY_AGENT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent_wire.h"
#include "libdirty/proto.h"
#include "pintable.h"

/* Exit codes (documented in dirty-agent.8 and --help). */
enum {
	AGENT_EXIT_OK = 0,	/* stopped by SIGTERM/SIGINT; --help */
	AGENT_EXIT_FAIL = 1,	/* an error (the message says which) */
	AGENT_EXIT_USAGE = 2,	/* bad usage, or several regions and no --device */
	AGENT_EXIT_NODEV = 3,	/* no region found (no device, or none holds one) */
	AGENT_EXIT_RUNNING = 4,	/* another agent already serves the socket */
};

#define AGENT_DEFAULT_SOCKET "/run/dirty-agent/agent.sock"
#define AGENT_DEFAULT_STATE_DIR "/run/dirty-agent"
#define AGENT_DEFAULT_SYSFS "/sys"
#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110
#define IVSHMEM_BAR 2
#define AGENT_MAX_IDS 64

struct agent_opts {
	int verbose;
	const char *device;	/* --device BDF */
	const char *region;	/* --region FILE */
	const char *socket;
	unsigned int socket_mode;
	const char *state_dir;
	const char *sysfs;
	const char *pci_dump;	/* --pci-dump FILE: libpci's dump method */
	uid_t allow_uid[AGENT_MAX_IDS];
	int nallow_uid;
	gid_t allow_gid[AGENT_MAX_IDS];
	int nallow_gid;
	unsigned int heartbeat_ms;
	unsigned int grace_timeout_ms;
	/* Test-only knobs (hidden from --help, named in the man page's TESTING). */
	unsigned int hello_timeout_ms;
	unsigned int max_conns;
};

/* ---- log.c ----------------------------------------------------------------- */

extern int agent_verbose;
void agent_log_init(void);
double agent_now_ms(void);	/* CLOCK_MONOTONIC, ms */
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- region.c -------------------------------------------------------------- */

struct region {
	char desc[PATH_MAX + 64];	/* "PCI 0000:00:03.0 BAR 2" / "file /dev/shm/x" */
	char path[PATH_MAX + 64];	/* what was opened */
	char bdf[32];		/* PCI only */
	char name[PATH_MAX];	/* for the pin table's file name */
	uint64_t bar_addr;	/* PCI only: BAR 2's bus address (0 unknown) */
	int fd;
	uint8_t *base;
	uint64_t map_size;	/* bytes mapped = bytes a client maps */
	struct dirty_proto_header *hdr;
	struct dirty_proto_layout lay;
	uint64_t gpa_base, npages;
	unsigned int page_shift;
	uint16_t host_major, host_minor;
	uint64_t *dirty, *summary, *pin;
};

/*
 * Check the region at base (size bytes mapped) as the guest library does
 * and fill r's geometry. 0, or -errno with why[] set.
 */
int region_validate(struct region *r, void *base, uint64_t size, char *why, size_t whylen);
/* Open and map path (a file, or a BAR's resource file), then validate. */
int region_open(struct region *r, const char *path, uint64_t size_hint, char *why, size_t whylen);
void region_close(struct region *r);
/* Pin bits set in the region right now. */
uint64_t region_pinned(const struct region *r);

/* ---- discover.c ------------------------------------------------------------ */

struct pci_candidate {
	char bdf[32];		/* 0000:00:03.0 */
	char path[PATH_MAX + 64];	/* <sysfs>/bus/pci/devices/<bdf>/resource2 */
	uint64_t bar_addr;	/* libpci's base address of BAR 2 */
	uint64_t bar_size;	/* libpci's size, else the resource file's */
	bool libdirty;		/* BAR 2 starts with DIRTY_PROTO_MAGIC */
	bool decoding;		/* memory decoding was on (PCI_COMMAND_MEMORY) */
	char note[PATH_MAX + 512];	/* why not (or the protocol version) */
};

/*
 * Every ivshmem-plain device libpci finds (the sysfs method under
 * opts->sysfs, or the dump method on opts->pci_dump). Returns the count
 * (*out malloc'd), or -1 with why[] set (libpci failed).
 */
int discover_scan(const struct agent_opts *o, struct pci_candidate **out, char *why, size_t whylen);
/*
 * Choose the device (opts->device, else the one holding a region) and
 * open its region. Returns an AGENT_EXIT_* code; prints what it found.
 */
int discover_open(const struct agent_opts *o, struct region *r);
/* `dirty-agent list`: print every candidate. */
int discover_list(const struct agent_opts *o, bool json);

/* ---- table.c --------------------------------------------------------------- */

struct table {
	char path[PATH_MAX];
	int fd;
	struct pintable_header *hdr;
	_Atomic uint32_t *count;
	uint64_t bytes;
	uint64_t npages;	/* the region's, our copy: clients can write the header */
	bool adopted;		/* taken over from a previous agent */
	uint64_t repinned;	/* adopt: counted pages whose pin bit was clear, set again */
	uint64_t stray_pins;	/* create: pin bits set with no count (left set) */
};

/* mkdir -p with mode 0755; 0 or -errno. */
int agent_mkdirs(const char *dir);
/* Create the table for r in state_dir, or adopt one that matches. */
int table_open(struct table *t, const struct region *r, const char *state_dir);
void table_close(struct table *t);
/*
 * The BUSY scan: indices of count words with PIN_BUSY set, up to max;
 * returns how many there are in all.
 */
uint64_t table_scan_busy(const struct table *t, uint64_t *idx, uint64_t max);
/* Repair word p if it still holds exactly `seen`: pin bit, then 1|OWNED. */
bool table_repair(struct table *t, const struct region *r, uint64_t p, uint32_t seen);

/* ---- server.c -------------------------------------------------------------- */

/*
 * Create and bind the socket (exit code AGENT_EXIT_RUNNING when another
 * agent answers on it); agent_serve listens on it once the region and the
 * pin table are ready, then serves until SIGTERM/SIGINT.
 */
int agent_listen(const struct agent_opts *o, int *lfd, ino_t *ino);
int agent_serve(const struct agent_opts *o, struct region *r, struct table *t, int lfd, ino_t ino);

/* ---- status.c -------------------------------------------------------------- */

struct agent_state;	/* server.c's */

/* A bounded string builder. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool full;
};
void sb_init(struct sbuf *b, char *mem, size_t cap);
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_json_str(struct sbuf *b, const char *s);

int status_command(int argc, char **argv);

/* ---- notify.c -------------------------------------------------------------- */

/* Send state to $NOTIFY_SOCKET if set; 0, or -errno (logged). */
int notify_systemd(const char *state);

#endif /* DIRTY_AGENT_H */
