"""Broker caps with cgroups: v2 where the host has the unified hierarchy with cpu and memory,
v1 (cpu + memory controllers) where that is what it has. The manifest says which.

A quota alone does not give a broker its quarter core: on a machine whose cores the load
generator and the monitors keep busy, a broker below its quota still waits for a CPU, and its
loss then measures the host. So where the host has the ``cpuset`` controller the brokers get CPUs
of their own (:class:`CpuSplit`) and everything else the lab starts gets the others; processes
the lab did not start are left where they are."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workloads.base.errors import LabError

ROOT = Path("/sys/fs/cgroup")


def detect() -> str | None:
    ctl = ROOT / "cgroup.controllers"
    if ctl.exists() and {"cpu", "memory"} <= set(ctl.read_text().split()):
        return "v2"
    if (ROOT / "cpu" / "cpu.cfs_quota_us").exists() and (ROOT / "memory" / "memory.limit_in_bytes").exists():
        return "v1"
    return None


@dataclass(frozen=True)
class Cap:
    """One capped group: the folders to create and the file a process joins through. ``acct``
    is where the kernel counts its CPU time (v1: a ``cpuacct`` group when that controller is
    mounted apart from ``cpu``), ``cpuset`` its v1 cpuset group (v2 keeps both in ``dirs[0]``)."""

    version: str
    dirs: tuple[Path, ...]
    acct: Path | None = None
    cpuset: Path | None = None

    @property
    def procs_files(self) -> tuple[Path, ...]:
        extra = tuple(d for d in (self.acct, self.cpuset) if d is not None and d not in self.dirs)
        return tuple(d / "cgroup.procs" for d in (*self.dirs, *extra))

    def cpu_stat(self) -> dict[str, int]:
        """The kernel's CPU counters of the group: ``usage_usec`` (CPU time used),
        ``nr_periods``, ``nr_throttled`` and ``throttled_usec`` (time held back by the quota),
        in v2's names whatever the version."""
        stat = _keyed(self.dirs[0] / "cpu.stat")
        if self.version == "v2":
            return {k: stat.get(k, 0) for k in ("usage_usec", "nr_periods", "nr_throttled", "throttled_usec")}
        acct = self.acct or self.dirs[0]
        return {"usage_usec": int(_read(acct / "cpuacct.usage").strip() or 0) // 1000, "nr_periods": stat.get("nr_periods", 0),
                "nr_throttled": stat.get("nr_throttled", 0), "throttled_usec": stat.get("throttled_time", 0) // 1000}

    def read_back(self) -> dict[str, float]:
        """The limits as the kernel holds them: CPUs and memory bytes."""
        if self.version == "v2":
            quota, period = (self.dirs[0] / "cpu.max").read_text().split()
            return {"cpus": int(quota) / int(period), "memory_bytes": float((self.dirs[0] / "memory.max").read_text())}
        cpu, mem = self.dirs
        return {
            "cpus": int((cpu / "cpu.cfs_quota_us").read_text()) / int((cpu / "cpu.cfs_period_us").read_text()),
            "memory_bytes": float((mem / "memory.limit_in_bytes").read_text()),
        }

    def pids(self) -> list[int]:
        """The processes in this broker's own groups (a v1 cpuset is shared by every broker)."""
        return sorted({int(p) for d in self.dirs if (d / "cgroup.procs").exists() for p in (d / "cgroup.procs").read_text().split()})


def _keyed(f: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``cpu.stat``): ``name value`` per line."""
    out = {}
    for line in _read(f).splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _acct_dir(lab_id: str, name: str) -> Path | None:
    """v1: the group that counts a broker's CPU time; ``cpu`` itself where ``cpuacct`` is
    mounted with it, else one in the ``cpuacct`` hierarchy, else none (no usage counter)."""
    if (ROOT / "cpu" / "cpuacct.usage").exists():
        return None
    if (ROOT / "cpuacct" / "cpuacct.usage").exists():
        return ROOT / "cpuacct" / f"mqttlab-{lab_id}" / name
    return None


def group_roots(version: str, lab_id: str) -> list[Path]:
    if version == "v2":
        return [ROOT / f"mqttlab-{lab_id}"]
    return [ROOT / "cpu" / f"mqttlab-{lab_id}", ROOT / "memory" / f"mqttlab-{lab_id}"]


def create(version: str, lab_id: str, name: str, cpus: float, memory_mb: int) -> Cap:
    period = 100_000
    quota = max(1000, int(round(cpus * period)))
    mem = memory_mb * 1024 * 1024
    try:
        if version == "v2":
            enabled = set((ROOT / "cgroup.subtree_control").read_text().split())
            if not {"cpu", "memory"} <= enabled:  # a bare cgroup2 mount (no systemd) delegates nothing yet
                (ROOT / "cgroup.subtree_control").write_text("+cpu +memory")
            top = ROOT / f"mqttlab-{lab_id}"
            top.mkdir(exist_ok=True)
            (top / "cgroup.subtree_control").write_text("+cpu +memory")
            d = top / name
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{quota} {period}")
            (d / "memory.max").write_text(str(mem))
            (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
            return Cap("v2", (d,))
        cpu = ROOT / "cpu" / f"mqttlab-{lab_id}" / name
        memd = ROOT / "memory" / f"mqttlab-{lab_id}" / name
        cpu.mkdir(parents=True, exist_ok=True)
        memd.mkdir(parents=True, exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text(str(period))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (memd / "memory.limit_in_bytes").write_text(str(mem))
        acct = _acct_dir(lab_id, name)
        if acct is not None:
            acct.mkdir(parents=True, exist_ok=True)
        return Cap("v1", (cpu, memd), acct=acct)
    except OSError as exc:
        raise LabError(f"cannot create the broker cgroup {name} ({exc}); the lab needs writable cgroups (run as root on the host)") from exc


def lab_top(version: str, lab_id: str) -> Path:
    """The group that holds every process of the lab (see :func:`lab_group`)."""
    return ROOT / f"mqttlab-{lab_id}" if version == "v2" else ROOT / "pids" / f"mqttlab-{lab_id}"


def lab_group(version: str, lab_id: str) -> Path:
    """The group of the whole lab, which teardown kills at once, whatever escaped a process
    group: on v2 the uncapped leaf next to the brokers' groups (the top, which holds them all,
    has ``cgroup.kill``); on v1 a group in the ``pids`` hierarchy that every process joins."""
    d = lab_top(version, lab_id) / "procs" if version == "v2" else lab_top(version, lab_id)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"cannot create the lab's cgroup {d} ({exc}); the lab needs writable cgroups (run as root on the host)") from exc
    return d / "cgroup.procs"


def kill_group(top: Path) -> None:
    """SIGKILL every process in ``top`` and below, until none is left (bounded)."""
    if (top / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            (top / "cgroup.kill").write_text("1")
    for _ in range(100):
        pids = {int(p) for f in top.rglob("cgroup.procs") for p in _read(f).split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _read(f: Path) -> str:
    try:
        return f.read_text()
    except OSError:
        return ""


def remove_lab(lab_id_prefix: str) -> list[Path]:
    """Kill every process in, then remove, every group of labs whose id starts with
    ``lab_id_prefix`` (leaves first)."""
    removed = []
    for base in (ROOT, ROOT / "cpu", ROOT / "cpuacct", ROOT / "memory", ROOT / "pids", ROOT / "cpuset"):
        if not base.is_dir():
            continue
        for top in base.glob(f"mqttlab-{lab_id_prefix}*"):
            kill_group(top)
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
                for _ in range(50):  # processes may take a moment to leave after SIGKILL
                    try:
                        d.rmdir()
                        removed.append(d)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)
    return removed


# --------------------------------------------------------------------------- cpusets


def parse_cpulist(text: str) -> list[int]:
    """The kernel's CPU list format (``0-2,5``) as CPU numbers; raises ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a < 0 or b < a:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def format_cpulist(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def cpuset_base(version: str) -> Path | None:
    """Where cpusets are made on this host, or None when it has no cpuset controller."""
    if version == "v2":
        return ROOT if "cpuset" in _read(ROOT / "cgroup.controllers").split() else None
    return ROOT / "cpuset" if (ROOT / "cpuset" / "cpuset.cpus").exists() else None


