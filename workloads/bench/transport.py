"""Socket buffering for the bench's clients: one ``recv`` per readiness event, one ``send`` per
loop turn.

paho reads each packet with three or more ``recv`` calls and writes each packet with its own
``send``; with hundreds of clients per process those system calls, not MQTT, would be the cost.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from workloads.rundir.saturation import queued_bytes

CHUNK = 262144  # bytes per kernel read


class BufferedSocket:
    """A socket that reads in large chunks and coalesces writes.

    Paho reads each packet with three or more ``recv`` calls and writes each packet with its own
    ``send``; here reads are served from one kernel read and writes are queued until the worker
    flushes once per loop turn, so a burst of publishes or PUBACKs costs one system call.
    """

    __slots__ = ("_sock", "_data", "_off", "wbuf", "dirty", "full", "probe", "queued", "queued_at")

    def __init__(self, sock: socket.socket, dirty: set[BufferedSocket]) -> None:
        self._sock = sock
        self._data = b""
        self._off = 0
        self.wbuf = bytearray()
        self.dirty = dirty
        self.full = False  # the last kernel read filled the whole chunk: more is probably waiting
        self.probe = False  # measure the receive queue right after the next kernel read
        self.queued = -1  # what that measurement found (bytes still waiting), -1: not measured
        self.queued_at = 0.0  # when: the data read is processed after it, and may be stopped in between

    def recv(self, n: int) -> bytes:
        if self._off >= len(self._data):
            data = self._sock.recv(CHUNK)
            if not data:
                return b""
            self._data, self._off = data, 0
        off = self._off
        self._off = off + n
        return self._data[off : off + n]

    def take(self) -> bytes:
        """Everything buffered plus one kernel read; BlockingIOError when there is nothing."""
        rest = self._data[self._off :]
        self._data, self._off = b"", 0
        try:
            data = self._sock.recv(CHUNK)
        except BlockingIOError:
            self.full = False
            if rest:
                return rest
            raise
        self.full = len(data) == CHUNK
        if self.probe or self.full:
            # measured and stamped right after the read, before the data is processed: what is
            # waiting now had arrived before this read, not during the processing that follows.
            # A stamp taken once processed would date "empty" after a stop or a CPU starvation
            # that fell in the processing, and the data that waited through it would be charged
            # from after it (beside a busy loop, 1.2 s of SIGSTOP was counted as 0.03 s that way)
            # A read that did not fill its chunk took everything that had arrived before it: bytes
            # found after it arrived during it (on a busy CPU, the softirq that queues them can
            # run between the read and the measure), so the reader had caught up. Only a full
            # read can leave older data behind; a reader that falls behind without filling its
            # chunk does so by not looking for a while, which the loop's stall check charges.
            self.probe = False
            self.queued_at = time.time()
            self.queued = queued_bytes(self._sock.fileno()) if self.full else 0
        return rest + data if rest else data

    def buffered(self) -> bool:
        return self._off < len(self._data)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.wbuf += data
        self.dirty.add(self)
        return len(data)

    def flush(self) -> bool:
        """Write what the kernel takes; True when everything went out."""
        if self.wbuf:
            try:
                n = self._sock.send(self.wbuf)
            except BlockingIOError:
                return False
            del self.wbuf[:n]
        return not self.wbuf

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """paho closes right after "sending" DISCONNECT; let the queued bytes out first."""
        try:
            if self.wbuf:
                self._sock.send(self.wbuf)
        except OSError:
            pass
        self.wbuf.clear()
        self.dirty.discard(self)
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
