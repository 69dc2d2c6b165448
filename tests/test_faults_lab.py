"""A broker killed in the middle of a real lab run, with and without health checks (the HAProxy
stand-in: this kernel may have no IPVS), and what the availability report makes of it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_lab import lab_run
from workloads.analysis.availability import fault_table
from workloads.analysis.load import load_run
from workloads.analysis.metrics import classify_losses, client_brokers
from workloads.hosts.lab import lab as lab_mod
from workloads.hosts.lab import netns

LOAD = ["--publishers", "6", "--subscribers", "6", "--messages", "600", "--interval-ms", "50", "--qos", "1", "--drain-s", "5",
        "--reconnect-min-ms", "100", "--reconnect-max-ms", "1000", "--balancer", "haproxy", "--fault", "broker2:kill@2s"]


def assert_lab_gone(run_dir: Path) -> None:
    """This run's lab left nothing (other labs on the machine are not this test's business)."""
    lab_id = json.loads((run_dir / "manifest.json").read_text())["lab_id"]
    assert not netns.list_namespaces(f"mqttlab-{lab_id}-")
    assert not list(lab_mod.STATE_DIR.glob(f"{lab_id}*")) if lab_mod.STATE_DIR.is_dir() else True


def first_broker(run_dir: Path, tag: int) -> dict[str, str]:
    """client id -> the broker it first connected to, from the brokers' logs (timestamps order them)."""
    seen: list[tuple[str, str, str]] = []
    for log in (run_dir / "logs").glob("broker*.log"):
        for m in re.finditer(r"^(\S+): New client connected from \S+ as (\S+)", log.read_text(), re.M):
            if m.group(2).startswith(f"mqttlab-{tag:08x}-"):
                seen.append((m.group(1), m.group(2), log.stem))
    out: dict[str, str] = {}
    for _t, cid, broker in sorted(seen):
        out.setdefault(cid, broker)
    return out


