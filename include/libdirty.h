/* SPDX-License-Identifier: MIT */
/*
 * libdirty.h - host API: the merged dirty view and the sources that feed it.
 *
 * A *view* holds guest-physical regions, each with a hierarchical atomic
 * bitmap. *Sources* (KVM dirty log, VFIO, the guest bitmap protocol, ...)
 * OR their dirty bits in; migration threads *claim* runs of dirty pages out.
 * Marking and claiming are lock-free and may run on any number of threads
 * while regions are added and removed.
 *
 * Conventions: functions return 0 (or a count) on success and -errno on
 * failure; errno is left alone. dirty_last_error() gives the calling
 * thread's message for the last failure, worded for a user.
 */
#ifndef LIBDIRTY_H
#define LIBDIRTY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LIBDIRTY_VERSION_MAJOR 0
#define LIBDIRTY_VERSION_MINOR 1

/* Smallest page size a region may use; every page size is a power of two. */
#define DIRTY_MIN_PAGE_SIZE 4096u

struct dirty_view;
struct dirty_source;
struct dirty_claim;

/* A guest-physical byte range. */
struct dirty_range {
	uint64_t gpa;
	uint64_t len;
};

/* A run of contiguous dirty pages handed to a claimer (bytes, page aligned). */
struct dirty_run {
	uint64_t gpa;
	uint64_t len;
};

/* Message for the calling thread's most recent failed call ("" if none). */
const char *dirty_last_error(void);

/* ---- view and regions ------------------------------------------------- */

int dirty_view_new(struct dirty_view **out);
/* Detaches and destroys remaining sources, frees every region. */
void dirty_view_free(struct dirty_view *view);

/* The region starts with every page dirty (a memslot added mid-migration). */
#define DIRTY_REGION_DIRTY 0x1u

/*
 * Add [gpa, gpa + len) tracked at page_size (0 means 4 KiB). gpa and len
 * must be multiples of page_size; regions may not overlap (-EEXIST).
 */
int dirty_view_add_region(struct dirty_view *view, uint64_t gpa, uint64_t len,
			  uint64_t page_size, unsigned int flags);
/*
 * Remove the region that starts at gpa. Waits for an RCU grace period, so
 * it must not be called from inside a libdirty callback that marks or
 * claims. Dirty bits of the region are dropped with it.
 */
int dirty_view_remove_region(struct dirty_view *view, uint64_t gpa);

/* ---- marking (any thread, lock-free) ---------------------------------- */

/*
 * Mark every page that [gpa, gpa + len) touches. Pages outside all regions
 * are counted in the view stats and otherwise ignored.
 */
int dirty_view_mark(struct dirty_view *view, uint64_t gpa, uint64_t len);
/* Mark a batch of ranges under one RCU read section. */
int dirty_view_mark_ranges(struct dirty_view *view,
			   const struct dirty_range *ranges, size_t n);
/* Mark every page of every region (first round, fallback after an error). */
int dirty_view_mark_all(struct dirty_view *view);
/*
 * OR a foreign little-endian bitmap into the view: bit i stands for
 * [gpa + i * page_size, gpa + (i + 1) * page_size). Bits larger than the
 * region's pages expand to every page they cover; smaller ones fold into
 * the page that contains them. Bytes are read as in memory: bit i is bit
 * (i % 8) of byte i / 8, which is what KVM, VFIO and the guest protocol
 * produce on every architecture.
 */
int dirty_view_merge_bitmap(struct dirty_view *view, uint64_t gpa,
			    uint64_t page_size, const void *bitmap,
			    uint64_t nbits);

/* Number of dirty pages right now, and their bytes; O(dirty), no claiming. */
int dirty_view_count(struct dirty_view *view, uint64_t *pages,
		     uint64_t *bytes);
/* Bytes the sources hold back for the final round (see held_bytes). */
uint64_t dirty_view_held_bytes(struct dirty_view *view);

/* ---- claiming (any number of threads, each with its own cursor) ------- */

