/* SPDX-License-Identifier: MIT */
/*
 * kvm.c - the KVM source: dirty bitmap, manual-protect clear-log and
 * per-vCPU dirty rings, for a VM the caller owns. Touches only the fds,
 * slots and vCPUs it is given; marks through the view.
 *
 * Citations (Documentation/virt/kvm/api.rst): with
 * MANUAL_DIRTY_LOG_PROTECT2, KVM_GET_DIRTY_LOG no longer re-protects and
 * KVM_CLEAR_DIRTY_LOG does, in 64-page units; ring entries are harvested
 * with an acquire load of flags, handed back with a release store of
 * RESET, then KVM_RESET_DIRTY_RINGS; INITIALLY_SET is never combined with
 * a ring (QEMU lost data that way), so this file never sets it.
 *
 * Errors follow the view's rule: a failed ioctl marks every page of every
 * slot dirty before the error is returned, so nothing reads as clean.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "core.h"
#include "fault.h"
#include "libdirty/kvm.h"

#define KVM_PAGE 4096ull

struct kslot {
	uint32_t slot;
	uint64_t gpa, size, npages;
	/* KVM_GET_DIRTY_LOG buffer; ring mode: one harvest's entries as bits */
	uint64_t *bitmap;
	uint64_t *pending;	/* clear-log: reported, not yet re-protected */
	/*
	 * Clear-log: bit w set when clear window w (kvm->chunk pages) holds
	 * pending pages. Ring mode: bit c set when 4096-page chunk c has
	 * bits in `bitmap`. `touched` counts the set bits, so a slot with
	 * none costs nothing to skip. Like every field here, read and
	 * written under kvm->lock only.
	 */
	uint64_t *marks;
	uint64_t touched;
};

struct kring {
	int vcpu_fd;
	struct kvm_dirty_gfn *gfns;
	uint32_t nentries;
	uint32_t next;		/* under lock */
	pthread_mutex_t lock;	/* this ring only: the reaper and the vCPU thread */
};

struct dirty_kvm {
	struct dirty_source *src;
	int vm_fd;
	enum dirty_kvm_mode mode;
	uint32_t ring_bytes;
	uint64_t chunk;
	pthread_mutex_t lock;	/* slots and the ring array; never the VMM's */
	struct kslot *slots;
	size_t nslots;
	struct kring **rings;
	size_t nrings;
	bool tracking;
	bool reset_pending;	/* a KVM_RESET_DIRTY_RINGS failed: retry it */
	pthread_t reaper;
	bool reaper_on;
	_Atomic bool reaper_stop;
	unsigned int reaper_us;
};

DIRTY_API int dirty_kvm_probe(int fd, struct dirty_kvm_caps *caps)
{
	int v;

	memset(caps, 0, sizeof(*caps));
	v = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	caps->manual_protect2 = v > 0 ? v : 0;
	v = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
	caps->ring = v > 0 ? v : 0;
	v = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
	caps->ring_acq_rel = v > 0 ? v : 0;
	v = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP);
	caps->ring_with_bitmap = v > 0 ? v : 0;
	return 0;
}

DIRTY_API enum dirty_kvm_mode dirty_kvm_pick_mode(const struct dirty_kvm_caps *caps)
{
	if (caps->ring || caps->ring_acq_rel)
		return DIRTY_KVM_RING;
	if (caps->manual_protect2)
		return DIRTY_KVM_CLEAR_LOG;
	return DIRTY_KVM_BITMAP;
}

DIRTY_API const char *dirty_kvm_mode_name(enum dirty_kvm_mode mode)
{
	switch (mode) {
	case DIRTY_KVM_AUTO: return "auto";
	case DIRTY_KVM_BITMAP: return "bitmap";
	case DIRTY_KVM_CLEAR_LOG: return "clear-log";
	case DIRTY_KVM_RING: return "ring";
	}
	return "?";
}

static int enable_cap(int vm_fd, uint32_t cap, uint64_t arg, const char *name)
{
	struct kvm_enable_cap ec = { .cap = cap, .args = { arg } };

	if (ioctl(vm_fd, KVM_ENABLE_CAP, &ec) < 0)
		return __dirty_err(-errno, "KVM_ENABLE_CAP %s(%#llx) failed: %s",
				   name, (unsigned long long)arg, strerror(errno));
	return 0;
}

