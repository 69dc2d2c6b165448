"""Orchestrates one host's share of a benchmark: worker processes, phases, progress, bounds.

Phases: connect (subscribers first) -> ready -> publish on a common start time -> drain ->
stop. Every wait is bounded by the scenario's time limit; a stop request (SIGTERM, SIGINT, SIGHUP)
ends the current phase and still writes what was measured.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from workloads.base.procs import StopFlag, die_with_parent
from workloads.bench.protocol import Done, Report, StartPublishers, Stop, Totals
from workloads.bench.worker import ClientSpec, WorkerSpec, cpu_count, worker_main
from workloads.describe import runsize
from workloads.describe.names import client_id
from workloads.describe.scenario import Scenario
from workloads.rundir.records import drain, start_manifest, update_manifest


@dataclass
class HostShare:
    """Which publishers and subscribers (global numbers) this host runs, and against what."""

    host: str
    targets: list[str]
    publishers: list[int] = field(default_factory=list)
    subscribers: list[int] = field(default_factory=list)


def split_evenly(total: int, parts: int, part: int) -> list[int]:
    """The global indices of ``part`` when ``total`` clients are spread over ``parts`` hosts."""
    return list(range(part, total, parts))


def make_clients(share: HostShare, tag: int) -> list[ClientSpec]:
    out: list[ClientSpec] = []
    t = share.targets
    for n, i in enumerate(share.subscribers):
        out.append(ClientSpec("sub", i, client_id(tag, "sub", i), t[n % len(t)]))
    for n, i in enumerate(share.publishers):
        out.append(ClientSpec("pub", i, client_id(tag, "pub", i), t[n % len(t)]))
    return out


class Progress:
    """One updating line on a terminal, a line every few seconds otherwise (logs, CI)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif now - self.last >= 5:
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class HostRun:
    """One host's share of a benchmark, phase by phase: start the workers, wait until every
    client is connected and subscribed, start publishing at the common time, drain, stop. Every
    wait is bounded by the scenario's time limit and ends early on a stop request."""

    def __init__(self, share: HostShare, scenario: Scenario, run_dir: Path, tag: int, workers: int | None, progress: bool,
                 stop: StopFlag, security: dict[str, Any]) -> None:
        self.share, self.sc, self.run_dir, self.tag, self.stop = share, scenario, run_dir, tag, stop
        self.out = run_dir / "bench" / share.host
        self.clients = make_clients(share, tag)
        self.n = max(1, min(workers or cpu_count(), len(self.clients) or 1))
        self.security = security
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.state: dict[int, Totals] = {w: {} for w in range(self.n)}
        self.ready: set[int] = set()
        self.published: set[int] = set()
        self.done: dict[int, Any] = {}
        self.prog = Progress(progress)
        self.deadline = time.time() + scenario.time_limit_s
        self.phase, self.phase_t0 = "connect", time.time()  # a phase's rate counts from its start
        self.status, self.reason = "complete", ""
        self.expected = scenario.expected_deliveries(share.subscribers) if share.publishers else 0

    # ------------------------------------------------------------------ the pipe

    def start_workers(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("fork")
        role = "run" if self.share.publishers and self.share.subscribers else ("pub" if self.share.publishers else "sub")
        for w in range(self.n):
            parent, child = ctx.Pipe()
            spec = WorkerSpec(w, self.share.host, str(self.out), self.sc, self.tag, self.clients[w::self.n], self.sc.connect_rate / self.n,
                              role, dict(self.security))
            p = ctx.Process(target=_worker, args=(os.getpid(), spec, child), name=f"mqttlab-bench-{w}", daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def send(self, msg: StartPublishers | Stop) -> None:
        for c in self.pipes:
            try:
                c.send(msg)
            except (BrokenPipeError, OSError):  # a worker that already ended
                pass

    def pump(self, timeout: float = 0.2) -> None:
        """Take what the workers said within ``timeout``, then show the progress line."""
        for conn in wait(self.pipes, timeout):
            w = self.pipes.index(conn)  # type: ignore[arg-type]
            try:
                msg = conn.recv()  # type: ignore[union-attr,call-arg]
            except EOFError:
                self.done.setdefault(w, None)
                continue
            if isinstance(msg, Report):
                self.state[w] = msg.totals
                if msg.kind == "ready":
                    self.ready.add(w)
                elif msg.kind == "published":
                    self.published.add(w)
            elif isinstance(msg, Done):
                self.state[w], self.done[w] = msg.totals, msg.result
        self.show()

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.state.values())

    def show(self) -> None:
        if not self.prog.enabled:
            return
        tot = {k: self.total(k) for k in ("connected", "subscribed", "sent", "acked", "received", "planned")}
        # the phase's own measure against its total, with rate and ETA (runsize.progress, as the lab)
        since = time.time() - self.phase_t0
        if self.phase == "connect":
            main = runsize.progress(tot["connected"], len(self.clients), since, "connected")
        elif self.phase == "publish" or not self.share.subscribers:
            main = runsize.progress(tot["sent"], tot["planned"], since, "sent")
        else:
            main = runsize.progress(tot["received"], self.expected, since, "received")
        self.prog.show(f"[{self.share.host}] {self.phase:8s} {main}  subscribed {tot['subscribed']}/{len(self.share.subscribers)}  "
                       f"sent {tot['sent']}/{tot['planned'] or '-'}  acked {tot['acked']}  received {tot['received']}")

    def pump_until(self, done: Callable[[], bool]) -> bool:
        """Pump until ``done()``, a stop request, the time limit or every worker ended; whether it is done."""
        while not done() and not self.stop.is_set() and time.time() < self.deadline and len(self.done) < self.n:
            self.pump()
        return done()

    def fail(self, reason: str) -> None:
        self.status, self.reason = "partial", "stopped" if self.stop.is_set() else reason

    # ------------------------------------------------------------------ the phases

    def connect(self, ready_file: Path | None) -> None:
        if not self.pump_until(lambda: len(self.ready) == self.n):
            self.fail("not every client connected and subscribed before the time limit")
        elif ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)  # checked creatable before the run (clipaths.out_file)
            ready_file.write_text(f"{time.time():.6f}\n")

    def publish(self, start_at: float | None) -> None:
        t0 = max(time.time() + 0.2, start_at or 0.0)
        self.send(StartPublishers(t0))
        self.phase, self.phase_t0 = "publish", t0
        if not self.pump_until(lambda: len(self.published) == self.n):
            self.fail("publishing did not finish before the time limit")

    def settle(self) -> None:
        """With local publishers: until everything expected arrived, or nothing arrived for
        QUIET_S, or drain_s passed (:func:`~workloads.rundir.records.drain`). A subscriber-only
        host waits to be stopped: its orchestrator knows when the run is over."""
        self.phase = "drain"
        if not self.share.publishers:
            self.pump_until(lambda: False)
            return

        def received() -> int:
            self.pump()
            return self.total("received")

        drain(received, self.sc.expected_deliveries(self.share.subscribers), min(self.sc.drain_s, self.deadline - time.time()),
              poll_s=0, stopped=self.stop.is_set)

    def finish(self) -> None:
        """Stop every worker in order (each writes what it measured), within a bound."""
        self.phase = "stop"
        self.send(Stop())
        end = time.time() + 30
        while len(self.done) < self.n and time.time() < end:
            self.pump()
        for p in self.procs:
            p.join(timeout=max(0.1, end - time.time()))
            if p.is_alive():
                p.kill()
                self.status, self.reason = "partial", "a worker did not stop"
        self.prog.done()

    def run(self, start_at: float | None, ready_file: Path | None) -> dict[str, Any]:
        self.start_workers()
        try:
            self.connect(ready_file)
            if self.share.publishers and self.status == "complete":
                self.publish(start_at)
            if self.share.subscribers and self.status == "complete":
                self.settle()
            elif self.share.publishers:
                self.pump(0.1)
        except KeyboardInterrupt:
            self.status, self.reason = "partial", "interrupted"
        finally:
            self.finish()
        return {"status": self.status, "reason": self.reason, "workers": list(self.done.values())}


