"""The micro-VM: a stock Debian kernel booted by virtme-ng under qemu, sharing this machine's
filesystem, for hosts whose own kernel has no IPVS (containers, some CI machines).

Only folders passed as ``rwdirs`` are written through to the host; everything else the guest
writes goes to a throwaway overlay, so a run inside cannot change the host.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workloads.base.errors import LabError


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


GUEST_ENV = "MQTTLAB_IN_VM"  # set inside the micro-VM, so a command that asked for it does not boot another


def in_guest() -> bool:
    return os.environ.get(GUEST_ENV) == "1"


def guest_command(argv: list[str], log: Path | None = None, module: str = "workloads.cli", cwd: Path | None = None,
                  modules: tuple[str, ...] = (), shm: bool = False, both_streams: bool = False) -> str:
    """The guest's script for re-running this very ``mqttlab`` command inside the micro-VM (less
    ``--vm``): cgroup2 mounted for the brokers' caps, IPVS (and ``modules``) loaded, a tmpfs on
    /dev/shm when ``shm``, from the same folder (or ``cwd``) and interpreter, as ``python -m
    module``; its stderr (and stdout, with ``both_streams``) to ``log`` (in a written-through
    folder) when given, so the host can show progress while the guest runs."""
    inner = [a for a in argv if a != "--vm"]
    prelude = ("set -e; mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup; "
               f"modprobe ip_vs; {f'modprobe -a {shlex.join(modules)}; ' if modules else ''}"
               f"{'mkdir -p /dev/shm; mountpoint -q /dev/shm || mount -t tmpfs tmpfs /dev/shm; ' if shm else ''}"
               f"export {GUEST_ENV}=1; ")
    redirect = (f" >> {shlex.quote(str(log))} 2>&1" if both_streams else f" 2>> {shlex.quote(str(log))}") if log else ""
    return (f"{prelude} cd {shlex.quote(str(cwd or Path.cwd()))}; "
            f"exec {shlex.quote(guest_python())} -m {module} {shlex.join(inner)}{redirect}")


def run_in_vm(script: str, rwdirs: list[Path], timeout: float = 900, memory: str = "2G", cpus: int = 2,
              echo: Path | None = None, network: str | None = None) -> subprocess.CompletedProcess[str]:
    """``network``: vng's ``--network`` (``user``: qemu's user-mode stack, the guest reaching out
    through qemu's own sockets, nothing changed in this machine's network); none by default."""
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
    if network:
        cmd += ["--network", network]
    for d in rwdirs:
        d.mkdir(parents=True, exist_ok=True)
        cmd += ["--rwdir", str(d)]
    # the guest's CPU time, written through every few seconds: the sign of a guest at work when
    # what it writes for us comes only at the end of a long phase (clients starting under
    # emulation on a busy machine take minutes and write nothing); the guest sees this
    # filesystem, so its script is a file there too (vng folds an inline script's newlines)
    beat = Path(tempfile.mkdtemp(prefix="mqttlab-vm-"))
    try:
        (beat / "script.sh").write_text(script)
        (beat / "wrapper.sh").write_text(heartbeat_wrapper(str(beat / "script.sh"), beat / BEAT_FILE))
        cmd += ["--rwdir", str(beat), "--exec", f"bash {beat / 'wrapper.sh'}"]
        return _run_while_progressing(cmd, env, rwdirs, timeout, echo, beat / BEAT_FILE)
    finally:
        shutil.rmtree(beat, ignore_errors=True)


BEAT_FILE = "busy"
BEAT_EVERY_S = 5
# a guest at work spends far more than this per minute of its two CPUs (a lab run: most of the
# 120 s); one that only waits far less (measured: 2.0 s in an idle minute under emulation, its
# kernel and the beat)
BUSY_S_PER_MINUTE = 10.0
CHECK_EVERY_S = 60.0  # the minute of BUSY_S_PER_MINUTE
# idle checks in a row before the guest counts as hung: a guest starved by a busy neighbour is
# credited only the clock ticks its virtual CPUs were running for, and one phase of a run can wait
# a minute on bounded timeouts of its own; a hung guest costs this many minutes more, no more
IDLE_CHECKS = 2
USER_HZ = 100  # the unit of /proc/stat on every Linux the micro-VM boots (x86)


def heartbeat_wrapper(script: str, beat: Path) -> str:
    """Runs ``script`` while a background loop writes the guest's busy CPU time (the user, nice,
    system, irq and softirq columns of /proc/stat's ``cpu`` line, in clock ticks) to ``beat``,
    and the processes in uninterruptible sleep with the kernel function each waits in (``comm``
    and ``wchan``: what a guest that stops working waits for) to :func:`blocked_file`; the
    script's exit status is the wrapper's. The loop forks only ``mv`` (so the host never reads
    half a line) and ``sleep``, so the beat costs the guest next to nothing."""
    b = shlex.quote(str(beat))
    w = shlex.quote(str(blocked_file(beat)))
    blocked = ('d=""; for f in /proc/[0-9]*/stat; do read -r l < "$f" 2> /dev/null || continue; st=${l##*) }; '
               'if [ "${st%% *}" = D ]; then c=${l#*(}; read -r k < "${f%/stat}/wchan" 2> /dev/null || k=?; d="$d${d:+, }${c%)*} in $k"; fi; done; '
               f'echo "$d" > {w}.tmp && mv -f {w}.tmp {w}; ')
    return (f"( while :; do read -r _ u n s _ _ i q _ < /proc/stat; echo $((u + n + s + i + q)) > {b}.tmp && mv -f {b}.tmp {b}; "
            f"{blocked}sleep {BEAT_EVERY_S}; done ) > /dev/null 2>&1 &\n"
            "beat=$!\n"
            "trap 'kill $beat 2> /dev/null' EXIT\n"
            f"bash {shlex.quote(script)}\n")


def blocked_file(beat: Path) -> Path:
    """Where the beat loop writes the guest's processes in uninterruptible sleep."""
    return beat.with_name(beat.name + "-blocked")


