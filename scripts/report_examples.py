"""Write docs/report/: the run report and a campaign report as a 1,280 px browser shows them, and
one figure in SVG.

    python scripts/report_examples.py RUN_DIR [CAMPAIGN_DIR]

RUN_DIR is a lab run directory (``mqttlab lab run ... --out DIR``). CAMPAIGN_DIR is a campaign
directory or kept records (``mqttlab campaign keep``), by default docs/reproduction, whose
report is written in a scratch copy. ``--replay`` instead rebuilds the calibration campaign
from docs/calibration/points.csv (campaigns/calibration-vm.yaml, run in the micro-VM): each
point's numbers replayed as its run's summary through the same ``execute_points`` and
``point_record`` a campaign uses.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.analysis.browser import screenshot  # noqa: E402
from workloads.analysis.load import load_run  # noqa: E402
from workloads.analysis.report import write_report  # noqa: E402
from workloads.campaign.report import write_campaign_report  # noqa: E402
from workloads.campaign.run import CampaignDir, execute_points  # noqa: E402
from workloads.campaign.spec import Point, load_campaign  # noqa: E402
from workloads.describe.config import ExperimentConfig  # noqa: E402


def recorded_campaign(where: Path) -> Path:
    """campaigns/calibration-vm.yaml's directory, its points' results from docs/calibration/points.csv."""
    rows = {r["point"]: r for r in csv.DictReader((ROOT / "docs" / "calibration" / "points.csv").open())}
    camp = load_campaign(ROOT / "campaigns" / "calibration-vm.yaml", ROOT)
    cdir = CampaignDir(where / "calibration-vm")
    order = [p for p in camp.order() if p.point_id in rows]

    def replay(point: Point, cfg: ExperimentConfig, point_dir: Path) -> dict[str, Any]:
        r = rows[point.point_id]
        return {"run_dir": str(point_dir / "runs" / "not-kept"), "expected": int(r["expected"]), "delivered": int(r["delivered"]),
                "lost": int(r["expected"]) - int(r["delivered"]), "loss_pct": float(r["loss_pct"]),
                "latency_ms": {"p99": float(r["p99_ms"])}, "throughput": None, "bench_saturated": r["bench_saturated"] == "True",
                "balancer": {"kind": r["balancer"], "note": ""}}

    execute_points(cdir, camp, cdir.open(camp, order), replay, progress=False)
    return cdir.path


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    camp_src = None if argv[1:] == ["--replay"] else Path(argv[1] if len(argv) == 2 else ROOT / "docs" / "reproduction")
    out = ROOT / "docs" / "report"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_rep = write_report([load_run(Path(argv[0]))], Path(tmp) / "run")
        print("run report:", screenshot(run_rep["html"], out / "run-report.png"))
        shutil.copy(Path(tmp) / "run" / "timeseries.svg", out / "timeseries.svg")
        if camp_src is None:
            camp_dir = recorded_campaign(Path(tmp))
        else:  # a scratch copy, so that the report is not written beside the records
            camp_dir = Path(tmp) / "campaign"
            shutil.copytree(camp_src, camp_dir, ignore=shutil.ignore_patterns("report"))
        camp_rep = write_campaign_report(camp_dir)
        print("campaign report:", screenshot(camp_rep["html"], out / "campaign-report.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
