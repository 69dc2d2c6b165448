"""Calibration: the lab's stand-ins (nftables DNAT, HAProxy) against real IPVS, in the same
micro-VM, same scenario, several repetitions (campaigns/calibration-vm.yaml). Prints the table
for the README: loss, p99 latency, connections per broker and who the brokers saw as the client,
each with n and the 95 % interval.

Long, so it is not part of the test suite. The campaign boots the
micro-VM once per invocation and runs its points inside; under software emulation a point takes
minutes (ten subscribers took 326 s to start on a busy 2-core machine), so run it in slices that
start no point they cannot finish, and run the same command again until every point is complete:

    timeout 960 .venv/bin/python benchmarks/calibrate_standins.py \
        --time-budget 14 --csv docs/calibration/points.csv

``--table-only`` prints the table of what is done.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.analysis.load import load_run  # noqa: E402
from workloads.analysis.metrics import summarize_run  # noqa: E402
from workloads.analysis.stats import mean_ci  # noqa: E402
from workloads.campaign.report import ran_of  # noqa: E402


def who_brokers_saw(run_dir: Path) -> str:
    """Whether each broker saw the client's own socket (address and port, as a kernel NAT without
    masquerading keeps them), the same address on another port (masquerading, as the centralized
    topology's SNAT does), or another address (a proxy's own connection)."""
    run = load_run(run_dir)
    seen = run.connects.drop_duplicates("client_id", keep="last").set_index("client_id")
    same = masq = other = 0
    for _i, c in run.clients.iterrows():
        if c["client_id"] not in seen.index:
            continue
        b = seen.loc[c["client_id"]]
        if f"{b['src']}:{b['port']}" == c["local_addr"]:
            same += 1
        elif str(c["local_addr"]).rsplit(":", 1)[0] == b["src"]:
            masq += 1
        else:
            other += 1
    parts = [f"{n} {what}" for n, what in ((same, "the client's socket"), (masq, "the client's address, another port"),
                                             (other, "another address")) if n]
    return ", ".join(parts) or "nobody logged"


def points(out: Path) -> list[dict[str, object]]:
    """One row per complete point: its numbers from result.json, plus what only the run's files
    tell (connections per broker, who the brokers saw as the client)."""
    rows = []
    for res in out.glob("points/*/result.json"):
        r = json.loads(res.read_text())
        run = Path(r["run_dir"])
        s = summarize_run(load_run(run))
        started = json.loads((run / "manifest.json").read_text()).get("started_at")
        ran = ran_of(r)
        assert ran is not None, res  # every calibration point is a lab run, which records its balancer
        rows.append({"point": r["point_id"], "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) if started else "",
                     "balancer": ran.balancer, "scheduler": ran.scheduler, "stands_in_for": ran.stands_in_for,
                     "requested_scheduler": ran.requested_scheduler,
                     "repetition": r["rep"], "expected": r["expected"], "delivered": r["delivered"], "loss_pct": r["loss_pct"],
                     "p99_ms": r["p99_ms"], "bench_saturated": bool(r.get("bench_saturated")), "duration_s": r["duration_s"],
                     "connections_per_broker": "/".join(str(v) for v in s["connections_per_broker"].values()),
                     "brokers_saw": who_brokers_saw(run)})
    return sorted(rows, key=lambda r: str(r["started"]))  # in the order they ran (UTC): under emulation, time matters


def _spread(values: list[float], digits: int, clip_low: float | None = None) -> str:
    """mean [95 % t interval] (min-max): with n = 3 the interval is wide, the range says what was seen."""
    if not values:
        return "-"
    e = mean_ci(values, clip_low=clip_low)
    ci = f" [{e.lo:.{digits}f}, {e.hi:.{digits}f}]" if e.lo is not None and e.hi is not None else ""
    return f"{e.mean:.{digits}f}{ci} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(rows: list[dict[str, object]]) -> str:
    # keyed by the balancer that ran and the IPVS scheduler it carried out, so each stand-in sits beside real IPVS
    by: dict[tuple[str, str], list[dict[str, object]]] = {}
    for r in rows:
        by.setdefault((str(r["balancer"]), str(r["requested_scheduler"])), []).append(r)
    ipvs_p99 = {sched: mean_ci([float(x["p99_ms"]) for x in rs if x["p99_ms"] is not None]).mean  # type: ignore[arg-type]
                for (bal, sched), rs in by.items() if bal == "ipvs"}
    lines = ["| IPVS scheduler asked | what ran | n | loss % mean [95 % CI] (min-max) | p99 ms mean [95 % CI] (min-max) | p99 / IPVS p99 "
             "| connections per broker | brokers saw as the client | bench saturated |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    order = {"ipvs": 0, "nftables": 1, "haproxy": 2}
    for (_bal, sched), rs in sorted(by.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 9))):
        p99s = [float(x["p99_ms"]) for x in rs if x["p99_ms"] is not None]  # type: ignore[arg-type]
        ratio = f"{mean_ci(p99s).mean / ipvs_p99[sched]:.2f}" if p99s and ipvs_p99.get(sched) else "-"
        conns = ", ".join(sorted({str(x["connections_per_broker"]) for x in rs}))
        saw = "; ".join(sorted({str(x["brokers_saw"]) for x in rs}))
        sat = sum(1 for x in rs if x["bench_saturated"])
        ran = "; ".join(sorted({f"{x['balancer']}-{x['scheduler']}" for x in rs}))
        lines.append(f"| {sched} | {ran} | {len(rs)} | {_spread([float(x['loss_pct']) for x in rs], 3, 0.0)} "  # type: ignore[arg-type]
                     f"| {_spread(p99s, 0, 0.0)} | {ratio} | {conns} | {saw} | {sat} of {len(rs)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "campaigns" / "out" / "calibration-vm")
    ap.add_argument("--campaign", type=Path, default=ROOT / "campaigns" / "calibration-vm.yaml")
    ap.add_argument("--time-budget", type=float, metavar="MIN", help="passed to campaign run: a slice of at most MIN minutes")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--csv", type=Path, help="also write one row per point here")
    args = ap.parse_args()
    if not args.table_only:
        cmd = [sys.executable, "-m", "workloads.cli", "campaign", "run", str(args.campaign), "--out", str(args.out)]
        cmd += ["--time-budget", str(args.time_budget)] if args.time_budget else []
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if rc not in (0, 1):
            return rc
    rows = points(args.out)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["point"])
            w.writeheader()
            w.writerows(rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