int dirty_claim_new(struct dirty_view *view, struct dirty_claim **out);
/*
 * Claim up to max runs of dirty pages. Each marked page is handed to
 * exactly one claimer per mark; a page marked again after its claim is
 * claimed again. Returns the number of runs (0: nothing is dirty now).
 * Runs never cross a region boundary. Every source's prepare_read has run
 * on the runs returned: they may be read at once. On -errno (a source
 * could not prepare them) nothing is handed out and nothing is lost.
 */
ssize_t dirty_claim_next(struct dirty_claim *cl, struct dirty_run *runs,
			 size_t max);
/*
 * Give back what the cursor claimed but has not yet returned, marking it
 * dirty again: call it when a migration is cancelled.
 */
void dirty_claim_release(struct dirty_claim *cl);
/* Releases first, so nothing the cursor held is lost. */
void dirty_claim_free(struct dirty_claim *cl);

/* ---- sources ----------------------------------------------------------- */

enum dirty_precision {
	/* Reports exactly the pages written (KVM, iommufd, guest protocol). */
	DIRTY_PRECISE = 1,
	/* Reports pages that may have been written (VFIO type1). */
	DIRTY_COARSE = 2,
};

#define DIRTY_SOURCE_OPS_VERSION 2

/*
 * What every tracking mechanism fills in. version comes first so the
 * table can grow; a callback left NULL means "nothing to do". Callbacks
 * report pages with dirty_source_mark*() and return 0 or -errno. A failed
 * sync or final never reads as "clean": the view marks every page of the
 * source's ranges dirty and returns the error.
 *
 * Version 1 tables (up to destroy) keep working: the fields after it read
 * as NULL. Every step correctness needs around a read is a callback here
 * that the library invokes itself, so no caller can forget one.
 */
struct dirty_source_ops {
	uint32_t version;	/* DIRTY_SOURCE_OPS_VERSION (1 or 2) */
	uint32_t precision;	/* enum dirty_precision */
	const char *name;
	int (*start)(struct dirty_source *src);	/* begin logging */
	int (*stop)(struct dirty_source *src);	/* end logging */
	int (*sync)(struct dirty_source *src);	/* OR new dirty bits in */
	int (*final)(struct dirty_source *src);	/* after VM and devices stop */
	void (*destroy)(struct dirty_source *src);	/* free priv */
	/* ---- version 2 ---- */
	/*
	 * Called by dirty_claim_next() on every batch of runs it claimed,
	 * before it returns them, so before anyone reads those pages: the
	 * source re-arms its log for them (KVM clear-log re-protects) and may
	 * keep pages back (it then owns them and marks them again later),
	 * rewriting runs[0 .. *n) in place with at most max runs. Called
	 * concurrently from every claiming thread. An error fails the claim:
	 * the batch is marked dirty again and the source's ranges too.
	 */
	int (*prepare_read)(struct dirty_source *src, struct dirty_run *runs,
			    size_t *n, size_t max);
	/*
	 * 1 once the source may be read for a first full pass, 0 not yet,
	 * -errno when it will not be (it then falls back on its own, e.g.
	 * marking its range dirty at final). dirty_view_start() waits on it.
	 */
	int (*ready)(struct dirty_source *src);
	/*
	 * Bytes the source holds back for the final round (pages it will
	 * mark only then), so the downtime estimate counts them.
	 */
	uint64_t (*held_bytes)(struct dirty_source *src);
	/*
	 * 1 while the source's reports can be trusted to be complete (a
	 * guest that acknowledged tracking, intact region, live agent), 0
	 * while not. Only a PRECISE source with this callback can cover a
	 * COARSE one (dirty_source_cover).
	 */
	int (*healthy)(struct dirty_source *src);
};

/*
 * Attach a source covering the given ranges (copied). The ranges are what
 * an error marks dirty, so they must cover every page the source can see.
 */
int dirty_source_attach(struct dirty_view *view,
			const struct dirty_source_ops *ops, void *priv,
			const struct dirty_range *ranges, size_t nranges,
			struct dirty_source **out);
/* Stops the source if started, calls destroy, frees it. */
void dirty_source_detach(struct dirty_source *src);
void *dirty_source_priv(const struct dirty_source *src);
struct dirty_view *dirty_source_view(const struct dirty_source *src);

