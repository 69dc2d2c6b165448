"""Broker caps with cgroups: v2 where the host has the unified hierarchy with cpu and memory,
v1 (cpu + memory controllers) where that is what it has. The manifest says which."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workloads.lab.netns import LabError

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
    """One capped group: the folders to create and the file a process joins through."""

    version: str
    dirs: tuple[Path, ...]

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self.dirs)

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
        return sorted({int(p) for f in self.procs_files if f.exists() for p in f.read_text().split()})


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
        return Cap("v1", (cpu, memd))
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
    for base in (ROOT, ROOT / "cpu", ROOT / "memory", ROOT / "pids"):
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


def start_guard(top: Path) -> subprocess.Popen[bytes]:
    """A watcher, outside the lab's group and session, that kills the group once our end of its
    stdin closes: when we are done, or killed, however. ``PR_SET_PDEATHSIG`` alone cannot
    cover the lab: a broker that drops root (Mosquitto switches to its own user) loses it."""
    return subprocess.Popen([sys.executable, "-m", "workloads.lab.cgroups", str(top)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
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
