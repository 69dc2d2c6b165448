"""The load generator: many paho-mqtt clients per process on one ``selectors`` loop, several
worker processes, exact per-message accounting.

Why not paho's own loops: one thread per client costs a context switch per packet, and paho
reads every packet with three or more one-byte ``recv`` calls. Here each client's socket is
wrapped in :class:`BufferedSocket` (one ``recv`` per readiness event), and publishers follow a
schedule (``t0 + offset + k * interval``) rather than sleeping, so they never drift; when the
loop is late the lag is measured and reported instead of hidden.
"""

from __future__ import annotations

import array
import heapq
import json
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from workloads.bench.hist import Histogram
from workloads.bench.payload import HEADER, encode
from workloads.bench.rundir import DELIVERY_DTYPE
from workloads.scenario import Scenario

_unpack = HEADER.unpack_from


class BufferedSocket:
    """A socket that reads in large chunks and coalesces writes.

    Paho reads each packet with three or more ``recv`` calls and writes each packet with its own
    ``send``; here reads are served from one kernel read and writes are queued until the worker
    flushes once per loop turn, so a burst of publishes or PUBACKs costs one system call.
    """

    __slots__ = ("_sock", "_data", "_off", "wbuf", "dirty")

    def __init__(self, sock: socket.socket, dirty: set[BufferedSocket]) -> None:
        self._sock = sock
        self._data = b""
        self._off = 0
        self.wbuf = bytearray()
        self.dirty = dirty

    def recv(self, n: int) -> bytes:
        if self._off >= len(self._data):
            data = self._sock.recv(262144)
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
            return rest + self._sock.recv(262144) if rest else self._sock.recv(262144)
        except BlockingIOError:
            if rest:
                return rest
            raise

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


PayloadHandler = Callable[[Any, bytes, int, int], None]


class BenchClient(mqtt.Client):
    """paho's client with a fast path for inbound PUBLISH at QoS 0 and 1.

    Connection, session, keepalive, subscriptions, publishing and every other inbound packet
    (CONNACK, SUBACK, PUBACK, PUBREC/PUBREL/PUBCOMP, QoS 2 PUBLISH) stay paho's own; only the
    framing of QoS 0/1 PUBLISH packets is done here, straight from the receive buffer, because
    paho's per-packet path costs ~30 us, which would make the bench the bottleneck.
    """

    dirty: set[BufferedSocket]
    payload_handler: PayloadHandler | None = None
    v5 = False

    def _create_socket_connection(self) -> Any:
        sock = super()._create_socket_connection()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return BufferedSocket(sock, self.dirty)

    def _ssl_wrap_socket(self, tcp_sock: Any) -> Any:
        """TLS under the buffering: paho's handshake on the raw socket, then our buffered I/O."""
        from workloads.bench.tls import TlsBufferedSocket

        return TlsBufferedSocket(super()._ssl_wrap_socket(tcp_sock._sock), self.dirty)

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
            if ptype == 0x60 and rl == 2 and handler is not None:  # PUBREL of a fast-path QoS 2 message
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


@dataclass
class ClientSpec:
    role: str  # "pub" or "sub"
    index: int  # global publisher or subscriber number
    client_id: str
    target: str  # host:port


@dataclass
class WorkerSpec:
    worker: int
    host: str
    out: str  # folder for this host's records
    scenario: Scenario
    tag: int
    clients: list[ClientSpec]
    connect_rate: float  # per second, this worker's share
    role: str = "run"  # run, sub or pub: several bench processes may share a host's folder
    security: dict[str, Any] = field(default_factory=dict)  # role -> workloads.security.ClientSecurity

    @property
    def label(self) -> str:
        """File suffix: unique per process role and worker on one host."""
        return f"{self.role}{self.worker}"


@dataclass
class ClientState:
    spec: ClientSpec
    client: BenchClient | None = None
    connected: bool = False
    subscribed: bool = False
    connected_at: float = 0.0
    local: str = ""
    disconnects: int = 0
    attempted: float = 0.0  # last connection attempt, for reconnecting
    connect_s: float = 0.0  # from the successful attempt to its CONNACK
    # publisher
    planned: int = 0
    sent: int = 0
    acked: int = 0
    failed: int = 0
    refused: int = 0  # acknowledged with a failure reason (MQTT 5), e.g. not authorized
    first_send: float = 0.0
    last_send: float = 0.0
    max_behind: float = 0.0
    # subscriber: per publisher [bitmap, unique, duplicates, out_of_order, last_seq]
    seen: dict[int, list[Any]] = field(default_factory=dict)
    foreign: int = 0


