"""Host calibration: one capped broker's capacity, measured while its cap is the limit, and the
overload ratio a run states against it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_lab import lab_leftovers
from workloads.describe.config import load_stack
from workloads.hosts.lab import calibrate
from workloads.rundir import calibration


def records(tmp: Path, throttled_from: float, throttled_to: float, sent_per_s: float) -> Path:
    """A flood's monitor files by hand: 20 s sampled every 0.5 s (cgroups) and every second
    (the $SYS counter, as Mosquitto updates it every second); the cgroup throttled in each of
    its 100 ms periods between ``throttled_from`` and ``throttled_to`` (seconds into the run),
    in none before or after; the broker sending ``sent_per_s`` while throttled, a tenth of it
    otherwise."""
    (tmp / "monitor").mkdir(parents=True)
    cg, br, n, sent = ["time_s,group,usage_usec,nr_periods,nr_throttled,throttled_usec,wait_usec,psi_some_usec"], [
        "time_s,broker,cpu_pct,mem_bytes,clients_connected,msgs_received,msgs_sent,msgs_dropped,net_rx_bytes,net_tx_bytes"], 0, 0.0
    for i in range(41):
        t = i * 0.5
        if i and throttled_from < t <= throttled_to:
            n += 5
        cg.append(f"{1000 + t},broker1,0,{i * 5},{n},0,0,")
        cg.append(f"{1000 + t},host,,,,,,0")
    for i in range(21):
        br.append(f"{1000 + i},broker1,,0,1,0,{int(sent)},0,0,0")
        sent += sent_per_s if throttled_from <= i < throttled_to else sent_per_s / 10
    (tmp / "monitor" / "cgroups.csv").write_text("\n".join(cg) + "\n")
    (tmp / "monitor" / "brokers.csv").write_text("\n".join(br) + "\n")
    return tmp


def test_the_capacity_is_the_rate_while_throttled_over_the_longest_stretch(tmp_path: Path) -> None:
    rate, at_cap = calibration.measure(records(tmp_path / "a", 4, 14, 3000.0))
    assert at_cap == pytest.approx(10.0) and rate == pytest.approx(3000.0)
    rate, at_cap = calibration.measure(records(tmp_path / "b", 30, 40, 3000.0))  # never throttled: no capacity
    assert (rate, at_cap) == (0.0, 0.0)


def test_the_overload_ratio_is_offered_per_broker_over_the_capacity() -> None:
    cfg = load_stack("distributed", ROOT)  # 240 publishers every 500 ms, 240 subscribers, 3 brokers
    assert calibration.fanout(cfg) == 80 and calibration.offered_per_broker(cfg) == 480 * 80
    assert calibration.overload_ratio(cfg, {"capacity": 12800.0}) == 3.0
    assert calibration.overload_ratio(cfg, None) is None and calibration.overload_ratio(cfg, {"capacity": 0}) is None
    flood = calibrate.flood_config(cfg, 4.0)
    assert (flood.brokers.count, flood.scenario.subscribers, flood.scenario.publishers, flood.scenario.interval_ms) == (1, 80, 80, 125)
    assert flood.brokers.cpus == cfg.brokers.cpus and flood.scenario.qos == cfg.scenario.qos and not flood.faults


SMALL = ["-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", "--publishers", "6", "--subscribers", "6",
         "--interval-ms", "20", "--broker-cpus", "0.02", "-q", "1"]


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_a_calibration_floods_one_capped_broker_and_a_run_states_its_ratio(tmp_path: Path) -> None:
    cp = subprocess.run([*MQTTLAB, "lab", "calibrate", *SMALL, "--out", str(tmp_path), "--json", "--quiet"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stderr[-3000:]
    cal = json.loads(cp.stdout)
    assert cal["capacity"] > 0 and cal["at_cap_s"] >= calibrate.MIN_AT_CAP_S and (cal["broker_cpus"], cal["fanout"], cal["qos"]) == (0.02, 2, 1)
    flood = json.loads((Path(cal["run_dir"]) / "manifest.json").read_text())
    assert len(flood["plan"]["brokers"]) == 1 and flood["broker_caps"]["broker1"]["cpus"] == pytest.approx(0.02)
    # the scenario offers 6 x 50 msg/s, each to 2 subscribers per broker: 600 deliveries/s per broker
    assert cal["offered_per_broker"] == 600.0 and cal["overload_ratio"] == round(600.0 / cal["capacity"], 3)
    f = tmp_path / "cal.json"
    f.write_text(cp.stdout)
    run = subprocess.run([*MQTTLAB, "lab", "run", *SMALL, "--messages", "60", "--drain-s", "2", "--calibration", str(f), "--out",
                          str(tmp_path / "runs"), "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    s = json.loads(run.stdout)
    m = json.loads((Path(s["run_dir"]) / "manifest.json").read_text())
    assert s["overload_ratio"] == m["overload_ratio"] == cal["overload_ratio"] and m["calibration"]["capacity"] == cal["capacity"]
    assert not any(lab_leftovers().values())


def test_a_calibration_made_for_another_broker_is_refused_before_anything_exists(tmp_path: Path) -> None:
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"capacity": 1000.0, "broker_cpus": 0.25, "qos": 1, "payload_bytes": 64, "fanout": 2}))
    out = tmp_path / "runs"
    cp = subprocess.run([*MQTTLAB, "lab", "run", *SMALL, "--calibration", str(f), "--out", str(out)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 2 and "broker_cpus 0.25 (this run: 0.02)" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert not out.exists() or not any(out.iterdir())
    f.write_text("{not json")
    cp = subprocess.run([*MQTTLAB, "lab", "run", *SMALL, "--calibration", str(f), "--out", str(out)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 2 and "is not a calibration made by lab calibrate --json" in cp.stderr, cp.stderr


def test_the_run_report_states_the_load_as_the_overload_ratio() -> None:
    from workloads.analysis.methods import methods_rows

    m = {"calibration": {"capacity": 12800.0, "broker_cpus": 0.085, "at_cap_s": 8.1}, "offered_per_broker": 38400.0, "overload_ratio": 3.0}
    rows = dict(methods_rows(m, {}))
    assert rows["Load"].startswith("overload ratio 3.0: 38,400 deliveries/s offered per broker against 12,800 deliveries/s"), rows["Load"]
    assert "0.085 CPU" in rows["Load"]
    assert dict(methods_rows({}, {}))["Load"].startswith("not calibrated")


def test_lab_down_json_lists_what_it_removed() -> None:
    cp = subprocess.run([*MQTTLAB, "lab", "down", "--id", "fffff0", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and json.loads(cp.stdout) == {"removed": []}, cp.stderr
