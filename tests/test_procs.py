"""Waits bounded by progress: slow is waited for, stuck is not, and every wait ends."""

from __future__ import annotations

import subprocess
import sys
import time

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
