"""Waits bounded by progress: slow is waited for, stuck is not, and every wait ends."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import ROOT
from workloads import procs

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


# A child waits on a stop flag in short waits while SIGALRM arrives every millisecond: a handler
# that takes a lock its own thread may hold (threading.Event.set inside Event.wait) blocks, the
# next signal nests another such handler, and the child dies of recursion or hangs. It must do
# all its cycles and count them.
BOMBARDED = """
import signal, sys, threading
sys.path.insert(0, {root!r})
from workloads.procs import StopFlag
for cycle in range({cycles}):
    flag = {make}
    {install}
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.001)
    for _ in range(50):
        flag.wait(0.0002)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    assert flag.is_set()
print("cycles", cycle + 1, flush=True)
"""


def _bombarded(make: str, install: str, cycles: int = 300) -> subprocess.CompletedProcess[str]:
    code = BOMBARDED.format(root=str(ROOT), cycles=cycles, make=make, install=install)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_a_stop_flag_survives_signals_arriving_while_it_waits() -> None:
    cp = _bombarded("StopFlag()", "flag.install((signal.SIGALRM,))")
    assert cp.returncode == 0 and cp.stdout.split() == ["cycles", "300"], cp.stdout + cp.stderr[-2000:]
    # what the flag replaces fails the same trial: the test can tell the two apart
    event = _bombarded("threading.Event()", "signal.signal(signal.SIGALRM, lambda *_: flag.set())", cycles=3000)
    assert event.returncode != 0 and "cycles" not in event.stdout


def test_a_stop_flag_reports_the_first_signal_and_puts_the_old_handlers_back() -> None:
    code = ("import os, signal, sys, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from workloads.procs import StopFlag\n"
            "before = signal.getsignal(signal.SIGTERM)\n"
            "flag = StopFlag()\nrestore = flag.install()\n"
            "t0 = time.monotonic()\nassert not flag.wait(0.2) and time.monotonic() - t0 >= 0.2\n"
            "os.kill(os.getpid(), signal.SIGHUP)\nos.kill(os.getpid(), signal.SIGTERM)\n"
            "assert flag.wait(5) and flag.wait() and flag.signum == signal.SIGHUP\n"
            "restore()\nassert signal.getsignal(signal.SIGTERM) is before\n"
            "print('ok', flush=True)\n")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", cp.stdout + cp.stderr
