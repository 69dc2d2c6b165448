"""Calibration: the lab's stand-ins (nftables DNAT, HAProxy) against real IPVS, in the same
micro-VM, same scenario, several repetitions (campaigns/calibration-vm.yaml). Prints the table
for the README: loss, p99 latency, connections per broker and who the brokers saw as the client,
each with n and the 95 % interval.

Long (a micro-VM boot per point under software emulation; about an hour on a 2-core machine) and
it takes the lab lock, so it is not part of the test suite:

    sudo flock /tmp/mqttlab-lab.lock .venv/bin/python benchmarks/calibrate_standins.py --out campaigns/out/calibration-vm

Run it again with the same --out to resume; ``--table-only`` prints the table of what is done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.analysis.load import load_run  # noqa: E402
from workloads.analysis.metrics import summarize_run  # noqa: E402
from workloads.analysis.stats import mean_ci  # noqa: E402


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


def table(out: Path) -> str:
    rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    for res in sorted(out.glob("points/*/result.json")):
        r = json.loads(res.read_text())
        run = Path(r["run_dir"])
        s = summarize_run(load_run(run))
        rows.setdefault((str(r["levels"].get("balancer")), str(r["scheduler"])), []).append(
            {"loss": r["loss_pct"], "p99": r["p99_ms"], "conns": "/".join(str(v) for v in s["connections_per_broker"].values()),
             "saw": who_brokers_saw(run)})
    lines = ["| balancer | scheduler | runs (n) | loss % mean [95 % CI] | p99 ms mean [95 % CI] | connections per broker | brokers saw as the client |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for (bal, sched), rs in sorted(rows.items()):
        loss = mean_ci([float(x["loss"]) for x in rs], clip_low=0.0)  # type: ignore[arg-type]
        p99 = mean_ci([float(x["p99"]) for x in rs if x["p99"] is not None])  # type: ignore[arg-type]
        conns = ", ".join(sorted({str(x["conns"]) for x in rs}))
        saw = "; ".join(sorted({str(x["saw"]) for x in rs}))
        lines.append(f"| {bal} | {sched} | {loss.n} | {loss.text('', 3)} | {p99.text('', 1)} | {conns} | {saw} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "campaigns" / "out" / "calibration-vm")
    ap.add_argument("--campaign", type=Path, default=ROOT / "campaigns" / "calibration-vm.yaml")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        rc = subprocess.run([sys.executable, "-m", "workloads.cli", "campaign", "run", str(args.campaign), "--out", str(args.out)],
                            cwd=ROOT).returncode
        if rc not in (0, 1):
            return rc
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
