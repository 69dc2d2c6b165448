"""Does a lab run measure the system? CPU set apart for the brokers, per-run fidelity checks and
latency from the intended send time, on the real lab (real Mosquitto, cgroups, kernel counters)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_lab import lab_leftovers, lab_run
from workloads.lab import cgroups
from workloads.lab.netns import LabError

TINY = ["-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", "--publishers", "4", "--subscribers", "4", "--messages", "40",
        "--interval-ms", "50", "--drain-s", "3", "--time-limit-s", "60", "--json", "--quiet"]


def manifest_of(cp: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert cp.returncode in (0, 1), cp.stderr[-3000:]
    return dict(json.loads((Path(json.loads(cp.stdout)["run_dir"]) / "manifest.json").read_text()))


def assert_lab_gone(m: dict[str, Any]) -> None:
    """Nothing of this run's lab is left (other labs may be running on the machine meanwhile)."""
    left = {k: [x for x in v if m["lab_id"] in x] for k, v in lab_leftovers().items()}
    assert not any(left.values()), left


def test_cpu_lists_parse_as_the_kernel_writes_them() -> None:
    assert cgroups.parse_cpulist("0-2,5\n") == [0, 1, 2, 5] and cgroups.parse_cpulist("3") == [3]
    assert cgroups.format_cpulist([0, 1, 5]) == "0,1,5"
    with pytest.raises(ValueError):
        cgroups.parse_cpulist("2-1")


def test_a_split_the_host_cannot_give_is_refused_or_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    version = cgroups.detect() or "v1"
    if cgroups.cpuset_base(version) is not None:
        online = cgroups.parse_cpulist(cgroups._effective(cgroups.cpuset_base(version)))  # type: ignore[arg-type]
        with pytest.raises(LabError, match="this host's CPUs are"):
            cgroups.plan_split(str(max(online) + 1), version)
        with pytest.raises(LabError, match="leaves no CPU"):
            cgroups.plan_split(cgroups.format_cpulist(online), version)
        with pytest.raises(LabError, match="expected auto, off or a CPU list"):
            cgroups.plan_split("some", version)
    assert cgroups.plan_split("off", version) == (None, "turned off (--broker-cpuset off)")
    monkeypatch.setattr(cgroups, "cpuset_base", lambda _v: None)
    assert cgroups.plan_split("auto", version) == (None, "this host has no cpuset controller")


@pytest.mark.lab
def test_brokers_run_on_cpus_of_their_own_and_the_manifest_says_which_from_the_kernel(tmp_path: Path) -> None:
    version = cgroups.detect()
    base = cgroups.cpuset_base(version or "v1")
    if base is None or len(cgroups.parse_cpulist(cgroups._effective(base))) < 2:
        pytest.skip("needs the cpuset controller and two CPUs")
    online = cgroups.parse_cpulist(cgroups._effective(base))
    m = manifest_of(lab_run(*TINY, out=tmp_path))
    cs = m["cpuset"]
    assert cs["enabled"] and cs["requested"] == "auto"
    assert cs["brokers"]["effective_cpus"] == str(online[-1]) and cgroups.parse_cpulist(cs["others"]["effective_cpus"]) == online[:-1]
    for name, cap in m["broker_caps"].items():  # every broker pinned by the kernel, in its own cap group alone
        assert cap["broker_cpus_allowed"] == str(online[-1]), name
        assert cap["pids"] == [cap["broker_pid"]]
    allowed = m["cpus_allowed"]
    assert any(k.startswith("bench-sub-") for k in allowed) and any(k.startswith("monitor-") for k in allowed)
    for key, cpus in allowed.items():
        want = [online[-1]] if key.startswith("broker") else online[:-1]
        assert cgroups.parse_cpulist(cpus) == want, (key, cpus)
    assert_lab_gone(m)


@pytest.mark.lab
def test_without_a_cpuset_the_manifest_says_why_and_the_run_goes_on(tmp_path: Path) -> None:
    cp = lab_run(*TINY, "--broker-cpuset", "off", out=tmp_path)
    m = manifest_of(cp)
    assert m["cpuset"] == {"enabled": False, "requested": "off", "reason": "turned off (--broker-cpuset off)"}
    assert m["status"] == "complete"
    full = set(cgroups.parse_cpulist(next(iter(m["cpus_allowed"].values()))))
    assert all(set(cgroups.parse_cpulist(c)) == full for c in m["cpus_allowed"].values())


@pytest.mark.lab
def test_a_cpu_list_the_host_lacks_stops_before_anything_is_created(tmp_path: Path) -> None:
    cp = subprocess.run([*MQTTLAB, "lab", "run", *TINY, "--broker-cpuset", "64", "--out", str(tmp_path / "runs")], capture_output=True,
                        text=True, cwd=ROOT)
    assert cp.returncode != 0 and "--broker-cpuset 64: this host's CPUs are" in cp.stderr and "Traceback" not in cp.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