/* For use inside callbacks: mark on behalf of src (counted per source). */
int dirty_source_mark(struct dirty_source *src, uint64_t gpa, uint64_t len);
/* A batch under one RCU read section (ring entries, scan results). */
int dirty_source_mark_ranges(struct dirty_source *src,
			     const struct dirty_range *ranges, size_t n);
int dirty_source_merge_bitmap(struct dirty_source *src, uint64_t gpa,
			      uint64_t page_size, const void *bitmap,
			      uint64_t nbits);

/*
 * The cover policy: a PRECISE source that knows exactly which pages a
 * device wrote (the guest protocol) stands in for a COARSE source of the
 * same DMA ("potentially dirty": VFIO type1 reports every mapped page).
 * At the start of every sync and of the final round the view asks the
 * precise source whether it is healthy; while it is, whatever the coarse
 * source marks inside the precise source's ranges is dropped (counted as
 * pages_covered); while it is not, and whenever that is so at final, the
 * coarse bits count. The coarse source still runs every sync, so its own
 * log stays armed. Without this call every source is ORed in.
 * Errors: -EINVAL unless precise is PRECISE with a healthy callback and
 * coarse is COARSE, both in one view; -EBUSY if coarse is already covered.
 */
int dirty_source_cover(struct dirty_source *precise, struct dirty_source *coarse);

/*
 * Start every attached source, then wait until each is ready for a first
 * full pass (a guest acknowledged tracking) or says it will not be; the
 * wait is bounded by the sources' own timeouts. On a start error the
 * sources already started are stopped again.
 */
int dirty_view_start(struct dirty_view *view);
int dirty_view_stop(struct dirty_view *view);
/*
 * Sync every source. Returns 0, or the first error; a source that failed
 * had all its ranges marked dirty and is left running for the next round.
 */
int dirty_view_sync(struct dirty_view *view);
/* Like sync, using each source's final callback (falls back to sync). */
int dirty_view_final(struct dirty_view *view);

/* ---- the in-memory source --------------------------------------------- */

/*
 * A precise source kept in memory: any thread marks pages with
 * dirty_memsrc_mark(); sync moves them into the view. For writes a VMM
 * makes itself (emulated devices) and for tests.
 */
int dirty_memsrc_new(struct dirty_view *view, uint64_t gpa, uint64_t len,
		     uint64_t page_size, struct dirty_source **out);
int dirty_memsrc_mark(struct dirty_source *src, uint64_t gpa, uint64_t len);

/* ---- the guest bitmap protocol: host side ------------------------------ */

/*
 * The host creates the shared region (libdirty/proto.h), hands its fd to
 * the VMM (QEMU ivshmem-plain with a memory-backend-file, or any shared
 * mapping) and attaches it to the view as a PRECISE source. Geometry is
 * the host's own: nothing the guest writes into the region is trusted for
 * an address or a length.
 */
struct dirty_gp;

enum dirty_gp_pinned {
	/* Pinned pages are marked dirty every sync (resent each round). */
	DIRTY_GP_PINNED_SEND = 0,
	/*
	 * Pinned pages are left to the final round: a claim keeps back the
	 * pinned pages it took (the source's prepare_read) and the source
	 * carries them until they are unpinned (then marked) or until final.
	 * Saves resending buffers the device keeps writing.
	 */
	DIRTY_GP_PINNED_DEFER = 1,
};

enum dirty_gp_fallback {
	/* Unhealthy guest at final: every covered page is marked dirty. */
	DIRTY_GP_FALLBACK_ALL_DIRTY = 0,
	/* Unhealthy guest at final: final fails (-EHOSTDOWN), so the caller aborts. */
	DIRTY_GP_FALLBACK_ABORT = 1,
};

/* How big the region's file is (dirty_gp_config.size). */
enum dirty_gp_size {
	/* A power of two when the region is a file (a PCI BAR), else exact. */
	DIRTY_GP_SIZE_AUTO = 0,
	DIRTY_GP_SIZE_EXACT,	/* the protocol's own length */
	/*
	 * The next power of two >= that length (and >= 4 KiB): what QEMU's
	 * ivshmem-plain needs, a BAR over a file of exactly its size.
	 */
	DIRTY_GP_SIZE_POW2,
};

