"""How fast is the load generator? Engine vs. a one-thread-per-client paho client, same run.

Against one uncapped Mosquitto on loopback, for QoS 0 and 1, fan-in (many publishers, one
subscriber) and fan-out (one publisher, many subscribers): delivered messages per second and
messages (sent + received) per bench CPU-second, and the engine/baseline ratio. Timings are
noisy on shared machines; the ratio within one run is the number to read.

    sudo .venv/bin/python benchmarks/bench_engine.py [--scale 1.0] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def engine(port: int, pubs: int, subs: int, messages: int, qos: int, tmp: Path) -> dict[str, float]:
    out = tmp / f"engine-{pubs}-{subs}-{qos}"
    cpu0, t0 = children_cpu(), time.time()
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "bench", "run", "--target", f"127.0.0.1:{port}", "--out", str(out),
                         "--publishers", str(pubs), "--subscribers", str(subs), "--messages", str(messages), "--interval-ms", "0",
                         "--qos", str(qos), "--drain-s", "10", "--time-limit-s", "300", "--json", "--quiet"],
                        capture_output=True, text=True, cwd=ROOT, timeout=400)
    wall, cpu = time.time() - t0, children_cpu() - cpu0
    s = json.loads(cp.stdout)
    # the publishing window, not process start-up, is the rate's denominator
    first = min(float(line.split(",")[6]) for p in out.glob("bench/local/publishers-*.csv") for line in p.read_text().splitlines()[1:])
    recv_last = max(float(line.split(",")[0]) for p in out.glob("bench/local/timeline-*.csv") for line in p.read_text().splitlines()[1:]
                    if int(line.split(",")[4]) > 0) + 1
    window = max(recv_last - first, 1e-3)
    return {"delivered": s["delivered"], "sent": s["sent"], "lost": s["lost"], "wall": wall, "cpu": cpu, "rate": s["delivered"] / window,
            "per_cpu": (s["sent"] + s["delivered"]) / cpu, "saturated": s["bench_saturated"]}


def baseline_main(port: int, pubs: int, subs: int, messages: int, qos: int) -> None:
    """A naive paho client: one network thread per client (loop_start), publish as fast as it can."""
    import paho.mqtt.client as mqtt

    received = [0]
    lock = threading.Lock()
    expected = messages * subs

    def on_message(_c: object, _u: object, _m: object) -> None:
        with lock:
            received[0] += 1

    clients = []
    for i in range(subs):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"base-sub{i}")
        c.on_message = on_message
        c.connect("127.0.0.1", port)
        c.subscribe("bench/base", qos)
        c.loop_start()
        clients.append(c)
    time.sleep(1.0)
    pcs = []
    for i in range(pubs):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"base-pub{i}")
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        pcs.append(c)
    cpu0, t0 = time.process_time(), time.time()
    per = messages // pubs

    def publish(c: mqtt.Client) -> None:
        infos = [c.publish("bench/base", b"x" * 64, qos) for _ in range(per)]
        if qos:
            for info in infos[-20:]:
                info.wait_for_publish(60)

    threads = [threading.Thread(target=publish, args=(c,)) for c in pcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time() + 60
    last, last_change = -1, time.time()
    while received[0] < expected and time.time() < end:
        if received[0] != last:
            last, last_change = received[0], time.time()
        elif time.time() - last_change > 5:
            break
        time.sleep(0.05)
    wall = last_change - t0 if received[0] < expected else time.time() - t0
    cpu = time.process_time() - cpu0
    for c in clients + pcs:
        c.loop_stop()
        c.disconnect()
    print(json.dumps({"delivered": received[0], "sent": per * pubs, "wall": wall, "cpu": cpu}))


def baseline(port: int, pubs: int, subs: int, messages: int, qos: int) -> dict[str, float]:
    cp = subprocess.run([sys.executable, __file__, "--baseline", str(port), str(pubs), str(subs), str(messages), str(qos)],
                        capture_output=True, text=True, timeout=400)
    r = json.loads(cp.stdout)
    r["rate"] = r["delivered"] / max(r["wall"], 1e-3)
    r["per_cpu"] = (r["sent"] + r["delivered"]) / max(r["cpu"], 1e-3)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--baseline", nargs=5, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline:
        baseline_main(*a.baseline)
        return
    tmp = Path(tempfile.mkdtemp(prefix="mqttlab-benchmark-"))
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    cases = [("fan-in", 10, 1, int(40000 * a.scale)), ("fan-out", 1, 10, int(8000 * a.scale))]
    rows = []
    try:
        for qos in (0, 1):
            for name, pubs, subs, msgs in cases:
                e = engine(port, pubs, subs, msgs, qos, tmp)
                b = baseline(port, pubs, subs, msgs, qos)
                rows.append((f"QoS {qos} {name} ({pubs} pub -> {subs} sub, {msgs * subs} deliveries)", e, b))
                print(f"{rows[-1][0]}: engine {e['per_cpu']:.0f} msg/CPU-s, baseline {b['per_cpu']:.0f}", file=sys.stderr, flush=True)
    finally:
        broker.terminate()
        broker.wait(10)
    if a.markdown:
        print("| case | engine delivered/s | engine msgs per bench CPU-s | baseline delivered/s | baseline msgs per CPU-s | engine/baseline (per CPU-s) | engine lost | baseline lost |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, e, b in rows:
        e_lost = e["lost"]
        b_lost = b["sent"] * (1 if "fan-in" in label else 10) - b["delivered"]
        if a.markdown:
            print(f"| {label} | {e['rate']:,.0f} | {e['per_cpu']:,.0f} | {b['rate']:,.0f} | {b['per_cpu']:,.0f} | {e['per_cpu'] / b['per_cpu']:.1f}x | {e_lost:,} | {b_lost:,} |")
        else:
            print(f"{label}: engine {e['rate']:.0f}/s {e['per_cpu']:.0f}/CPU-s  baseline {b['rate']:.0f}/s {b['per_cpu']:.0f}/CPU-s  "
                  f"ratio {e['per_cpu'] / b['per_cpu']:.1f}x")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
