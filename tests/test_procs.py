"""Waits bounded by progress: slow is waited for, stuck is not, and every wait ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from workloads.base import procs

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"  # CPU seconds, however busy the machine


def test_tree_cpu_counts_live_grandchildren_and_reaped_children() -> None:
    # a shell whose child computes 0.6 s and is reaped, then whose other child computes on
    code = ("import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {BUSY.format(s=0.6)!r}])\n"
            f"p = subprocess.Popen([sys.executable, '-c', {BUSY.format(s=30)!r}])\n"
            "print('go', flush=True)\np.wait()\n")
    top = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert top.stdout is not None and top.stdout.readline().strip() == "go"
        first = procs.tree_cpu_s([top.pid])
        assert first >= 0.6  # the reaped child's time, through the parent's cutime
        # the live grandchild's own time grows (bounded; how fast depends on the machine)
        end = time.monotonic() + 120
        while procs.tree_cpu_s([top.pid]) < first + 0.3 and time.monotonic() < end:
            time.sleep(0.1)
        assert procs.tree_cpu_s([top.pid]) >= first + 0.3
    finally:
        for c in procs._descendants(top.pid)[1:]:
            subprocess.run(["kill", str(c)])
        top.kill()
        top.wait()
    assert procs.tree_cpu_s([top.pid]) == 0.0  # gone: nothing to count, no error


def test_a_wait_goes_past_its_limit_while_progress_grows_and_stops_when_it_stalls() -> None:
    t0 = time.monotonic()
    grows = iter(range(1000))
    # done at 1.5 s, limit 0.5 s: still growing, so waited for
    assert procs.wait_progressing(lambda: time.monotonic() - t0 > 1.5, 0.5, lambda: float(next(grows)), poll=0.02, window=0.1, most=10)
    t0 = time.monotonic()
    # stalled: ends after the limit, long before its hard bound (10 s)
    assert not procs.wait_progressing(lambda: False, 0.5, lambda: 1.0, poll=0.02, window=0.1, most=20)
    assert 0.5 <= time.monotonic() - t0 < 5
    t0 = time.monotonic()
    grows = iter(range(1000))
    assert not procs.wait_progressing(lambda: False, 0.5, lambda: float(next(grows)), poll=0.02, window=0.1, most=3)  # bounded
    assert time.monotonic() - t0 >= 1.5
    tiny = iter(x * 0.01 for x in range(1000))  # an idle loop's ticks are not progress
    t0 = time.monotonic()
    assert not procs.wait_progressing(lambda: False, 0.5, lambda: next(tiny), poll=0.02, window=0.1, most=20)
    assert time.monotonic() - t0 < 5


# A signal's Python handler runs in the main thread between two bytecodes, wherever that thread
# is. The child makes a SIGALRM land at each bytecode of a wait in turn (an opcode tracer calls
# the installed handler there), so every landing point is tried, not just the likely ones.
LANDING = """
import signal, sys, threading
sys.path.insert(0, {root!r})
from workloads.base.procs import StopFlag

def run(land_at):
    flag = {make}
    {install}
    handler = signal.getsignal(signal.SIGALRM)
    seen, landed = 0, False
    def trace(frame, event, arg):
        nonlocal seen, landed
        frame.f_trace_opcodes = True
        if event == "opcode":
            seen += 1
            if seen == land_at:
                landed = True
                handler(signal.SIGALRM, frame)
        return trace
    sys.settrace(trace)
    try:
        flag.wait(0.01)
    finally:
        sys.settrace(None)
    assert flag.is_set() or not landed
    return seen

total = run(0)
print("opcodes", total, flush=True)
for k in range(1, total + 1):
    run(k)
print("landed at each", flush=True)
"""


def _landing(make: str, install: str) -> subprocess.Popen[str]:
    code = LANDING.format(root=str(ROOT), make=make, install=install)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stop_signal_landing_anywhere_in_a_wait_is_taken() -> None:
    p = _landing("StopFlag()", "flag.install((signal.SIGALRM,))")
    out, err = p.communicate(timeout=300)
    lines = out.splitlines()
    assert p.returncode == 0 and lines[-1] == "landed at each" and int(lines[0].split()[1]) >= 10, out + err[-2000:]
    # what the flag replaced: threading.Event.set in the handler waits for the lock its own thread
    # holds inside Event.wait, and the child blocks for good (no CPU used, never done)
    ev = _landing("threading.Event()", "signal.signal(signal.SIGALRM, lambda *_: flag.set())")
    try:
        assert ev.stdout is not None and ev.stdout.readline().startswith("opcodes")
        with pytest.raises(subprocess.TimeoutExpired):
            ev.wait(5)
        before = procs.tree_cpu_s([ev.pid])
        time.sleep(1)
        assert procs.tree_cpu_s([ev.pid]) == before
    finally:
        ev.kill()
        ev.communicate()


def test_a_stop_flag_reports_the_first_signal_and_puts_the_old_handlers_back() -> None:
    code = ("import os, signal, sys, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from workloads.base.procs import StopFlag\n"
            "before = signal.getsignal(signal.SIGTERM)\n"
            "flag = StopFlag()\nrestore = flag.install()\n"
            "t0 = time.monotonic()\nassert not flag.wait(0.2) and time.monotonic() - t0 >= 0.2\n"
            "os.kill(os.getpid(), signal.SIGHUP)\nos.kill(os.getpid(), signal.SIGTERM)\n"
            "assert flag.wait(5) and flag.wait() and flag.signum == signal.SIGHUP\n"
            "restore()\nassert signal.getsignal(signal.SIGTERM) is before\n"
            "print('ok', flush=True)\n")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", cp.stdout + cp.stderr


def test_a_process_that_ends_while_its_tree_is_listed_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process can end between glob's look at ``/proc/PID/task`` and its listing; the listing
    then raises (it did in a micro-VM guest waiting on a broker that was just killed)."""
    real_glob = Path.glob

    def glob(self: Path, pattern: str) -> Any:
        if self == Path(f"/proc/{os.getpid()}/task"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", glob)
    assert procs._descendants(os.getpid()) == [os.getpid()]
    assert procs.tree_cpu_s([os.getpid()]) > 0