/* dirty_gp_config.flags */
/* Remove the file at cfg.path in dirty_gp_destroy() (and on a failed create). */
#define DIRTY_GP_UNLINK 0x1u

struct dirty_gp_config {
	uint64_t gpa, len;	/* guest-physical range the guest reports on */
	uint64_t page_size;	/* 0: 4 KiB */
	/*
	 * Create this file (it must not exist; O_EXCL): e.g. /dev/shm/NAME for
	 * QEMU's memory-backend-file. It belongs to the caller, who removes
	 * it, unless DIRTY_GP_UNLINK is set. NULL: an anonymous memfd.
	 */
	const char *path;
	unsigned int pinned;	/* enum dirty_gp_pinned */
	unsigned int fallback;	/* enum dirty_gp_fallback */
	/*
	 * The agent is silent once its heartbeat has not moved for this long
	 * while tracking is on and after it first showed life; 0: never.
	 */
	unsigned int heartbeat_timeout_ms;
	/* A live guest acknowledges a generation within this; 0: 1000. */
	unsigned int ack_timeout_ms;
	unsigned int size;	/* enum dirty_gp_size */
	unsigned int flags;	/* DIRTY_GP_UNLINK */
};

int dirty_gp_create(struct dirty_view *view, const struct dirty_gp_config *cfg,
		    struct dirty_gp **out);
/* Detach and free; the view frees it too if it goes first. */
void dirty_gp_destroy(struct dirty_gp *gp);
int dirty_gp_fd(const struct dirty_gp *gp);
/*
 * Bytes of the region's file: what QEMU must be told (ivshmem's
 * memory-backend-file size=). A guest may map more than the protocol uses.
 */
uint64_t dirty_gp_size(const struct dirty_gp *gp);
struct dirty_source *dirty_gp_source(struct dirty_gp *gp);

/*
 * Ask guests to start (on) or stop setting dirty bits: raises the tracking
 * generation. The source's start and stop callbacks do this, and
 * dirty_view_start() waits for a running guest's acknowledgement (the
 * source's ready callback) before it returns, so the first pass never
 * starts early.
 */
int dirty_gp_track(struct dirty_gp *gp, int on);
/* 1: acknowledged; 0: not yet; -ETIMEDOUT: past ack_timeout_ms. */
int dirty_gp_acked(struct dirty_gp *gp);
/*
 * Rewrite the host's part of the region header (after something
 * overwrote it: DIRTY_GP_BROKEN) and raise a fresh generation; the guest
 * is trusted again once it acknowledges that generation.
 */
int dirty_gp_restore(struct dirty_gp *gp);

/* 1 if the guest holds gpa's page pinned, 0 if not, -ERANGE outside. */
int dirty_gp_pinned(struct dirty_gp *gp, uint64_t gpa);

/*
 * Whether the guest's bits can stand for its DMA right now. TRUSTED
 * ("healthy") means all of: tracking is on; every host-owned header field
 * is as the host wrote it; the guest's own words are sane; the current
 * tracking generation was acknowledged (after a grace period in every
 * client); and the agent's heartbeat moved within heartbeat_timeout_ms.
 * "Healthy at final" is exactly TRUSTED when the final round judges it;
 * otherwise the final round applies the fallback.
 *
 * Trust follows the guest's life: silence before the guest first showed
 * life, or while tracking is off, is no fault (WAITING, IDLE); trust lost
 * (UNTRUSTED: silence, a missing acknowledgement, insane guest words)
 * comes back when the guest acknowledges a fresh generation, raised by
 * the loss; and every time trust is gained the source marks its whole
 * range dirty, a new first pass, so nothing from an untrusted window is
 * missed. A header overwritten (BROKEN) stays so until dirty_gp_restore().
 */
