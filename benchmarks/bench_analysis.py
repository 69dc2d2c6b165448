"""Time and peak memory of `mqttlab report` on 1, 5 and 10 million delivery records.

Synthetic runs (workloads.analysis.synthetic) of 100 subscribers hearing 10 publishers, with a
few hundred losses of every kind so attribution has work to do. Each report runs in its own
process so its peak RSS is its own. Target on a 2-core machine: 10 million in under 20 s and
under 4 GB.

    .venv/bin/python benchmarks/bench_analysis.py [--sizes 1,5,10] [--markdown]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.analysis.synthetic import Truth, write_run  # noqa: E402


def truth(million: int) -> Truth:
    subs, pubs = 100, 10
    per_pub = million * 1_000_000 // (subs * pubs)
    t = Truth(pubs={p: (f"ipvs{1 + p % 2}", f"broker{1 + p % 3}", per_pub) for p in range(pubs)},
              subs={s: (f"ipvs{1 + s % 2}", f"broker{1 + s % 3}") for s in range(subs)})
    t.lost = {(s, 0, q) for s in range(0, 10) for q in range(100, 130)}  # queues
    t.lost |= {(s, 1, q) for s in range(subs) if s % 3 == 2 for q in range(500, 510)}  # a bridge
    t.dups = [(5, 2, q) for q in range(50)]
    t.drops_logged = [("broker1", t.cid("sub", s)) for s in range(0, 10, 3)]
    t.sys_dropped = {"broker1": 300, "broker2": 0, "broker3": 330}
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,5,10", help="millions of delivery records")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mqttlab-analysis-"))
    rows = []
    for m in (int(x) for x in a.sizes.split(",")):
        run = write_run(tmp / f"run-{m}M", truth(m))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        cp = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "workloads.cli", "report", str(run), "--out", str(tmp / f"rep-{m}M")],
                            capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if cp.returncode != 0:
            raise SystemExit(cp.stderr)
        peak_kb = int(cp.stderr.strip().splitlines()[-1]) if cp.stderr.strip() else max(before, 0)
        recs = sum(p.stat().st_size for p in run.glob("bench/*/deliveries-*.bin")) // 32
        rows.append((m, recs, wall, peak_kb / 1024))
        print(f"{recs:,} records: {wall:.1f} s, peak {peak_kb / 1024:.0f} MiB", file=sys.stderr, flush=True)
    if a.markdown:
        print("| delivery records | report time (s) | peak memory (MiB) |")
        print("| ---: | ---: | ---: |")
        for _m, recs, wall, mib in rows:
            print(f"| {recs:,} | {wall:.1f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
