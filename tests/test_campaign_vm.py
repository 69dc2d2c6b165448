"""A campaign in the micro-VM, without booting it: the wait on the VM kills the VM's session when
it is cut short (qemu must not outlive the command), shows the guest's progress as it comes, and
a time budget starts no point that would end after it, leaving the rest to the next invocation.
The real boot is exercised by benchmarks/calibrate_standins.py (docs/stand-in.md)."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_campaign import BASE, FakeSystem, write
from workloads.base.errors import LabError
from workloads.campaign import run as run_mod
from workloads.campaign.run import CampaignDir, execute_points
from workloads.campaign.spec import Point, load_campaign
from workloads.describe.config import ExperimentConfig
from workloads.hosts.lab import vm


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_an_interrupted_wait_kills_the_vm_session_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "pid"
    # stands in for vng: a session leader with a child of its own, as vng has qemu
    cmd = ["sh", "-c", f"echo $$ > {shlex.quote(str(pidfile))}; sleep 300 & wait"]
    real_sleep = time.sleep

    def ctrl_c_once_started(s: float) -> None:
        while not pidfile.is_file() or not pidfile.read_text().strip():
            real_sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(vm.time, "sleep", ctrl_c_once_started)
    with pytest.raises(KeyboardInterrupt):
        vm._run_while_progressing(cmd, dict(os.environ), [tmp_path], timeout=600)
    pgid = int(pidfile.read_text())
    assert pgid != os.getpgid(0)  # its own session, so only ours was killed
    deadline = time.monotonic() + 30
    while not _gone(pgid) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
        real_sleep(0.05)
    assert _gone(pgid), "the VM's process group outlived the interrupted wait"


def test_the_guests_progress_lines_are_shown_as_they_come(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "vm-progress.log"
    log.write_text("an earlier invocation's line\n")
    script = f"printf 'point 1 done\\npoint 2 done\\nhalf a li' >> {shlex.quote(str(log))}; sleep 1"
    cp = vm._run_while_progressing(["sh", "-c", script], dict(os.environ), [tmp_path], timeout=60, echo=log)
    assert cp.returncode == 0
    err = capsys.readouterr().err
    assert err == "point 1 done\npoint 2 done\n"  # not the earlier invocation's, not a partial line


def _fake_guest(beat: Path, steps: int, grow_ticks: int) -> list[str]:
    """Stands in for vng: writes nothing into the shared folders, only its beat, which grows by
    ``grow_ticks`` clock ticks of CPU every 0.1 s for ``steps`` steps (``steps`` < 0: forever)."""
    loop = "while :" if steps < 0 else f"while [ $i -lt {steps} ]"
    b = shlex.quote(str(beat))
    return ["sh", "-c", f"i=0; {loop}; do i=$((i + 1)); echo $((1000 + i * {grow_ticks})) > {b}.t && mv -f {b}.t {b}; sleep 0.1; done"]


@pytest.fixture
def short_minute(monkeypatch: pytest.MonkeyPatch) -> int:
    """The VM wait checks for the guest's work each CHECK_EVERY_S, two seconds here; the clock
    ticks of CPU a check needs to see."""
    monkeypatch.setattr(vm, "CHECK_EVERY_S", 2.0)
    return math.ceil(vm.BUSY_S_PER_MINUTE * 2.0 / 60 * vm.USER_HZ)


def _counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Every beat the wait reads: the first at its start, then one per check."""
    reads: list[float | None] = []
    real = vm._busy_s

    def read(beat: Path | None) -> float | None:
        reads.append(real(beat))
        return reads[-1]

    monkeypatch.setattr(vm, "_busy_s", read)
    return reads