enum dirty_gp_state {
	DIRTY_GP_IDLE = 0,	/* tracking off */
	DIRTY_GP_WAITING,	/* no acknowledgement of the generation yet: not a fault */
	DIRTY_GP_TRUSTED,
	DIRTY_GP_UNTRUSTED,	/* trust lost; back with a fresh acknowledgement */
	DIRTY_GP_BROKEN,	/* header overwritten; dirty_gp_restore() */
};

struct dirty_gp_health {
	int healthy;		/* state == DIRTY_GP_TRUSTED */
	int state;		/* enum dirty_gp_state */
	char reason[160];	/* why not trusted, for a user */
	uint64_t heartbeat_age_ms;	/* since the guest's heartbeat last moved (0: never) */
	uint64_t generation, acked_generation;
	uint64_t trust_gained, trust_lost;	/* times, since create */
	uint32_t guest_state;	/* DIRTY_PROTO_GUEST_* */
	uint64_t pin_conflicts, pin_leaks, bad_ranges;	/* guest-reported */
	uint64_t pages_harvested;	/* dirty bits moved into the view */
	uint64_t pages_pinned_sent;	/* pinned pages marked (SEND, final) */
	uint64_t pages_kept_back;	/* pinned pages claims kept back (DEFER) */
	uint64_t pages_carried;		/* carried over right now (DEFER) */
	uint64_t pages_carried_sent;	/* carried pages marked once unpinned */
};
int dirty_gp_health(struct dirty_gp *gp, struct dirty_gp_health *h);

/* ---- KVM adapter -------------------------------------------------------- */

/*
 * A source fed by KVM's dirty log for a VM the caller (the VMM) owns: it
 * gets the VM fd, the memslot layout and the vCPU fds from the caller and
 * creates no hidden kernel state. Capabilities that must be enabled before
 * memslots and vCPUs exist are enabled by the VMM, with
 * dirty_kvm_enable() or its own KVM_ENABLE_CAP.
 */
struct dirty_kvm;

enum dirty_kvm_mode {
	DIRTY_KVM_AUTO = 0,	/* ring if supported, else clear-log, else bitmap */
	DIRTY_KVM_BITMAP,	/* KVM_GET_DIRTY_LOG (reads and re-protects) */
	DIRTY_KVM_CLEAR_LOG,	/* MANUAL_DIRTY_LOG_PROTECT2: re-protect per claimed batch */
	DIRTY_KVM_RING,		/* per-vCPU dirty rings */
};

struct dirty_kvm_caps {
	int manual_protect2;	/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 value */
	int ring;		/* KVM_CAP_DIRTY_LOG_RING: max ring bytes, 0 = none */
	int ring_acq_rel;	/* KVM_CAP_DIRTY_LOG_RING_ACQ_REL */
	int ring_with_bitmap;	/* KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP */
};

/* Probe once (fd: /dev/kvm or a VM fd); never fails on a missing cap. */
int dirty_kvm_probe(int fd, struct dirty_kvm_caps *caps);
/* The mode AUTO resolves to for these caps. */
enum dirty_kvm_mode dirty_kvm_pick_mode(const struct dirty_kvm_caps *caps);
const char *dirty_kvm_mode_name(enum dirty_kvm_mode mode);
/*
 * Enable what `mode` needs on a fresh VM (before memslots and vCPUs):
 * MANUAL_PROTECT_ENABLE for clear-log (never INITIALLY_SET), the ring
 * (ACQ_REL when available) of ring_bytes for the ring. A missing
 * capability is -EOPNOTSUPP with its name in dirty_last_error().
 */
int dirty_kvm_enable(int vm_fd, enum dirty_kvm_mode mode, uint32_t ring_bytes);

struct dirty_kvm_config {
	int vm_fd;
	enum dirty_kvm_mode mode;	/* as enabled on the VM; not AUTO */
	uint32_t ring_bytes;	/* ring mode: the size enabled */
	uint64_t clear_chunk_pages;	/* clear-log: pages per clear ioctl, a multiple
					   of 64; 0 = 262144 (1 GiB, as QEMU's default) */
};

int dirty_kvm_create(struct dirty_view *view, const struct dirty_kvm_config *cfg,
		     struct dirty_kvm **out);
