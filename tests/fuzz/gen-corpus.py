#!/usr/bin/env python3
# gen-corpus.py - writes the committed seed corpora in tests/fuzz/corpus/.
# Seeds only need to be valid-looking starting points; the encodings below
# mirror the input formats documented in fuzz_host_region.c (op enum) and
# fuzz_guest_open.c (region bytes, ops at [384, 4096)). Rerun after changing
# either format:  python3 tests/fuzz/gen-corpus.py
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
MAGIC = 0x595452494442494C
BASE = 0x40000000


def layout(npages):
    align = lambda v: (v + 4095) & ~4095
    dw = (npages + 63) // 64
    sw = (dw + 63) // 64
    d_off, d_len = 4096, align(dw * 8)
    s_off, s_len = d_off + d_len, align(sw * 8)
    p_off = s_off + s_len
    return dict(dirty_words=dw, dirty_off=d_off, dirty_len=d_len, summary_off=s_off,
                summary_len=s_len, pin_off=p_off, pin_len=d_len, size=p_off + d_len)


def header(npages, shift=12, gpa=BASE, major=1, track_gen=1):
    l = layout(npages)
    h = struct.pack('<QHHIII', MAGIC, major, 0, 4096, shift, 0)
    h += struct.pack('<13Q', gpa, npages, l['size'], l['dirty_off'], l['dirty_len'],
                     l['summary_off'], l['summary_len'], l['pin_off'], l['pin_len'], 0, 0, 0, 0)
    h += struct.pack('<QQ', track_gen, 1 if track_gen else 0) + bytes(112)  # host: tracking on
    h += struct.pack('<QQIHH', 0, 0, 0, 0, 0) + bytes(128 - 24)  # guest block
    assert len(h) == 384
    return h, l


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    assert len(data) < 20 * 1024, name
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


# ---- fuzz_host_region: config byte, then ops -------------------------------
(OP_WRITE, OP_FILL, OP_STORE64, OP_GMARK, OP_GPIN, OP_GACK, OP_SYNC, OP_HEALTH,
 OP_ACKED, OP_PINNED, OP_DEFER, OP_TRACK, OP_FINAL, OP_CLAIM, OP_DRAIN) = range(15)
CFG_DEFER, CFG_ABORT, CFG_START, CFG_8K = 1, 2, 4, 0x40


def cfg(geom=0, *bits):
    return bytes([(geom << 3) | sum(bits)])


