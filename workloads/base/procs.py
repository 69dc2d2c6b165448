"""Process lifetimes shared by the lab and the bench: children that cannot outlive their
parent, stop signals that unwind like Ctrl-C, and supervisor identities that survive PID reuse.

Why ``PR_SET_PDEATHSIG``: SIGKILL cannot be caught, so nothing the parent does at exit can stop
its children; the kernel can. The setting is inherited through ``exec`` (of ``sh``, ``ip netns
exec`` and then the program itself), so a process started through wrappers still dies with the
process that spawned it. It fires when the parent *thread* ends: spawn from the main thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_libc: ctypes.CDLL | None = None


def _prctl() -> Callable[..., int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl  # type: ignore[no-any-return]


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """In the child: have the kernel send ``sig`` when the parent dies. If the parent already
    died between fork and this call (the child was re-parented), die now."""
    if _prctl()(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child dies with this process."""
    _prctl()  # load libc before fork: the child only makes the call
    parent = os.getpid()
    return lambda: die_with_parent(parent, sig)


class Stopped(KeyboardInterrupt):
    """A stop signal, unwound like Ctrl-C so every ``finally`` and teardown runs; carries the
    signal for the exit status (128 + signal, as a shell reports it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    return 128 + getattr(exc, "signum", signal.SIGINT)


class _Stops:
    fired: int | None = None
    pending = False
    shield = 0


def _on_stop(signum: int, _frame: FrameType | None) -> None:
    if _Stops.fired is not None:
        return  # a second signal cannot cut the teardown short
    _Stops.fired = signum
    if _Stops.shield:
        _Stops.pending = True
    else:
        raise Stopped(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Stopped` (once; later ones are ignored)."""
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _Stops.fired, _Stops.pending, _Stops.shield = None, False, 0
    for s in STOP_SIGNALS:
        signal.signal(s, _on_stop)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded() -> Iterator[None]:
    """Teardown that a stop signal must not interrupt: a signal arriving inside is raised as
    :class:`Stopped` once the block is done."""
    _Stops.shield += 1
    try:
        yield
    finally:
        _Stops.shield -= 1
        if not _Stops.shield and _Stops.pending:
            _Stops.pending = False
            raise Stopped(_Stops.fired or signal.SIGTERM)


