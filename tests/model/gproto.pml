/* SPDX-License-Identifier: MIT */
/*
 * gproto.pml - the guest bitmap protocol (DESIGN section 3) as a Promela
 * model, checked by spin over every interleaving of guest map/sync/unmap,
 * device DMA, CPU writes, and the host's pre-copy and final rounds.
 * tests/t_model.sh runs it and the variants listed at the end.
 *
 * Property (DESIGN section 3, "the invariant"), asserted after the final
 * round: the destination holds the page's current content, i.e. every DMA
 * write and every CPU write made before the stops reached the destination.
 *
 * What runs
 *   guest(g), g < NG (2)  driver threads of ONE guest client (one
 *       dirty_guest, one pin table), each doing, any number of times and
 *       in any order: a mapping of page P (map; optionally sync_for_cpu;
 *       unmap; direction TO_DEVICE or FROM_DEVICE, chosen per mapping), or
 *       a FROM_DEVICE sync/unmap of the neighbouring page in P's dirty word
 *       (see "One observed page"). Both threads map P: that is where the
 *       pin reference count, the wait on a BUSY count word and the owned
 *       flag race.
 *   device  writes P any number of times while the device owns a thread's
 *       FROM_DEVICE buffer of P (map returned, and the driver has not yet
 *       started sync_for_cpu or unmap), until device stop. DMA writes are
 *       logged nowhere: that is the point of the protocol.
 *   cpu  writes P any number of times until vCPU stop; each write sets
 *       cpulog, an always-correct stand-in for KVM's dirty log.
 *   outage  the guest's agent goes silent (a crash, a reboot) and comes
 *       back, any number of times until vCPU stop. While it is down the
 *       device may write P with nothing reported at all (a rebooting
 *       guest's devices, drivers that no longer speak the protocol). It
 *       comes back (acknowledging the fresh generation) only after the host
 *       saw it silent: a silence shorter than the heartbeat timeout is not
 *       seen, and none of that sort can hide a write (the tracking flag
 *       stays on in the region; see gproto_trust.c).
 *   host policy SEND or DEFER (chosen nondeterministically); the view starts
 *       with P (the first full pass); any number of pre-copy rounds, each a
 *       sync (KVM log, then the guest protocol source: its trust judgement,
 *       then its bits) and a claim+send; then device stop and vCPU stop in
 *       either order; then the final round; then the assert.
 *
 * Which C each step is (by function)
 *   dirty_if       guest-agent/guest.c dirty_if -> proto.h
 *                  dirty_proto_set_dirty_range: fetch_or the dirty word,
 *                  load the summary word, fetch_or the summary bit if the
 *                  load saw it clear
 *   pin_get        guest.c pin_get; its fetch_or is dirty_proto_pin
 *   pin_put        guest.c pin_put; its unpin is dirty_proto_unpin
 *   unmap          guest.c dirty_guest_unmap: dirty_if, then pin_put
 *   sync_for_cpu   guest.c dirty_guest_sync_for_cpu: dirty_if
 *   harvest        hv-adapters/gproto_harvest.c harvest: LDX+XCHG of the summary
 *                  word, then LDX+XCHG of the dirty word; at final every
 *                  dirty word
 *   mark_pinned    gproto_harvest.c mark_pinned, from sync_common at final and
 *                  in every round under SEND
 *   release_carried gproto_harvest.c release_carried: one LDA of the pin word
 *   judge          gproto_trust.c __gp_judge at each sync and at final: a silent
 *                  agent ends trust (and raises a fresh generation); an
 *                  acknowledgement of it brings trust back and marks the
 *                  whole range (view = 1, a new first pass); at final an
 *                  untrusted guest gets the fallback (ALL_DIRTY: view = 1)
 *   claim          the migration's claim from the view; under DEFER the
 *                  claim's prepare_read (gproto_harvest.c __gp_prepare_read) reads the
 *                  pin word (one LDA) and, if set, keeps the page back in
 *                  the carried set instead of handing it out, as
 *                  tests/test_gproto.c defer_claims_keep_pinned_back checks
 *
 * Abstractions, and why none of them hides a violation
 *  - Content. A write bumps the page's version, a send copies it; the
 *    property is dest == version. The model keeps behind = (dest !=
 *    version): a write sets it, a send clears it. Versions only grow and
 *    are only compared for equality, so this is exact, and it leaves the
 *    number of writes, mappings and rounds unbounded with finite states.
 *  - The device's window closes in the first step of sync_for_cpu or unmap
 *    rather than just before it: the device may write a little longer than
 *    the DMA API allows, which only adds behaviours.
 *  - A send is an atomic copy of the page. A copy that overlaps a write is
 *    the atomic copy followed by that write, which is explored too.
 *  - One observed page. Every host loop decides page by page (harvest ORs
 *    each dirty bit into the view on its own; pins and carried pages are
 *    tested per bit; claims are per page), and the guest's pin table and
 *    pin bit are per page, so another page can affect P only through the
 *    words they share. Of those, the dirty word and the pin word are
 *    updated by atomic RMW on separate bits and read per bit; the summary
 *    bit is the one shared flag. So the neighbour is modelled by its
 *    summary steps only, and P, like any page, stands for all of them.
 *  - Direction. The C code tests only dir & DIRTY_FROM_DEVICE, so
 *    BIDIRECTIONAL is FROM_DEVICE here. The direction is chosen when map
 *    returns, as pin_get does not look at it. sync_for_device does nothing
 *    in the protocol and is left out: without it a sync_for_cpu ends the
 *    device's window, and unmap covers any later DMA anyway.
 *  - Memory model. Spin interleaves whole steps (sequential consistency).
 *    Each shared update in C is one atomic RMW, one step here, so no
 *    update is lost. The other C orderings (seq_cst summary, release
 *    unpin, acquire pin reads) decide in which pre-copy round a bit is
 *    found. The final round scans every dirty word, and device stop and
 *    vCPU stop (a VM pause) order all guest and device accesses before it
 *    in any memory model, so at final what matters is each thread's program
 *    order (dirty before unpin; pin before the buffer goes to the device),
 *    which the model keeps.
 *  - Pin table. guest.c keeps one atomic count word per page (pincnt):
 *    a count, OWNED and BUSY. The model's held/cnt/owned is that word:
 *    held with cnt 0 is BUSY (a 0->1 transition after the word was
 *    claimed, or a 1->0 one before 0 is published), which every other
 *    map or unmap waits on (wait_not_busy): a blocked guard, which adds
 *    nothing to a safety check.
 *  - Out of scope: the tracking handshake (on and acknowledged before the
 *    first pass: dirty_view_start waits for it; a late first one is an
 *    outage that ends), header corruption (fatal until the host rewrites
 *    it: untrusted at final), a lying guest (DESIGN section 3: it only
 *    hurts itself).
 *
 * Variants: spin -D<NAME>[=<value>] -a tests/model/gproto.pml
 *   PIN_GET=PIN_BUSY_FIRST  (default) pin_get as guest.c does it: claim
 *                       the count word (0 -> BUSY), then set the bit, then
 *                       publish count 1
 *   PIN_GET=PIN_BIT_FIRST   the earlier pin_get: set the pin bit, then
 *                       claim the word (broken, see below)
 *   BROKEN_UNPIN_FIRST  unmap clears the pin before setting the dirty bit
 *   BROKEN_NO_CARRY     DEFER drops a claimed pinned page instead of
 *                       carrying it (a TO_DEVICE unmap never dirties, so a
 *                       CPU write made while pinned is lost)
 *   BROKEN_FINAL_NO_PINNED  the final round does not add pinned pages
 *   BROKEN_NO_REPASS    trust comes back without marking the range: a write
 *                       made while the guest was down and P already sent is
 *                       lost
 *   BROKEN_TRUST_FINAL  the final round trusts a guest that is not trusted
 *                       (no fallback)
 *   MULTI_CLIENT        each thread is its own guest client (its own
 *                       dirty_guest and pin table; one shared pin bitmap)
 *   NG=<n>              n guest threads (default 2)
 * tests/t_model.sh checks that the default verifies and that
 * PIN_BIT_FIRST and each BROKEN_* variant are rejected, each for its own
 * fault (the BROKEN_* ones on top of the default).
 *
 * What the model found
 *  - PIN_BIT_FIRST (guest.c before this model) loses a DMA write. Thread
 *    B finds the word 0; thread A sets the bit (owned), claims the word,
 *    maps and unmaps; B's fetch_or falls between A's and A's unpin, so B
 *    finds the bit set (owned = false); A clears the bit and publishes 0;
 *    B's claim now succeeds and B's map returns with the page unpinned.
 *    A VM stop before B's unmap loses B's DMA. Fixed in pin_get.
 *  - PIN_BUSY_FIRST verifies: the page's previous holder published 0
 *    before our claim, and cleared the bit before publishing 0, so our
 *    fetch_or is the last write to the bit.
 *  - MULTI_CLIENT is rejected: the client that set a bit clears it on its
 *    own last unmap while another client still maps the page, which
 *    DESIGN section 3 forbids. One bit per page cannot carry two clients'
 *    references; such clients must share one pin table (the agent). Not
 *    part of the test; the README states the limit.
 */

