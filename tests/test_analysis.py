"""Analysis on run directories whose truth is known, and one report over real lab runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT
from workloads.analysis.load import load_run
from workloads.analysis.metrics import attribution, comparison, summarize_run
from workloads.analysis.report import write_report
from workloads.analysis.synthetic import reference_truth, write_run
from workloads.rundir.records import RunDirError, summarize


@pytest.fixture
def known(tmp_path: Path) -> Path:
    return write_run(tmp_path / "known", reference_truth())


def test_every_summary_number(known: Path) -> None:
    s = summarize_run(load_run(known))
    assert (s["sent"], s["expected"], s["delivered"], s["lost"]) == (200, 800, 781, 19)
    assert s["loss_pct"] == round(100 * 19 / 800, 3) and s["duplicates"] == 1 and s["out_of_order"] == 0
    # 3 subscribers at 1 ms, broker3's subscriber at 5 ms: 195 of 781 deliveries
    assert s["latency_ms"] == {"p50": 1.0, "p90": 5.0, "p99": 5.0, "max": 5.0}
    assert s["connections_per_broker"] == {"broker1": 3, "broker2": 2, "broker3": 1}
    assert s["fairness"] == round(36 / (3 * 14), 3)  # what Jain's index carries: 3 decimals
    assert s["connections_per_balancer"] == {"ipvs1": {"broker1": 2, "broker2": 1, "broker3": 0},
                                             "ipvs2": {"broker1": 1, "broker2": 1, "broker3": 1}}
    assert s["fairness_per_balancer"]["ipvs2"] == pytest.approx(1.0)
    assert s["loss_by_broker"] == {"broker1": 12, "broker2": 1, "broker3": 6}
    assert not s["partial"]
    # the bench's own summary (used on the hosts) agrees with the analysis
    b = summarize(known)
    assert (b["expected"], b["delivered"], b["lost"], b["duplicates"]) == (800, 781, 19, 1)


def test_loss_attribution_table(known: Path) -> None:
    a = attribution(load_run(known))
    rows = {(r["broker"], r["where"]): r for r in a.to_dict("records")}
    assert set(rows) == {("broker1", "subscriber queue"), ("broker3", "bridge into broker3"), ("broker2", "missed by every subscriber")}
    q = rows[("broker1", "subscriber queue")]
    assert (q["lost_deliveries"], q["distinct_messages"], q["broker_dropped_sys"], q["explained"]) == (10, 10, 15, True)
    assert "1 of 1 subscribers logged" in q["evidence"]
    br = rows[("broker3", "bridge into broker3")]
    assert (br["lost_deliveries"], br["distinct_messages"], br["explained"]) == (5, 5, True)
    assert "mqttlab-bridge-x-broker1-broker3-local" in br["evidence"]
    everyone = rows[("broker2", "missed by every subscriber")]  # charged to the publisher's broker, which reported nothing
    assert (everyone["lost_deliveries"], everyone["distinct_messages"], everyone["explained"]) == (4, 1, False)
    assert "broker2 dropped 0" in everyone["evidence"]
    assert a.attrs["total_lost"] == 19 and a.attrs["unexplained"] == 4
    assert a["share_pct"].sum() == pytest.approx(100.0)


def test_comparison_groups_repetitions_with_mean_and_spread(tmp_path: Path) -> None:
    t1 = reference_truth()
    t2 = reference_truth()
    t2.lost = {(0, 0, q) for q in range(10, 39)}  # 29 lost
    t3 = reference_truth()
    t3.topology, t3.lost = "centralized", set()
    runs = [load_run(write_run(tmp_path / n, t)) for n, t in (("a", t1), ("b", t2), ("c", t3))]
    comp = comparison([summarize_run(r) for r in runs]).set_index("topology")
    d, c = comp.loc["distributed"], comp.loc["centralized"]
    assert d["runs"] == 2 and d["loss_pct_mean"] == pytest.approx((19 + 29) / 2 / 800 * 100, abs=1e-3)
    assert d["loss_pct_std"] == pytest.approx(((19 - 29) ** 2 / 2) ** 0.5 / 800 * 100, abs=1e-3)
    assert c["runs"] == 1 and c["loss_pct_mean"] == 0.0


def test_partial_and_malformed_runs(tmp_path: Path) -> None:
    t = reference_truth()
    t.status = "running"
    run = load_run(write_run(tmp_path / "p", t))
    assert run.partial and "partial run" in run.notes[0]
    bad = write_run(tmp_path / "bad", reference_truth())
    f = bad / "bench" / "ipvs1" / "clients-run0.csv"
    f.write_text("client_id,role\nx,pub\n")
    with pytest.raises(RunDirError, match="clients-run0.csv: missing columns"):
        load_run(bad)
    (bad / "manifest.json").write_text('{"format_version": 99}')
    with pytest.raises(RunDirError, match="format_version 99"):
        load_run(bad)
    cp = subprocess.run([*MQTTLAB, "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 2 and "manifest.json: missing" in cp.stderr


def test_a_stand_in_run_recorded_before_the_requested_fields_reports_what_ran(tmp_path: Path) -> None:
    """Such a manifest says ``scheduler`` lc (the one asked for) and who stood in: the report names
    the nftables round robin that ran, for ipvs-lc, in its tables and legends' source fields."""
    t = reference_truth()
    t.balancer = "nftables"
    old = write_run(tmp_path / "old", t)
    m = json.loads((old / "manifest.json").read_text())
    m["stood_in"] = {"for": "ipvs lc", "by": "nftables", "kind": "kernel NAT", "scheduler": "round robin (numgen inc): nftables has no "
                     "least-connection scheduler", "exact": False}
    (old / "manifest.json").write_text(json.dumps(m))
    run = load_run(old)
    assert run.label == "distributed/nftables-rr standing in for ipvs-lc/qos1"
    res = write_report([run, load_run(write_run(tmp_path / "ipvs", reference_truth()))], tmp_path / "r")
    got = [{k: s[k] for k in ("balancer", "scheduler", "stands_in_for", "requested_balancer", "requested_scheduler", "balancing")}
           for s in res["summaries"]]
    assert got == [{"balancer": "nftables", "scheduler": "rr", "stands_in_for": "ipvs-lc", "requested_balancer": "ipvs",
                    "requested_scheduler": "lc", "balancing": "nftables-rr standing in for ipvs-lc"},
                   {"balancer": "ipvs", "scheduler": "lc", "stands_in_for": "", "requested_balancer": "ipvs", "requested_scheduler": "lc",
                    "balancing": "ipvs-lc"}]
    # the stand-in and real IPVS lc are two configurations, not one
    assert res["comparison"][["balancer", "scheduler", "runs"]].values.tolist() == [["ipvs", "lc", 1], ["nftables", "rr", 1]]
    assert "nftables-rr standing in for ipvs-lc" in res["html"].read_text()


