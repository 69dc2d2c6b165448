"""The reference study on one machine: 480 clients (240 publishers, 240 subscribers), 6000
messages per burst, QoS 1 and 2, both topologies, the reference's broker caps (0.25 CPU,
128 MB), then one report over all runs. Also times `lab up` and `lab down`.

    sudo .venv/bin/python benchmarks/reproduce_reference.py --out out/reproduce-reference [--repeat 1] [--balancer B]

The balancer is the lab's default: IPVS where the kernel has it, otherwise the stand-in the
summary names (the kernel NAT, nftables DNAT). Needs root. The reproduction in the README (and in
``docs/reproduction/``) is the campaign ``campaigns/reproduction-scaled.yaml``, with repetitions in a
randomized order and intervals; this script stays for the per-run attribution tables and the
``lab up``/``lab down`` timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MQTTLAB = [sys.executable, "-m", "workloads.cli"]


def lab_up_down(times: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        cp = subprocess.run([*MQTTLAB, "lab", "up", "-s", "distributed", "--out", "/tmp/mqttlab-updown"], capture_output=True, text=True, cwd=ROOT)
        up = time.perf_counter() - t0
        if cp.returncode != 0:
            raise SystemExit(cp.stderr)
        lab_id = cp.stdout.split()[1]
        t0 = time.perf_counter()
        subprocess.run([*MQTTLAB, "lab", "down", "--id", lab_id], capture_output=True, text=True, cwd=ROOT, check=True)
        out.append((up, time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/reproduce-reference")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--balancer", help="default: the lab's choice")
    a = ap.parse_args()
    out = Path(a.out)
    runs_dir = Path("/tmp/mqttlab-reproduction")
    shutil.rmtree(runs_dir, ignore_errors=True)
    updown = lab_up_down(3)
    summaries = []
    for _ in range(a.repeat):
        for topology in ("distributed", "centralized"):
            for qos in (1, 2):
                cmd = [*MQTTLAB, "lab", "run", "-s", topology, "--qos", str(qos), "--json", "--quiet", "--out", str(runs_dir)]
                if a.balancer:
                    cmd += ["--balancer", a.balancer]
                t0 = time.perf_counter()
                cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
                if not cp.stdout.strip():
                    raise SystemExit(cp.stderr)
                s = json.loads(cp.stdout)
                s["wall_s"] = time.perf_counter() - t0
                summaries.append(s)
                print(f"{topology} qos{qos}: loss {s['loss_pct']} %, {s['connections_per_broker']}, {s['wall_s']:.0f}s", file=sys.stderr, flush=True)
    report = out
    shutil.rmtree(report, ignore_errors=True)
    subprocess.run([*MQTTLAB, "report", *[s["run_dir"] for s in summaries], "--out", str(report)], check=True, cwd=ROOT,
                   capture_output=True)
    for name in ("latency.png", "timeseries.png", "connections.png"):
        (report / name).unlink(missing_ok=True)  # keep the repository small: the loss plot and the tables
    (report / "report.html").unlink(missing_ok=True)
    print("| topology | QoS | balancer | clients per broker | delivered / expected | loss % | duplicates | p50 ms | p99 ms | bench saturated |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in summaries:
        per = " / ".join(str(v) for v in s["connections_per_broker"].values())
        lat = s["latency_ms"]
        qos = json.loads(Path(s["run_dir"], "manifest.json").read_text())["scenario"]["qos"]
        print(f"| {s['topology']} | {qos} "
              f"| {s['balancing']} | {per} | {s['delivered']:,} / {s['expected']:,} | {s['loss_pct']} | {s['duplicates']} "
              f"| {lat['p50']} | {lat['p99']} | {'yes' if s['bench_saturated'] else 'no'} |")
    print()
    ups = [u for u, _d in updown]
    downs = [d for _u, d in updown]
    print(f"lab up: {min(ups):.1f}-{max(ups):.1f} s, lab down: {min(downs):.1f}-{max(downs):.1f} s (3 times each)")


if __name__ == "__main__":
    main()
