"""Faults as data: the parser, the checks against the plan, the rules that carry them out (proven
by ``nft -c``), and the command line refusing a bad fault before anything is created."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT
from workloads.describe.config import ConfigError, load_stack
from workloads.describe.faults import Fault, FaultError, parse_fault
from workloads.hosts.faults.rules import bridge_cut_rules, director_dead_rules


@pytest.mark.parametrize(("text", "want"), [
    ("broker2:kill@5s", Fault("broker2:kill@5s", "broker", "broker2", "kill", 5.0, None)),
    ("broker2:pause@5s+3s", Fault("broker2:pause@5s+3s", "broker", "broker2", "pause", 5.0, 3.0)),
    ("broker1:restart@1500ms", Fault("broker1:restart@1500ms", "broker", "broker1", "restart", 1.5, None)),
    ("broker3:restart@2.5+2s", Fault("broker3:restart@2.5+2s", "broker", "broker3", "restart", 2.5, 2.0)),
    ("bridge:broker1-broker3:cut@5s+4s", Fault("bridge:broker1-broker3:cut@5s+4s", "bridge", "broker1-broker3", "cut", 5.0, 4.0)),
    ("director:ipvs1:kill@5s", Fault("director:ipvs1:kill@5s", "director", "ipvs1", "kill", 5.0, None)),
    ("director:ipvs2:kill@0s+250ms", Fault("director:ipvs2:kill@0s+250ms", "director", "ipvs2", "kill", 0.0, 0.25)),
])
def test_fault_specs_parse_into_what_when_and_how_long(text: str, want: Fault) -> None:
    f = parse_fault(text)
    assert f == want
    assert f.end_s == (None if want.duration_s is None else want.at_s + want.duration_s)


@pytest.mark.parametrize(("text", "needle"), [
    ("broker2:kill", "must look like"),
    ("broker2:explode@5s", "cannot 'explode'"),
    ("broker2:pause@5s", "needs a duration"),
    ("broker2:kill@5s+3s", "is final"),
    ("bridge:broker1-broker3:kill@5s", "a bridge cannot 'kill'"),
    ("director:ipvs1:pause@5s+1s", "a director cannot 'pause'"),
    ("ipvs1:kill@5s", "unknown target 'ipvs1'"),
    ("broker2:kill@-1s", "must look like"),
    ("broker2:kill@5m", "must look like"),
    ("bridge:broker1-broker3:cut@5s+0s", "duration must be > 0"),
])
def test_bad_fault_specs_are_refused_with_the_reason(text: str, needle: str) -> None:
    with pytest.raises(FaultError) as err:
        parse_fault(text)
    assert needle in str(err.value)


def test_faults_are_checked_against_the_plan_and_each_other() -> None:
    dist = load_stack("distributed", ROOT)
    cfg = dist.with_overrides({"faults": ["broker2:kill@5s", "bridge:broker1-broker3:cut@2s+4s", "director:ipvs2:kill@8s+2s",
                                          "broker3:pause@1s+1s", "broker3:restart@3s+1s"]})
    assert [f.target for f in cfg.faults] == ["broker2", "broker1-broker3", "ipvs2", "broker3", "broker3"]
    cases = [
        (dist, ["broker4:kill@1s"], "mqttlab:faults[0]", "brokers: broker1, broker2, broker3"),
        (dist, ["broker1:kill@1s", "bridge:broker2-broker3:cut@1s+1s"], "mqttlab:faults[1]", "bridges: broker1-broker2, broker1-broker3"),
        (dist.with_overrides({"bridge.layout": "none"}), ["bridge:broker1-broker2:cut@1s+1s"], "mqttlab:faults[0]", "none in this topology"),
        (load_stack("centralized", ROOT), ["director:ipvs2:kill@1s"], "mqttlab:faults[0]", "directors: ipvs1"),
        (dist, ["broker2:pause@1s+5s", "broker2:restart@3s"], "mqttlab:faults[1]", "overlaps broker2:pause@1s+5s"),
        (dist, ["broker2:kill@900s"], "mqttlab:faults[0]", "time limit"),
        (dist, "broker2:kill@1s", "mqttlab:faults", "must be a list"),
    ]
    for base, faults, key, needle in cases:
        with pytest.raises(ConfigError) as err:
            base.with_overrides({"faults": faults})
        assert err.value.key == key and needle in str(err.value), (faults, str(err.value))


def test_fault_rules_pass_nft_check(tmp_path: Path) -> None:
    for text in (bridge_cut_rules("mqttlab_fault0", "198.18.0.20", "198.18.0.22", 1883),
                 bridge_cut_rules("mqttlab_fault0", "198.18.0.20", "198.18.0.22", 1883, "198.18.0.10"),
                 director_dead_rules("mqttlab_fault1", "198.18.1.10", 1883, ["198.18.0.20", "198.18.0.21"], 1883)):
        (tmp_path / "r.nft").write_text(text)
        cp = subprocess.run(["nft", "-c", "-f", str(tmp_path / "r.nft")], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr + text


def test_lab_run_refuses_a_bad_fault_before_creating_anything(tmp_path: Path) -> None:
    cp = subprocess.run([*MQTTLAB, "lab", "run", "-s", "distributed", "--out", str(tmp_path / "runs"), "--fault", "broker2:kill@1s",
                         "--fault", "broker9:pause@2s+1s"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 2
    assert "--fault='broker9:pause@2s+1s' is invalid: no broker 'broker9' in this plan" in cp.stderr
    assert not (tmp_path / "runs").exists()
