"""The bench payload: every message says who sent it, which one it is and when.

Layout (little endian): publisher id u32, sequence u32, send time ns u64 (wall clock), run tag
u32, intended send time ns u64 (wall clock: when the schedule said to send it), then zero
padding to the scenario's payload size. The run tag keeps a retained or bridged message from an
earlier run from being counted in this one; the older 20-byte layout (without the intended
time) is shorter than the header, so it counts as foreign.

Why both times: latency from the actual send hides the time a message waited because its
publisher was behind (coordinated omission: a stalled generator sends late and then measures
only the short trip); latency from the intended time counts that wait, as wrk2 and
HdrHistogram's corrected recording do.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<IIQIQ")
assert HEADER.size == 28


def encode(publisher: int, seq: int, send_ns: int, tag: int, size: int, intended_ns: int | None = None) -> bytes:
    """``intended_ns`` defaults to ``send_ns`` (a message sent as soon as it could be: no schedule)."""
    head = HEADER.pack(publisher, seq, send_ns, tag, send_ns if intended_ns is None else intended_ns)
    return head + bytes(size - len(head)) if size > len(head) else head


def decode(payload: bytes) -> tuple[int, int, int, int, int]:
    """(publisher, sequence, send_ns, tag, intended_ns); raises struct.error on a short payload."""
    return HEADER.unpack_from(payload)
