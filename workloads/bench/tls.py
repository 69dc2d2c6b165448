"""TLS under the engine's buffered sockets.

An ``SSLSocket`` in non-blocking mode differs from a TCP socket in three ways the engine's read
and write path must absorb, or a healthy connection would look lost:

- "nothing to read yet" is ``SSLWantReadError`` (also after a TLS 1.3 session ticket, which
  carries no application data), not ``BlockingIOError``;
- a ``send`` can need the peer first (``SSLWantReadError``/``SSLWantWriteError``) and must then
  be retried with the same bytes, which the write buffer does by keeping them;
- one ``recv`` returns at most one TLS record (16 KiB), and decrypted bytes can wait inside the
  SSL object (``pending()``) where ``select`` cannot see them: reads continue until the
  socket has nothing more, so no delivery waits for the next packet to arrive.

A real TLS failure (an alert from the broker: certificate expired, unknown CA, certificate
required) is kept in :attr:`TlsBufferedSocket.error`, so the run's events say why the broker
refused the client instead of only "connection lost".
"""

from __future__ import annotations

import ssl

from workloads.bench.transport import BufferedSocket
from workloads.rundir.saturation import queued_bytes

CHUNK = 262144
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsBufferedSocket(BufferedSocket):
    __slots__ = ("error",)

    def __init__(self, sock: ssl.SSLSocket, dirty: set[BufferedSocket]) -> None:
        super().__init__(sock, dirty)
        self.error = ""

    def _read(self) -> bytes:
        """Up to CHUNK bytes of plaintext; BlockingIOError when there is none."""
        sock = self._sock
        parts: list[bytes] = []
        size = 0
        while size < CHUNK:
            try:
                data = sock.recv(CHUNK - size)
            except _WANT:
                break
            except ssl.SSLError as exc:
                self.error = f"tls: {exc.reason or exc}".replace(",", ";")
                raise
            if not data:
                if not parts:
                    return b""
                break
            parts.append(data)
            size += len(data)
        if not parts:
            raise BlockingIOError()
        return b"".join(parts)

    def recv(self, n: int) -> bytes:
        if self._off >= len(self._data):
            data = self._read()
            if not data:
                return b""
            self._data, self._off = data, 0
        off = self._off
        self._off = off + n
        return self._data[off : off + n]

    def take(self) -> bytes:
        rest = self._data[self._off :]
        self._data, self._off = b"", 0
        try:
            data = self._read()
        except BlockingIOError:
            if rest:
                return rest
            raise
        if self.probe:  # as BufferedSocket.take: what waits in the kernel right after the read
            self.probe = False
            self.queued = queued_bytes(self._sock.fileno())
        return rest + data if rest else data

    def flush(self) -> bool:
        if self.wbuf:
            try:
                n = self._sock.send(self.wbuf)
            except (BlockingIOError, *_WANT):
                return False
            del self.wbuf[:n]
        return not self.wbuf

    def buffered(self) -> bool:
        sock: ssl.SSLSocket = self._sock  # type: ignore[assignment]
        return self._off < len(self._data) or sock.pending() > 0