#ifndef NG
#define NG 2		/* guest driver threads */
#endif

#define PIN_BIT_FIRST  1	/* pin_get sets the bit, then claims the count word */
#define PIN_BUSY_FIRST 2	/* pin_get claims the word (BUSY), then sets the bit */
#ifndef PIN_GET
#define PIN_GET PIN_BUSY_FIRST	/* what guest.c does */
#endif

#define TO_DEV   1	/* enum dirty_dma_dir; FROM_DEV also stands for BIDIR */
#define FROM_DEV 2

#define SEND  0		/* enum dirty_gp_pinned */
#define DEFER 1

#ifdef MULTI_CLIENT
#define NC NG
#define C(g) (g)	/* thread g's client, i.e. its pin table */
#else
#define NC 1
#define C(g) 0
#endif

/* ---- the world ------------------------------------------------------------ */
bool behind;		/* destination != content (see "Content") */
bool cpulog;		/* KVM's dirty log */
bool dstop, vstop;	/* device stopped; vCPUs stopped */
bool down;		/* the guest's agent is silent (crashed, rebooting) */
bool seen_down;		/* the host judged it silent since it went down */

/* ---- the shared region: P's bits --------------------------------------- */
bool dirty;		/* in dirty word w */
bool summ;		/* summary bit of w, shared with the neighbour */
bool pin;		/* in pin word w */

