"""One worker process: its share of the clients on one ``selectors`` loop.

The loop connects clients at the worker's share of the connect rate (subscribers first), reads
every readable socket with :meth:`BenchClient.fast_read`, sends what the publish schedule says
is due, flushes every socket's queued bytes once per turn, and twice a second runs keepalive,
reconnects lost clients, writes records and reports progress to the orchestrator
(:mod:`workloads.bench.runner`) over a pipe.
"""

from __future__ import annotations

import array
import heapq
import os
import random
import resource
import selectors
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from workloads.bench import backoff
from workloads.bench.client import BenchClient
from workloads.bench.payload import encode
from workloads.bench.protocol import Done, Report, ReportKind, StartPublishers, Stop
from workloads.bench.recorder import Recorder
from workloads.bench.schedule import PublishSchedule
from workloads.bench.state import ClientSpec, ClientState, WorkerSpec
from workloads.bench.transport import BufferedSocket
from workloads.rundir.saturation import SAMPLE_S, STALL_S, client_record, queued_bytes

__all__ = ["ClientSpec", "WorkerSpec", "Worker", "worker_main", "cpu_count"]


class Worker:
    """One process's clients and its event loop."""

    def __init__(self, spec: WorkerSpec, ctl: Connection) -> None:
        self.spec = spec
        self.sc = spec.scenario
        self.ctl = ctl
        self.sel = selectors.DefaultSelector()
        self.dirty: set[BufferedSocket] = set()
        self.states = [ClientState(c) for c in spec.clients]
        self.index = {id(st): i for i, st in enumerate(self.states)}
        self.subs = [s for s in self.states if s.spec.role == "sub"]
        self.pubs = [s for s in self.states if s.spec.role == "pub"]
        self.out = Path(spec.out)
        self.rec = Recorder(self.out, spec.label, spec.worker, spec.tag, self.sc)
        self.lag_max = 0.0
        self.lags = array.array("d")
        self.retries: list[tuple[float, int]] = []  # (retry_at, index in states): reconnect on time, not on the tick
        self.rng = random.Random(spec.tag * 1000 + spec.worker)
        self.looked_at = time.time()  # when select last returned: the loop last looked at its sockets
        self.idle = 0.0  # seconds waiting in select with nothing to do, in the measured window
        self.schedule = PublishSchedule(self.sc.interval_ms / 1000.0, self.sc.publishers)
        self.t0 = 0.0
        self.phase = "connect"
        self.changed = True  # a client connected or subscribed since the last look: maybe every one is ready
        self.stop = False
        self.publish_done_at = 0.0
        self.cpu0 = time.process_time()
        self.cpu_pub0 = 0.0
        self.wall_pub0 = 0.0

    # ------------------------------------------------------------------ paho callbacks

    def on_connect(self, client: mqtt.Client, st: ClientState, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.rec.event(st, "connack_error", str(rc))
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
        self.rec.event(st, "connect" if first else "reconnect", st.local)
        if st.lost_at:
            self.rec.outage(st, time.time())
            st.lost_at = 0.0
        st.failures = 0
        self.changed = True
        st.backlog.empty_at = time.time()
        if st.spec.role == "sub" and getattr(flags, "session_present", False):
            # cleanSession false and the broker kept the session: its subscription and the
            # messages queued while we were away are there; subscribing again is not needed
            self.rec.event(st, "session_resumed", st.local)
        elif st.spec.role == "sub":
            topic, _ = self.sc.subscription_of(st.spec.index)
            client.subscribe(topic, self.sc.qos)

    def on_subscribe(self, client: mqtt.Client, st: ClientState, mid: int, rcs: Any, props: Any = None) -> None:
        if any(r.is_failure for r in rcs):
            self.rec.event(st, "suback_error", ";".join(str(r) for r in rcs))
            return
        st.subscribed = True
        self.changed = True

    def on_disconnect(self, client: mqtt.Client, st: ClientState, flags: Any, rc: Any, props: Any = None) -> None:
        if st.connected:
            st.disconnects += 1
            self.rec.event(st, "disconnect", str(rc).replace(",", ";"))
        self.lose(st)

    def lose(self, st: ClientState) -> None:
        """The client has no connection (lost, refused, or closed before CONNACK): note when an
        established one was lost, and queue the next attempt at its back-off time."""
        if st.connected and not st.lost_at:
            st.lost_at, st.lost_local = time.time(), st.local
        st.connected = False
        if st.spec.role == "pub" and st.client is not None:
            n = st.client.abandon_inflight()
            if n:
                st.failed += n
                self.rec.event(st, "publish_abandoned", f"{n} awaiting acknowledgement when the connection was lost")
        if self.stop or not st.attempted:
            return
        heapq.heappush(self.retries, (st.retry_at, self.index[id(st)]))

    def on_publish(self, client: mqtt.Client, st: ClientState, mid: int, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):  # the broker refused it: nobody can receive it
            self.on_refused(st, str(rc))
            return
        st.acked += 1
        self.rec.count(1)

    def on_refused(self, st: ClientState, reason: str) -> None:
        st.refused += 1
        if st.refused == 1:
            self.rec.event(st, "publish_refused", reason)

    def on_fast_refused(self, st: ClientState, ptype: int, code: int) -> None:
        """A fast-path publish acknowledged with a failure reason code (MQTT 5 PUBACK/PUBREC)."""
        self.on_refused(st, str(ReasonCode(PacketTypes.PUBACK if ptype == 0x40 else PacketTypes.PUBREC, identifier=code)))

    def on_ack(self, st: ClientState) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2) of a fast-path publish."""
        st.acked += 1
        self.rec.count(1)

    def on_message(self, client: mqtt.Client, st: ClientState, msg: mqtt.MQTTMessage) -> None:
        """paho's own path (a packet the fast path handed over); the fast path calls the recorder directly."""
        self.rec.payload(st, msg.payload, 0, len(msg.payload))

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
        c.payload_handler = self.rec.payload
        c.ack_handler = self.on_ack
        c.refuse_handler = self.on_fast_refused
        c.v5 = proto == mqtt.MQTTv5
        sec = self.spec.security.get(st.spec.role)
        if sec is not None:
            sec.apply(c)
        return c

    def connect(self, st: ClientState) -> None:
        host, port = st.spec.target.rsplit(":", 1)
        st.attempted = time.time()
        st.retry_at = st.attempted + backoff.delay_s(st.failures, self.sc.reconnect_min_ms, self.sc.reconnect_max_ms, self.rng)
        st.failures += 1
        if st.client is None:
            st.client = self.make_client(st)
        try:
            if self.sc.mqtt_version == "5":
                props = None
                if not self.sc.clean_session:  # MQTT 5 keeps a session past the connection only with an expiry interval
                    from paho.mqtt.properties import Properties

                    props = Properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = int(self.sc.time_limit_s) + 60  # the run's, not the broker's lifetime
                # paho's "clean start on the first connection only" counts every connect() call as a
                # first one; a session is ours to resume once a connection has been established
                st.client.connect(host, int(port), self.sc.keepalive, clean_start=self.sc.clean_session or not st.connected_at,
                                  properties=props)
            else:
                st.client.connect(host, int(port), self.sc.keepalive)
        except OSError as exc:
            self.rec.event(st, "connect_error", str(exc).replace(",", ";"))
            self.lose(st)
            return
        sock = st.client.socket()
        if sock is not None:
            # paho closes a socket itself on a keepalive timeout, leaving its entry here; the kernel
            # then hands the same number to a new socket
            self.drop(st, sock.fileno())
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
            bl = st.backlog if st.spec.role == "sub" else None
            if bl is not None and isinstance(sock, BufferedSocket):
                sock.queued = -1
                sock.probe = time.time() - bl.checked >= SAMPLE_S
            before = sock
            rc = c.fast_read()
            sock = c.socket()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
                self.drop(st, fd)
                why = getattr(before, "error", "")  # a TLS alert from the broker, e.g. certificate expired
                if st.connected:
                    st.disconnects += 1
                    self.rec.event(st, "disconnect", f"read:{int(rc)}" + (f" {why}" if why else ""))
                elif why:
                    self.rec.event(st, "connect_error", why)
                self.lose(st)
                return
            if bl is not None and isinstance(sock, BufferedSocket) and sock.queued >= 0:
                bl.sample(sock.queued, sock.queued_at)
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

    # ------------------------------------------------------------------ publishing

    def start_publishers(self) -> None:
        self.phase = "publish"
        self.cpu_pub0 = time.process_time()
        self.wall_pub0 = time.time()
        todo = []
        for i, st in enumerate(self.pubs):
            st.planned = self.sc.messages_of(st.spec.index)
            if st.planned:
                todo.append((i, st.spec.index))
        self.schedule.start(self.t0, todo)

    def publish_due(self) -> None:
        now = time.time()
        sc = self.sc
        schedule = self.schedule
        burst = 0
        while burst < 2000:
            item = schedule.pop_due(now)
            if item is None:
                break
            due, i = item
            burst += 1
            st = self.pubs[i]
            c = st.client
            if c is None or not st.connected:
                # not connected (yet, or any more): retry shortly, the schedule slips and is counted
                if now - self.t0 <= sc.time_limit_s:
                    schedule.push(now + 0.05, i)
                continue
            sock = c.socket()
            if isinstance(sock, BufferedSocket) and len(sock.wbuf) > 4 << 20:
                schedule.push(now + 0.01, i)  # the kernel is not taking more: back off
                continue
            behind = now - due
            if behind > st.max_behind:
                st.max_behind = behind
            st.late.observe(due, now)
            seq = st.sent
            # the intended time is the message's slot in the fixed schedule, whatever slipped before it
            # (a reconnect, a full socket): its wait counts (interval 0 has no schedule: sent is intended)
            sent_ns = time.time_ns()
            intended = round((self.t0 + schedule.offset(st.spec.index) + seq * schedule.interval) * 1e9) if schedule.interval else sent_ns
            payload = encode(st.spec.index, seq, sent_ns, self.spec.tag, sc.payload_bytes, intended)
            if sc.qos == 0:
                if c.fast_publish_qos0(sc.topic_of(st.spec.index).encode(), payload):
                    st.acked += 1  # at QoS 0, "acknowledged" means written
                    self.rec.count(1)
                else:
                    st.failed += 1
                    self.rec.event(st, "publish_error", "not connected")
            elif not c.fast_publish(sc.topic_of(st.spec.index).encode(), payload, sc.qos):
                st.failed += 1
                self.rec.event(st, "publish_error", "not connected")
            st.sent += 1
            if not st.first_send:
                st.first_send = now
            st.last_send = now
            self.rec.count(0)
            if st.sent < st.planned:
                schedule.push(schedule.following(due, now), i)

    # ------------------------------------------------------------------ loop

    def poll(self, timeout: float) -> None:
        t_sel = time.time()
        events = self.sel.select(timeout)
        now = time.time()
        waited = min(now - t_sel, timeout)  # beyond the timeout the process was not running
        if self.wall_pub0:
            self.idle += waited
        lag = now - t_sel - timeout
        if lag > 0:
            self.lags.append(lag)
            self.lag_max = max(self.lag_max, lag)
        # not looking at the sockets for a while (a long turn, or stopped, or starved of CPU):
        # what waits in a subscriber's socket now waited since the loop last looked at the latest
        # (asked directly: after SIGCONT, epoll can first return nothing)
        if now - self.looked_at - waited >= STALL_S:
            for st in self.subs:
                sock = st.client.socket() if st.client is not None else None
                if sock is not None:
                    st.backlog.stalled(queued_bytes(sock.fileno()), self.looked_at)
        self.looked_at = now
        for key, mask in events:
            if key.data is None:
                self.control()
            else:
                self.handle(key.data, key.fd, mask)  # type: ignore[arg-type]

    def control(self) -> None:
        while self.ctl.poll():
            msg = self.ctl.recv()
            if isinstance(msg, StartPublishers):
                self.t0 = msg.at
                self.start_publishers()
            elif isinstance(msg, Stop):
                self.stop = True

    def report(self, kind: ReportKind) -> None:
        self.ctl.send(Report(kind, self.totals()))

    def totals(self) -> dict[str, int]:
        return {
            "connected": sum(1 for s in self.states if s.connected),
            "subscribed": sum(1 for s in self.subs if s.subscribed),
            "sent": sum(s.sent for s in self.pubs),
            "acked": sum(s.acked for s in self.pubs),
            "received": self.rec.received,
            "planned": sum(s.planned for s in self.pubs),
        }

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
            if self.schedule:
                timeout = min(timeout, max(0.0, self.schedule.next_due() - now))
            if self.retries:
                timeout = min(timeout, max(0.0, self.retries[0][0] - now))
            self.poll(timeout)
            if self.schedule:
                self.publish_due()
            while self.retries and self.retries[0][0] <= time.time():
                st = self.states[heapq.heappop(self.retries)[1]]
                if st.retry_at <= time.time() and not st.connected and (st.client is None or st.client.socket() is None):
                    self.connect(st)
            self.flush_writes()
            if not reported_ready and self.changed and not pending:
                # at once, not at the next tick: the publishers' start waits for every worker's
                # ready; looked at again only after the next CONNACK or SUBACK
                self.changed = False
                if all(s.subscribed for s in self.subs) and all(s.connected for s in self.pubs):
                    reported_ready = True
                    self.report("ready")
                    if not self.pubs:  # a subscriber-only worker measures itself from here
                        self.cpu_pub0, self.wall_pub0 = time.process_time(), time.time()
            now = time.time()
            if now - last_tick >= 0.5:
                last_tick = now
                for st in self.states:
                    if st.client is not None and st.client.socket() is not None:
                        st.client.loop_misc()
                        if st.spec.role == "pub":
                            st.client.resume()
                        elif st.backlog.since:
                            st.backlog.settle(queued_bytes(st.client.socket().fileno()))  # type: ignore[union-attr]
                        if st.client.want_write():
                            st.client.loop_write()
                    elif st.attempted and now >= st.retry_at:
                        self.connect(st)  # lost or refused by a path that did not queue it: on_connect records "reconnect"
                self.flush_writes()
                self.rec.flush()
                self.report("progress")
                if self.phase == "publish" and not self.schedule and not self.publish_done_at:
                    if all(s.acked + s.failed >= s.sent or self.sc.qos == 0 for s in self.pubs):
                        self.publish_done_at = now
                        self.report("published")
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
        cpu = time.process_time() - self.cpu0
        pub_cpu = time.process_time() - self.cpu_pub0 if self.cpu_pub0 else 0.0
        pub_wall = time.time() - self.wall_pub0 if self.wall_pub0 else 0.0
        lags = np.frombuffer(self.lags, dtype=np.float64) if len(self.lags) else np.zeros(1)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        now = time.time()
        clients = []
        for st in self.states:
            sub = st.spec.role == "sub"
            r = client_record(st.spec.client_id, st.spec.role, st.spec.index, "receive_backlog" if sub else "behind_schedule",
                              st.backlog if sub else st.late, now)
            if r is not None:
                clients.append(r)
        self_check = {
            "worker": self.spec.worker,
            "host": self.spec.host,
            "label": self.spec.label,
            "cpu_s": round(cpu, 3),
            "publish_phase_cpu_s": round(pub_cpu, 3),
            "publish_phase_wall_s": round(pub_wall, 3),
            "cpu_busy_pct": round(100.0 * pub_cpu / pub_wall, 1) if pub_wall > 0 else 0.0,
            "loop_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 3),
            "loop_lag_max_ms": round(self.lag_max * 1000, 3),
            "publish_behind_max_ms": round(max((s.max_behind for s in self.pubs), default=0.0) * 1000, 3),
            "max_rss_kb": ru.ru_maxrss,
            "measured_wall_s": round(pub_wall, 3),
            "loop_idle_pct": round(100.0 * self.idle / pub_wall, 1) if pub_wall > 0 else None,
            "clients": clients,
        }
        self.rec.finish(self.states, self_check)
        self.ctl.send(Done(self.totals(), self_check))


def worker_main(spec: WorkerSpec, ctl: Connection) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when to stop
    Worker(spec, ctl).run()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