def test_a_manifest_naming_an_unknown_balancer_is_one_line(known: Path, tmp_path: Path) -> None:
    m = json.loads((known / "manifest.json").read_text())
    (known / "manifest.json").write_text(json.dumps(m | {"balancer": "lvs"}))
    cp = subprocess.run([*MQTTLAB, "report", str(known), "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 2 and cp.stderr.strip().splitlines() == [
        f"mqttlab: {known / 'manifest.json'}: balancer 'lvs': choose one of ipvs, nftables, haproxy"]


def test_report_command_json_and_files(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    cp = subprocess.run([*MQTTLAB, "report", str(known), "--out", str(out), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)[0]
    assert (s["lost"], s["duplicates"], s["loss_by_broker"]["broker3"]) == (19, 1, 6) and s["fairness"] == pytest.approx(0.857, abs=1e-3)
    for name in ("runs.csv", "comparison.csv", "attribution.csv", "summary.json", "report.html", "loss.png", "latency.png",
                 "connections.png", "timeseries.png"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Where messages were lost" in html


def test_html_report_renders_in_headless_chromium(known: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is installed by scripts/setup.sh --dev"
    res = write_report([load_run(known)], tmp_path / "r")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    cp = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", res["html"].as_uri()], capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0 and shot.exists(), cp.stderr[-2000:]
    dom = subprocess.run([browser, *flags, "--dump-dom", res["html"].as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 4 and "Loss by configuration" not in dom  # titles are inside the pictures
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 100  # plots, not a blank page


@pytest.mark.lab
def test_report_over_real_lab_runs_of_both_topologies(tmp_path: Path) -> None:
    dirs = []
    for topology in ("distributed", "centralized"):
        cp = subprocess.run([*MQTTLAB, "lab", "run", "-s", topology, "--balancer", "nftables", "--scheduler", "rr", "--publishers", "6",
                             "--subscribers", "6", "--messages", "300", "--interval-ms", "20", "--drain-s", "3", "--json", "--quiet",
                             "--out", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert cp.returncode == 0, cp.stderr[-3000:]
        dirs.append(json.loads(cp.stdout))
    res = write_report([load_run(Path(d["run_dir"])) for d in dirs], tmp_path / "report")
    for lab_summary, s in zip(dirs, res["summaries"], strict=True):
        assert (s["expected"], s["delivered"], s["lost"], s["duplicates"]) == (lab_summary["expected"], lab_summary["delivered"],
                                                                                lab_summary["lost"], lab_summary["duplicates"])
        assert s["connections_per_broker"] == lab_summary["connections_per_broker"]
        assert s["topology"] == lab_summary["topology"] and sum(s["connections_per_broker"].values()) == 12
    assert set(res["comparison"]["topology"]) == {"distributed", "centralized"}


@pytest.mark.parametrize("health_checked", [True, False])
def test_availability_per_fault_on_a_run_with_known_truth(tmp_path: Path, health_checked: bool) -> None:
    from workloads.analysis.availability import fault_table
    from workloads.analysis.synthetic import write_fault_run

    path, truth = write_fault_run(tmp_path / "faulted", health_checked)
    rows = fault_table(load_run(path)).to_dict("records")
    assert len(rows) == 1
    f = rows[0]
    assert (f["spec"], f["window_s"]) == ("broker2:restart@0.04s+2s", 2.0)
    assert f["affected"] == truth["affected"] and f["affected_by_host"] == truth["affected_by_host"] and f["never_back"] == 0
    took = truth["reconnect_s"]
    assert (f["reconnect_p50_s"], f["reconnect_max_s"]) == (took[1], took[2])
    assert f["reconnect_p99_s"] == pytest.approx(took[1] + 0.98 * (took[2] - took[1]), abs=1e-3)
    assert f["all_back_s"] == pytest.approx(max(took), abs=1e-3)  # every one was cut off at the fault's start
    assert f["back_on"] == truth["back_on"]
    assert (f["lost_inside"], f["lost_outside"], f["dup_inside"], f["dup_outside"]) == (80, 5, 1, 1)
    assert f["balancer_out_after_s"] == truth["balancer_out_after_s"] and f["sent_to_failed_broker"] == truth["sent_to_failed_broker"]
    # the report carries it: table, plot, summary
    rep = write_report([load_run(path)], tmp_path / "report")
    assert (tmp_path / "report" / "availability.png").stat().st_size > 10_000
    html_text = rep["html"].read_text()
    assert "Availability under faults" in html_text and "broker2:restart@0.04s+2s" in html_text
    s = json.loads((tmp_path / "report" / "summary.json").read_text())["runs"][0]["faults"][0]
    assert s["lost_inside"] == 80 and s["affected_clients"] == 3


def test_runs_without_faults_have_no_availability_section(known: Path, tmp_path: Path) -> None:
    rep = write_report([load_run(known)], tmp_path / "report")
    assert "Availability under faults" not in rep["html"].read_text() and not (tmp_path / "report" / "availability.csv").exists()


def test_a_client_back_only_after_the_measurement_ended_counts_as_never_back(tmp_path: Path) -> None:
    from workloads.analysis.availability import fault_table
    from workloads.analysis.synthetic import T0, write_fault_run

    path, truth = write_fault_run(tmp_path / "faulted")
    rec = json.loads((path / "faults.jsonl").read_text())
    (path / "faults.jsonl").write_text(json.dumps(rec | {"ended_at": None, "run_ended_at": T0 + 0.5}) + "\n")
    f = fault_table(load_run(path)).to_dict("records")[0]
    assert f["window_s"] == pytest.approx(0.46) and f["affected_clients"] == 3
    assert f["never_back"] == 1 and f["reconnect_max_s"] == truth["reconnect_s"][1]  # the one back after 1 s was back too late
    assert f["all_back_s"] is None  # not every client came back: the storm never ended


def test_a_bridge_cut_is_charged_to_that_bridge_and_set_against_its_ends_counters(tmp_path: Path) -> None:
    """Losses across the cut bridge, per direction, against the drop counters of the broker
    queueing each direction; a subscriber-queue loss and later drops are not the bridge's."""
    from workloads.analysis.availability import fault_table
    from workloads.analysis.synthetic import write_bridge_cut_run

    path, truth = write_bridge_cut_run(tmp_path / "cut")
    f = fault_table(load_run(path)).to_dict("records")[0]
    assert f["bridge_lost_messages"] == truth["bridge_lost_messages"]
    assert f["bridge_dropped_sys"] == truth["bridge_dropped_sys"]
    assert f["lost_inside"] + f["lost_outside"] == 20 + 20 + 5
    rep = write_report([load_run(path)], tmp_path / "report")
    assert "into broker2" in rep["html"].read_text()


def test_a_message_the_hub_had_but_did_not_pass_on_was_not_lost_across_the_cut(tmp_path: Path) -> None:
    """From broker2 through the hub to broker3: the hub's subscriber got it, broker3's did not,
    so the hub dropped it on its other bridge (its counter says so), not broker2 on the cut one;
    seen on a loaded machine, where the hub's other bridge queue overflowed once or twice."""
    from workloads.analysis.availability import fault_table
    from workloads.analysis.synthetic import write_bridge_cut_run

    path, truth = write_bridge_cut_run(tmp_path / "cut", hub_drop=True)
    f = fault_table(load_run(path)).to_dict("records")[0]
    assert f["bridge_lost_messages"] == truth["bridge_lost_messages"] == {"into broker2": 20, "out of broker2": 10}
    assert f["bridge_dropped_sys"] == truth["bridge_dropped_sys"] == {"broker1": 21, "broker2": 10}
    assert f["lost_inside"] + f["lost_outside"] == 20 + 20 + 5 + 1


def _strict_json(path: Path) -> Any:
    """Parse as a strict JSON parser does: ``NaN`` and ``Infinity`` are not JSON."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_summary_json_is_strict_json_with_null_for_missing_values(tmp_path: Path) -> None:
    # no deliveries at all: no latency, no fairness, nothing to average: each must be null, not NaN
    t = reference_truth()
    run = write_run(tmp_path / "empty", t)
    for p in run.glob("bench/*/deliveries-*.bin"):
        p.write_bytes(b"")
    for p in run.glob("bench/*/latency-*.json"):
        p.unlink()
    result = write_report([load_run(run), load_run(write_run(tmp_path / "full", reference_truth()))], tmp_path / "rep")
    doc = _strict_json(tmp_path / "rep" / "summary.json")
    assert doc["runs"][0]["latency_ms"]["p99"] is None
    assert any(v is None for row in doc["comparison"] for v in row.values())  # a one-run group has no standard deviation
    assert result["summaries"][1]["latency_ms"]["p99"] is not None


def _top_of_report(html_text: str) -> str:
    """What a reader sees before the first table: the title, the warnings and nothing after Methods."""
    return html_text[html_text.index("<h1>"):html_text.index("<h2>Methods</h2>")]


def test_a_saturated_run_says_so_at_the_top_of_its_report(tmp_path: Path) -> None:
    run = write_run(tmp_path / "sat", reference_truth())
    host = next(p.name for p in (run / "bench").iterdir() if p.is_dir())
    (run / "bench" / host / "self-run0.json").write_text(json.dumps({"worker": 0, "cpu_busy_pct": 97.5, "loop_lag_p99_ms": 3.0}))
    res = write_report([load_run(run)], tmp_path / "rep")
    top = _top_of_report(res["html"].read_text())
    assert "load generator was SATURATED" in top and "cpu_busy_pct=97.5" in top
    assert "SATURATED" in res["html"].read_text().split("<h2>Methods</h2>")[1].split("</table>")[0]  # and in the methods' load generator row
    assert _strict_json(tmp_path / "rep" / "summary.json")["runs"][0]["bench_saturated"] is True
    # the same run without the self-check's alarm: the top says nothing was saturated
    (run / "bench" / host / "self-run0.json").write_text(json.dumps({"worker": 0, "cpu_busy_pct": 12.0, "loop_lag_p99_ms": 3.0}))
    top = _top_of_report(write_report([load_run(run)], tmp_path / "rep2")["html"].read_text())
    assert "SATURATED" not in top and "no load generator was saturated" in top


def test_an_invalid_run_says_so_at_the_top_and_an_unchecked_one_says_not_checked(tmp_path: Path) -> None:
    run = write_run(tmp_path / "inv", reference_truth())
    plain = write_report([load_run(run)], tmp_path / "plain")["html"].read_text()
    assert "INVALID" not in _top_of_report(plain) and "<th scope=\"row\">Fidelity</th><td>not checked</td>" in plain
    m = json.loads((run / "manifest.json").read_text())
    m["fidelity"] = {"verdict": "invalid", "failed": ["stand-in scheduler", "broker cap"]}
    (run / "manifest.json").write_text(json.dumps(m))
    doc = write_report([load_run(run)], tmp_path / "rep")["html"].read_text()
    top = _top_of_report(doc)
    assert "is INVALID" in top and "stand-in scheduler, broker cap" in top
    assert "<th scope=\"row\">Fidelity</th><td>invalid (failed: stand-in scheduler, broker cap)</td>" in doc


def test_every_figure_is_written_for_print_as_svg_and_200_dpi_png(known: Path, tmp_path: Path) -> None:
    import struct
    import xml.etree.ElementTree as ET

    res = write_report([load_run(known)], tmp_path / "r")
    for png in res["plots"]:
        raw = png.read_bytes()
        at = raw.index(b"pHYs")  # pixels per metre, as matplotlib records the dpi it drew at
        ppm_x, ppm_y, unit = struct.unpack(">IIB", raw[at + 4:at + 13])
        assert unit == 1 and min(ppm_x, ppm_y) * 0.0254 >= 199.9, png
        svg = ET.parse(png.with_suffix(".svg")).getroot()
        assert svg.tag.endswith("svg") and len(list(svg.iter())) > 50, png
    html_text = res["html"].read_text()
    assert html_text.count('SVG for print</a>') == len(res["plots"])
    # the time series names brokers, not their addresses: a run whose balancer monitor lists real servers by IP
    from workloads.analysis.synthetic import write_fault_run

    fault_run, _truth = write_fault_run(tmp_path / "f")
    assert "10.2.0.21:1883" in (fault_run / "monitor" / "balancer-ipvs1.csv").read_text()
    write_report([load_run(fault_run)], tmp_path / "rf")
    svg_text = (tmp_path / "rf" / "timeseries.svg").read_text()
    assert "10.2.0." not in svg_text and "ipvs1 to broker2" in svg_text
