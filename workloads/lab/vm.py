"""The micro-VM: a stock Debian kernel booted by virtme-ng under qemu, sharing this machine's
filesystem, for hosts whose own kernel has no IPVS (containers, some CI machines).

Only folders passed as ``rwdirs`` are written through to the host; everything else the guest
writes goes to a throwaway overlay, so a run inside cannot change the host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from workloads.lab.netns import LabError


def _version_key(p: Path) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", p.name)]


def find_kernel() -> Path | None:
    """The newest /boot/vmlinuz-* whose modules include IPVS."""
    for k in sorted(Path("/boot").glob("vmlinuz-*"), key=_version_key, reverse=True):
        ver = k.name[len("vmlinuz-") :]
        if list(Path(f"/lib/modules/{ver}").glob("kernel/net/netfilter/ipvs/ip_vs.ko*")) and os.access(k, os.R_OK):
            return k
    return None


def find_vng() -> str | None:
    here = Path(sys.executable).parent / "vng"
    return str(here) if here.exists() else shutil.which("vng")


def unavailable_reason() -> str | None:
    """None when the micro-VM can run here; otherwise what is missing and how to get it."""
    missing = []
    if find_vng() is None:
        missing.append("virtme-ng (pip install virtme-ng)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu (apt-get install qemu-system-x86)")
    if find_kernel() is None:
        missing.append("a kernel with IPVS modules (apt-get install linux-image-amd64)")
    if not Path("/bin/busybox").exists() and shutil.which("busybox") is None:
        missing.append("busybox (apt-get install busybox-static)")
    return "; ".join(missing) or None


def guest_python() -> str:
    """The guest shares our filesystem, so this very interpreter (and its venv) runs there."""
    return sys.executable


def run_in_vm(script: str, rwdirs: list[Path], timeout: float = 900, memory: str = "2G", cpus: int = 2) -> subprocess.CompletedProcess[str]:
    reason = unavailable_reason()
    if reason:
        raise LabError(f"the micro-VM cannot run here: missing {reason}")
    kernel = find_kernel()
    vng = find_vng()
    assert kernel is not None and vng is not None
    env = dict(os.environ)
    env["PATH"] = f"{Path(vng).parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    cmd = [vng, "-r", str(kernel), "--memory", memory, "--cpus", str(cpus)]
    # /dev/kvm can exist and still fail (nested virtualisation); emulation always works, so KVM
    # is opt-in
    if os.environ.get("MQTTLAB_VM_KVM") != "1":
        cmd.append("--disable-kvm")
    for d in rwdirs:
        d.mkdir(parents=True, exist_ok=True)
        cmd += ["--rwdir", str(d)]
    # the guest sees this filesystem: hand it a script file (vng folds an inline script's newlines)
    with tempfile.NamedTemporaryFile("w", prefix="mqttlab-vm-", suffix=".sh", delete=False) as fh:
        fh.write(script)
    cmd += ["--exec", f"bash {fh.name}"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"the micro-VM did not finish within {timeout}s") from exc
    finally:
        os.unlink(fh.name)