DIRTY_API int dirty_kvm_enable(int vm_fd, enum dirty_kvm_mode mode,
			       uint32_t ring_bytes)
{
	struct dirty_kvm_caps caps;

	dirty_kvm_probe(vm_fd, &caps);
	if (mode == DIRTY_KVM_AUTO)
		mode = dirty_kvm_pick_mode(&caps);
	switch (mode) {
	case DIRTY_KVM_BITMAP:
		return 0;
	case DIRTY_KVM_CLEAR_LOG:
		if (!(caps.manual_protect2 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
			return __dirty_err(-EOPNOTSUPP, "clear-log mode needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, which this kernel lacks");
		return enable_cap(vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
				  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
				  "MANUAL_DIRTY_LOG_PROTECT2");
	case DIRTY_KVM_RING:
		if (!caps.ring_acq_rel && !caps.ring)
			return __dirty_err(-EOPNOTSUPP, "ring mode needs KVM_CAP_DIRTY_LOG_RING(_ACQ_REL), which this kernel lacks");
		if (!ring_bytes || (ring_bytes & (ring_bytes - 1)) ||
		    ring_bytes > (uint32_t)(caps.ring_acq_rel ? caps.ring_acq_rel : caps.ring))
			return __dirty_err(-EINVAL, "ring size %u must be a power of two up to %d bytes",
					   ring_bytes, caps.ring_acq_rel ? caps.ring_acq_rel : caps.ring);
		/* ACQ_REL is the one whose ordering is defined on every arch. */
		return caps.ring_acq_rel ?
			enable_cap(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, ring_bytes,
				   "DIRTY_LOG_RING_ACQ_REL") :
			enable_cap(vm_fd, KVM_CAP_DIRTY_LOG_RING, ring_bytes,
				   "DIRTY_LOG_RING");
	default:
		return __dirty_err(-EINVAL, "unknown KVM dirty mode %d", (int)mode);
	}
}

/* Error rule: every page of every slot is dirty. Called with kvm->lock. */
static void mark_all_slots(struct dirty_kvm *kvm)
{
	for (size_t i = 0; i < kvm->nslots; i++)
		dirty_source_mark(kvm->src, kvm->slots[i].gpa, kvm->slots[i].size);
}

static struct kslot *find_slot(struct dirty_kvm *kvm, uint32_t slot)
{
	for (size_t i = 0; i < kvm->nslots; i++)
		if (kvm->slots[i].slot == slot)
			return &kvm->slots[i];
	return NULL;
}

static uint64_t bitmap_words(const struct kslot *s)
{
	return (s->npages + 63) / 64;
}

/* Pages per ring-mode chunk: the view's chunk, so a merge is word-wise. */
#define RING_CHUNK 4096u

/* Words of s->marks: clear windows (clear-log) or ring chunks (ring). */
static uint64_t marks_words(const struct dirty_kvm *kvm, const struct kslot *s)
{
	uint64_t unit = kvm->mode == DIRTY_KVM_RING ? RING_CHUNK : kvm->chunk;

	return ((s->npages + unit - 1) / unit + 63) / 64;
}

/* The harvest's VM ioctls, through the reliability tests' fault site. */
static int vm_ioctl(struct dirty_kvm *kvm, unsigned long req, void *arg)
{
	int injected = DIRTY_FAULT("kvm.ioctl");

	if (injected) {
		errno = -injected;
		return -1;
	}
	return ioctl(kvm->vm_fd, req, arg);
}

/*
 * KVM_GET_DIRTY_LOG into s->bitmap. No need to zero it first: KVM copies
 * the slot's whole bitmap out (kvm_get_dirty_log_protect(), both with
 * and without manual protect), every word of it.
 */
static int get_log(struct dirty_kvm *kvm, struct kslot *s)
{
	struct kvm_dirty_log log = { .slot = s->slot, .dirty_bitmap = s->bitmap };

	if (vm_ioctl(kvm, KVM_GET_DIRTY_LOG, &log) < 0)
		return __dirty_err(-errno, "KVM_GET_DIRTY_LOG on slot %#x failed: %s",
				   s->slot, strerror(errno));
	return 0;
}

/* Bitmap / clear-log: read each slot's log and merge what is new. */
static int sync_logs(struct dirty_kvm *kvm)
{
	for (size_t i = 0; i < kvm->nslots; i++) {
		struct kslot *s = &kvm->slots[i];
		int err = get_log(kvm, s);

		if (err)
			return err;
		if (kvm->mode == DIRTY_KVM_CLEAR_LOG) {
			/*
			 * Bits stay set until cleared: report each once, and
			 * remember it until a claim re-protects it
			 * (kvm_prepare_read).
			 */
			uint64_t wpw = kvm->chunk / 64;	/* words per clear window */

			for (uint64_t w = 0; w < bitmap_words(s); w++) {
				uint64_t fresh = s->bitmap[w] & ~s->pending[w];

				if (s->bitmap[w] && !(s->marks[w / wpw / 64] & 1ull << (w / wpw % 64))) {
					s->marks[w / wpw / 64] |= 1ull << (w / wpw % 64);
					s->touched++;
				}
				s->pending[w] |= s->bitmap[w];
				s->bitmap[w] = fresh;
			}
		}
		err = dirty_source_merge_bitmap(kvm->src, s->gpa, KVM_PAGE,
						s->bitmap, s->npages);
		if (err)
			return err;
	}
	return 0;
}

/*
 * Ring r: every harvested entry becomes a bit of its slot's bitmap (KVM
 * pushes an entry per logged write: repeats fold into the bit), its
 * chunk noted in s->marks, and the entry is handed back. Called with
 * kvm->lock.
 */
static void harvest_ring(struct dirty_kvm *kvm, struct kring *r, uint64_t *n)
{
	struct kslot *s = NULL;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct kvm_dirty_gfn *e = &r->gfns[r->next & (r->nentries - 1)];
		/* Acquire: slot and offset are valid once DIRTY is seen. */
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		uint64_t off;

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		if (!s || s->slot != e->slot)
			s = find_slot(kvm, e->slot);
		off = e->offset;
		if (s && off < s->npages && !(s->bitmap[off / 64] & 1ull << (off % 64))) {
			uint64_t c = off / RING_CHUNK;

			s->bitmap[off / 64] |= 1ull << (off % 64);
			if (!(s->marks[c / 64] & 1ull << (c % 64))) {
				s->marks[c / 64] |= 1ull << (c % 64);
				s->touched++;
			}
		}
		/* Release: KVM may reuse the entry only after we read it. */
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		r->next++;
		(*n)++;
	}
	pthread_mutex_unlock(&r->lock);
}

/*
 * Hand slot s's harvested bits to the view: each span of consecutive
 * touched chunks is one word-wise merge (one batch of atomics, a level-0
 * word once however many entries hit it), then zeroed for the next
 * harvest. O(touched chunks + slot pages / 2^18).
 */
static int merge_ring_bits(struct dirty_kvm *kvm, struct kslot *s)
{
	uint64_t nchunks = (s->npages + RING_CHUNK - 1) / RING_CHUNK;
	int err = 0;

	for (uint64_t q = 0; s->touched && q < marks_words(kvm, s); q++) {
		while (s->marks[q]) {
			uint64_t c0 = q * 64 + (uint64_t)__builtin_ctzll(s->marks[q]), c1 = c0;
			uint64_t p0, p1;

			/* The span: c0 and every touched chunk right after it. */
			while (c1 < nchunks && s->marks[c1 / 64] & 1ull << (c1 % 64)) {
				s->marks[c1 / 64] &= ~(1ull << (c1 % 64));
				s->touched--;
				c1++;
			}
			p0 = c0 * RING_CHUNK;
			p1 = c1 * RING_CHUNK < s->npages ? c1 * RING_CHUNK : s->npages;
			if (!err)
				err = dirty_source_merge_bitmap(kvm->src, s->gpa + p0 * KVM_PAGE,
								KVM_PAGE, &s->bitmap[p0 / 64], p1 - p0);
			memset(&s->bitmap[p0 / 64], 0, (p1 - p0 + 63) / 64 * 8);
		}
	}
	return err;
}

/*
 * Harvest every ring, reset them, and only then mark: api.rst wants
 * KVM_RESET_DIRTY_RINGS before the pages' contents are read, and a page
 * in the view may be claimed and read at once. Before the reset KVM may
 * not have re-protected the page, and a write then would be logged
 * nowhere. A failed reset is retried by the next harvest.
 */
static int harvest_rings(struct dirty_kvm *kvm)
{
	uint64_t n = 0;
	int err = 0;

	for (size_t i = 0; i < kvm->nrings; i++)
		harvest_ring(kvm, kvm->rings[i], &n);
	if (n || kvm->reset_pending) {
		if (vm_ioctl(kvm, KVM_RESET_DIRTY_RINGS, NULL) < 0) {
			kvm->reset_pending = true;
			err = __dirty_err(-errno, "KVM_RESET_DIRTY_RINGS failed: %s",
					  strerror(errno));
		} else {
			kvm->reset_pending = false;
		}
	}
	for (size_t i = 0; i < kvm->nslots; i++) {
		int e = merge_ring_bits(kvm, &kvm->slots[i]);

		err = err ? err : e;
	}
	return err;
}

static int kvm_sync(struct dirty_source *src)
{
	struct dirty_kvm *kvm = dirty_source_priv(src);
	int err;

	pthread_mutex_lock(&kvm->lock);
	err = kvm->mode == DIRTY_KVM_RING ? harvest_rings(kvm) : sync_logs(kvm);
	if (err)
		mark_all_slots(kvm);
	pthread_mutex_unlock(&kvm->lock);
	return err;
}

static int clear_span(struct dirty_kvm *kvm, struct kslot *s, uint64_t first,
		      uint64_t last);
static int kvm_prepare_read(struct dirty_source *src, struct dirty_run *runs,
			    size_t *n, size_t max);

/* Start: every page is dirty for the first round; the kernel log restarts. */
static int kvm_start(struct dirty_source *src)
{
	struct dirty_kvm *kvm = dirty_source_priv(src);
	int err = 0;

	pthread_mutex_lock(&kvm->lock);
	if (kvm->mode == DIRTY_KVM_RING) {
		err = harvest_rings(kvm);
	} else {
		for (size_t i = 0; i < kvm->nslots && !err; i++)
			err = get_log(kvm, &kvm->slots[i]);
		for (size_t i = 0; i < kvm->nslots && !err; i++) {
			struct kslot *s = &kvm->slots[i];

			if (kvm->mode != DIRTY_KVM_CLEAR_LOG)
				continue;
			/* Re-protect what was logged before tracking began. */
			memset(s->pending, 0xff, bitmap_words(s) * 8);
			err = clear_span(kvm, s, 0, s->npages);
		}
	}
	mark_all_slots(kvm);
	kvm->tracking = true;
	pthread_mutex_unlock(&kvm->lock);
	return err;
}

static int kvm_stop(struct dirty_source *src)
{
	struct dirty_kvm *kvm = dirty_source_priv(src);

	pthread_mutex_lock(&kvm->lock);
	kvm->tracking = false;
	pthread_mutex_unlock(&kvm->lock);
	return 0;
}

static void free_slot(struct kslot *s)
{
	free(s->bitmap);
	free(s->pending);
	free(s->marks);
}

static void kvm_destroy(struct dirty_source *src)
{
	struct dirty_kvm *kvm = dirty_source_priv(src);

	dirty_kvm_reaper_stop(kvm);
	for (size_t i = 0; i < kvm->nslots; i++)
		free_slot(&kvm->slots[i]);
	free(kvm->slots);
	for (size_t i = 0; i < kvm->nrings; i++) {
		munmap(kvm->rings[i]->gfns, kvm->ring_bytes);
		pthread_mutex_destroy(&kvm->rings[i]->lock);
		free(kvm->rings[i]);
	}
	free(kvm->rings);
	pthread_mutex_destroy(&kvm->lock);
	free(kvm);
}

/* What both modes share; final is the same harvest, complete once vCPUs stopped. */
#define KVM_OPS_COMMON \
	.version = DIRTY_SOURCE_OPS_VERSION, \
	.precision = DIRTY_PRECISE, \
	.start = kvm_start, \
	.stop = kvm_stop, \
	.sync = kvm_sync, \
	.final = kvm_sync, \
	.destroy = kvm_destroy

static const struct dirty_source_ops kvm_ops = {
	KVM_OPS_COMMON,
	.name = "kvm",
};

/* Clear-log adds the read-side step: claimed pages are re-protected. */
static const struct dirty_source_ops kvm_clear_ops = {
	KVM_OPS_COMMON,
	.name = "kvm-clear-log",
	.prepare_read = kvm_prepare_read,
};

DIRTY_API int dirty_kvm_create(struct dirty_view *view,
			       const struct dirty_kvm_config *cfg,
			       struct dirty_kvm **out)
{
	struct dirty_kvm *kvm;
	int err;

	if (!cfg || cfg->vm_fd < 0)
		return __dirty_err(-EINVAL, "dirty_kvm_create: needs the VM fd");
	if (cfg->mode != DIRTY_KVM_BITMAP && cfg->mode != DIRTY_KVM_CLEAR_LOG &&
	    cfg->mode != DIRTY_KVM_RING)
		return __dirty_err(-EINVAL, "dirty_kvm_create: mode must be the one enabled on the VM (bitmap, clear-log or ring), not %s",
				   dirty_kvm_mode_name(cfg->mode));
	if (cfg->mode == DIRTY_KVM_RING &&
	    (cfg->ring_bytes < sizeof(struct kvm_dirty_gfn) ||
	     cfg->ring_bytes & (cfg->ring_bytes - 1)))
		return __dirty_err(-EINVAL, "ring mode needs the ring size the VM was enabled with (power of two), not %u",
				   cfg->ring_bytes);
	if (cfg->clear_chunk_pages % 64)
		return __dirty_err(-EINVAL, "clear chunk of %llu pages is not a multiple of 64",
				   (unsigned long long)cfg->clear_chunk_pages);
	kvm = calloc(1, sizeof(*kvm));
	if (!kvm)
		return __dirty_err(-ENOMEM, "dirty_kvm_create: out of memory");
	kvm->vm_fd = cfg->vm_fd;
	kvm->mode = cfg->mode;
	kvm->ring_bytes = cfg->ring_bytes;
	kvm->chunk = cfg->clear_chunk_pages ? cfg->clear_chunk_pages : 262144;
	pthread_mutex_init(&kvm->lock, NULL);
	/* No fixed ranges: the adapter marks its own slots on error. */
	err = dirty_source_attach(view, kvm->mode == DIRTY_KVM_CLEAR_LOG ?
				  &kvm_clear_ops : &kvm_ops, kvm, NULL, 0, &kvm->src);
	if (err) {
		pthread_mutex_destroy(&kvm->lock);
		free(kvm);
		return err;
	}
	*out = kvm;
	return 0;
}

DIRTY_API void dirty_kvm_destroy(struct dirty_kvm *kvm)
{
	if (kvm)
		dirty_source_detach(kvm->src);
}

DIRTY_API struct dirty_source *dirty_kvm_source(struct dirty_kvm *kvm)
{
	return kvm->src;
}

DIRTY_API int dirty_kvm_add_slot(struct dirty_kvm *kvm, uint32_t slot,
				 uint64_t gpa, uint64_t size)
{
	struct kslot s = { .slot = slot, .gpa = gpa, .size = size }, *n;

	if (!size || (gpa | size) & (KVM_PAGE - 1))
		return __dirty_err(-EINVAL, "slot %#x [%#llx, +%#llx) is not 4 KiB aligned",
				   slot, (unsigned long long)gpa, (unsigned long long)size);
	s.npages = size / KVM_PAGE;
	s.bitmap = calloc(bitmap_words(&s), 8);
	s.pending = calloc(bitmap_words(&s), 8);
	s.marks = calloc(marks_words(kvm, &s), 8);
	if (!s.bitmap || !s.pending || !s.marks) {
		free_slot(&s);
		return __dirty_err(-ENOMEM, "dirty_kvm_add_slot: out of memory");
	}
	pthread_mutex_lock(&kvm->lock);
	if (find_slot(kvm, slot)) {
		pthread_mutex_unlock(&kvm->lock);
		free_slot(&s);
		return __dirty_err(-EEXIST, "slot %#x is already registered", slot);
	}
	n = realloc(kvm->slots, (kvm->nslots + 1) * sizeof(*n));
	if (!n) {
		pthread_mutex_unlock(&kvm->lock);
		free_slot(&s);
		return __dirty_err(-ENOMEM, "dirty_kvm_add_slot: out of memory");
	}
	kvm->slots = n;
	kvm->slots[kvm->nslots++] = s;
	/* A slot added mid-migration has never been sent: its first round. */
	if (kvm->tracking)
		dirty_source_mark(kvm->src, gpa, size);
	pthread_mutex_unlock(&kvm->lock);
	return 0;
}

DIRTY_API int dirty_kvm_remove_slot(struct dirty_kvm *kvm, uint32_t slot)
{
	struct kslot *s;
	int err = 0;

	pthread_mutex_lock(&kvm->lock);
	s = find_slot(kvm, slot);
	if (!s) {
		pthread_mutex_unlock(&kvm->lock);
		return __dirty_err(-ENOENT, "slot %#x is not registered", slot);
	}
	/* Its last writes, while KVM still has the slot. */
	if (kvm->tracking) {
		if (kvm->mode == DIRTY_KVM_RING) {
			err = harvest_rings(kvm);
		} else if (!(err = get_log(kvm, s))) {
			err = dirty_source_merge_bitmap(kvm->src, s->gpa, KVM_PAGE,
							s->bitmap, s->npages);
		}
		if (err)
			dirty_source_mark(kvm->src, s->gpa, s->size);
	}
	free_slot(s);
	*s = kvm->slots[--kvm->nslots];
	pthread_mutex_unlock(&kvm->lock);
	return err;
}

DIRTY_API int dirty_kvm_add_vcpu(struct dirty_kvm *kvm, int vcpu_fd)
{
	struct kring *r, **n;
	long psz = sysconf(_SC_PAGESIZE);
	int idx;

	if (kvm->mode != DIRTY_KVM_RING)
		return __dirty_err(-EINVAL, "dirty_kvm_add_vcpu: only ring mode reads vCPU rings");
	r = calloc(1, sizeof(*r));
	if (!r)
		return __dirty_err(-ENOMEM, "dirty_kvm_add_vcpu: out of memory");
	r->gfns = mmap(NULL, kvm->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vcpu_fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * psz);
	if (r->gfns == MAP_FAILED) {
		int e = errno;

		free(r);
		return __dirty_err(-e, "cannot map the dirty ring of vCPU fd %d: %s (was the ring enabled before the vCPU was created?)",
				   vcpu_fd, strerror(e));
	}
	r->vcpu_fd = vcpu_fd;
	r->nentries = kvm->ring_bytes / (uint32_t)sizeof(struct kvm_dirty_gfn);
	pthread_mutex_init(&r->lock, NULL);
	pthread_mutex_lock(&kvm->lock);
	n = realloc(kvm->rings, (kvm->nrings + 1) * sizeof(*n));
	if (!n) {
		pthread_mutex_unlock(&kvm->lock);
		munmap(r->gfns, kvm->ring_bytes);
		free(r);
		return __dirty_err(-ENOMEM, "dirty_kvm_add_vcpu: out of memory");
	}
	kvm->rings = n;
	idx = (int)kvm->nrings;
	kvm->rings[kvm->nrings++] = r;
	pthread_mutex_unlock(&kvm->lock);
	return idx;
}

DIRTY_API int dirty_kvm_ring_full(struct dirty_kvm *kvm)
{
	int err;

	pthread_mutex_lock(&kvm->lock);
	err = harvest_rings(kvm);
	if (err)
		mark_all_slots(kvm);
	pthread_mutex_unlock(&kvm->lock);
	return err;
}

static void *reaper_main(void *arg)
{
	struct dirty_kvm *kvm = arg;
	struct timespec ts = {
		.tv_sec = kvm->reaper_us / 1000000,
		.tv_nsec = (long)(kvm->reaper_us % 1000000) * 1000L,
	};

	while (!atomic_load(&kvm->reaper_stop)) {
		dirty_kvm_ring_full(kvm);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

DIRTY_API int dirty_kvm_reaper_start(struct dirty_kvm *kvm, unsigned int interval_us)
{
	int err;

	if (kvm->mode != DIRTY_KVM_RING)
		return __dirty_err(-EINVAL, "the reaper is for ring mode");
	if (kvm->reaper_on)
		return __dirty_err(-EBUSY, "the reaper is already running");
	kvm->reaper_us = interval_us ? interval_us : 1000;
	atomic_store(&kvm->reaper_stop, false);
	err = pthread_create(&kvm->reaper, NULL, reaper_main, kvm);
	if (err)
		return __dirty_err(-err, "cannot start the ring reaper: %s", strerror(err));
	kvm->reaper_on = true;
	return 0;
}

DIRTY_API void dirty_kvm_reaper_stop(struct dirty_kvm *kvm)
{
	if (!kvm->reaper_on)
		return;
	atomic_store(&kvm->reaper_stop, true);
	pthread_join(kvm->reaper, NULL);
	kvm->reaper_on = false;
}

/* Clear pending pages [first, first + n) of s in KVM (n: multiple of 64 or to the end). */
static int clear_range(struct dirty_kvm *kvm, struct kslot *s, uint64_t first,
		       uint64_t n)
{
	struct kvm_clear_dirty_log c = {
		.slot = s->slot, .first_page = first, .num_pages = (uint32_t)n,
		.dirty_bitmap = &s->pending[first / 64],
	};
	uint64_t any = 0;
	int err = 0;

	/* Only what was reported: a page logged but never reported stays set. */
	for (uint64_t w = first / 64; w < (first + n + 63) / 64; w++)
		any |= s->pending[w];
	if (!any)
		return 0;
	if (vm_ioctl(kvm, KVM_CLEAR_DIRTY_LOG, &c) < 0)
		err = __dirty_err(-errno, "KVM_CLEAR_DIRTY_LOG on slot %#x pages [%llu, +%llu) failed: %s",
				  s->slot, (unsigned long long)first,
				  (unsigned long long)n, strerror(errno));
	memset(&s->pending[first / 64], 0, (n + 63) / 64 * 8);
	return err;
}

/* Re-protect the pending pages of clear window w of s. Called with kvm->lock. */
static int clear_window(struct dirty_kvm *kvm, struct kslot *s, uint64_t w)
{
	uint64_t first = w * kvm->chunk;

	if (s->marks[w / 64] & 1ull << (w % 64)) {
		s->marks[w / 64] &= ~(1ull << (w % 64));
		s->touched--;
	}
	return clear_range(kvm, s, first, s->npages - first < kvm->chunk ?
			   s->npages - first : kvm->chunk);
}

/*
 * Re-protect pages [first, last) of s (window aligned, or to the slot's
 * end), window by window. Called with kvm->lock.
 */
static int clear_span(struct dirty_kvm *kvm, struct kslot *s, uint64_t first,
		      uint64_t last)
{
	int err = 0;

	for (uint64_t p = first; p < last && !err; p += kvm->chunk)
		err = clear_window(kvm, s, p / kvm->chunk);
	return err;
}

/*
 * Re-protect every page of runs[0 .. n) in clear-log mode: each run's
 * clear window (kvm->chunk pages, 1 GiB by default, QEMU's unit) that
 * still holds pending pages is cleared whole, in one KVM_CLEAR_DIRTY_LOG,
 * the first time a claim hands out a page of it; later batches of the
 * round find it clear and cost no ioctl. That is safe because only
 * *pending* pages are cleared, and a pending page was reported and not
 * yet read since: it is still dirty in the view (read after this clear)
 * or claimed by a batch whose own prepare_read, after this one under
 * kvm->lock, finds it already re-protected. A page logged but not yet
 * reported is never cleared. Called with kvm->lock.
 */
static int clear_runs(struct dirty_kvm *kvm, const struct dirty_run *runs, size_t n)
{
	int err = 0;

	for (size_t i = 0; i < n && !err; i++) {
		for (size_t k = 0; k < kvm->nslots && !err; k++) {
			struct kslot *s = &kvm->slots[k];
			uint64_t a, e;

			/* Every window of the slot re-protected: the round's later batches. */
			if (!s->touched || runs[i].gpa >= s->gpa + s->size ||
			    runs[i].gpa + runs[i].len <= s->gpa)
				continue;
			a = runs[i].gpa > s->gpa ? runs[i].gpa : s->gpa;
			e = runs[i].gpa + runs[i].len < s->gpa + s->size ?
				runs[i].gpa + runs[i].len : s->gpa + s->size;
			for (uint64_t w = (a - s->gpa) / KVM_PAGE / kvm->chunk;
			     w <= (e - s->gpa - 1) / KVM_PAGE / kvm->chunk && !err; w++)
				if (s->marks[w / 64] & 1ull << (w % 64))
					err = clear_window(kvm, s, w);
		}
	}
	if (err)
		mark_all_slots(kvm);
	return err;
}

/* Clear-log: the claimed batch is re-protected before anyone reads it. */
static int kvm_prepare_read(struct dirty_source *src, struct dirty_run *runs,
			    size_t *n, size_t max)
{
	struct dirty_kvm *kvm = dirty_source_priv(src);
	int err;

	(void)max;
	pthread_mutex_lock(&kvm->lock);
	err = clear_runs(kvm, runs, *n);
	pthread_mutex_unlock(&kvm->lock);
	return err;
}