/* ---- each client's pin table: P's count word ----------------------------- */
bool held[NC];		/* the word is not 0: BUSY, or a count */
byte cnt[NC];		/* its count; 0 while held: BUSY (claimed and not yet
			   counted, or the last reference going) */
bool owned[NC];		/* its OWNED flag: this client set the pin bit */

/* ---- thread g's mapping of P -------------------------------------------- */
byte gdir[NG];		/* 0 while g has no mapping */
bool dma[NG];		/* the device owns g's FROM_DEVICE buffer */
byte ndma;		/* how many dma[] are set (derived: adds no states) */

/* map returned: choose the direction; the device owns a FROM buffer. */
inline map_returns(g)
{
	if
	:: gdir[g] = TO_DEV
	:: gdir[g] = FROM_DEV; dma[g] = 1; ndma++
	fi
}

/* The driver saw the DMA complete: the device no longer owns the buffer. */
inline end_dma(g)
{
	if
	:: dma[g] -> dma[g] = 0; ndma--
	:: else
	fi
}

/* The summary half of dirty_proto_set_dirty_range: load, then maybe set. */
inline set_summary()
{
	if
	:: summ -> skip				/* the load saw the bit set */
	:: else -> summ = 1			/* the fetch_or; the host may exchange in between */
	fi
}

