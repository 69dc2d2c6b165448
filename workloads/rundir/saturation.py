"""Is the load generator itself the limit? Per-client evidence, and the verdict.

A benchmark that reports loss must be sure the loss was the system's, not its own: a subscriber
that cannot read as fast as the broker sends makes the broker queue and then drop for it, which
looks exactly like a broker or balancer limit. So every worker records, per client:

- **receive backlog** (subscribers): how long unread data waited in the socket's kernel receive
  queue. The queue is sampled with ``ioctl(SIOCINQ)`` right after the worker read the socket (at
  most every ``SAMPLE_S`` per socket, and after every read that filled the whole read buffer), so
  the cost is bounded by the sampling period, not by the message rate. A read that did not fill
  its buffer took all that had arrived before it (what the sample finds came during the read),
  so only a full read can leave old data behind: a reader that falls behind fills its reads,
  read after read, or stops looking for a while. Data that waited while the worker could not run at all (stopped, starved of CPU, a long
  loop turn) is caught too: after a loop *stall* every subscriber that had data is charged the
  stall, since that data arrived while nobody was reading.
- **behind schedule** (publishers): how long a publisher's sends were later than its schedule
  by ``LATE_S`` or more (the offered load was then not the scenario's).

and per worker: CPU use, loop lag, and how much of the time its loop idled (a loop that never
waits in ``select`` is busy all the time: the worker is the limit).

:func:`judge` turns these into ``bench_saturated`` and the list of clients, with durations.
Only the standard library: this runs on every client host.
"""

from __future__ import annotations

import array
import fcntl
import termios
from collections.abc import Iterable, Mapping
from typing import Any

SAMPLE_S = 0.01  # at most one SIOCINQ per subscriber socket per 10 ms (plus one per full read)
STALL_S = 0.05  # the loop did not look at its sockets for this long: data may have waited
LATE_S = 0.1  # a send this much later than its schedule counts as behind
EPISODE_S = 0.01  # shorter waits are noise (data arriving between a read and its sample)
# the verdict
WORKER_LIMITS = {"cpu_busy_pct": 90.0, "loop_lag_p99_ms": 50.0}
IDLE_MIN_PCT = 5.0  # a loop idle less than this (over at least IDLE_WINDOW_S) never rested
IDLE_WINDOW_S = 1.0
CLIENT_LIMIT_S = 0.5  # a backlog or lateness this long makes the run saturated, loss or not
LOSSY_CLIENT_LIMIT_S = 0.1  # a subscriber that lost messages and waited this long may have caused it ...
LOSSY_BYTES = 65536  # ... when that much was waiting: half of Linux's default TCP receive buffer (tcp_rmem 131072)

_SIOCINQ = getattr(termios, "FIONREAD", 0x541B)  # SIOCINQ == FIONREAD for TCP sockets on Linux


def queued_bytes(fd: int, buf: array.array[int] | None = None) -> int:
    """Bytes waiting in a socket's kernel receive queue (0 on a closed socket: a closed fd is
    EBADF, a closed Python socket's ``fileno()`` is -1, which ioctl refuses with ValueError)."""
    b = buf if buf is not None else array.array("i", [0])
    try:
        fcntl.ioctl(fd, _SIOCINQ, b, True)
    except (OSError, ValueError):
        return 0
    return int(b[0])


class Episodes:
    """Intervals during which something was wrong for one client: count, total, longest, span."""

    __slots__ = ("since", "count", "total", "longest", "first", "last", "worst")

    def __init__(self) -> None:
        self.since = 0.0  # start of the open episode (0: none open)
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        self.first = 0.0
        self.last = 0.0
        self.worst = 0  # largest queue seen (bytes) or largest lateness (microseconds)

    def open(self, since: float) -> None:
        if not self.since:
            self.since = since

    def close(self, now: float) -> None:
        if not self.since:
            return
        d = now - self.since
        if d >= EPISODE_S:
            self.count += 1
            self.total += d
            self.longest = max(self.longest, d)
            self.first = self.first or self.since
            self.last = now
        self.since = 0.0

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        return {"seconds": round(self.total, 3), "longest_s": round(self.longest, 3), "episodes": self.count,
                "first_s": round(self.first, 3), "last_s": round(self.last, 3)} | extra