u8 = lambda v: bytes([v])
u16 = lambda v: struct.pack('<H', v)
u32 = lambda v: struct.pack('<I', v)
u64 = lambda v: struct.pack('<Q', v)
gmark = lambda p, n: u8(OP_GMARK) + u32(p) + u8(n - 1)
gpin = lambda p, unpin=0: u8(OP_GPIN) + u32(p) + u8(unpin)
store64 = lambda off, v: u8(OP_STORE64) + u16(off // 8) + u64(v)
fill = lambda sec, val: u8(OP_FILL) + u8(sec) + u16(0) + u16(0) + u8(val)
near = lambda gpa: u8(1) + u64(gpa - (BASE - 2 * 4096))  # mode 1: BASE-2p + v
defer = lambda gpa, ln: u8(OP_DEFER) + near(gpa) + u8(1) + u64(ln)
op = lambda *o: bytes(o)

hd = os.path.join(here, 'corpus', 'fuzz_host_region')
write(hd, 'clean-round', cfg(0, CFG_START) + op(OP_GACK, OP_ACKED) + gmark(1, 3) +
      gmark(4095, 2) + gmark(12364, 1) + op(OP_SYNC, OP_DRAIN) + gpin(7) + gmark(64, 64) +
      op(OP_SYNC, OP_HEALTH) + u8(OP_CLAIM) + u8(1) + gpin(7, 1) + op(OP_FINAL))
write(hd, 'overwritten-magic', cfg(0, CFG_START) + gmark(9, 1) + store64(0, 0) +
      op(OP_HEALTH, OP_SYNC, OP_FINAL))
write(hd, 'torn-npages', cfg(1) + u8(OP_WRITE) + u16(32) + u8(4) + b'\xff\xff\x00\x00' +
      op(OP_SYNC) + u8(OP_WRITE) + u16(32) + u8(4) + u32(65) + op(OP_HEALTH, OP_FINAL))
write(hd, 'all-ones-abort', cfg(0, CFG_ABORT, CFG_START) + fill(2, 0xff) + fill(3, 0xff) +
      fill(4, 0xff) + op(OP_SYNC, OP_DRAIN, OP_FINAL))
write(hd, 'defer-carry', cfg(0, CFG_DEFER, CFG_START) + op(OP_GACK) + gpin(100) + gpin(101) +
      defer(BASE + 100 * 4096, 2 * 4096) + u8(OP_PINNED) + near(BASE + 100 * 4096) +
      op(OP_SYNC, OP_DRAIN) + gpin(100, 1) + op(OP_SYNC, OP_DRAIN, OP_HEALTH) + op(OP_FINAL))
write(hd, 'big-8k', cfg(5, CFG_8K, CFG_START) + gmark(262145, 2) + gmark(4096 * 64 - 1, 1) +
      op(OP_SYNC) + u8(OP_CLAIM) + u8(0) + op(OP_TRACK) + u8(0) + op(OP_ACKED, OP_FINAL))
write(hd, 'guest-state', cfg(3) + store64(256 + 16, 0x0000000200000001) + op(OP_HEALTH) +
      store64(128, 5) + op(OP_TRACK) + u8(1) + op(OP_GACK, OP_ACKED, OP_FINAL))

# ---- fuzz_guest_open: the region itself; ops at [384, 4096) ----------------
MAP, UNMAP, SYNC_CPU, SYNC_DEV, POLL, INFO = range(6)
TO_DEV, FROM_DEV, BIDIR = 1, 2, 3


def gop(o, d, page, npg, base=BASE, ps=4096):
    # m = 0: address near the range (base - ps + v), length v % (64 pages).
    return bytes([o, d, 0]) + u64(page * ps + ps) + u64(npg * ps)


def region(npages, ops, shift=12, gpa=BASE, full=True, major=1, track_gen=1, pins=()):
    h, l = header(npages, shift, gpa, major, track_gen)
    b = h + ops
    assert len(b) <= 4096
    if not full:
        return b
    b = bytearray(b + bytes(l['size'] - len(b)))
    for p in pins:  # pins another client holds
        b[l['pin_off'] + p // 8] |= 1 << (p % 8)
    return bytes(b)


std = (gop(POLL, 0, 0, 0) + gop(MAP, FROM_DEV, 1, 2) + gop(MAP, TO_DEV, 2, 1) +
       gop(UNMAP, FROM_DEV, 1, 2) + gop(UNMAP, TO_DEV, 2, 1) + gop(MAP, BIDIR, 63, 3) +
       gop(SYNC_CPU, BIDIR, 63, 3) + gop(SYNC_DEV, TO_DEV, 63, 1) + gop(INFO, 0, 0, 0) +
       gop(UNMAP, TO_DEV, 5, 1) + gop(MAP, 4, 7, 1))
gd = os.path.join(here, 'corpus', 'fuzz_guest_open')
write(gd, 'valid-1page', region(1, gop(MAP, FROM_DEV, 0, 1) + gop(UNMAP, FROM_DEV, 0, 1)))
write(gd, 'valid-12365', region(3 * 4096 + 77, std))
write(gd, 'header-only', region(3 * 4096 + 77, std, full=False))
write(gd, 'header-only-8k-top', region(4097, std, shift=13, gpa=(1 << 64) - (4098 << 13),
                                       full=False))
write(gd, 'huge-pages', region(64, std, shift=40, gpa=1 << 40, full=False))
write(gd, 'bad-major', region(1, std, major=2))
write(gd, 'pin-conflict-untracked', region(65, gop(MAP, FROM_DEV, 63, 2) + gop(UNMAP, FROM_DEV, 63, 2),
                                           track_gen=0, pins=(64,)))

# ---- fuzz_agent_msg: one datagram of guest-agent/agent_wire.h ---------------
AGENT_MAGIC, AGENT_VERSION = 0x4741444C, 1
(HELLO, WELCOME, REFUSED, GRACE, GRACE_DONE, BYE, STATUS, STATUS_TEXT) = range(1, 9)


def amsg(typ, body=b'', version=AGENT_VERSION, magic=AGENT_MAGIC, length=None, reserved=0):
    n = 16 + len(body)
    return struct.pack('<IHHII', magic, version, typ, n if length is None else length,
                       reserved) + body


def refused(err, text):
    t = text.encode() + b'\0'
    return amsg(REFUSED, struct.pack('<iI', err, 0) + t + bytes(240 - len(t)))


ad = os.path.join(here, 'corpus', 'fuzz_agent_msg')
write(ad, 'hello', amsg(HELLO, u32(0) + u32(0)))
write(ad, 'hello-status', amsg(HELLO, u32(1) + u32(0)))
write(ad, 'welcome', amsg(WELCOME, u32(3) + u32(12) + u64(BASE) + u64(131072) +
                          u64(65536) + u64(4096 + 131072 * 4)))
write(ad, 'welcome-2m-top-slot', amsg(WELCOME, u32(1023) + u32(21) + u64(1 << 40) + u64(1) +
                                      u64(16384) + u64(4100)))
write(ad, 'refused', refused(-16, 'dirty-agent: 60 clients already; try again later'))
write(ad, 'refused-eperm', refused(-1, 'not allowed'))
write(ad, 'grace', amsg(GRACE, u64(7)))
write(ad, 'grace-done', amsg(GRACE_DONE, u64(0xfeed00000000)))
write(ad, 'bye', amsg(BYE))
write(ad, 'status', amsg(STATUS, u32(0) + u32(0)))
write(ad, 'status-json', amsg(STATUS, u32(1) + u32(0)))
write(ad, 'status-text', amsg(STATUS_TEXT, b'clients 2\nwaiting_pid 0\n\0'))
write(ad, 'status-text-empty', amsg(STATUS_TEXT, b'\0'))
# Near misses: each one field away from a valid message.
write(ad, 'bad-magic', amsg(GRACE, u64(1), magic=0x4741444D))
write(ad, 'bad-length', amsg(GRACE, u64(1), length=25))
write(ad, 'bad-reserved', amsg(BYE, reserved=1))
write(ad, 'short-header', amsg(BYE)[:15])
write(ad, 'welcome-zero-pages', amsg(WELCOME, u32(0) + u32(12) + u64(BASE) + u64(0) + u64(1) + u64(1)))
write(ad, 'refused-positive', refused(16, 'err must be negative'))
write(ad, 'unknown-type', amsg(9, u64(0)))