/* dirty_if (guest.c) for g's mapping; its first step ends the window. */
inline dirty_if(g)
{
	if
	:: atomic { gdir[g] == FROM_DEV -> end_dma(g); dirty = 1 } ->	/* fetch_or of the dirty word */
		set_summary()
	:: else
	fi
}

#if PIN_GET == PIN_BIT_FIRST
/*
 * pin_get as first written: set the bit, then claim the word. Broken;
 * kept as the variant the model must reject.
 */
inline pin_get(g)
{
	do
	:: atomic { held[C(g)] && cnt[C(g)] > 0 -> cnt[C(g)]++ } ->	/* a reference */
		atomic {
			if
			:: myowned -> owned[C(g)] = 1
			:: else
			fi;
			map_returns(g)
		}
		break
	:: !held[C(g)] ->					/* the word is 0 */
		atomic { myowned = myowned || !pin; pin = 1 }	/* dirty_proto_pin */
		if						/* claim 0 -> count 1 */
		:: atomic { !held[C(g)] ->
			held[C(g)] = 1; cnt[C(g)] = 1; owned[C(g)] = myowned;
			map_returns(g) }
			break
		:: held[C(g)]					/* lost the race: retry */
		fi
	/* held && cnt == 0, BUSY: blocked until it changes */
	od
}
#elif PIN_GET == PIN_BUSY_FIRST
/*
 * The fix (guest.c pin_get): claim the word (0 -> BUSY; others wait on
 * it), then set the bit, then publish count 1. The page's previous holder
 * cleared the bit before it published 0, and 0 came before our claim, so
 * the last write to the bit is our set.
 */
inline pin_get(g)
{
	do
	:: atomic { held[C(g)] && cnt[C(g)] > 0 -> cnt[C(g)]++; map_returns(g) }
		break
	:: !held[C(g)] ->
		if
		:: atomic { !held[C(g)] -> held[C(g)] = 1 } ->	/* CAS 0 -> BUSY */
			atomic { myowned = !pin; pin = 1 }		/* dirty_proto_pin */
			atomic { owned[C(g)] = myowned; cnt[C(g)] = 1;	/* publish */
				map_returns(g) }
			break
		:: held[C(g)]
		fi
	od
}
#else
#error "PIN_GET must be PIN_BIT_FIRST or PIN_BUSY_FIRST"
#endif

/*
 * pin_put (guest.c): the last reference (count 1 -> BUSY) clears the bit
 * if this client set it, then publishes 0. Its first step can be unmap's first (TO_DEVICE, or
 * BROKEN_UNPIN_FIRST), so it ends the device's window too.
 */
inline pin_put(g)
{
	if							/* 1 -> BUSY, or a decrement */
	:: atomic { cnt[C(g)] > 1 -> end_dma(g); cnt[C(g)]--; gdir[g] = 0; myowned = 0 }
	:: atomic { cnt[C(g)] == 1 -> end_dma(g); cnt[C(g)] = 0 } ->
		atomic {	/* owned is stable: joiners stored it before their map returned */
			if
			:: owned[C(g)] -> pin = 0		/* dirty_proto_unpin */
			:: else					/* another client's pin: left set */
			fi
		}
		d_step { held[C(g)] = 0; owned[C(g)] = 0; gdir[g] = 0; myowned = 0 }	/* publish 0 */
	fi
}

proctype guest(byte g)
{
	bool myowned;

	/* vCPU stop may fall between any two steps of any operation. */
	do
	:: pin_get(g);				/* dirty_guest_map */
		if
		:: skip
		:: dirty_if(g)			/* dirty_guest_sync_for_cpu */
		fi;
#ifndef BROKEN_UNPIN_FIRST
		dirty_if(g);			/* dirty_guest_unmap: dirty first */
		pin_put(g)			/* then unpin */
#else
		pin_put(g);
		dirty_if(g)
#endif
	:: set_summary()			/* the neighbour's sync or unmap */
	od unless { vstop }
}