def _effective(base: Path) -> str:
    return _read(base / ("cpuset.cpus.effective" if (base / "cpuset.cpus.effective").exists() else "cpuset.effective_cpus")).strip()


@dataclass(frozen=True)
class CpuSplit:
    """The lab's CPUs: ``brokers`` for the brokers only, ``others`` for everything else it starts."""

    brokers: list[int]
    others: list[int]


def plan_split(request: str, version: str) -> tuple[CpuSplit | None, str]:
    """(split, why not). ``request``: ``off``; ``auto`` (the last CPU the lab may use for the
    brokers, the rest for the others); or a CPU list for the brokers. A host without cpusets, or
    with a single CPU, gets no split and the reason, which the manifest records; a CPU list the
    host does not have is refused."""
    if request == "off":
        return None, "turned off (--broker-cpuset off)"
    base = cpuset_base(version)
    if base is None:
        return None, "this host has no cpuset controller"
    online = parse_cpulist(_effective(base))
    if request == "auto":
        if len(online) < 2:
            return None, f"one CPU ({format_cpulist(online)}): nothing to set apart for the brokers"
        return CpuSplit([online[-1]], online[:-1]), ""
    try:
        want = parse_cpulist(request)
    except ValueError:
        raise LabError(f"--broker-cpuset {request!r}: expected auto, off or a CPU list such as 1 or 2-3") from None
    if not want or not set(want) <= set(online):
        raise LabError(f"--broker-cpuset {request}: this host's CPUs are {format_cpulist(online)}")
    rest = [c for c in online if c not in want]
    if not rest:
        raise LabError(f"--broker-cpuset {request}: leaves no CPU for the load generator (the host has {format_cpulist(online)})")
    return CpuSplit(want, rest), ""


