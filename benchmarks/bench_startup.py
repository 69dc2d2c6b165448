"""How long the engine takes from its command to the first publish, and where that time goes.

For each scenario, ``mqttlab bench run`` against a fresh Mosquitto on loopback, measured from
the moment the command is launched:

- ``imports``: the interpreter and the modules the command loads before it starts (a separate
  ``mqttlab bench run --help``);
- ``first connect``: the first client's connection attempt (``connected_at - connect_ms``);
- ``connects``: from that attempt to the last CONNACK, beside its ``floor``: what the scenario
  itself asks for, its clients at its ``connectRate``, (n - 1) / rate;
- ``last CONNACK to first publish``: the subscriptions, the ready report and the common start;
- ``first publish``: the earliest ``first_send_s`` in the publishers' files.

``first publish - floor`` is the engine's own start-up. Median of ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_vs_emqtt import Mosquitto  # noqa: E402

SCENARIOS = [  # (name, publishers, subscribers, connect rate per second)
    ("quickstart: 40 pub + 40 sub at 100/s", 40, 40, 100),
    ("reference: 240 pub + 240 sub at 100/s", 240, 240, 100),
]


def import_s() -> float:
    """The interpreter plus what the command loads before it starts: the wall time of
    ``mqttlab bench run --help``, which loads the same modules and stops there."""
    t = time.time()
    subprocess.run([sys.executable, "-m", "workloads.cli", "bench", "run", "--help"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t


def one(pubs: int, subs: int, rate: int, tmp: Path) -> dict[str, float]:
    broker = Mosquitto(tmp)
    out = tmp / f"run-{time.time_ns()}"
    ready = tmp / f"ready-{time.time_ns()}"
    try:
        t0 = time.time()
        cp = subprocess.run([sys.executable, "-m", "workloads.cli", "bench", "run", "--target", f"127.0.0.1:{broker.port}", "--out", str(out),
                             "--publishers", str(pubs), "--subscribers", str(subs), "--messages", str(pubs), "--interval-ms", "100",
                             "--qos", "1", "--connect-rate", str(rate), "--drain-s", "2", "--quiet", "--ready-file", str(ready)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if cp.returncode != 0:
            raise RuntimeError(cp.stdout + cp.stderr)
    finally:
        broker.stop()
    first = min(float(line.split(",")[6]) for f in out.glob("bench/*/publishers-*.csv") for line in f.read_text().splitlines()[1:]
                if float(line.split(",")[6]))
    rows = [line.split(",") for f in out.glob("bench/*/clients-*.csv") for line in f.read_text().splitlines()[1:]]
    attempt = min(float(r[6]) - float(r[8]) / 1000 for r in rows)  # connected_at - connect_ms
    connacked = max(float(r[6]) for r in rows)
    return {"attempt": attempt - t0, "connects": connacked - attempt, "ready": float(ready.read_text()) - t0, "first": first - t0,
            "after": first - connacked, "floor": (pubs + subs - 1) / rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    imp = statistics.median(import_s() for _ in range(args.repeat))
    print(f"interpreter + CLI imports: {imp:.2f} s (median of {args.repeat})", file=sys.stderr)
    print("| scenario | imports s | first connect s | connects s (floor) | last CONNACK to first publish s | first publish s "
          "| engine's own start-up s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as td:
        for name, pubs, subs, rate in SCENARIOS:
            runs = [one(pubs, subs, rate, Path(td)) for _ in range(args.repeat)]
            for r in runs:
                print(f"[{name}] first connect {r['attempt']:.2f} s, connects {r['connects']:.2f} s, ready {r['ready']:.2f} s, "
                      f"first publish {r['first']:.2f} s", file=sys.stderr, flush=True)
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {name} | {imp:.2f} | {m['attempt']:.2f} | {m['connects']:.2f} ({m['floor']:.2f}) | {m['after']:.2f} | {m['first']:.2f} "
                  f"| {m['first'] - m['floor']:.2f} |")
    print(f"\nmedian of {args.repeat} runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
