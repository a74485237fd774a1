/* vm_host.h - what the host halves of the VM tier's two-sided tests
 * (gp_host.c, agent_host.c) share: each is what a VMM's migration code
 * would be, outside QEMU. It owns a view over the guest's RAM ([0, ram) at
 * 4 KiB pages: q35 puts all of a 512 MiB guest's RAM there) and a
 * guest-protocol source created with dirty_gp_create at a /dev/shm path,
 * which QEMU exposes to the guest as an ivshmem-plain BAR; it fork/execs
 * the VM (run-vm.sh) and follows the guest program step by step through
 * the test mailbox past the protocol region (guest/vm-mbox.h).
 *
 * Checks are counted and printed by guest/vm-check.h, with the time since
 * the start. Page sets are byte arrays over every page of guest RAM.
 */
#ifndef LIBDIRTY_TESTS_VM_HOST_H
#define LIBDIRTY_TESTS_VM_HOST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <libdirty.h>
#include <libdirty/proto.h>

#include "vm/guest/vm-check.h"
#include "vm/guest/vm-mbox.h"

#define P ((uint64_t)4096)

/* The command line every host half takes (see vm_host_init). */
struct vm_host_opt {
	const char *shm, *console;
	uint64_t ram;
	double boot_timeout_s, step_timeout_s;
	char **cmd;
};

extern struct vm_host_opt opt;
extern struct dirty_view *view;
extern struct dirty_gp *gp;
extern uint64_t npages, file_size;
extern volatile struct vm_mbox *vm_mb;	/* the test's mailbox starts so */
extern const struct dirty_proto_header *hdr;	/* read only: the words to watch */
extern bool aborted;			/* give_up ran: the steps stopped */

/*
 * Start: check lines as PROG, with the time; the command line
 *   PROG --shm /dev/shm/NAME [--ram-mib 512] [--console FILE]
 *        [--boot-timeout S] [--step-timeout S] -- COMMAND [ARG...]
 * (usage prints the rest; bad usage exits 2); SIGTERM, SIGINT and SIGHUP
 * stop the VM and remove the file. steps[1 .. nsteps) name the steps.
 */
void vm_host_init(const char *prog, int argc, char **argv, void (*usage)(FILE *f),
		  const char *const *steps, uint32_t nsteps);

/* The view of guest RAM and the region at opt.shm (policy DEFER). */
bool vm_host_region(void);
/* Map the whole file; the mailbox at its end gets magic. */
bool vm_host_map_mbox(uint64_t magic);

/* Fork/exec opt.cmd (the VM); it gets SIGTERM if this program dies. */
int vm_host_start_vm(void);

/*
 * Give up on the run: a failure, told to the guest through the mailbox
 * so it stops waiting and exits (the host's message is on its console).
 */
__attribute__((format(printf, 1, 2))) void give_up(const char *fmt, ...);

/*
 * Wait until the guest reached step s. False, after give_up, when the
 * guest failed, the VM ended, or the timeout passed.
 */
bool wait_guest(uint32_t s, double timeout_s);
/* True while the VM runs (reaps it once it ended). */
bool vm_running(void);
void host_done(uint32_t s);

/* want[p] = 1 for each page GPA in pages[0 .. n) (validated before). */
void set_of(const uint64_t *pages, size_t n, uint8_t *want);
/* Pages whose pin bit the host sees vs want, page by page. */
void expect_pins(const char *what, const uint8_t *want);
/* Claim everything the view holds; each page must come exactly as want says. */
void drain(const char *what, const uint8_t *want);
/* Sync the view (the guest protocol harvests), then drain and compare. */
void sync_and_drain(const char *what, const uint8_t *want);
/*
 * Copy n page GPAs the guest wrote into the mailbox, bounds-checked: the
 * mailbox is the guest's to write, so nothing is used unchecked.
 */
bool read_pages(const char *what, volatile const uint64_t *src, uint32_t n, uint32_t want_n,
		uint64_t *out);
/* How many pages an exact page set lists in its ok line (more: the count only). */
extern size_t vm_host_list_max;

/* dirty_view_start on a thread: it waits for the guest's acknowledgement. */
struct starter {
	pthread_t t;
	atomic_bool done;
	int rc;
	double returned_ms;
};
int starter_run(struct starter *s);

const char *state_name(int s);
const char *guest_state_name(uint32_t s);
struct dirty_gp_health health(void);

/*
 * The end, whatever happened: wait for the VM (bounded), on a failure
 * print host_view() then the mailbox and the console's last console_lines
 * lines, drop the view and the region (check_kept: check dirty_gp_destroy
 * left the file, which is its creator's) and remove the file. The caller
 * prints its RESULT line after.
 */
void vm_host_end(void (*host_view)(void), unsigned console_lines, bool check_kept);

#endif