class Worker:
    """One process's clients and its event loop."""

    def __init__(self, spec: WorkerSpec, ctl: Connection) -> None:
        self.spec = spec
        self.sc = spec.scenario
        self.ctl = ctl
        self.sel = selectors.DefaultSelector()
        self.dirty: set[BufferedSocket] = set()
        self.states = [ClientState(c) for c in spec.clients]
        self.subs = [s for s in self.states if s.spec.role == "sub"]
        self.pubs = [s for s in self.states if s.spec.role == "pub"]
        self.out = Path(spec.out)
        self.out.mkdir(parents=True, exist_ok=True)
        w = spec.label
        self.events: IO[str] = (self.out / f"events-{w}.csv").open("a")
        self.timeline: IO[str] = (self.out / f"timeline-{w}.csv").open("a")
        self.deliveries: IO[bytes] = (self.out / f"deliveries-{w}.bin").open("ab")
        if self.events.tell() == 0:
            self.events.write("time_s,client_id,event,detail\n")
        if self.timeline.tell() == 0:
            self.timeline.write("second,worker,sent,acked,received\n")
        self.rec_sub = array.array("I")
        self.rec_pub = array.array("I")
        self.rec_seq = array.array("I")
        self.rec_dup = array.array("I")
        self.rec_send = array.array("q")
        self.rec_recv = array.array("q")
        self.hist = Histogram()
        self.sec_counts: dict[int, list[int]] = {}
        self.lag_max = 0.0
        self.lags = array.array("d")
        self.heap: list[tuple[float, int]] = []
        self.t0 = 0.0
        self.phase = "connect"
        self.stop = False
        self.publish_done_at = 0.0
        self.cpu0 = time.process_time()
        self.cpu_pub0 = 0.0
        self.wall_pub0 = 0.0

    # ------------------------------------------------------------------ callbacks

    def _count(self, kind: int, n: int = 1) -> None:
        sec = int(time.time())
        c = self.sec_counts.get(sec)
        if c is None:
            c = self.sec_counts[sec] = [0, 0, 0]
        c[kind] += n

    def event(self, st: ClientState, name: str, detail: str = "") -> None:
        self.events.write(f"{time.time():.6f},{st.spec.client_id},{name},{detail}\n")

    def on_connect(self, client: mqtt.Client, st: ClientState, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.event(st, "connack_error", str(rc))
            return
        first = not st.connected_at
        st.connected = True
        st.connected_at = st.connected_at or time.time()
        if first:  # TCP, TLS handshake and CONNACK: what security costs a client
            st.connect_s = st.connected_at - st.attempted
        sock: Any = client.socket()
        try:
            host, port = sock.getsockname()[:2] if sock else ("", 0)
            st.local = f"{host}:{port}" if sock else ""
        except OSError:
            st.local = ""
        self.event(st, "connect" if first else "reconnect", st.local)
        if st.spec.role == "sub":
            topic, _ = self.sc.subscription_of(st.spec.index)
            client.subscribe(topic, self.sc.qos)

    def on_subscribe(self, client: mqtt.Client, st: ClientState, mid: int, rcs: Any, props: Any = None) -> None:
        if any(r.is_failure for r in rcs):
            self.event(st, "suback_error", ";".join(str(r) for r in rcs))
            return
        st.subscribed = True

    def on_disconnect(self, client: mqtt.Client, st: ClientState, flags: Any, rc: Any, props: Any = None) -> None:
        if st.connected:
            st.disconnects += 1
            self.event(st, "disconnect", str(rc).replace(",", ";"))
        st.connected = False

    def on_publish(self, client: mqtt.Client, st: ClientState, mid: int, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):  # the broker refused it: nobody can receive it
            st.refused += 1
            if st.refused == 1:
                self.event(st, "publish_refused", str(rc))
            return
        st.acked += 1
        self._count(1)

    def on_message(self, client: mqtt.Client, st: ClientState, msg: mqtt.MQTTMessage) -> None:
        """paho's path (QoS 2 deliveries); the fast path calls :meth:`on_payload` directly."""
        self.on_payload(st, msg.payload, 0, len(msg.payload))

    def on_payload(self, st: ClientState, buf: bytes | bytearray, start: int, end: int) -> None:
        now = time.time_ns()
        if end - start < 20:
            st.foreign += 1
            return
        pub, seq, send_ns, tag = _unpack(buf, start)
        if tag != self.spec.tag:
            st.foreign += 1
            return
        s = st.seen.get(pub)
        if s is None:
            s = st.seen[pub] = [bytearray(self.sc.messages_of(pub) if pub < self.sc.publishers else 0), 0, 0, 0, -1]
        bm = s[0]
        dup = 0
        if seq < len(bm):
            if bm[seq]:
                s[2] += 1
                dup = 1
            else:
                bm[seq] = 1
                s[1] += 1
        else:
            st.foreign += 1
            return
        if seq < s[4]:
            s[3] += 1
        else:
            s[4] = seq
        self.rec_sub.append(st.spec.index)
        self.rec_pub.append(pub)
        self.rec_seq.append(seq)
        self.rec_dup.append(dup)
        self.rec_send.append(send_ns)
        self.rec_recv.append(now)
        self._count(2)

    # ------------------------------------------------------------------ connections

    def make_client(self, st: ClientState) -> BenchClient:
        proto = mqtt.MQTTv5 if self.sc.mqtt_version == "5" else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"client_id": st.spec.client_id, "protocol": proto, "userdata": st}
        if proto != mqtt.MQTTv5:
            kwargs["clean_session"] = self.sc.clean_session
        c = BenchClient(CallbackAPIVersion.VERSION2, **kwargs)
        c.on_connect = self.on_connect
        c.on_subscribe = self.on_subscribe
        c.on_disconnect = self.on_disconnect
        c.on_publish = self.on_publish
        c.on_message = self.on_message
        c.max_inflight_messages_set(20)
        c.max_queued_messages_set(0)
        c.dirty = self.dirty
        c.payload_handler = self.on_payload
        c.v5 = proto == mqtt.MQTTv5
        sec = self.spec.security.get(st.spec.role)
        if sec is not None:
            sec.apply(c)
        return c

    def connect(self, st: ClientState) -> None:
        host, port = st.spec.target.rsplit(":", 1)
        st.attempted = time.time()
        if st.client is None:
            st.client = self.make_client(st)
        try:
            if self.sc.mqtt_version == "5":
                from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY

                st.client.connect(host, int(port), self.sc.keepalive, clean_start=self.sc.clean_session or MQTT_CLEAN_START_FIRST_ONLY)
            else:
                st.client.connect(host, int(port), self.sc.keepalive)
        except OSError as exc:
            self.event(st, "connect_error", str(exc).replace(",", ";"))
            return
        sock = st.client.socket()
        if sock is not None:
            self.sel.register(sock.fileno(), selectors.EVENT_READ, st)
            self.flush_writes()

    def drop(self, st: ClientState, fd: int) -> None:
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def handle(self, st: ClientState, fd: int, mask: int) -> None:
        c = st.client
        assert c is not None
        if mask & selectors.EVENT_READ:
            sock = c.socket()
            rc = c.fast_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or c.socket() is None:
                self.drop(st, fd)
                why = getattr(sock, "error", "")  # a TLS alert from the broker, e.g. certificate expired
                if st.connected:
                    st.connected = False
                    st.disconnects += 1
                    self.event(st, "disconnect", f"read:{int(rc)}" + (f" {why}" if why else ""))
                elif why:
                    self.event(st, "connect_error", why)
                return
        if mask & selectors.EVENT_WRITE:
            if c.want_write() and c.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.drop(st, fd)
                return
            sock = c.socket()
            if isinstance(sock, BufferedSocket):
                self.dirty.add(sock)

    def flush_writes(self) -> None:
        """One ``send`` per socket with queued bytes; what the kernel refuses waits for EVENT_WRITE,
        whose handler puts the socket back in ``dirty``."""
        dirty = list(self.dirty)
        self.dirty.clear()  # the clients hold this very set: clear it, never replace it
        for sock in dirty:
            try:
                done = sock.flush()
                key = self.sel.get_key(sock.fileno())
            except (KeyError, ValueError, OSError):
                continue  # closed: the read side records the disconnect
            want = selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE)
            if key.events != want:
                self.sel.modify(key.fd, want, key.data)

    # ------------------------------------------------------------------ loop

    def poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                self.control()
            else:
                self.handle(key.data, key.fd, mask)  # type: ignore[arg-type]

    def control(self) -> None:
        while self.ctl.poll():
            msg = self.ctl.recv()
            if msg[0] == "start_pubs":
                self.t0 = msg[1]
                self.start_publishers()
            elif msg[0] == "stop":
                self.stop = True

    def report(self, *msg: Any) -> None:
        self.ctl.send(msg)

    def totals(self) -> dict[str, int]:
        return {
            "connected": sum(1 for s in self.states if s.connected),
            "subscribed": sum(1 for s in self.subs if s.subscribed),
            "sent": sum(s.sent for s in self.pubs),
            "acked": sum(s.acked for s in self.pubs),
            "received": len(self.rec_sub) + self.flushed,
            "planned": sum(s.planned for s in self.pubs),
        }

    def start_publishers(self) -> None:
        sc = self.sc
        self.phase = "publish"
        self.cpu_pub0 = time.process_time()
        self.wall_pub0 = time.time()
        interval = sc.interval_ms / 1000.0
        for i, st in enumerate(self.pubs):
            st.planned = sc.messages_of(st.spec.index)
            offset = (st.spec.index % max(sc.publishers, 1)) * interval / max(sc.publishers, 1)
            if st.planned:
                heapq.heappush(self.heap, (self.t0 + offset, i))

    def publish_due(self) -> None:
        now = time.time()
        sc = self.sc
        interval = sc.interval_ms / 1000.0
        burst = 0
        while self.heap and self.heap[0][0] <= now and burst < 2000:
            due, i = heapq.heappop(self.heap)
            st = self.pubs[i]
            c = st.client
            if c is None or not st.connected:
                # not connected (yet, or any more): retry shortly, the schedule slips and is counted
                if now - self.t0 > sc.time_limit_s:
                    continue
                heapq.heappush(self.heap, (now + 0.05, i))
                burst += 1
                continue
            sock = c.socket()
            if isinstance(sock, BufferedSocket) and len(sock.wbuf) > 4 << 20:
                heapq.heappush(self.heap, (now + 0.01, i))  # the kernel is not taking more: back off
                burst += 1
                continue
            behind = now - due
            if behind > st.max_behind:
                st.max_behind = behind
            seq = st.sent
            payload = encode(st.spec.index, seq, time.time_ns(), self.spec.tag, sc.payload_bytes)
            if sc.qos == 0:
                if c.fast_publish_qos0(sc.topic_of(st.spec.index).encode(), payload):
                    st.acked += 1  # at QoS 0, "acknowledged" means written
                    self._count(1)
                else:
                    st.failed += 1
                    self.event(st, "publish_error", "not connected")
            else:
                info = c.publish(sc.topic_of(st.spec.index), payload, sc.qos)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    st.failed += 1
                    self.event(st, "publish_error", str(info.rc))
            st.sent += 1
            if not st.first_send:
                st.first_send = now
            st.last_send = now
            self._count(0)
            burst += 1
            if st.sent < st.planned:
                nxt = due + interval if interval else now
                heapq.heappush(self.heap, (nxt, i))

    def flush(self, final: bool = False) -> None:
        """Append what was measured since the last flush; complete seconds only, unless final."""
        n = len(self.rec_sub)
        if n:
            rec = np.empty(n, DELIVERY_DTYPE)
            rec["sub"] = np.frombuffer(self.rec_sub, dtype=np.uint32)
            rec["pub"] = np.frombuffer(self.rec_pub, dtype=np.uint32)
            rec["seq"] = np.frombuffer(self.rec_seq, dtype=np.uint32)
            rec["dup"] = np.frombuffer(self.rec_dup, dtype=np.uint32)
            rec["send_ns"] = np.frombuffer(self.rec_send, dtype=np.int64)
            rec["recv_ns"] = np.frombuffer(self.rec_recv, dtype=np.int64)
            self.deliveries.write(rec.tobytes())
            self.hist.record((rec["recv_ns"] - rec["send_ns"]) // 1000)
            self.flushed += n
            for a in (self.rec_sub, self.rec_pub, self.rec_seq, self.rec_dup, self.rec_send, self.rec_recv):
                del a[:]
        now = int(time.time()) + (1 if final else 0)
        for sec in sorted(s for s in self.sec_counts if s < now):
            c = self.sec_counts.pop(sec)
            self.timeline.write(f"{sec},{self.spec.worker},{c[0]},{c[1]},{c[2]}\n")
        for fh in (self.deliveries, self.timeline, self.events):
            fh.flush()

    flushed = 0

    def run(self) -> None:
        self.sel.register(self.ctl.fileno(), selectors.EVENT_READ, None)
        # subscribers connect first, then publishers; both at this worker's share of the rate
        order = self.subs + self.pubs
        gap = 1.0 / self.spec.connect_rate
        next_connect = time.time()
        pending = list(order)
        last_tick = time.time()
        reported_ready = False
        while not self.stop:
            now = time.time()
            if pending and now >= next_connect:
                st = pending.pop(0)
                self.connect(st)
                next_connect = max(next_connect + gap, now - 1.0)
            timeout = 0.05
            if pending:
                timeout = min(timeout, max(0.0, next_connect - now))
            if self.heap:
                timeout = min(timeout, max(0.0, self.heap[0][0] - now))
            t_sel = time.time()
            self.poll(timeout)
            lag = time.time() - t_sel - timeout
            if lag > 0:
                self.lags.append(lag)
                self.lag_max = max(self.lag_max, lag)
            if self.heap:
                self.publish_due()
            self.flush_writes()
            now = time.time()
            if now - last_tick >= 0.5:
                last_tick = now
                for st in self.states:
                    if st.client is not None and st.client.socket() is not None:
                        st.client.loop_misc()
                        if st.client.want_write():
                            st.client.loop_write()
                    elif st.attempted and now - st.attempted >= 1.0:
                        self.connect(st)  # lost or refused: try again each second; on_connect records "reconnect"
                self.flush_writes()
                self.flush()
                tot = self.totals()
                if not reported_ready and not pending and tot["subscribed"] == len(self.subs) and all(
                    s.connected for s in self.pubs
                ):
                    reported_ready = True
                    self.report("ready", tot)
                self.report("progress", tot)
                if self.phase == "publish" and not self.heap and not self.publish_done_at:
                    if all(s.acked >= s.sent or self.sc.qos == 0 for s in self.pubs):
                        self.publish_done_at = now
                        self.report("published", tot)
        self.finish()

    def finish(self) -> None:
        for st in self.states:
            st.connected = False  # our own DISCONNECT is not a disconnect to report
            if st.client is not None and st.client.socket() is not None:
                try:
                    st.client.disconnect()
                    st.client.loop_write()
                    sock = st.client.socket()
                    if isinstance(sock, BufferedSocket):
                        sock.flush()
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
        self.flush(final=True)
        cpu = time.process_time() - self.cpu0
        pub_cpu = time.process_time() - self.cpu_pub0 if self.cpu_pub0 else 0.0
        pub_wall = time.time() - self.wall_pub0 if self.wall_pub0 else 0.0
        lags = np.frombuffer(self.lags, dtype=np.float64) if len(self.lags) else np.zeros(1)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self_check = {
            "worker": self.spec.worker,
            "cpu_s": round(cpu, 3),
            "publish_phase_cpu_s": round(pub_cpu, 3),
            "publish_phase_wall_s": round(pub_wall, 3),
            "cpu_busy_pct": round(100.0 * pub_cpu / pub_wall, 1) if pub_wall > 0 else 0.0,
            "loop_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 3),
            "loop_lag_max_ms": round(self.lag_max * 1000, 3),
            "publish_behind_max_ms": round(max((s.max_behind for s in self.pubs), default=0.0) * 1000, 3),
            "max_rss_kb": ru.ru_maxrss,
        }
        (self.out / f"self-{self.spec.label}.json").write_text(json.dumps(self_check, indent=1))
        (self.out / f"latency-{self.spec.label}.json").write_text(json.dumps(self.hist.to_json()))
        with (self.out / f"clients-{self.spec.label}.csv").open("w") as fh:
            fh.write("client_id,role,index,worker,entry_point,local_addr,connected_at,disconnects,connect_ms\n")
            for st in self.states:
                fh.write(f"{st.spec.client_id},{st.spec.role},{st.spec.index},{self.spec.worker},{st.spec.target},{st.local},{st.connected_at:.6f},"
                         f"{st.disconnects},{st.connect_s * 1000:.3f}\n")
        with (self.out / f"publishers-{self.spec.label}.csv").open("w") as fh:
            fh.write("pub,client_id,planned,sent,acked,failed,first_send_s,last_send_s,max_behind_ms,refused\n")
            for st in self.pubs:
                fh.write(f"{st.spec.index},{st.spec.client_id},{st.planned},{st.sent},{st.acked},{st.failed},{st.first_send:.6f},{st.last_send:.6f},"
                         f"{st.max_behind * 1000:.3f},{st.refused}\n")
        with (self.out / f"subscribers-{self.spec.label}.csv").open("w") as fh:
            fh.write("sub,client_id,pub,received,duplicates,out_of_order,foreign\n")
            for st in self.subs:
                _, heard = self.sc.subscription_of(st.spec.index)
                pubs = range(self.sc.publishers) if heard is None else [heard]
                for p in pubs:
                    s = st.seen.get(p)
                    got, dup, ooo = (s[1], s[2], s[3]) if s else (0, 0, 0)
                    fh.write(f"{st.spec.index},{st.spec.client_id},{p},{got},{dup},{ooo},{st.foreign if p == pubs[0] else 0}\n")
        self.events.close()
        self.timeline.close()
        self.deliveries.close()
        self.report("done", self.totals(), self_check)


def worker_main(spec: WorkerSpec, ctl: Connection) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when to stop
    Worker(spec, ctl).run()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