def _cpuset_dir(d: Path, cpus: list[int], mems: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if (d / "cpuset.mems").exists() and not _read(d / "cpuset.mems").strip():
        (d / "cpuset.mems").write_text(mems)  # v1 starts a group with no memory nodes: nothing may join it
    (d / "cpuset.cpus").write_text(format_cpulist(cpus))


def apply_split(version: str, lab_id: str, split: CpuSplit, caps: dict[str, Cap], procs_file: Path) -> dict[str, Path]:
    """Give each broker's group the brokers' CPUs and the lab's own group the others; returns
    the cpuset folder of each (``others`` for the lab's group), whose files the manifest reads.
    On v2 the cpusets are the cap groups themselves (``+cpuset`` in the lab's subtree); on v1 a
    ``brokers`` and an ``others`` group in the cpuset hierarchy that the processes join too."""
    base = cpuset_base(version)
    assert base is not None
    mems = _read(base / ("cpuset.mems.effective" if version == "v2" else "cpuset.effective_mems")).strip() or "0"
    out: dict[str, Path] = {}
    try:
        if version == "v2":
            if "cpuset" not in _read(ROOT / "cgroup.subtree_control").split():
                (ROOT / "cgroup.subtree_control").write_text("+cpuset")
            top = ROOT / f"mqttlab-{lab_id}"
            (top / "cgroup.subtree_control").write_text("+cpuset")
            for name, cap in caps.items():
                _cpuset_dir(cap.dirs[0], split.brokers, mems)
                out[name] = cap.dirs[0]
            _cpuset_dir(procs_file.parent, split.others, mems)
            out["others"] = procs_file.parent
            return out
        top = base / f"mqttlab-{lab_id}"
        _cpuset_dir(top, sorted(split.brokers + split.others), mems)
        _cpuset_dir(top / "brokers", split.brokers, mems)
        _cpuset_dir(top / "others", split.others, mems)
        return {name: top / "brokers" for name in caps} | {"others": top / "others"}
    except OSError as exc:
        raise LabError(f"cannot set the lab's cpusets ({exc}); run with --broker-cpuset off to go without") from exc


def cpuset_read_back(d: Path) -> dict[str, str]:
    """A cpuset as the kernel holds it: the CPUs asked, the CPUs in effect, the memory nodes and,
    on v2, the partition state."""
    names = {"cpus": "cpuset.cpus", "effective_cpus": "cpuset.cpus.effective" if (d / "cpuset.cpus.effective").exists() else "cpuset.effective_cpus",
             "mems": "cpuset.mems", "partition": "cpuset.cpus.partition"}
    return {k: _read(d / f).strip() for k, f in names.items() if (d / f).exists()}


def start_guard(top: Path) -> subprocess.Popen[bytes]:
    """A watcher, outside the lab's group and session, that kills the group once our end of its
    stdin closes: when we are done, or killed, however. ``PR_SET_PDEATHSIG`` alone cannot
    cover the lab: a broker that drops root (Mosquitto switches to its own user) loses it."""
    return subprocess.Popen([sys.executable, "-m", "workloads.hosts.lab.cgroups", str(top)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)


def stop_guard(guard: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if guard.stdin is not None:
        guard.stdin.close()
    try:
        guard.wait(timeout)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait(5)


if __name__ == "__main__":  # the guard itself
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF: the lab's runner closed it, or died
    kill_group(Path(sys.argv[1]))