def run_host(share: HostShare, scenario: Scenario, run_dir: Path, tag: int | None = None, workers: int | None = None, progress: bool = True,
             start_at: float | None = None, ready_file: Path | None = None, stop: StopFlag | None = None,
             manifest_fields: dict[str, Any] | None = None, security: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run this host's clients to the end and return the workers' final totals; the run's
    manifest is this host's own when nobody else started one. ``security``: role ("pub", "sub")
    -> :class:`workloads.render.security.ClientSecurity`."""
    tag = tag if tag is not None else random.getrandbits(32)
    own_manifest = not (run_dir / "manifest.json").exists()
    if own_manifest:
        start_manifest(run_dir, kind="bench", scenario=scenario.to_dict(), targets=share.targets, tag=tag, **(manifest_fields or {}))
    result = HostRun(share, scenario, run_dir, tag, workers, progress, stop or StopFlag(), security or {}).run(start_at, ready_file)
    if own_manifest:
        update_manifest(run_dir, status=result["status"], reason=result["reason"], ended_at=time.time())
    return result


def _worker(parent: int, spec: WorkerSpec, ctl: Any) -> None:
    """A worker never outlives this process, even one killed with SIGKILL; a stop signal sent to
    the whole process group (``timeout``, a terminal hangup) reaches the orchestrator, which
    stops the workers in order so they still write what they measured."""
    die_with_parent(parent)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    worker_main(spec, ctl)


