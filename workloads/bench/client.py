"""The bench's MQTT client: paho's, with the per-message packets framed here.

Connection setup (CONNECT/CONNACK), SUBSCRIBE, keepalive and reconnecting stay paho's code; the
packets that come once per message are framed here, straight into the write buffer or out of
the receive buffer: PUBLISH at QoS 0, 1 and 2 both ways and their acknowledgements
(PUBACK, PUBREC, PUBREL, PUBCOMP), because paho's per-packet path (~30 us in, ~70 us out)
would make the bench the bottleneck.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from workloads.bench.transport import BufferedSocket

PayloadHandler = Callable[[Any, bytes, int, int], None]


class BenchClient(mqtt.Client):
    """paho's client with a fast path for the per-message packets (see the module docstring);
    any packet the fast path does not know goes to paho's own handler."""

    dirty: set[BufferedSocket]
    payload_handler: PayloadHandler | None = None
    v5 = False

    def fast_read(self) -> MQTTErrorCode:
        if not hasattr(self, "_qos2_mids"):
            self._qos2_mids = set()
        sock = self._sock
        if not isinstance(sock, BufferedSocket) or self._in_packet["command"]:
            return self.loop_read()
        try:
            buf = self._pending + sock.take() if self._pending else sock.take()
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if len(buf) == len(self._pending):
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        self._last_bytes_received = time.monotonic()
        n = len(buf)
        pos = 0
        handler = self.payload_handler
        userdata = self._userdata
        while n - pos >= 2:
            cmd = buf[pos]
            i = pos + 1
            mult = 1
            rl = 0
            while i < n:
                b = buf[i]
                rl += (b & 127) * mult
                mult <<= 7
                i += 1
                if not b & 128:
                    break
            else:
                break
            end = i + rl
            if end > n:
                break
            qos = (cmd >> 1) & 3
            ptype = cmd & 0xF0
            if 0x40 <= ptype <= 0x70 and ptype != 0x60 and rl >= 2 and ((buf[i] << 8) | buf[i + 1]) in self._fast_out:
                # PUBACK, PUBREC, PUBCOMP of one of our own fast-path publishes
                mid = (buf[i] << 8) | buf[i + 1]
                # MQTT 5: a reason code >= 0x80 on PUBACK or PUBREC is the broker's refusal
                # (e.g. 0x87 not authorized, outside the ACL); the exchange ends there
                refused = self.v5 and ptype != 0x70 and rl >= 3 and buf[i + 2] >= 0x80
                if ptype == 0x50 and not refused:
                    sock.wbuf += bytes((0x62, 2, mid >> 8, mid & 0xFF))  # PUBREL
                    sock.dirty.add(sock)
                else:
                    del self._fast_out[mid]
                    if refused:
                        if self.refuse_handler is not None:
                            self.refuse_handler(userdata, ptype, buf[i + 2])
                    elif self.ack_handler is not None:
                        self.ack_handler(userdata)
                    if self._fast_waiting:
                        self._frame_publish(sock, *self._fast_waiting.popleft())
            elif ptype == 0x60 and rl == 2 and handler is not None:  # PUBREL of a fast-path QoS 2 message
                mid = (buf[i] << 8) | buf[i + 1]
                self._qos2_mids.discard(mid)
                sock.wbuf += bytes((0x70, 2, mid >> 8, mid & 0xFF))  # PUBCOMP
                sock.dirty.add(sock)
            elif ptype == 0x30 and handler is not None:
                p = i + 2 + ((buf[i] << 8) | buf[i + 1])
                fresh = True
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                    if qos == 1:
                        sock.wbuf += bytes((0x40, 2, mid >> 8, mid & 0xFF))  # PUBACK
                    else:
                        # exactly once, receiver side (MQTT 3.1.1 4.3.3): deliver on PUBLISH, treat a
                        # resend of the same packet id as the same message until PUBREL
                        fresh = mid not in self._qos2_mids
                        self._qos2_mids.add(mid)
                        sock.wbuf += bytes((0x50, 2, mid >> 8, mid & 0xFF))  # PUBREC
                    sock.dirty.add(sock)
                if self.v5:  # skip the properties
                    plen = 0
                    mult = 1
                    while True:
                        b = buf[p]
                        p += 1
                        plen += (b & 127) * mult
                        mult <<= 7
                        if not b & 128:
                            break
                    p += plen
                if fresh:
                    handler(userdata, buf, p, end)
            else:
                self._in_packet = {"command": cmd, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                                   "remaining_length": rl, "packet": bytearray(buf[i:end]), "to_process": 0, "pos": 0}
                rc = self._packet_handle()
                self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                                   "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._pending = b""
                    return self._loop_rc_handle(rc)
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
            pos = end
        self._pending = buf[pos:]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    _pending = b""
    _qos2_mids: set[int]
    ack_handler: Callable[[Any], None] | None = None
    refuse_handler: Callable[[Any, int, int], None] | None = None  # (userdata, packet type, reason code)
    max_out = 20  # our publishes awaiting PUBACK/PUBCOMP (Mosquitto's default receive maximum)

    def _ssl_wrap_socket(self, tcp_sock: Any) -> Any:
        """TLS under the buffering: paho's handshake on the raw socket, then our buffered I/O."""
        from workloads.bench.tls import TlsBufferedSocket

        return TlsBufferedSocket(super()._ssl_wrap_socket(tcp_sock._sock), self.dirty)

    def _create_socket_connection(self) -> Any:
        sock = super()._create_socket_connection()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a new connection with a clean session: what was awaiting acknowledgement never will be
        self._fast_out: dict[int, int] = {}
        self._fast_mid = 0
        if not hasattr(self, "_fast_waiting"):
            self._fast_waiting: deque[tuple[bytes, bytes, int]] = deque()
        return BufferedSocket(sock, self.dirty)

    def fast_publish(self, topic: bytes, payload: bytes, qos: int) -> bool:
        """A QoS 1 or 2 PUBLISH framed straight into the write buffer, with its own packet id and
        acknowledgement (``ack_handler`` once PUBACK or PUBCOMP arrives; PUBREL is answered here);
        beyond ``max_out`` awaiting acknowledgement it waits in order, as paho's queue would.
        paho's ``publish`` costs ~70 us per message, the bench's publishers' limit at QoS 1/2.
        False when not connected."""
        sock = self._sock
        if not isinstance(sock, BufferedSocket) or not self.is_connected():
            return False
        if self._fast_waiting:
            self.resume()
        if len(self._fast_out) >= self.max_out:
            self._fast_waiting.append((topic, payload, qos))
        else:
            self._frame_publish(sock, topic, payload, qos)
        return True

    def abandon_inflight(self) -> int:
        """The connection is gone: what awaited PUBACK/PUBCOMP never will be acknowledged (the
        next connection starts a clean session). Returns how many, for the publisher's count of
        failed publishes, so its run can still end."""
        out = getattr(self, "_fast_out", None)
        if not out:
            return 0
        n = len(out)
        out.clear()
        return n

    def resume(self) -> None:
        """Send what waits while there is room (after a reconnect nothing else would)."""
        sock = self._sock
        if isinstance(sock, BufferedSocket) and self.is_connected():
            while self._fast_waiting and len(self._fast_out) < self.max_out:
                self._frame_publish(sock, *self._fast_waiting.popleft())

    def _frame_publish(self, sock: BufferedSocket, topic: bytes, payload: bytes, qos: int) -> None:
        mid = self._fast_mid
        while True:
            mid = mid % 65535 + 1
            if mid not in self._fast_out:
                break
        self._fast_mid = mid
        self._fast_out[mid] = qos
        n = 4 + len(topic) + len(payload) + (1 if self.v5 else 0)
        w = sock.wbuf
        w.append(0x30 | (qos << 1))
        while True:
            b = n & 0x7F
            n >>= 7
            w.append(b | 0x80 if n else b)
            if not n:
                break
        w += len(topic).to_bytes(2, "big")
        w += topic
        w += mid.to_bytes(2, "big")
        if self.v5:
            w.append(0)  # no properties
        w += payload
        sock.dirty.add(sock)
        self._last_msg_out = time.monotonic()

    def fast_publish_qos0(self, topic: bytes, payload: bytes) -> bool:
        """A QoS 0 PUBLISH has no packet id and no state to keep: frame it straight into the
        write buffer. False when not connected (the caller retries on schedule)."""
        sock = self._sock
        if not isinstance(sock, BufferedSocket) or not self.is_connected():
            return False
        n = 2 + len(topic) + len(payload) + (1 if self.v5 else 0)
        w = sock.wbuf
        w.append(0x30)
        while True:
            b = n & 0x7F
            n >>= 7
            w.append(b | 0x80 if n else b)
            if not n:
                break
        w += len(topic).to_bytes(2, "big")
        w += topic
        if self.v5:
            w.append(0)  # no properties
        w += payload
        sock.dirty.add(sock)
        self._last_msg_out = time.monotonic()
        return True