void dirty_kvm_destroy(struct dirty_kvm *kvm);
struct dirty_source *dirty_kvm_source(struct dirty_kvm *kvm);

/*
 * Memslots, as the VMM registered them (slot = as_id << 16 | id, logging
 * enabled). Adding one while tracking marks all its pages dirty: their
 * first round. Removing one harvests it one last time first.
 */
int dirty_kvm_add_slot(struct dirty_kvm *kvm, uint32_t slot, uint64_t gpa,
		       uint64_t size);
int dirty_kvm_remove_slot(struct dirty_kvm *kvm, uint32_t slot);
/* Ring mode: map vCPU fd's ring; returns the vCPU's index. */
int dirty_kvm_add_vcpu(struct dirty_kvm *kvm, int vcpu_fd);
/*
 * Ring mode: the VMM calls this on KVM_EXIT_DIRTY_RING_FULL from the vCPU
 * thread; it harvests every ring and resets them, so KVM_RUN can resume.
 */
int dirty_kvm_ring_full(struct dirty_kvm *kvm);
/* Ring mode: a thread that harvests every interval_us, taking no VMM lock. */
int dirty_kvm_reaper_start(struct dirty_kvm *kvm, unsigned int interval_us);
void dirty_kvm_reaper_stop(struct dirty_kvm *kvm);

/* ---- userfaultfd adapter (process memory) ------------------------------ */

/*
 * A source for memory written by host threads (emulated devices, vhost-user
 * backends, a VMM's own writes, software vCPUs): userfaultfd write-protect
 * in async mode (UFFD_FEATURE_WP_ASYNC, no fault-handling thread) harvested
 * with the PAGEMAP_SCAN ioctl, which returns written ranges and re-protects
 * them in one call (Linux 6.7+). It tracks the mapping it is given only: a
 * second mapping of the same memory (a "DMA" view) stays invisible to it.
 */
struct dirty_uffd;

/* 0 if the running kernel supports it; else -EOPNOTSUPP saying what is missing. */
int dirty_uffd_probe(void);
int dirty_uffd_create(struct dirty_view *view, struct dirty_uffd **out);
void dirty_uffd_destroy(struct dirty_uffd *u);
struct dirty_source *dirty_uffd_source(struct dirty_uffd *u);
/*
 * Track [hva, hva + len) of this process, reported as guest-physical
 * [gpa, gpa + len). Page aligned; anonymous shared memory, memfd or
 * hugetlbfs mappings. Registered while tracking: all of it is dirty.
 */
int dirty_uffd_add_range(struct dirty_uffd *u, void *hva, uint64_t len,
			 uint64_t gpa);
int dirty_uffd_remove_range(struct dirty_uffd *u, void *hva);

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

/* ---- statistics -------------------------------------------------------- */

struct dirty_region_stats {
	uint64_t gpa, len, page_size;
	uint64_t pages_marked;	/* pages reported dirty, repeats included */
	uint64_t pages_claimed;	/* pages handed to claimers */
	double dirty_rate;	/* pages marked per second, last sync interval */
};

struct dirty_source_stats {
	uint64_t syncs;
	uint64_t errors;	/* failed syncs: all its pages were marked */
	uint64_t pages_marked;	/* total */
	uint64_t pages_covered;	/* dropped: a healthy precise source stood in */
	uint64_t last_sync_pages;	/* marked by the last sync */
	double dirty_rate;	/* pages per second over the last sync interval */
	int last_error;		/* -errno of the last failed sync, or 0 */
};

struct dirty_view_stats {
	uint64_t regions;
	uint64_t pages;		/* pages in all regions */
	uint64_t pages_outside;	/* marked pages that fell in no region */
	uint64_t syncs;
};

int dirty_view_stats(struct dirty_view *view, struct dirty_view_stats *st);
/* Stats of the region that contains gpa (-ENOENT if none). */
int dirty_view_region_stats(struct dirty_view *view, uint64_t gpa,
			    struct dirty_region_stats *st);
int dirty_source_stats(struct dirty_source *src, struct dirty_source_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* LIBDIRTY_H */
