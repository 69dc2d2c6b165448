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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads.base.procs import StopFlag, die_with_parent
from workloads.bench.worker import ClientSpec, WorkerSpec, cpu_count, worker_main
from workloads.describe import runsize
from workloads.describe.names import client_id
from workloads.describe.scenario import QUIET_S, Scenario
from workloads.rundir.records import start_manifest, update_manifest


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


def run_host(
    share: HostShare,
    scenario: Scenario,
    run_dir: Path,
    tag: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    start_at: float | None = None,
    ready_file: Path | None = None,
    stop: StopFlag | None = None,
    manifest_fields: dict[str, Any] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``security``: role ("pub", "sub") -> :class:`workloads.render.security.ClientSecurity`."""
    """Run this host's clients to the end and return the workers' final totals."""
    stop = stop or StopFlag()
    tag = tag if tag is not None else random.getrandbits(32)
    out = run_dir / "bench" / share.host
    out.mkdir(parents=True, exist_ok=True)
    own_manifest = not (run_dir / "manifest.json").exists()
    if own_manifest:
        start_manifest(run_dir, kind="bench", scenario=scenario.to_dict(), targets=share.targets, tag=tag, **(manifest_fields or {}))
    clients = make_clients(share, tag)
    n = max(1, min(workers or cpu_count(), len(clients) or 1))
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for w in range(n):
        mine = clients[w::n]
        parent, child = ctx.Pipe()
        role = "run" if share.publishers and share.subscribers else ("pub" if share.publishers else "sub")
        spec = WorkerSpec(w, share.host, str(out), scenario, tag, mine, scenario.connect_rate / n, role, dict(security or {}))
        p = ctx.Process(target=_worker, args=(os.getpid(), spec, child), name=f"mqttlab-bench-{w}", daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    state: dict[int, Any] = {w: {} for w in range(n)}
    ready: set[int] = set()
    published: set[int] = set()
    done: dict[int, Any] = {}
    prog = Progress(progress)
    deadline = time.time() + scenario.time_limit_s
    phase = "connect"
    phase_t0 = [time.time()]  # when the publishing phase starts, its rate counts from there
    want_total = scenario.expected_deliveries(share.subscribers) if share.publishers else 0
    status = "complete"
    reason = ""

    def pump(timeout: float) -> None:
        from multiprocessing.connection import wait

        for conn in wait(pipes, timeout):
            w = pipes.index(conn)  # type: ignore[arg-type]
            try:
                msg = conn.recv()  # type: ignore[union-attr,call-arg]
            except EOFError:
                done.setdefault(w, None)
                continue
            if msg[0] in ("progress", "ready", "published"):
                state[w] = msg[1]
            if msg[0] == "ready":
                ready.add(w)
            elif msg[0] == "published":
                published.add(w)
            elif msg[0] == "done":
                state[w] = msg[1]
                done[w] = msg[2]
        tot = {k: sum(s.get(k, 0) for s in state.values()) for k in ("connected", "subscribed", "sent", "acked", "received", "planned")}
        # the phase's own measure against its total, with rate and ETA (runsize.progress, as the lab)
        if phase == "connect":
            main = runsize.progress(tot["connected"], len(clients), time.time() - phase_t0[0], "connected")
        elif phase == "publish" or not share.subscribers:
            main = runsize.progress(tot["sent"], tot["planned"], time.time() - phase_t0[0], "sent")
        else:
            main = runsize.progress(tot["received"], want_total, time.time() - phase_t0[0], "received")
        prog.show(f"[{share.host}] {phase:8s} {main}  subscribed {tot['subscribed']}/{len(share.subscribers)}  "
                  f"sent {tot['sent']}/{tot['planned'] or '-'}  acked {tot['acked']}  received {tot['received']}")

    try:
        while len(ready) < n and not stop.is_set() and time.time() < deadline and len(done) < n:
            pump(0.2)
        if len(ready) < n:
            status, reason = "partial", "not every client connected and subscribed before the time limit" if not stop.is_set() else "stopped"
        if ready_file is not None and len(ready) == n:
            ready_file.parent.mkdir(parents=True, exist_ok=True)  # checked creatable before the run (clipaths.out_file)
            ready_file.write_text(f"{time.time():.6f}\n")
        if share.publishers and status == "complete":
            t0 = max(time.time() + 0.2, start_at or 0.0)
            for c in pipes:
                c.send(("start_pubs", t0))
            phase = "publish"
            phase_t0[0] = t0
            while len(published) < n and not stop.is_set() and time.time() < deadline and len(done) < n:
                pump(0.2)
            if len(published) < n:
                status, reason = "partial", "stopped" if stop.is_set() else "publishing did not finish before the time limit"
        # drain: wait for deliveries to settle (everything expected, or drain_s of the quiet tail)
        phase = "drain"
        if share.subscribers and status == "complete":
            # with local publishers: until everything expected arrived or drain_s passed; a
            # subscriber-only host waits to be stopped (its orchestrator knows when the run is over)
            want = scenario.expected_deliveries(share.subscribers)
            drain_end = time.time() + scenario.drain_s if share.publishers else deadline
            seen, quiet_since = -1, time.time()
            while not stop.is_set() and time.time() < min(drain_end, deadline):
                pump(0.2)
                got = sum(s.get("received", 0) for s in state.values())
                if got != seen:
                    seen, quiet_since = got, time.time()
                if share.publishers and (got >= want or time.time() - quiet_since >= QUIET_S):
                    break
        elif share.publishers:
            pump(0.1)
    except KeyboardInterrupt:
        status, reason = "partial", "interrupted"
    finally:
        phase = "stop"
        for c in pipes:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        end = time.time() + 30
        while len(done) < n and time.time() < end:
            pump(0.2)
        for p in procs:
            p.join(timeout=max(0.1, end - time.time()))
            if p.is_alive():
                p.kill()
                status, reason = "partial", "a worker did not stop"
        prog.done()
    if own_manifest:
        update_manifest(run_dir, status=status, reason=reason, ended_at=time.time())
    return {"status": status, "reason": reason, "workers": list(done.values())}


def _worker(parent: int, spec: WorkerSpec, ctl: Any) -> None:
    """A worker never outlives this process, even one killed with SIGKILL; a stop signal sent to
    the whole process group (``timeout``, a terminal hangup) reaches the orchestrator, which
    stops the workers in order so they still write what they measured."""
    die_with_parent(parent)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    worker_main(spec, ctl)