class ReceiveBacklog(Episodes):
    """How long one subscriber's data waited unread in its socket."""

    __slots__ = ("checked", "empty_at")

    def __init__(self, now: float) -> None:
        super().__init__()
        self.checked = 0.0  # last sample
        self.empty_at = now  # last time the queue was seen empty (data after it may have waited)

    def due(self, now: float) -> bool:
        return now - self.checked >= SAMPLE_S

    def sample(self, queued: int, now: float) -> None:
        """Right after a read: ``queued`` bytes were still waiting."""
        self.checked = now
        if queued > 0:
            self.open(self.empty_at)
            self.worst = max(self.worst, queued)
            return
        self.close(now)
        self.empty_at = now

    def stalled(self, queued: int, looked_at: float) -> None:
        """The loop did not look at its sockets since ``looked_at``, and ``queued`` bytes wait now:
        they arrived during the stall at the earliest."""
        if queued > 0:
            self.open(max(self.empty_at, looked_at))
            self.worst = max(self.worst, queued)


    def settle(self, queued: int) -> None:
        """The loop is between reads and the queue is ``queued``: an open stretch whose queue is
        empty ended with the last read (no read came since because nothing was left)."""
        if self.since and queued == 0:
            self.close(self.checked)


class Lateness(Episodes):
    """How long one publisher was ``LATE_S`` or more behind its schedule."""

    __slots__ = ()

    def observe(self, due: float, now: float) -> None:
        behind = now - due
        if behind >= LATE_S:
            self.open(due)
            us = int(behind * 1e6)
            if us > self.worst:
                self.worst = us
        elif self.since:
            self.close(now)


def client_record(client_id: str, role: str, index: int, kind: str, ep: Episodes, now: float) -> dict[str, Any] | None:
    """The self-check entry of one client (None when nothing was wrong); closes an open episode."""
    ep.close(ep.checked if isinstance(ep, ReceiveBacklog) else now)
    if not ep.count:
        return None
    extra = {"max_queued_bytes": ep.worst} if kind == "receive_backlog" else {"max_behind_ms": round(ep.worst / 1000, 3)}
    return {"client_id": client_id, "role": role, "index": index, "kind": kind, **ep.to_dict(**extra)}


def judge(selfs: Iterable[Mapping[str, Any]], lost_by_sub: Mapping[int, int]) -> tuple[list[str], list[dict[str, Any]]]:
    """(reasons, saturated clients). ``selfs`` are the workers' self-checks, ``lost_by_sub`` the
    loss per subscriber number. A client counts when it waited ``CLIENT_LIMIT_S`` or more in one
    stretch, or, for a subscriber that lost messages with ``LOSSY_BYTES`` or more waiting,
    ``LOSSY_CLIENT_LIMIT_S``: the loss may then be the bench's own. A broker drops for a client
    whose queue is full, which a reader can cause only by leaving enough unread to close its
    TCP window (or by holding its acknowledgements for as long as the broker's queue takes to
    fill, which the general limit bounds); a stall of a tenth of a second with a few kilobytes
    waiting, common for any reader on a busy CPU, cannot."""
    reasons: list[str] = []
    clients: list[dict[str, Any]] = []
    for s in selfs:
        who = f"{s.get('host', '')}/{s.get('label', s.get('worker'))}".lstrip("/")
        for key, limit in WORKER_LIMITS.items():
            if s.get(key, 0) >= limit:
                reasons.append(f"worker {who} {key}={s[key]} >= {limit}")
        idle = s.get("loop_idle_pct")
        if idle is not None and s.get("measured_wall_s", 0) >= IDLE_WINDOW_S and idle < IDLE_MIN_PCT:
            reasons.append(f"worker {who} loop idle {idle} % < {IDLE_MIN_PCT} % (never waited for work)")
        for c in s.get("clients", []):
            lost = lost_by_sub.get(int(c["index"]), 0) if c["role"] == "sub" else 0
            limit = LOSSY_CLIENT_LIMIT_S if lost and c.get("max_queued_bytes", 0) >= LOSSY_BYTES else CLIENT_LIMIT_S
            if c["longest_s"] < limit:
                continue
            clients.append(dict(c) | {"lost": lost})
            if c["kind"] == "receive_backlog":
                reasons.append(f"{c['client_id']} left data unread in its socket for {c['longest_s']} s "
                               f"({c['seconds']} s in {c['episodes']} stretches, up to {c['max_queued_bytes']} bytes; lost {lost})")
            else:
                reasons.append(f"{c['client_id']} was behind its schedule for {c['longest_s']} s "
                               f"({c['seconds']} s in {c['episodes']} stretches, up to {c['max_behind_ms']} ms late)")
    return reasons, clients
