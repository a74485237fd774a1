#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gen-dest-corpus.py - seeds for fuzz_dest_stream: well-formed migration
streams (tools/dirtymig/transport/stream.h, version 1) and a few broken
ones. Writes tests/fuzz/corpus/fuzz_dest_stream/ (run from the top)."""
import os
import struct

OUT = "tests/fuzz/corpus/fuzz_dest_stream"
PAGE = 4096


def hello(guest_bytes, flags=1, major=1):
    return b"DIRTYMIG" + struct.pack("<HHIQII", major, 0, PAGE, guest_bytes, flags, 0) + b"libdirty".ljust(16, b"\0")


def rec(t, count, arg):
    return struct.pack("<IIQ", t, count, arg)


def pages(gpas, fill=0x5a):
    return rec(1, len(gpas), 0) + b"".join(struct.pack("<Q", g) for g in gpas) + bytes([fill]) * (PAGE * len(gpas))


def stream(guest=16 * PAGE, rounds=((0, 1), (2,)), final=(3,), bye=True, hashes=True):
    s = hello(guest)
    r = 0
    for gp in rounds:
        s += pages([p * PAGE for p in gp]) + rec(2, 0, r)
        r += 1
    s += pages([p * PAGE for p in final]) + rec(3, 0, r)
    if hashes:
        s += rec(4, 0, 0)
    if bye:
        s += rec(5, 0, 0)
    return s


seeds = {
    "good-two-rounds": stream(),
    "good-no-bye": stream(bye=False),
    "good-no-hashes": stream(hashes=False),
    "good-one-round": stream(rounds=()),
    "truncated-in-pages": stream()[:48 + 16 + 8 + 100],
    "page-outside": hello(4 * PAGE) + pages([8 * PAGE]) + rec(3, 0, 0),
    "page-unaligned": hello(4 * PAGE) + pages([PAGE + 8]) + rec(3, 0, 0),
    "round-out-of-order": hello(4 * PAGE) + rec(2, 0, 1),
    "hashes-before-final": hello(4 * PAGE) + rec(4, 0, 0),
    "huge-count": hello(4 * PAGE) + rec(1, 0xffffffff, 0),
    "bad-version": hello(4 * PAGE, major=9) + rec(3, 0, 0),
    "unknown-record": hello(4 * PAGE) + rec(0x77, 0, 0),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {OUT}")