def test_a_guest_that_computes_but_writes_nothing_runs_on_past_the_timeout(tmp_path: Path, short_minute: int,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients starting under emulation on a busy machine write nothing for minutes (the CI
    failure "nothing written for a minute" at 760 s); their CPU time is the sign of work."""
    beat = tmp_path / "beat" / vm.BEAT_FILE
    beat.parent.mkdir()
    reads = _counting_checks(monkeypatch)
    monkeypatch.setattr(vm, "CHECK_EVERY_S", 1.0)
    # two checks' worth in every 0.1 s step, for about 6.5 s: the baseline check at 3 s, then
    # each second one that measures growth, all inside the hard bound of 9 s
    cp = vm._run_while_progressing(_fake_guest(beat, 60, short_minute), dict(os.environ), [tmp_path / "shared"], timeout=3, beat=beat)
    assert cp.returncode == 0
    measured = [r for r in reads[1:] if r is not None][1:]  # checks after the one that set the baseline
    assert len(measured) >= 2, reads


def test_a_guest_that_neither_computes_nor_writes_is_stopped_after_idle_checks_in_a_row(tmp_path: Path, short_minute: int) -> None:
    beat = tmp_path / "beat" / vm.BEAT_FILE
    beat.parent.mkdir()
    # what the guest's beat loop found in uninterruptible sleep, named with the stall
    vm.blocked_file(beat).write_text("python3 in percpu_rwsem_wait\n")
    t0 = time.time()
    with pytest.raises(LabError, match=rf"nothing written and under \d+s of CPU spent in each of the last {vm.IDLE_CHECKS} checks, 2s apart; "
                                       r"in uninterruptible sleep: python3 in percpu_rwsem_wait\)"):
        vm._run_while_progressing(_fake_guest(beat, -1, 0), dict(os.environ), [tmp_path / "shared"], timeout=3, beat=beat)
    # the first check (at 3 s) sets the baseline, the next IDLE_CHECKS see no growth: well before the hard bound of 9 s
    assert 3 + vm.IDLE_CHECKS * 2 <= time.time() - t0 < 3 + vm.IDLE_CHECKS * 2 + 1.5


def test_one_idle_check_does_not_stop_a_guest_that_works_again(tmp_path: Path, short_minute: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A starved guest, or one waiting on a bounded timeout of its own, can show no work for one
    check (the CI failure "under 10s of CPU in the last 60s" at 540 s, a small lab run); it is
    stopped only after IDLE_CHECKS such checks in a row."""
    beat = tmp_path / "beat" / vm.BEAT_FILE
    beat.parent.mkdir()
    b = str(beat)
    monkeypatch.setattr(vm, "CHECK_EVERY_S", 1.0)
    # the first beat at 1 s (the check at 3 s takes it as the baseline), nothing new until 4.3 s
    # (the check at 4 s sees no growth), then work until 5.5 s: all inside the hard bound of 9 s
    script = (f"sleep 1; echo 1000 > {b}; sleep 3.3; i=0; while [ $i -lt 12 ]; do i=$((i + 1)); "
              f"echo $((1000 + i * {short_minute})) > {b}.t && mv -f {b}.t {b}; sleep 0.1; done")
    assert vm.IDLE_CHECKS >= 2
    cp = vm._run_while_progressing(["sh", "-c", script], dict(os.environ), [tmp_path / "shared"], timeout=3, beat=beat)
    assert cp.returncode == 0


def test_a_guest_without_a_beat_that_writes_nothing_is_stopped_and_told_so(tmp_path: Path, short_minute: int) -> None:
    with pytest.raises(LabError, match="no beat from the guest"):
        vm._run_while_progressing(["sleep", "60"], dict(os.environ), [tmp_path / "shared"], timeout=2, beat=tmp_path / vm.BEAT_FILE)


def test_a_guest_that_computes_forever_is_stopped_at_three_times_the_timeout(tmp_path: Path, short_minute: int) -> None:
    beat = tmp_path / "beat" / vm.BEAT_FILE
    beat.parent.mkdir()
    t0 = time.time()
    with pytest.raises(LabError, match="the bound of three times 2s"):
        # ten checks' worth a step: a starved step still shows work
        vm._run_while_progressing(_fake_guest(beat, -1, 10 * short_minute), dict(os.environ), [tmp_path / "shared"], timeout=2, beat=beat)
    assert 6 <= time.time() - t0 < 8  # the last check falls on the hard bound, not a minute past it


def test_the_heartbeat_wrapper_keeps_the_scripts_exit_status_and_writes_busy_ticks(tmp_path: Path) -> None:
    beat = tmp_path / vm.BEAT_FILE
    script = tmp_path / "s.sh"
    script.write_text(f"until [ -s {shlex.quote(str(beat))} ] && [ -s {shlex.quote(str(vm.blocked_file(beat)))} ]; do sleep 0.05; done; exit 7\n")
    wrapper = tmp_path / "w.sh"
    wrapper.write_text(vm.heartbeat_wrapper(str(script), beat))
    before = _proc_busy_s()
    assert subprocess.run(["bash", str(wrapper)], timeout=60).returncode == 7
    busy = vm._busy_s(beat)
    assert busy is not None and before <= busy <= _proc_busy_s()  # this machine's busy time, read as the guest reads its own
    blocked = vm.blocked_file(beat).read_text()  # this machine's processes in D state at the beat: "comm in wchan", or none
    assert blocked.endswith("\n") and all(re.fullmatch(r".+ in \S+", x) for x in blocked.strip().split(", ") if x), blocked


def _proc_busy_s() -> float:
    """user + nice + system + irq + softirq of /proc/stat's cpu line (man 5 proc), in seconds."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    return (user + nice + system + irq + softirq) / vm.USER_HZ


def test_guest_command_reruns_the_same_command_without_vm_and_marks_the_guest(tmp_path: Path) -> None:
    text = vm.guest_command(["campaign", "run", "c.yaml", "--out", "o", "--vm"], tmp_path / "log")
    assert "modprobe ip_vs" in text and f"export {vm.GUEST_ENV}=1" in text
    assert text.endswith(f"-m workloads.cli campaign run c.yaml --out o 2>> {tmp_path / 'log'}")
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0


class Clock:
    """time for workloads.campaign.run: advanced by the fake points, not by the wall."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    strftime = staticmethod(time.strftime)
    localtime = staticmethod(time.localtime)

    def time(self) -> float:
        return self.now


def test_a_time_budget_starts_no_point_that_would_end_after_it_and_the_next_invocation_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = load_campaign(write(tmp_path, BASE), ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    order = cdir.open(c, c.order())
    clock = Clock()
    monkeypatch.setattr(run_mod, "time", clock)
    system = FakeSystem(capacity=1000)
    est = {p.point_id: c.estimate_s(c.validate_point(p.overrides, p.point_id)) for p in order}

    def twice_as_slow(point: Point, cfg: ExperimentConfig, pdir: Path) -> dict[str, Any]:
        clock.now += 2 * est[point.point_id]  # the points take twice their estimate
        return system(point, cfg, pdir)

    # room for the first three estimates: after the first point the estimates are doubled
    budget = sum(est[p.point_id] for p in order[:3]) + 1
    out = execute_points(cdir, c, order, twice_as_slow, progress=False, deadline=clock.now + budget)
    spent = 2 * sum(est[p] for p in out.ran)
    assert 1 <= len(out.ran) < 3 and spent <= budget + 2 * est[out.ran[0]]
    assert out.skipped == [p.point_id for p in order[len(out.ran):]] and not out.failed
    assert [e["event"] for e in cdir.events()].count("budget") == 1
    assert not any(cdir.point_dir(p).exists() for p in out.skipped)  # nothing started for them
    # the next invocation, without a budget, runs exactly the rest
    rest = execute_points(cdir, c, order, twice_as_slow, progress=False)
    assert rest.ran == out.skipped and len(rest.done) == len(out.ran)
    assert set(Counter(e["point"] for e in cdir.events() if e["event"] == "complete").values()) == {1}


def test_a_bad_time_budget_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    out = tmp_path / "o"
    cp = subprocess.run([*MQTTLAB, "campaign", "run", str(write(tmp_path, BASE)), "--out", str(out), "--time-budget", "0"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 2 and "--time-budget 0" in cp.stderr
    assert not out.exists()


def test_dry_run_of_a_vm_campaign_counts_one_boot_not_one_per_point(tmp_path: Path) -> None:
    from workloads.describe.runsize import VM_BOOT_S

    f = write(tmp_path, BASE + "vm: true\n")
    cp = subprocess.run([*MQTTLAB, "campaign", "run", str(f), "--out", str(tmp_path / "o"), "--dry-run"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 0 and "in one micro-VM boot" in cp.stdout
    c = load_campaign(f, ROOT)
    per_point = sum(c.estimate_s(c.validate_point(p.overrides, p.point_id), own_boot=False) for p in c.order())
    minutes = float(cp.stdout.split("estimated time: ")[1].split()[0])
    assert abs(minutes * 60 - (VM_BOOT_S + per_point)) < 6  # printed to a tenth of a minute
    own = sum(c.estimate_s(c.validate_point(p.overrides, p.point_id)) for p in c.order())
    assert own - (per_point + VM_BOOT_S) == pytest.approx((len(c.order()) - 1) * VM_BOOT_S)  # one boot, not one per point


def test_a_slow_failed_point_counts_against_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the micro-VM: the first point ran into its time limit after many times its
    estimate; the budget must scale the next estimates by that, not start point after point."""
    from workloads.campaign.run import PointFailed

    c = load_campaign(write(tmp_path, BASE), ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    order = cdir.open(c, c.order())
    clock = Clock()
    monkeypatch.setattr(run_mod, "time", clock)
    est = {p.point_id: c.estimate_s(c.validate_point(p.overrides, p.point_id)) for p in order}

    def times_out_slowly(point: Point, cfg: ExperimentConfig, pdir: Path) -> dict[str, Any]:
        clock.now += 10 * est[point.point_id]
        raise PointFailed("subscribers did not all connect and subscribe")

    budget = 5 * sum(est[p.point_id] for p in order[:3])  # room for 15 estimates, not for two tenfold points
    out = execute_points(cdir, c, order, times_out_slowly, progress=False, deadline=clock.now + budget)
    assert len(out.failed) == 1 and out.skipped == [p.point_id for p in order[1:]]


def test_lab_run_in_the_vm_has_the_guest_say_its_progress_and_names_the_phase_a_stall_was_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CI failure "the micro-VM did not finish within 540s" of a ``--quiet`` lab run said
    nothing of what the guest was doing: the guest now always writes its progress to a log the
    wait counts as work, and a failure names its last line."""
    import argparse

    from workloads.hosts.lab import cli as lab_cli

    seen: dict[str, Any] = {}

    def stalled(script: str, rwdirs: list[Path], **kw: Any) -> Any:
        seen.update(script=script, rwdirs=rwdirs, echo=kw.get("echo"))
        log = Path(script.rsplit("2>> ", 1)[1].strip("'"))
        assert log.parent in rwdirs  # its lines are work the wait sees
        log.write_text("[lab x] starting 3 brokers\n[lab x] bench: 3 subscribers connecting on 3 client hosts\n")
        raise LabError("the micro-VM did not finish within 540s (nothing written)")

    monkeypatch.setattr(vm, "run_in_vm", stalled)
    args = argparse.Namespace(out=str(tmp_path / "runs"), vm_timeout=480.0, quiet=True)
    with pytest.raises(LabError, match=r"within 540s \(nothing written\); the guest last said: \[lab x\] bench: 3 subscribers connecting"):
        lab_cli.in_vm(args, ["lab", "run", "--vm", "--quiet", "-s", "smoke"])
    assert "--quiet" not in seen["script"] and "--vm" not in seen["script"] and seen["echo"] is None
    assert tmp_path / "runs" in seen["rwdirs"]

    def failed(script: str, rwdirs: list[Path], **kw: Any) -> Any:
        Path(script.rsplit("2>> ", 1)[1].strip("'")).write_text("[lab x] bench: publishing\nmqttlab: brokers did not come up\n")
        return subprocess.CompletedProcess([], 1, "", "")

    monkeypatch.setattr(vm, "run_in_vm", failed)
    assert lab_cli.in_vm(args, ["lab", "run", "--vm", "--quiet"]) == 1
    assert capsys.readouterr().err.endswith("[lab x] bench: publishing\nmqttlab: brokers did not come up\n")
