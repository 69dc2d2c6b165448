"""What securing the brokers costs: ``none`` against ``password`` and ``tls`` (and ``mtls`` on
request) in the local lab at the reference's broker caps (0.25 CPU, 128 MB each).

    sudo .venv/bin/python benchmarks/bench_security.py --repeat 3 [--modes none,password,tls]

Per run: the brokers' CPU seconds (integrated from the monitor's per-second samples of each
broker process) divided by the deliveries the bench counted, and every client's connect time
(first successful attempt to CONNACK: TCP through the balancer, TLS handshake, authentication).
Modes alternate within each repetition, so a slow spell of the shared machine hits all of them.
Prints a Markdown table (mean and sample standard deviation over the runs) and writes the per-run
numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MQTTLAB = [sys.executable, "-m", "workloads.cli"]


def broker_cpu_s(run: Path) -> float:
    """CPU seconds of all brokers over the run: each sample's cpu_pct times its interval."""
    last: dict[str, float] = {}
    total = 0.0
    with (run / "monitor/brokers.csv").open() as fh:
        for r in csv.DictReader(fh):
            t, b = float(r["time_s"]), r["broker"]
            if b in last and r["cpu_pct"]:
                total += float(r["cpu_pct"]) / 100.0 * (t - last[b])
            last[b] = t
    return total


def connect_ms(run: Path) -> list[float]:
    out = []
    for p in (run / "bench").glob("*/clients-*.csv"):
        with p.open() as fh:
            out += [float(r["connect_ms"]) for r in csv.DictReader(fh) if float(r["connected_at"]) > 0]
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100.0 * len(s)))] if s else float("nan")


def mean_sd(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="none,password,tls")
    ap.add_argument("--out", default="docs/security")
    ap.add_argument("--runs", default="/tmp/mqttlab-security-runs")
    ap.add_argument("--load", default="--publishers 50 --subscribers 50 --messages 1000 --interval-ms 200 --qos 1",
                    help="scenario options (the brokers keep the stack's caps)")
    a = ap.parse_args()
    modes = a.modes.split(",")
    rows = []
    for rep in range(a.repeat):
        for mode in modes:
            cmd = [*MQTTLAB, "lab", "run", "-s", "distributed", "--security", mode, *a.load.split(), "--json", "--quiet", "--out", a.runs]
            t0 = time.perf_counter()
            cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
            if not cp.stdout.strip():
                raise SystemExit(f"{mode}: {cp.stderr[-3000:]}")
            s = json.loads(cp.stdout)
            run = Path(s["run_dir"])
            cpu = broker_cpu_s(run)
            conn = connect_ms(run)
            row = {"mode": mode, "rep": rep, "run_dir": str(run), "delivered": s["delivered"], "expected": s["expected"],
                   "loss_pct": s["loss_pct"], "clients_connected": s["clients_connected"], "clients_refused": s["clients_refused"],
                   "broker_cpu_s": round(cpu, 3), "cpu_us_per_delivery": round(1e6 * cpu / max(1, s["delivered"]), 2),
                   "connect_ms_p50": round(pct(conn, 50), 3), "connect_ms_p99": round(pct(conn, 99), 3),
                   "bench_saturated": s["bench_saturated"], "wall_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"[{rep + 1}/{a.repeat}] {mode}: {row['cpu_us_per_delivery']} us/delivery, connect p50 {row['connect_ms_p50']} ms, "
                  f"loss {row['loss_pct']} %", file=sys.stderr, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "security-runs.json").write_text(json.dumps({"load": a.load, "runs": rows}, indent=1) + "\n")
    base = statistics.mean(r["cpu_us_per_delivery"] for r in rows if r["mode"] == modes[0])
    print(f"load: {a.load}; reference caps; distributed; n = {a.repeat} per mode\n")
    print("| mode | runs | broker CPU µs per delivered message | vs none | connect ms p50 | connect ms p99 | loss % | bench saturated |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        per = [float(r["cpu_us_per_delivery"]) for r in rs]
        print(f"| {mode} | {len(rs)} | {mean_sd(per)} | {statistics.mean(per) / base:.2f}x | {mean_sd([r['connect_ms_p50'] for r in rs], '{:.2f}')} "
              f"| {mean_sd([r['connect_ms_p99'] for r in rs], '{:.2f}')} | {mean_sd([r['loss_pct'] for r in rs], '{:.2f}')} "
              f"| {'yes' if any(r['bench_saturated'] for r in rs) else 'no'} |")


if __name__ == "__main__":
    main()