proctype device()
{
	do
	:: atomic { !dstop && ndma > 0 -> behind = 1 }	/* a DMA write to P */
	:: atomic { !dstop && down -> behind = 1 }	/* unreported: the guest is down */
	:: dstop -> break
	od
}

/* The agent goes silent and comes back, any number of times. */
proctype outage()
{
	do
	:: atomic { !vstop && !down -> down = 1 }
	:: atomic { down && seen_down -> down = 0; seen_down = 0 }	/* acks the fresh gen */
	:: vstop -> break
	od
}

proctype cpu()
{
	do
	:: atomic { !vstop -> behind = 1; cpulog = 1 }
	:: vstop -> break
	od
}

/* ---- host ------------------------------------------------------------------ */

#ifndef BROKEN_FINAL_NO_PINNED
#define FINAL_PIN pin		/* sync_common(final) calls mark_pinned */
#else
#define FINAL_PIN 0
#endif

#ifndef BROKEN_NO_REPASS
#define REPASS 1		/* trust gained marks the whole range */
#else
#define REPASS 0
#endif

#ifndef BROKEN_TRUST_FINAL
#define FALLBACK (!trusted)	/* untrusted at final: ALL_DIRTY marks the range */
#else
#define FALLBACK 0
#endif

/* __gp_judge: silence ends trust; the fresh acknowledgement brings it back. */
inline judge()
{
	d_step {
		if
		:: down -> trusted = 0; seen_down = 1
		:: !down && !trusted -> trusted = 1; view = view || REPASS
		:: else
		fi
	}
}

proctype host()
{
	bool view, carried, policy;
	bool trusted = 1;	/* dirty_view_start waited for the acknowledgement */

	if
	:: policy = SEND
	:: policy = DEFER
	fi;
	view = 1;				/* the first pass */
	do
	:: /* a pre-copy round: dirty_view_sync, then the claim */
		d_step { view = view || cpulog; cpulog = 0 }	/* the KVM source */
		/* sync_common(final = false): judge, then the bits */
		judge();
		if
		:: summ ->				/* harvest: LDX of the summary word */
			summ = 0;			/* its XCHG (only the host clears: it returns 1) */
			if
			:: dirty ->			/* LDX of the dirty word */
				d_step { view = view || dirty; dirty = 0 }	/* its XCHG, flush_chunk */
			:: else
			fi
		:: else
		fi;
		if
		:: policy == SEND ->
			d_step { view = view || pin }	/* mark_pinned */
		:: else
		fi;
		if
		:: carried ->				/* release_carried */
			d_step { view = view || !pin; carried = pin }
		:: else
		fi;
		/* the migration claims P */
		if
		:: policy == SEND && view ->
			d_step { view = 0; behind = 0 }	/* send */
		:: atomic { policy == DEFER && view && pin -> view = 0;	/* gp_prepare_read: pinned */
#ifndef BROKEN_NO_CARRY
			carried = 1			/* kept back, carried */
#endif
		   }
		:: atomic { policy == DEFER && view && !pin -> view = 0 } ->
			behind = 0			/* send */
		:: else
		fi
	:: break
	od;
	if
	:: dstop = 1; vstop = 1
	:: vstop = 1; dstop = 1
	fi;
	/*
	 * The final round, alone now: dirty_view_final (the KVM log, then
	 * sync_common(final = true): judge; untrusted -> the fallback; else
	 * every dirty word, mark_pinned, release_carried(all)), then claim and
	 * send.
	 */
	judge();
	d_step {
		view = view || cpulog || dirty || carried || FINAL_PIN || FALLBACK;
		if :: view -> behind = 0 :: else fi
	}
	assert(!behind)
}

init
{
	byte i;

	atomic {
		behind = 1;			/* nothing sent yet */
		run host();
		run cpu();
		run device();
		run outage();
		do
		:: i < NG -> run guest(i); i++
		:: else -> break
		od
	}
}
