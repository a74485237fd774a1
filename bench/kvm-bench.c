/* SPDX-License-Identifier: MIT */
/*
 * kvm-bench.c - the KVM adapter's harvest cost per round against the raw
 * ioctls a VMM would issue without libdirty, on a real VM, in one run.
 * Owns the adapter's targets (issue 16), in each mode: adapter/raw <= 1.10
 * from 4096 pages per round on, and at most 10 us more than raw at 64
 * pages; reports them and never fails on them. Exit 1 only if a side
 * reports other pages than the guest wrote, or on an error.
 *
 * Reproduce:  make build/bin/kvm-bench && build/bin/kvm-bench [--json]
 *             build/bin/kvm-bench --quick      (smoke test, about a second)
 *
 * Per mode (bitmap, clear-log, ring) one VM (support/kvm/vmm.h): one
 * dirty-logged slot of --mem-mib RAM, two vCPUs running the payload. Each
 * round the guest stamps N distinct random pages (WRITE_PAGES, one word
 * each) and one side harvests them: vCPU 1 writes for the raw side, vCPU 0
 * for the adapter, alternating (order swapped every rep), so each harvest
 * sees its own round's writes plus that vCPU's command block and stack
 * page. In ring mode each side owns one vCPU's ring, so neither consumes
 * entries behind the other's index. Only the host harvest is timed.
 *
 *  raw      bitmap: memset + KVM_GET_DIRTY_LOG, set bits into a pfn list;
 *           clear-log: the same + one KVM_CLEAR_DIRTY_LOG of those bits;
 *           ring: acquire-load flags, dedup into a pfn list, release-store
 *           RESET, KVM_RESET_DIRTY_RINGS.
 *  adapter  dirty_view_sync + dirty_claim_next in batches of RUN_BATCH runs
 *           into a run list; in clear-log mode each claim re-protects its
 *           batch itself (the source's prepare_read), as for any sender.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "opts.h"
#include "rng.h"
#include "stats.h"
#include "libdirty.h"
#include "vmm.h"

#define PAGE 4096ull
#define RUN_BATCH 256
#define RING_BYTES (1u << 20)	/* 64 Ki entries: a small ring overflows on this KVM */
#define LIST_GPA(v) (PAYLOAD_LOW_END + (uint64_t)(v) * 0x10000u)	/* 8 Ki pfns each */
#define FIRST_PFN ((PAYLOAD_LOW_END + 2 * 0x10000u) / PAGE)	/* stamped pages start here */
#define MAX_N 4096u
#define ADAPTER 0		/* a side's index is the vCPU that writes for it */
#define RAW 1

static const enum dirty_kvm_mode modes[3] = { DIRTY_KVM_BITMAP, DIRTY_KVM_CLEAR_LOG, DIRTY_KVM_RING };
static const uint32_t sizes[3] = { 64, 512, MAX_N };

struct rig {
	enum dirty_kvm_mode mode;
	uint64_t npages, nwords;
	struct kvm_vm *vm;
	struct kvm_vm_mem ram;
	struct kvm_vm_vcpu *vc[2];
	uint64_t *log, *seen, *pfns, npfns, bad;	/* raw side */
	struct kvm_dirty_gfn *ring;
	uint32_t nent, fetch;
	struct dirty_view *view;			/* adapter side */
	struct dirty_kvm *kvm;
	struct dirty_claim *cl;
	struct dirty_run *runs;
	size_t nruns;
	uint64_t *want, list[MAX_N], rng;		/* workload */
};

struct result {
	uint32_t n;
	uint64_t reported[2];
	double raw_us, ad_us, sync_us, drain_us;
};

static int fail(const char *what, const char *msg)
{
	fprintf(stderr, "kvm-bench: %s: %s\n", what, msg);
	return -1;
}