def faulted_run(out: Path, *extra: str, time_limit: str = "120") -> tuple[Path, dict[str, Any], int]:
    cp = lab_run("-s", "distributed", *LOAD, "--time-limit-s", time_limit, *extra, "--json", out=out, timeout=400)
    runs = sorted(out.iterdir())
    assert len(runs) == 1, cp.stderr[-3000:]
    return runs[0], (json.loads(cp.stdout) if cp.stdout.strip() else {}), cp.returncode


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_broker_kill_with_and_without_health_checks(tmp_path: Path) -> None:
    # with checks: broker2's clients all come back, elsewhere, and the run completes
    run_dir, summary, rc = faulted_run(tmp_path / "checked", "--health-check", "mqtt", "--health-interval", "0.5", "--health-retries", "2",
                                       "--health-timeout", "0.5")
    assert rc == 0 and summary["partial"] is False, summary
    assert_lab_gone(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    faults = [json.loads(line) for line in (run_dir / "faults.jsonl").read_text().splitlines()]
    assert len(faults) == 1 and faults[0]["started_at"] - faults[0]["t0"] >= 2.0 and faults[0]["ended_at"] is None
    assert "SIGKILL pid" in faults[0]["detail"]
    on_b2 = {cid for cid, b in first_broker(run_dir, manifest["tag"]).items() if b == "broker2"}
    assert on_b2, "the balancer put nobody on broker2"
    f = fault_table(load_run(run_dir)).to_dict("records")[0]
    assert set(f["affected"]) == on_b2 and f["never_back"] == 0
    assert f["back_on"] and "broker2" not in f["back_on"] and sum(f["back_on"].values()) == len(on_b2)
    assert all(v is not None for v in f["balancer_out_after_s"].values()), f  # both HAProxies marked it DOWN
    assert summary["sent"] == 600 and summary["delivered"] > 0
    print(f"with checks: {len(on_b2)} clients of broker2 back after p50 {f['reconnect_p50_s']} s, max {f['reconnect_max_s']} s; "
          f"balancer out after {f['balancer_out_after_s']}; connections still sent to broker2 {f['sent_to_failed_broker']}; "
          f"lost inside {f['lost_inside']} outside {f['lost_outside']}")

    # without checks: HAProxy leastconn keeps choosing the empty, dead broker2; its clients are
    # refused again and again, and the report shows who and how many connections went there
    run_dir, summary, rc = faulted_run(tmp_path / "unchecked", "--health-check", "none", time_limit="25")
    assert_lab_gone(run_dir)
    f = fault_table(load_run(run_dir)).to_dict("records")[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    on_b2 = {cid for cid, b in first_broker(run_dir, manifest["tag"]).items() if b == "broker2"}
    assert on_b2 and set(f["affected"]) == on_b2
    assert all(v is None for v in f["balancer_out_after_s"].values()), f  # never taken out
    assert f["sent_to_failed_broker"] > len(on_b2)  # more connections than clients: the same clients, sent there again
    assert f["never_back"] > 0 and f["attempts"] > 2 * len(on_b2)
    print(f"without checks: {f['never_back']} of {len(on_b2)} clients never back, {f['attempts']} attempts, "
          f"{f['sent_to_failed_broker']} connections sent to the dead broker; run {'partial' if rc else 'complete'}")


def pair_loss_by_host(run_dir: Path) -> dict[tuple[str, str], int]:
    """(subscriber's host, publisher's host) -> deliveries lost between them, from the bench's
    own per-host records (each publisher's sent count against what each subscriber received)."""
    import csv

    sent: dict[str, tuple[str, int]] = {}
    for p in run_dir.glob("bench/*/publishers-*.csv"):
        for r in csv.DictReader(p.open()):
            sent[r["pub"]] = (p.parent.name, int(r["sent"]))
    out: dict[tuple[str, str], int] = {}
    for p in run_dir.glob("bench/*/subscribers-*.csv"):
        for r in csv.DictReader(p.open()):
            host, n = sent[r["pub"]]
            key = (p.parent.name, host)
            out[key] = out.get(key, 0) + n - int(r["received"])
    return out


SESSION_LOAD = ["--publishers", "4", "--subscribers", "4", "--messages", "1600", "--interval-ms", "50", "--qos", "1", "--drain-s", "5",
                "--keepalive", "5", "--reconnect-min-ms", "100", "--reconnect-max-ms", "1000", "--balancer", "haproxy", "--scheduler", "sh",
                "--time-limit-s", "90", "--fault", "director:ipvs2:kill@2s+10s"]


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_a_persistent_subscriber_gets_what_was_queued_while_it_was_cut_off(tmp_path: Path) -> None:
    """ipvs2 goes silent for 10 s: its clients lose their connections (keepalive 5 s) and, by
    source hashing, come back to the same broker. With ``cleanSession: false`` the broker kept
    their sessions and queued what ipvs1's publishers sent meanwhile: ipvs2's subscribers lose
    none of it (duplicates allowed); with clean sessions they lose it."""
    loss: dict[bool, dict[tuple[str, str], int]] = {}
    for clean in (False, True):
        out = tmp_path / ("clean" if clean else "persistent")
        cp = lab_run("-s", "distributed", *SESSION_LOAD, "--clean-session", str(clean).lower(), "--json", out=out, timeout=400)
        run_dir = next(out.iterdir())
        assert_lab_gone(run_dir)
        assert cp.stdout.strip(), cp.stderr[-3000:]
        f = fault_table(load_run(run_dir)).to_dict("records")[0]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        cut = {cid for cid in f["affected"] if "-sub" in cid}
        assert cut and f["affected_by_host"].keys() == {"ipvs2"}, f  # only ipvs2's clients were cut
        events = "".join(p.read_text() for p in run_dir.glob("bench/ipvs2/events-*.csv"))
        resumed = {line.split(",")[1] for line in events.splitlines() if ",session_resumed," in line}
        assert resumed == (set() if clean else cut), (resumed, cut)
        before = first_broker(run_dir, manifest["tag"])
        assert set(f["back_on"]) == {before[c] for c in f["affected"]}, f  # source hashing: back where they were
        loss[clean] = pair_loss_by_host(run_dir)
        print(f"cleanSession {str(clean).lower()}: ipvs2's {len(cut)} subscribers cut, back after p50 {f['reconnect_p50_s']} s "
              f"max {f['reconnect_max_s']} s on {f['back_on']}; lost per (sub host, pub host) {loss[clean]}; "
              f"duplicates inside {f['dup_inside']} outside {f['dup_outside']}")
    assert loss[False][("ipvs2", "ipvs1")] == 0  # queued by the broker meanwhile, delivered on return
    assert loss[True][("ipvs2", "ipvs1")] > 0  # a clean session starts empty: what came meanwhile is gone
    assert loss[False][("ipvs1", "ipvs1")] == loss[True][("ipvs1", "ipvs1")] == 0  # nobody else was touched


@pytest.mark.lab
@pytest.mark.timeout(400)
def test_a_bridge_cut_loses_on_that_bridge_exactly_what_the_brokers_count_dropped(tmp_path: Path) -> None:
    """A 20 s cut of broker1-broker2 at 120 messages/s, the bridge capped at 100 queued messages and
    its keepalive at 5 s: both ends drop (the hub into broker2, broker2 out of it), and what the
    report attributes to the bridge per direction equals each end's $SYS drop counter."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    stack = yaml.safe_load((ROOT / "Pulumi.distributed.yaml").read_text())
    stack["config"]["mqttlab:brokers"]["maxQueuedMessages"] = 100
    stack["config"]["mqttlab:bridge"]["keepaliveS"] = 5
    (proj / "Pulumi.bridgecut.yaml").write_text(yaml.safe_dump(stack))
    out = tmp_path / "runs"
    cp = lab_run("-s", "bridgecut", "--project-dir", str(proj), "--publishers", "6", "--subscribers", "6", "--messages", "3600",
                 "--interval-ms", "50", "--qos", "1", "--drain-s", "5", "--reconnect-min-ms", "100", "--reconnect-max-ms", "1000",
                 "--balancer", "haproxy", "--fault", "bridge:broker1-broker2:cut@2s+20s", "--time-limit-s", "120", "--json",
                 out=out, timeout=300)
    runs = sorted(out.iterdir())
    assert cp.returncode == 0 and len(runs) == 1, cp.stderr[-3000:]
    assert "keepalive_interval 5" in (runs[0] / "rendered/brokers/broker1/mosquitto.conf").read_text()
    run = load_run(runs[0])
    f = fault_table(run).iloc[0]
    lost, dropped = f["bridge_lost_messages"], f["bridge_dropped_sys"]
    # what else a broker's counter holds besides the cut bridge, on a loaded machine: the hub's
    # queue for the other bridge (a message the hub had, lost into broker3) and subscribers' own
    # queues; on a quiet machine both are zero and the cut bridge is all there is
    q = classify_losses(run)
    cb = client_brokers(run)
    on_hub = set(cb[(cb["role"] == "sub") & (cb["broker"] == "broker1")]["index"])
    d = run.deliveries
    hub_had = set(zip(d.loc[d["sub"].isin(on_hub), "pub"], d.loc[d["sub"].isin(on_hub), "seq"], strict=True))
    into3 = q[q["where"] == "bridge into broker3"]
    hub_into3 = {(p, s) for p, s, pb in zip(into3["pub"], into3["seq"], into3["pub_broker"], strict=True) if pb == "broker1" or (p, s) in hub_had}
    queues = q[q["where"] == "subscriber queue"].groupby("broker").size()
    print(f"bridge cut: lost {lost}, $SYS dropped {dropped}, lost inside {f['lost_inside']} outside {f['lost_outside']}, "
          f"hub's other bridge {len(hub_into3)}, subscriber queues {queues.to_dict()}")
    assert lost["into broker2"] > 0 and lost["out of broker2"] > 0, f.to_dict()
    assert lost["into broker2"] + len(hub_into3) + int(queues.get("broker1", 0)) == dropped["broker1"], f.to_dict()
    assert lost["out of broker2"] + int(queues.get("broker2", 0)) == dropped["broker2"], f.to_dict()
    assert q["where"].isin(["bridge into broker1", "bridge into broker2", "bridge into broker3", "subscriber queue"]).all()
    assert_lab_gone(runs[0])
