"""The reports as a reader sees them: laid out by headless Chromium at 1,280 px, photographed, and
checked for anything that makes the page scroll sideways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib import image

from tests.conftest import ROOT
from tests.test_campaign import BASE, FakeSystem, write
from workloads.analysis.browser import WIDTH, chromium, measure, screenshot
from workloads.analysis.load import load_run
from workloads.analysis.report import write_report
from workloads.analysis.synthetic import reference_truth, write_fault_run, write_run
from workloads.campaign.run import CampaignDir, execute_points
from workloads.campaign.spec import load_campaign


@pytest.fixture(autouse=True)
def _browser() -> None:
    assert chromium(), "chromium is installed by scripts/setup.sh --dev"


def _fits(page: Path, shot: Path) -> None:
    layout = screenshot(page, shot)
    assert layout["clientWidth"] == WIDTH
    assert layout["scrollWidth"] <= layout["clientWidth"] and layout["wide"] == [], layout
    img = image.imread(shot)
    assert img.shape[1] == WIDTH and img.shape[0] >= 1000
    assert len({tuple(px) for px in img[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}) > 50  # figures and text, not a blank page


def test_the_measure_sees_a_page_that_overflows(tmp_path: Path) -> None:
    page = tmp_path / "wide.html"
    page.write_text('<!doctype html><html><body><p>fits</p><table class="t"><tr><td style="min-width:2000px">wide</td></tr></table></body></html>')
    layout = measure(page)
    assert layout["scrollWidth"] > WIDTH and any(w.startswith("td") for w in layout["wide"])


def test_run_report_fits_1280_px_with_many_runs_and_long_names(tmp_path: Path) -> None:
    runs = []
    for i in range(4):  # four runs: the tables and legends grow with them
        run = write_run(tmp_path / f"20261201-215718-distributed-nftables-rr-for-ipvs-lc-{i}", reference_truth())
        m = json.loads((run / "manifest.json").read_text())
        m["fidelity"] = {"verdict": "invalid", "failed": ["stand-in scheduler"]} if i == 0 else {"verdict": "valid", "failed": []}
        (run / "manifest.json").write_text(json.dumps(m))
        runs.append(load_run(run))
    fault_run, _truth = write_fault_run(tmp_path / "fault")  # and a run with a fault: the availability section's table
    res = write_report([*runs, load_run(fault_run)], tmp_path / "rep")
    assert "Availability under faults" in res["html"].read_text()
    _fits(res["html"], tmp_path / "run-report.png")


def test_campaign_report_fits_1280_px(tmp_path: Path) -> None:
    from workloads.campaign.report import write_campaign_report

    c = load_campaign(write(tmp_path, BASE), ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    execute_points(cdir, c, cdir.open(c, c.order()), FakeSystem(capacity=150, topology_penalty=0.4), progress=False)
    rep = write_campaign_report(cdir.path)
    _fits(rep["html"], tmp_path / "campaign-report.png")
