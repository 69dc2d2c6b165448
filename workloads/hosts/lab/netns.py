"""Network namespaces and processes: the few functions that touch the system.

Everything the lab creates carries its lab id in its name (namespaces ``mqttlab-<id>-<host>``,
cgroups ``mqttlab-<id>/...``), so teardown can find it again even after the runner was killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from workloads.base.errors import LabError
from workloads.base.procs import pdeathsig_preexec
from workloads.hosts import shell
from workloads.hosts.shell import NotInstalled

PREFIX = "mqttlab-"


def run(cmd: Sequence[str], ns: str | None = None, check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`workloads.hosts.shell.run` as the lab runs its commands: dying with the lab, and
    bounded at 30 s unless a command says otherwise (setting up a namespace takes milliseconds)."""
    return shell.run(cmd, ns=ns, check=check, timeout=timeout, input=input, die_with_parent=True)


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def add_namespace(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], ns=name)


def delete_namespace(name: str) -> None:
    """Kill whatever still runs inside, then remove it; quiet if it is already gone."""
    if name not in list_namespaces(name):
        return
    pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run(["ip", "netns", "del", name], check=False)


def spawn(cmd: Sequence[str], ns: str | None, log: Path | None = None, env: dict[str, str] | None = None,
          cgroup_procs: Sequence[Path] = (), die_with_us: bool = True) -> subprocess.Popen[bytes]:
    """Start a long-lived process in ``ns``, in its own process group, output to ``log``.

    ``die_with_us``: the kernel kills it (SIGKILL) when this process dies, however it dies;
    off only for what must outlive us (``lab up``). Call from the main thread.

    ``cgroup_procs``: join these cgroups first. It must happen before ``ip netns exec``, which
    remounts /sys and hides the cgroup hierarchy; membership is inherited through exec.
    """
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    if cgroup_procs:
        joins = " && ".join(f"echo $$ > {p}" for p in cgroup_procs)
        full = ["sh", "-c", f'{joins} && exec "$@"', "sh", *full]
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=(os.environ | env) if env else None, preexec_fn=pdeathsig_preexec() if die_with_us else None)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL the process group; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode


def wait_tcp(ns: str | None, host: str, port: int, timeout: float = 60.0) -> None:
    """Wait until something listens on host:port inside ``ns`` (bounded). The probe is bash's
    ``/dev/tcp`` (a shell starts in a fraction of an interpreter's time under the micro-VM's
    emulation); a probe that is itself slow is a "not yet", not a failure: only the overall bound
    ends the wait."""
    end = time.time() + timeout
    probe = ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"]
    while time.time() < end:
        try:
            if run(probe, ns=ns, check=False, timeout=max(5.0, end - time.time())).returncode == 0:
                return
        except NotInstalled:
            raise
        except LabError:
            pass  # the probe ran out of time: try again while the bound allows
        time.sleep(0.1)
    raise LabError(f"nothing listens on {host}:{port} in {ns or 'the root namespace'} after {timeout}s")


def require_tools(tools: Sequence[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}; install them, e.g. apt-get install {' '.join(sorted(set(APT.get(t, t) for t in missing)))}")


APT = {"mosquitto": "mosquitto", "mosquitto_sub": "mosquitto-clients", "ipvsadm": "ipvsadm", "haproxy": "haproxy", "nft": "nftables",
       "iptables-restore": "iptables", "conntrack": "conntrack", "ip": "iproute2", "tc": "iproute2",
       "keepalived": "keepalived"}


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the local lab creates network namespaces and cgroups: run it as root (sudo)")