/* The raw side, what a VMM does without libdirty: bitmap and clear-log. */
static int raw_log(struct rig *r)
{
	struct kvm_dirty_log log = { .slot = 0, .dirty_bitmap = r->log };
	struct kvm_clear_dirty_log clr = { .slot = 0, .first_page = 0,
					   .num_pages = (uint32_t)r->npages, .dirty_bitmap = r->log };
	uint64_t n = 0;

	memset(r->log, 0, r->nwords * 8);
	if (ioctl(r->vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
		return -errno;
	for (uint64_t w = 0; w < r->nwords; w++)
		for (uint64_t v = r->log[w]; v; v &= v - 1)
			r->pfns[n++] = w * 64 + (uint64_t)__builtin_ctzll(v);
	r->npfns = n;
	if (r->mode == DIRTY_KVM_CLEAR_LOG && n &&
	    ioctl(r->vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr) < 0)
		return -errno;
	return 0;
}

static int raw_ring(struct rig *r)
{
	uint64_t n = 0, entries = 0;

	for (;; r->fetch++, entries++) {
		struct kvm_dirty_gfn *e = &r->ring[r->fetch & (r->nent - 1)];
		uint64_t off;

		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY))
			break;
		off = e->offset;
		if (e->slot != 0 || off >= r->npages) {
			r->bad++;
		} else if (!(r->seen[off / 64] & 1ull << (off % 64))) {
			r->seen[off / 64] |= 1ull << (off % 64);
			r->pfns[n++] = off;
		}
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
	}
	if (entries && ioctl(r->vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0)
		return -errno;
	for (uint64_t i = 0; i < n; i++)	/* every set bit is listed: zero its word */
		r->seen[r->pfns[i] / 64] = 0;
	r->npfns = n;
	return 0;
}

/* The adapter side after its sync: claim everything (clear-log re-protects inside). */
static int adapter_drain(struct rig *r)
{
	ssize_t k = 0;

	for (r->nruns = 0; r->nruns < r->npages; r->nruns += (size_t)k) {
		k = dirty_claim_next(r->cl, r->runs + r->nruns, r->npages - r->nruns < RUN_BATCH ?
				     r->npages - r->nruns : RUN_BATCH);
		if (k <= 0)
			return (int)k;
	}
	return 0;
}

/* N distinct random pages, noted in want, stamped by vCPU `side`. */
static int guest_write(struct rig *r, int side, uint32_t n)
{
	struct payload_cmd c = { .cmd = PAYLOAD_CMD_WRITE_PAGES, .list_gpa = LIST_GPA(side),
				 .count = n, .words = 1, .stamp = splitmix64(&r->rng) };

	for (uint32_t i = 0; i < n;) {
		uint64_t p = FIRST_PFN + splitmix64(&r->rng) % (r->npages - FIRST_PFN);

		if (!(r->want[p / 64] & 1ull << (p % 64))) {
			r->want[p / 64] |= 1ull << (p % 64);
			r->list[i++] = p;
		}
	}
	/* Host stores to guest RAM are not logged: the list costs no dirt. */
	memcpy((char *)r->ram.hva + LIST_GPA(side), r->list, n * sizeof(uint64_t));
	if (kvm_vm_cmd(r->vc[side], &c, 10000 + (int)n, NULL))
		return fail("guest WRITE_PAGES", kvm_vm_last_error());
	return 0;
}

/*
 * Every written page exactly once, nothing else but the vCPU's command
 * block and stack page. The adapter's runs become pages here, untimed.
 */
static int verify(struct rig *r, int side, uint32_t n, uint64_t *reported)
{
	uint64_t got = 0, bad = UINT64_MAX;

	if (side == ADAPTER)
		r->npfns = 0;
	for (size_t i = 0; side == ADAPTER && i < r->nruns; i++)
		for (uint64_t a = r->runs[i].gpa; a < r->runs[i].gpa + r->runs[i].len &&
		     r->npfns < r->npages; a += PAGE)
			r->pfns[r->npfns++] = a / PAGE;
	for (uint64_t i = 0, p; i < r->npfns; i++) {
		p = r->pfns[i];
		if (p < r->npages && r->want[p / 64] & 1ull << (p % 64)) {
			r->want[p / 64] &= ~(1ull << (p % 64));
			got++;
		} else if (p != PAYLOAD_CMD_GPA(side) / PAGE && p != PAYLOAD_STACK_GPA(side) / PAGE &&
			   bad == UINT64_MAX) {
			bad = p;
		}
	}
	*reported = r->npfns;
	if (got == n && bad == UINT64_MAX && !r->bad && r->npfns <= n + 2)
		return 0;
	fprintf(stderr, "kvm-bench: %s, %s side: %llu pages reported, %llu of the %u written, "
		"%s unwritten page %#llx, %llu bad ring entries\n", dirty_kvm_mode_name(r->mode),
		side == RAW ? "raw" : "adapter", (unsigned long long)r->npfns, (unsigned long long)got,
		n, bad == UINT64_MAX ? "no" : "e.g.", bad == UINT64_MAX ? 0ull : (unsigned long long)bad,
		(unsigned long long)r->bad);
	return -1;
}

static void rig_down(struct rig *r)
{
	dirty_claim_free(r->cl);
	dirty_view_free(r->view);	/* destroys the adapter, which unmaps its ring */
	if (r->ring && r->ring != MAP_FAILED)
		munmap(r->ring, RING_BYTES);
	kvm_vm_destroy(r->vm);
	kvm_vm_mem_destroy(&r->ram);
	free(r->log);	/* and seen, want */
	free(r->pfns);
	free(r->runs);
}

static int rig_up(struct rig *r, enum dirty_kvm_mode mode, uint64_t mem)
{
	struct kvm_vm_opts o = { .manual_protect = mode == DIRTY_KVM_CLEAR_LOG,
				 .dirty_ring_bytes = mode == DIRTY_KVM_RING ? RING_BYTES : 0 };
	struct dirty_kvm_config kc = { .mode = mode, .ring_bytes = o.dirty_ring_bytes };
	struct kvm_vm_slot s = { .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .size = mem };

	memset(r, 0, sizeof(*r));
	r->mode = mode;
	r->ram.fd = -1;
	r->npages = mem / PAGE;
	r->nwords = r->npages / 64;
	r->rng = 0x6b766d2d62656e63ull;	/* every mode gets the same page lists */
	r->log = calloc(3 * r->nwords, 8);
	r->pfns = calloc(r->npages, sizeof(*r->pfns));
	r->runs = calloc(r->npages, sizeof(*r->runs));
	if (!r->log || !r->pfns || !r->runs)
		return fail("set-up", "out of memory");
	r->seen = r->log + r->nwords;
	r->want = r->seen + r->nwords;
	if (kvm_vm_create(&o, &r->vm) || kvm_vm_mem_create(&r->ram, mem, "kvm-bench-ram"))
		return fail("VM", kvm_vm_last_error());
	s.hva = r->ram.hva;
	s.fd = r->ram.fd;
	if (kvm_vm_add_slot(r->vm, &s) || kvm_vm_load_payload(r->vm) ||
	    kvm_vm_vcpu_add(r->vm, &r->vc[0]) || kvm_vm_vcpu_add(r->vm, &r->vc[1]))
		return fail("VM", kvm_vm_last_error());
	kc.vm_fd = r->vm->vm_fd;
	if (dirty_view_new(&r->view) || dirty_view_add_region(r->view, 0, mem, PAGE, 0) ||
	    dirty_kvm_create(r->view, &kc, &r->kvm) || dirty_kvm_add_slot(r->kvm, 0, 0, mem) ||
	    (mode == DIRTY_KVM_RING && dirty_kvm_add_vcpu(r->kvm, r->vc[ADAPTER]->fd) < 0) ||
	    dirty_claim_new(r->view, &r->cl) || dirty_view_start(r->view) ||
	    adapter_drain(r))	/* start marked every page: the first pass */
		return fail("adapter", dirty_last_error());
	if (mode == DIRTY_KVM_RING) {
		r->ring = mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, r->vc[RAW]->fd,
			       (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
		if (r->ring == MAP_FAILED)
			return fail("mmap of vCPU 1's dirty ring", strerror(errno));
		r->nent = RING_BYTES / sizeof(*r->ring);
	}
	return 0;
}

/* A warm-up round per side, then reps timed rounds per side; t has 4 * reps. */
static int run_case(struct rig *r, int reps, double *t, struct result *res)
{
	for (int rep = -1; rep < reps; rep++) {
		for (int k = 0; k < 2; k++) {
			int side = rep & 1 ? 1 - k : k, err;
			uint64_t t0, t1, t2;

			if (guest_write(r, side, res->n))
				return -1;
			t0 = now_ns();
			if (side == RAW)
				err = r->mode == DIRTY_KVM_RING ? raw_ring(r) : raw_log(r);
			else
				err = dirty_view_sync(r->view);
			t1 = now_ns();
			if (!err && side == ADAPTER)
				err = adapter_drain(r);
			t2 = now_ns();
			if (err)
				return fail(side == RAW ? "raw harvest" : "adapter harvest",
					    side == RAW ? strerror(-err) : dirty_last_error());
			if (verify(r, side, res->n, &res->reported[side]))
				return -1;
			if (rep >= 0 && side == RAW)
				t[rep] = (double)(t1 - t0) / 1e3;
			if (rep >= 0 && side == ADAPTER) {
				t[reps + rep] = (double)(t2 - t0) / 1e3;
				t[2 * reps + rep] = (double)(t1 - t0) / 1e3;
				t[3 * reps + rep] = (double)(t2 - t1) / 1e3;
			}
		}
	}
	res->raw_us = median(t, reps);
	res->ad_us = median(t + reps, reps);
	res->sync_us = median(t + 2 * reps, reps);
	res->drain_us = median(t + 3 * reps, reps);
	return 0;
}

/* "" if the mode can run here, else why not. */
static const char *missing_cap(enum dirty_kvm_mode mode)
{
	int mp = kvm_check_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);

	if (mode == DIRTY_KVM_CLEAR_LOG && (mp <= 0 || !(mp & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)))
		return "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 not supported";
	if (mode == DIRTY_KVM_RING && kvm_check_cap(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) < (int)RING_BYTES &&
	    kvm_check_cap(KVM_CAP_DIRTY_LOG_RING) < (int)RING_BYTES)
		return "KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) not supported with a 1 MiB ring";
	return "";
}

static void usage(FILE *f)
{
	fputs("usage: kvm-bench [--json] [--reps N] [--mem-mib N] [--quick] [--help]\n\n"
"Harvest cost per round on a real KVM VM whose guest wrote N random pages\n"
"(N = 64, 512, 4096): raw ioctls against the libdirty KVM adapter, in\n"
"bitmap, clear-log and ring modes, alternating on one VM per mode.\n\n"
"  --json       one JSON object per mode and N instead of the table\n"
"  --reps N     timed rounds per side after a warm-up (default 21), median\n"
"  --mem-mib N  guest RAM in MiB, 64..3072 (default 1024)\n"
"  --quick      256 MiB, N = 64 and 512, 3 reps unless given\n\n"
"Columns: pages each side reported (N + the writing vCPU's command block\n"
"and stack); raw us; adapter us = sync us + drain us; adapter/raw. Targets:\n"
"adapter/raw <= 1.10 at 4096 pages, adapter - raw <= 10 us at 64. Exit 77\n"
"if /dev/kvm is unusable (a mode lacking its capability is skipped), 1 on\n"
"a wrong page set or an error, 2 on a usage error.\n", f);
}

/* The number in s if it lies in [lo, hi], else 0. */
int main(int argc, char **argv)
{
	double big[3] = { 0 }, small_us[3] = { 0 };
	bool have_big[3] = { false }, have_small[3] = { false };
	bool json = false, quick = false;
	long mib = 0, reps = 0;
	double nmib = 0, nreps = 0;
	int rc = 0;
	double *t;

	const struct opt opts[] = {
		OPT_FLAG_("--json", &json),
		OPT_FLAG_("--quick", &quick),
		OPT_NUM_("--reps", &nreps, 1, 1000, true),
		/* Below 4 GiB: the payload runs without paging. */
		OPT_NUM_("--mem-mib", &nmib, 64, 3072, true),
	};

	if ((rc = opts_parse("kvm-bench", argc, argv, 1, opts, sizeof(opts) / sizeof(opts[0]), usage)))
		return rc == OPTS_HELP ? 0 : 2;
	reps = (long)nreps;
	mib = (long)nmib;
	reps = reps ? reps : quick ? 3 : 21;
	mib = mib ? mib : quick ? 256 : 1024;
	kvm_require();		/* exit 77 with "SKIP: <why>" */
	if (!(t = calloc(4 * (size_t)reps, sizeof(*t)))) {
		fail("set-up", "out of memory");
		return 1;
	}
	if (!json)
		printf("%ld MiB guest RAM (%ld pages), median of %ld rounds per side\n\n"
		       "%-10s %5s %15s %9s %11s %9s %9s %7s\n", mib, mib * 256, reps, "mode", "N",
		       "raw/adapter pgs", "raw us", "adapter us", "sync us", "drain us", "ad/raw");
	for (int m = 0; m < 3 && !rc; m++) {
		const char *why = missing_cap(modes[m]);
		struct rig *r;

		if (*why) {	/* on stderr in JSON mode: stdout holds only objects */
			fprintf(json ? stderr : stdout, "SKIP: %s mode: %s\n",
				dirty_kvm_mode_name(modes[m]), why);
			continue;
		}
		if (!(r = malloc(sizeof(*r))) || rig_up(r, modes[m], (uint64_t)mib << 20))
			rc = 1;
		for (int s = 0; s < (quick ? 2 : 3) && !rc; s++) {
			struct result res = { .n = sizes[s] }, *x = &res;

			if (isatty(STDERR_FILENO))
				fprintf(stderr, "kvm-bench: %s, %u pages per round...\n",
					dirty_kvm_mode_name(modes[m]), x->n);
			if (run_case(r, (int)reps, t, x)) {
				rc = 1;
			} else if (json) {
				printf("{\"mode\":\"%s\",\"pages_per_round\":%u,\"raw_us\":%.2f,"
				       "\"adapter_us\":%.2f,\"sync_us\":%.2f,\"drain_us\":%.2f,"
				       "\"delta_us\":%.2f,\"ratio\":%.3f}\n", dirty_kvm_mode_name(modes[m]),
				       x->n, x->raw_us, x->ad_us, x->sync_us, x->drain_us,
				       x->ad_us - x->raw_us, x->ad_us / x->raw_us);
			} else {
				printf("%-10s %5u %9llu/%-5llu %9.1f %11.1f %9.1f %9.1f %6.2fx\n",
				       dirty_kvm_mode_name(modes[m]), x->n,
				       (unsigned long long)x->reported[RAW],
				       (unsigned long long)x->reported[ADAPTER], x->raw_us, x->ad_us,
				       x->sync_us, x->drain_us, x->ad_us / x->raw_us);
			}
			fflush(stdout);
			if (!rc && x->n >= MAX_N && x->ad_us / x->raw_us > big[m]) {
				big[m] = x->ad_us / x->raw_us;
				have_big[m] = true;
			}
			if (!rc && x->n == sizes[0]) {
				small_us[m] = x->ad_us - x->raw_us;
				have_small[m] = true;
			}
		}
		if (r)
			rig_down(r);
		free(r);
	}
	for (int m = 0, first = 1; m < 3 && !json && !rc; m++) {
		if (have_big[m])
			printf("%starget adapter/raw <= 1.10 at %u pages (%s): %.2fx \u2014 %s\n",
			       first ? "\n" : "", MAX_N, dirty_kvm_mode_name(modes[m]), big[m],
			       big[m] <= 1.10 ? "met" : "not met");
		if (have_small[m])
			printf("%starget adapter - raw <= +10 us at %u pages (%s): %+.1f us \u2014 %s\n",
			       first && !have_big[m] ? "\n" : "", sizes[0], dirty_kvm_mode_name(modes[m]),
			       small_us[m], small_us[m] <= 10 ? "met" : "not met");
		first = first && !have_big[m] && !have_small[m];
	}
	free(t);
	return rc;
}
