"""The bench payload: every message says who sent it, which one it is and when.

Layout (little endian): publisher id u32, sequence u32, send time ns u64 (wall clock), run tag
u32, then zero padding to the scenario's payload size. The run tag keeps a retained or bridged
message from an earlier run from being counted in this one.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<IIQI")
assert HEADER.size == 20


def encode(publisher: int, seq: int, send_ns: int, tag: int, size: int) -> bytes:
    head = HEADER.pack(publisher, seq, send_ns, tag)
    return head + bytes(size - len(head)) if size > len(head) else head


def decode(payload: bytes) -> tuple[int, int, int, int]:
    """(publisher, sequence, send_ns, tag); raises struct.error on a short payload."""
    return HEADER.unpack_from(payload)
