"""``lab run --dry-run`` and ``bench run --dry-run``: the real commands, checked to create nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import MQTTLAB, ROOT
from workloads.describe.cliargs import REPO_ROOT
from workloads.describe.config import load_stack
from workloads.describe.runsize import VM_BOOT_S, VM_SLOWDOWN, estimate_bench_s, estimate_point_s, fmt_s
from workloads.describe.scenario import Scenario


def mqttlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MQTTLAB, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_the_reference_lab_dry_run_expects_1440000_deliveries_and_creates_nothing(tmp_path: Path) -> None:
    before = namespaces()
    out = tmp_path / "runs"
    cp = mqttlab("lab", "run", "-s", "distributed", "--dry-run", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    assert "expected deliveries 1,440,000 (6,000 messages to 240 subscribers)" in cp.stdout
    assert "broker   broker3" in cp.stdout and "clients  on ipvs2" in cp.stdout and "nothing was started or created" in cp.stdout
    assert not out.exists() and namespaces() <= before  # none new (another lab may end meanwhile)


def test_the_json_dry_run_says_the_same_with_the_campaign_estimate(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cp = mqttlab("lab", "run", "-s", "distributed", "--dry-run", "--json", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    cfg = load_stack("distributed", REPO_ROOT)
    assert doc["expected_deliveries"] == 1_440_000 and doc["messages"] == 6000
    assert doc["estimated_duration_s"] == round(estimate_point_s(cfg), 1)
    assert [c["publishers"] for c in doc["clients"]] == [120, 120] and doc["clients"][0]["target"].endswith(":1883")
    bal = doc["balancer"]
    assert bal["balancing"] == "ipvs-lc" if bal["kind"] == "ipvs" else (bal["balancing"] == "nftables-rr standing in for ipvs-lc"
                                                                        and "stands in" in bal["note"])
    assert 1_440_000 * 32 < doc["estimated_disk_bytes"] < 1_440_000 * 64  # the delivery records dominate
    assert not out.exists()


def test_a_micro_vm_dry_run_boots_nothing_and_counts_the_emulation(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cp = mqttlab("lab", "run", "-s", "smoke", "--vm", "--dry-run", "--json", "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["vm"] is True and doc["balancer"]["kind"] == "ipvs" and "booting" not in cp.stderr
    assert doc["estimated_duration_s"] == round(estimate_point_s(load_stack("smoke", REPO_ROOT)) * VM_SLOWDOWN + VM_BOOT_S, 1)
    assert not out.exists()


def test_a_dry_run_refuses_what_a_run_refuses(tmp_path: Path) -> None:
    cp = mqttlab("lab", "run", "-s", "distributed", "--dry-run", "--qos", "7", "--out", str(tmp_path / "runs"))
    assert cp.returncode == 2 and "--qos=7" in cp.stderr
    cp = mqttlab("lab", "run", "-s", "distributed", "--dry-run", "--fault", "broker9:kill@5s", "--out", str(tmp_path / "runs"))
    assert cp.returncode == 2 and "--fault" in cp.stderr and len(cp.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_bench_dry_run_plans_one_hosts_share_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cp = mqttlab("bench", "run", "--target", "10.0.0.1:1883,10.0.0.2:1883", "--host-count", "2", "--host-index", "1", "--dry-run",
                 "--json", "--out", str(out), "--ready-file", str(tmp_path / "ready"))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["subscribers"] == 120 and doc["publishers"] == 120 and doc["expected_deliveries"] == 120 * 6000
    assert [(c["target"], c["subscribers"]) for c in doc["clients"]] == [("10.0.0.1:1883", 60), ("10.0.0.2:1883", 60)]
    assert not out.exists() and not (tmp_path / "ready").exists()


def test_a_large_bench_run_says_its_size_before_it_starts_and_a_failed_run_exits_1(tmp_path: Path) -> None:
    # 300 messages 500 ms apart: about 2.5 minutes planned, so large; nothing listens on port 9,
    # so the run starts, cannot connect before its 7 s time limit and ends partial
    cp = mqttlab("bench", "run", "--target", "127.0.0.1:9", "--publishers", "1", "--subscribers", "1", "--messages", "300",
                 "--time-limit-s", "7", "--drain-s", "1", "--workers", "1", "--out", str(tmp_path / "run"))
    assert cp.returncode == 1, cp.stderr
    planned = fmt_s(estimate_bench_s(Scenario(publishers=1, subscribers=1, messages=300, time_limit_s=7, drain_s=1)))
    assert planned == "2.5 min"  # the estimate printed is the campaign's
    assert cp.stderr.splitlines()[0] == f"size: 2 clients (1 publishers, 1 subscribers), 300 messages, 300 expected deliveries, about {planned}"
    assert "Traceback" not in cp.stderr