def _blocked(beat: Path | None) -> str:
    """What the guest's processes in uninterruptible sleep waited in at its last beat; "" if none."""
    try:
        return blocked_file(beat).read_text().strip() if beat is not None else ""
    except OSError:
        return ""


def _busy_s(beat: Path | None) -> float | None:
    """The guest's busy CPU seconds at its last beat; None before the first."""
    try:
        return int(beat.read_text()) / USER_HZ if beat is not None else None
    except (OSError, ValueError):
        return None


def _written(dirs: list[Path]) -> tuple[int, int]:
    """What the guest has written through so far: (files, bytes) under the shared folders."""
    files = size = 0
    for d in dirs:
        for p in d.rglob("*"):
            try:
                if p.is_file():
                    files += 1
                    size += p.stat().st_size
            except OSError:
                pass
    return files, size


def _run_while_progressing(cmd: list[str], env: dict[str, str], rwdirs: list[Path], timeout: float,
                           echo: Path | None = None, beat: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the VM for ``timeout`` seconds, and past that for as long as the guest still works
    (checked each minute; :data:`IDLE_CHECKS` idle checks in a row stop it), up to three times
    ``timeout``: software emulation on a busy machine can be several times slower than on an idle
    one, and a guess of the wall clock would fail a run that is merely slow, while a hung guest is
    stopped. The guest works when it wrote into ``rwdirs`` or, by its ``beat``
    (:func:`heartbeat_wrapper`), spent CPU time: what runs inside has bounded waits of its own,
    so a guest that computes is getting somewhere.

    The VM runs in a session of its own (a Ctrl-C at the terminal must reach us, not qemu), so
    whatever ends this wait early (Ctrl-C, SIGTERM turned into an exception, a bug) kills that
    session: qemu must not go on running, holding two cores, after the command that started it.
    New lines of ``echo`` (a file the guest writes through) are copied to our stderr as they come."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        shown = echo.stat().st_size if echo is not None and echo.is_file() else 0  # before the guest can append
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            start = time.time()
            bound, hard = start + timeout, start + 3 * timeout
            seen, busy = _written(rwdirs), _busy_s(beat)
            idle = 0
            while p.poll() is None:
                if time.time() > bound:
                    now, busy_now = _written(rwdirs), _busy_s(beat)
                    if beat is not None and busy is None and busy_now is not None and time.time() < hard:
                        # the first beat came during this interval: a baseline, not yet a measure
                        seen, busy, bound = now, busy_now, min(time.time() + CHECK_EVERY_S, hard)
                        continue
                    need = BUSY_S_PER_MINUTE * CHECK_EVERY_S / 60
                    worked = busy is not None and busy_now is not None and busy_now - busy >= need
                    idle = 0 if now != seen or worked else idle + 1
                    if idle >= IDLE_CHECKS or time.time() >= hard:
                        if time.time() >= hard:
                            why = f"the bound of three times {timeout:.0f}s"
                        elif beat is not None and busy_now is None:
                            why = "nothing written, and no beat from the guest to show its CPU time"
                        else:
                            why = (f"nothing written and under {need:.0f}s of CPU spent in each of the last {IDLE_CHECKS} "
                                   f"checks, {CHECK_EVERY_S:.0f}s apart")
                            if stuck := _blocked(beat):
                                why += f"; in uninterruptible sleep: {stuck}"
                        raise LabError(f"the micro-VM did not finish within {time.time() - start:.0f}s ({why})")
                    seen, busy, bound = now, busy_now, min(time.time() + CHECK_EVERY_S, hard)
                shown = _echo(echo, shown)
                time.sleep(0.5)
            _echo(echo, shown)
        except BaseException:
            _kill_session(p)
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read())


def _kill_session(p: subprocess.Popen[str]) -> None:
    """SIGKILL to the VM's session (vng and the qemu it started), by the id we gave it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


def _echo(path: Path | None, shown: int) -> int:
    """Copy what was appended to ``path`` since byte ``shown`` to stderr; the new offset."""
    if path is None or not path.is_file():
        return shown
    with path.open("rb") as fh:
        fh.seek(shown)
        new = fh.read()
    end = new.rfind(b"\n") + 1  # whole lines only
    if end:
        sys.stderr.write(new[:end].decode(errors="replace"))
        sys.stderr.flush()
    return shown + end