class StopFlag:
    """A stop request from a signal, for loops that wait between steps (a monitor's samples, the
    fault process's schedule, the bench's phases).

    Why not :class:`threading.Event`: its ``set()`` takes a lock that ``Event.wait()`` holds for a
    moment each time it wakes, and a Python signal handler runs in the main thread between two
    bytecodes, possibly inside that moment: the handler then waits for a lock its own thread
    holds, forever. ``timeout`` makes that likely, as it passes on at once the SIGTERM its group
    has just received (a burst of five SIGTERMs hung 3 of 200 processes waiting in
    ``Event.wait``). The handler here only assigns; ``wait`` sleeps in short slices."""

    POLL_S = 0.05

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self, signals: Iterable[int] = STOP_SIGNALS) -> Callable[[], None]:
        """Route ``signals`` here; returns a function that puts the old handlers back."""
        old = {s: signal.getsignal(s) for s in signals}
        for s in old:
            signal.signal(s, self._on_signal)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def set(self) -> None:
        if self.signum is None:
            self.signum = 0

    def is_set(self) -> bool:
        return self.signum is not None

    def wait(self, seconds: float | None = None) -> bool:
        """True once stopped, False after ``seconds`` without a stop (``None``: no bound)."""
        end = None if seconds is None else time.monotonic() + seconds
        while self.signum is None:
            left = self.POLL_S if end is None else end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.POLL_S, left))
        return True


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (``[0]`` is the state, field 3 of
    proc(5)), None once the process is gone. The name is in parentheses and may hold spaces and
    parentheses itself, so the fields start after the last ``)``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_ticks(fields: Sequence[str]) -> int:
    """utime + stime + cutime + cstime (fields 14-17 of proc(5)), in clock ticks."""
    return sum(int(f) for f in fields[11:15])


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22): with
    the PID it names one process, even after the PID was reused."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def allowed_cpus(pid: int) -> str | None:
    """The CPUs the kernel lets ``pid`` run on (``Cpus_allowed_list`` of ``/proc/PID/status``),
    None once it is gone: what a cpuset did to a process, as the scheduler holds it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def run_queue_wait_ns(pid: int) -> int:
    """Nanoseconds the threads of ``pid`` spent runnable but waiting for a CPU
    (``/proc/PID/task/*/schedstat``, its second field); 0 once it is gone. A process that waits
    while below its CPU quota was held back by the host, not by its cap."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for t in tasks:
        try:
            total += int((t / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


def cpu_pressure_us() -> int | None:
    """The host's CPU pressure so far: microseconds during which some runnable task waited for a
    CPU (``some total`` of ``/proc/pressure/cpu``, PSI); None where the kernel has no PSI."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            return int(line.rsplit("total=", 1)[1])
    return None


def cpus_busy_us(cpus: Sequence[int]) -> int | None:
    """CPU time spent so far on the CPUs ``cpus`` by anything at all (user, system, interrupts,
    softirqs, steal; not idle or iowait), in microseconds, from their lines in ``/proc/stat``;
    None where they are not there. Beside the brokers' own usage it gives what else ran on their
    CPUs: the kernel's network work, interrupts, processes the lab did not place."""
    want = {f"cpu{c}" for c in cpus}
    hz = os.sysconf("SC_CLK_TCK")
    total, seen = 0, set()
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in want:
            f = [int(x) for x in rest.split()]
            total += sum(f[:8]) - f[3] - f[4]  # user nice system idle iowait irq softirq steal
            seen.add(name)
    return total * 1_000_000 // hz if seen == want and want else None


def is_running(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie)."""
    if pid <= 0:
        return False
    fields = stat_fields(pid)
    if fields is None:
        return False
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").glob("*/children"))
        except OSError:  # p ended between glob's look at its directory and the listing of it
            continue
        for task in tasks:
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                pass
    return out


def tree_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds used so far by these processes, everything below them, and the children they
    have already reaped (a reaped child's time is in its parent's ``cutime``/``cstime``, a live
    one's only in its own: no double count).

    Why: a wait bounded by the wall clock fails a start that is merely slow (an interpreter
    importing under software emulation or on a loaded machine still computes), while one bounded
    by this tells it from a hung one (a client stuck on a peer that never answers computes
    nothing)."""
    ticks = 0
    for top in pids:
        for p in _descendants(top):
            fields = stat_fields(p)
            ticks += cpu_ticks(fields) if fields is not None else 0
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_progressing(done: Callable[[], bool], limit: float, progress: Callable[[], float], *, poll: float = 0.2,
                     window: float = 10.0, most: float = 3.0, min_growth: float = 0.05) -> bool:
    """Wait until ``done()``: at most ``limit`` seconds, and past that for as long as ``progress()``
    (e.g. ``tree_cpu_s`` of what is awaited) still grew by ``min_growth`` in the last ``window``
    seconds (an idle event loop's ticks are not progress), up to ``most`` times ``limit`` in all. Returns whether it is done: slow is waited for, stuck is not,
    and either way the wait ends."""
    start = time.monotonic()
    hard, check_at = start + most * limit, start + window
    last = progress()
    while not done():
        now = time.monotonic()
        if now > hard:
            return False
        if now >= check_at:
            seen = progress()
            grew, last, check_at = seen >= last + min_growth, seen, now + window
            if not grew and now > start + limit:
                return False
        time.sleep(poll)
    return True


def mqttlab() -> list[str]:
    """The command that runs this interpreter's mqttlab: the VMs install it into a venv, the lab
    runs it from its checkout, and every child (bench, monitor, fault process) is started so."""
    return [sys.executable, "-m", "workloads.cli"]
