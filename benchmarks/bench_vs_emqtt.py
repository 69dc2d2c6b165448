"""The engine against emqtt-bench (the reference's load generator), same loads, same run.

Each load runs through both tools in turn, against a fresh uncapped Mosquitto on loopback, as
the lab runs them: subscribers in one process, publishers in another. Per tool and load: the
delivered fraction (deliveries / (sent x subscribers)), messages (sent + received) per CPU-second
of the tool's own processes (from ``wait4``: each process with the children it waited for), the
subscriber process's deliveries per CPU-second, and the engine/emqtt-bench ratios; the median
over ``--repeat`` rounds (the tools alternate within a round, so both see the same machine).

Loads: the saturating fan-in (50 publishers at 1 ms -> 1 subscriber, QoS 1, 100,000 messages:
more than one subscriber connection can take on this machine) and a load both carry (10
publishers x 1000 msg/s -> 1 subscriber, 50,000 messages; QoS 1, and with ``--all-qos`` also 0
and 2), where msgs per CPU-second is the comparison. Each tool's offered rate is measured (sent
over first to last send) and printed: a delivered fraction compares subscribers only when both
were offered the same. Each tool's own publishers do not offer the same saturating load, so that
load also runs as a shared feed: the engine's publishers (the ones that offer it) and one
subscriber of each tool on the same topic at the same time, both receiving the same messages;
there the delivered fractions compare the two subscribers. ``--shared-feed`` runs only that.

emqtt-bench is found through ``EMQTT_BENCH`` or ``PATH`` (``emqtt_bench``); it needs Erlang
(Debian: erlang-base erlang-ssl).

    .venv/bin/python benchmarks/bench_vs_emqtt.py [--repeat 3] [--all-qos] [--only TEXT] [--shared-feed]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.bench import emqtt  # noqa: E402
from workloads.rundir.records import deliveries_on_disk, summarize  # noqa: E402

QUIET_S = 3.0  # the subscriber's count has not grown for this long: everything that will arrive did
PAYLOAD = 64
# QoS 1/2 messages a publisher may have awaiting acknowledgement: the engine's window
# (BenchClient.max_out). emqtt-bench's default (-F 1) keeps one in flight, so its publishers
# could never offer a 1 ms schedule; for the saturating load it gets the engine's window. The
# carried load keeps its default: 10,000 msg/s need no more, and with -F 20 its QoS 2
# publishers collapsed to a few hundred msg/s on this machine. The offered rates show the result.
INFLIGHT = 20


@dataclass(frozen=True)
class Load:
    name: str
    publishers: int
    interval_ms: int
    messages: int
    qos: int
    subscribers: int = 1
    emqtt_inflight: int = 1  # emqtt-bench's -F


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(ru: Any) -> float:
    return float(ru.ru_utime + ru.ru_stime)


def reap(p: subprocess.Popen[Any], timeout: float) -> float:
    """Wait for ``p`` (killing it after ``timeout``) and return its CPU seconds, children included."""
    end = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return cpu_of(ru)
        if time.time() > end:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return cpu_of(ru)
        time.sleep(0.05)


def wait_quiet(count: Any, want: int, limit_s: float) -> int:
    """Until ``count()`` reaches ``want`` or stops growing for QUIET_S (at most ``limit_s``)."""
    end = time.time() + limit_s
    seen, since = -1, time.time()
    while time.time() < end:
        got = int(count())
        if got >= want:
            return got
        if got != seen:
            seen, since = got, time.time()
        elif time.time() - since >= QUIET_S:
            return got
        time.sleep(0.2)
    return seen


class Mosquitto:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        conf = tmp / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.log: IO[bytes] = (tmp / f"mosquitto-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        end = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if time.time() > end:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def engine_offered(out: Path) -> float:
    """Messages per second the engine's publishers sent: all sent over first to last send."""
    sent, first, last = 0, float("inf"), 0.0
    for f in out.glob("bench/*/publishers-*.csv"):
        for line in f.read_text().splitlines()[1:]:
            row = line.split(",")
            sent += int(row[3])
            if float(row[6]):
                first, last = min(first, float(row[6])), max(last, float(row[7]))
    return sent / max(last - first, 1e-3) if sent else 0.0


def emqtt_offered(pub_output: str) -> float:
    """Messages per second emqtt-bench's publishers sent, from its per-second ``pub`` counters:
    the final total over the seconds from its first counted publish to its last (1 s resolution)."""
    points = []
    for line in pub_output.splitlines():
        m = emqtt._COUNTER.match(line)
        if m and m.group(2) == "pub":
            points.append((float(m.group(1)), int(m.group(3))))
    grew = [t for (t, n), (_, before) in zip(points, [(0.0, 0), *points], strict=False) if n > before]
    if not grew:
        return 0.0
    return points[-1][1] / max(grew[-1] - grew[0] + 1.0, 1.0)


def result(sent: int, delivered: int, subscribers: int, cpu_pub: float, cpu_sub: float, **extra: Any) -> dict[str, Any]:
    return {"sent": sent, "delivered": delivered, "fraction": delivered / max(sent * subscribers, 1), "cpu_pub": cpu_pub, "cpu_sub": cpu_sub,
            "per_cpu": (sent + delivered) / max(cpu_pub + cpu_sub, 1e-9), "sub_per_cpu": delivered / max(cpu_sub, 1e-9)} | extra


def run_engine(load: Load, port: int, tmp: Path, tag: int) -> dict[str, Any]:
    out = tmp / f"engine-{tag}"
    ready = tmp / f"engine-{tag}.ready"
    common = ["--target", f"127.0.0.1:{port}", "--out", str(out), "--publishers", str(load.publishers), "--subscribers", str(load.subscribers),
              "--messages", str(load.messages), "--interval-ms", str(load.interval_ms), "--qos", str(load.qos),
              "--payload-bytes", str(PAYLOAD), "--topic", f"cmp/{tag}", "--tag", hex(tag), "--quiet", "--time-limit-s", "600"]
    cli = [sys.executable, "-m", "workloads.cli", "bench"]
    sub = subprocess.Popen([*cli, "sub", "--host", "subs", "--workers", "1", "--ready-file", str(ready), *common], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 60
    while not ready.exists():
        if time.time() > end or sub.poll() is not None:
            raise RuntimeError("the engine's subscriber did not get ready")
        time.sleep(0.05)
    t0 = time.time()
    pub = subprocess.Popen([*cli, "pub", "--host", "pubs", *common], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu_pub = reap(pub, 600)
    pub_wall = time.time() - t0
    wait_quiet(lambda: deliveries_on_disk(out, "subs"), load.messages * load.subscribers, 300)
    sub.send_signal(signal.SIGTERM)
    cpu_sub = reap(sub, 60)
    s = summarize(out)
    sat = s["saturated_clients"]
    named = [f"{c['client_id']} ({c['kind']}, longest {c['longest_s']} s)" for c in sat if c["role"] == "sub"]
    named += [f"{sum(c['role'] == 'pub' for c in sat)} publishers behind schedule"] if any(c["role"] == "pub" for c in sat) else []
    return result(s["sent"], s["delivered"], load.subscribers, cpu_pub, cpu_sub, pub_wall=pub_wall, saturated=s["bench_saturated"],
                  saturated_clients=named, offered=engine_offered(out))


def run_emqtt(exe: str, load: Load, port: int, tmp: Path, tag: int) -> dict[str, Any]:
    base = ["-h", "127.0.0.1", "-p", str(port), "-V", "4", "-q", str(load.qos), "-t", f"cmp/{tag}"]
    sub_log = tmp / f"emqtt-{tag}.sub"
    pub_log = tmp / f"emqtt-{tag}.pub"
    with sub_log.open("w") as so, pub_log.open("w") as po:
        sub = subprocess.Popen([exe, "sub", *base, "-c", str(load.subscribers)], stdout=so, stderr=subprocess.STDOUT)
        end = time.time() + 120  # an Erlang VM starting on a busy machine
        while emqtt.parse_output(sub_log.read_text())["totals"].get("sub", 0) < load.subscribers:
            if time.time() > end or sub.poll() is not None:
                time.sleep(0.5)  # the line may have been written since the last look
                if emqtt.parse_output(sub_log.read_text())["totals"].get("sub", 0) >= load.subscribers:
                    break
                sub.kill()
                raise RuntimeError(f"emqtt-bench's subscriber did not subscribe (exit {sub.poll()}): {sub_log.read_text()[-2000:]!r}")
            time.sleep(0.1)
        t0 = time.time()
        pub = subprocess.Popen([exe, "pub", *base, "-c", str(load.publishers), "-I", str(load.interval_ms), "-L", str(load.messages),
                                "-s", str(PAYLOAD), "-F", str(load.emqtt_inflight)], stdout=po, stderr=subprocess.STDOUT)
        cpu_pub = reap(pub, 600)
        pub_wall = time.time() - t0
        # emqtt-bench prints its counters once a second: the quiet window covers the last line
        wait_quiet(lambda: emqtt.parse_output(sub_log.read_text())["totals"].get("recv", 0), load.messages * load.subscribers, 300)
        time.sleep(1.2)
        sub.send_signal(signal.SIGTERM)
        cpu_sub = reap(sub, 30)
    s = emqtt.summarize(pub_log.read_text(), sub_log.read_text(), load.subscribers, load.messages)
    return result(s["sent"], s["delivered"], load.subscribers, cpu_pub, cpu_sub, pub_wall=pub_wall, publish_complete=s["publish_complete"],
                  offered=emqtt_offered(pub_log.read_text()))


def run_shared(exe: str, load: Load, port: int, tmp: Path, tag: int) -> dict[str, Any]:
    """One feed, two readers: the engine's publishers, and one subscriber of each tool on the same
    topic at the same time, so both subscribers face exactly the same offered load."""
    out = tmp / f"shared-{tag}"
    ready = tmp / f"shared-{tag}.ready"
    common = ["--target", f"127.0.0.1:{port}", "--out", str(out), "--publishers", str(load.publishers), "--subscribers", "1",
              "--messages", str(load.messages), "--interval-ms", str(load.interval_ms), "--qos", str(load.qos),
              "--payload-bytes", str(PAYLOAD), "--topic", f"cmp/{tag}", "--tag", hex(tag), "--quiet", "--time-limit-s", "600"]
    cli = [sys.executable, "-m", "workloads.cli", "bench"]
    sub_log = tmp / f"shared-{tag}.emqtt"
    with sub_log.open("w") as so:
        esub = subprocess.Popen([exe, "sub", "-h", "127.0.0.1", "-p", str(port), "-V", "4", "-q", str(load.qos), "-t", f"cmp/{tag}", "-c", "1"],
                                stdout=so, stderr=subprocess.STDOUT)
        sub = subprocess.Popen([*cli, "sub", "--host", "subs", "--workers", "1", "--ready-file", str(ready), *common], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 60
        while not ready.exists() or emqtt.parse_output(sub_log.read_text())["totals"].get("sub", 0) < 1:
            if time.time() > end:
                raise RuntimeError("the subscribers did not get ready")
            time.sleep(0.1)
        pub = subprocess.Popen([*cli, "pub", "--host", "pubs", *common], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reap(pub, 600)
        wait_quiet(lambda: deliveries_on_disk(out, "subs") + emqtt.parse_output(sub_log.read_text())["totals"].get("recv", 0), 2 * load.messages, 300)
        time.sleep(1.2)
        sub.send_signal(signal.SIGTERM)
        cpu_sub = reap(sub, 60)
        esub.send_signal(signal.SIGTERM)
        cpu_esub = reap(esub, 30)
    s = summarize(out)
    got = emqtt.parse_output(sub_log.read_text())["totals"].get("recv", 0)
    return {"sent": s["sent"], "engine": s["delivered"] / max(s["sent"], 1), "emqtt": got / max(s["sent"], 1), "cpu_sub": cpu_sub,
            "cpu_esub": cpu_esub, "offered": engine_offered(out), "saturated": [c["client_id"] for c in s["saturated_clients"] if c["role"] == "sub"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--all-qos", action="store_true", help="the carried load at QoS 0, 1 and 2 (default QoS 1)")
    ap.add_argument("--only", help="run only the loads whose name contains this")
    ap.add_argument("--shared-feed", action="store_true",
                    help="instead: the saturating load from the engine's publishers read by one subscriber of each tool at once")
    args = ap.parse_args()
    exe = emqtt.find_native()
    if exe is None:
        print(f"bench_vs_emqtt: {emqtt.missing_native()}", file=sys.stderr)
        return 2
    if shutil.which("mosquitto") is None:
        print("bench_vs_emqtt: mosquitto not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    if args.shared_feed:
        return shared_feed(exe, args.repeat)
    loads = [Load("saturating fan-in: 50 pub x 1 ms -> 1 sub, QoS 1, 100000 msgs", 50, 1, 100_000, 1, emqtt_inflight=INFLIGHT)]
    for q in (0, 1, 2) if args.all_qos else (1,):
        loads.append(Load(f"carried fan-in: 10 pub x 1000/s -> 1 sub, QoS {q}, 50000 msgs", 10, 1, 50_000, q))
    if args.only:
        loads = [ld for ld in loads if args.only in ld.name]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-emqtt-") as td:
        tmp = Path(td)
        for load in loads:
            runs: dict[str, list[dict[str, Any]]] = {"engine": [], "emqtt": []}
            for r in range(args.repeat):
                for tool in ("engine", "emqtt") if r % 2 == 0 else ("emqtt", "engine"):
                    broker = Mosquitto(tmp)
                    tag = int.from_bytes(os.urandom(4), "big") | 1
                    try:
                        res = run_engine(load, broker.port, tmp, tag) if tool == "engine" else run_emqtt(exe, load, broker.port, tmp, tag)
                    finally:
                        broker.stop()
                    runs[tool].append(res)
                    flag = f" saturated={res.get('saturated')} {res.get('saturated_clients')}" if tool == "engine" else ""
                    print(f"[{load.name}] round {r + 1} {tool:6s}: offered {res['offered']:,.0f} msg/s, delivered {res['delivered']}/{res['sent'] * load.subscribers} "
                          f"({100 * res['fraction']:.1f} %), publisher process {res['pub_wall']:.1f} s, cpu pub {res['cpu_pub']:.2f} s sub {res['cpu_sub']:.2f} s, "
                          f"{res['per_cpu']:,.0f} msgs/CPU-s, sub {res['sub_per_cpu']:,.0f} deliveries/CPU-s{flag}", file=sys.stderr, flush=True)

            def med(tool: str, key: str) -> float:
                return statistics.median(x[key] for x in runs[tool])  # noqa: B023 - used right away

            def ratio(key: str) -> float:
                return statistics.median(a[key] / max(b[key], 1e-9) for a, b in zip(runs["engine"], runs["emqtt"], strict=True))  # noqa: B023

            rows.append({"load": load.name, "engine_offered": med("engine", "offered"), "emqtt_offered": med("emqtt", "offered"), "engine_fraction": med("engine", "fraction"), "emqtt_fraction": med("emqtt", "fraction"),
                         "fraction_ratio": ratio("fraction"), "engine_per_cpu": med("engine", "per_cpu"), "emqtt_per_cpu": med("emqtt", "per_cpu"),
                         "per_cpu_ratio": ratio("per_cpu"), "engine_sub_per_cpu": med("engine", "sub_per_cpu"),
                         "emqtt_sub_per_cpu": med("emqtt", "sub_per_cpu"), "sub_per_cpu_ratio": ratio("sub_per_cpu"),
                         "engine_saturated": sum(bool(x.get("saturated")) for x in runs["engine"])})
    head = ("| load | offered msg/s engine | offered msg/s emqtt-bench | delivered engine | delivered emqtt-bench | ratio | msgs/CPU-s engine | msgs/CPU-s emqtt-bench | ratio "
            "| sub deliveries/CPU-s engine | emqtt-bench | ratio | engine runs marked saturated |")
    print(head)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['load']} | {row['engine_offered']:,.0f} | {row['emqtt_offered']:,.0f} | {100 * row['engine_fraction']:.1f} % | {100 * row['emqtt_fraction']:.1f} % | {row['fraction_ratio']:.2f} "
              f"| {row['engine_per_cpu']:,.0f} | {row['emqtt_per_cpu']:,.0f} | {row['per_cpu_ratio']:.2f} "
              f"| {row['engine_sub_per_cpu']:,.0f} | {row['emqtt_sub_per_cpu']:,.0f} | {row['sub_per_cpu_ratio']:.2f} | {row['engine_saturated']}/{args.repeat} |")
    print(f"\nmedian of {args.repeat} rounds; ratios are engine / emqtt-bench per round, then the median; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)
    if not args.only or args.only in "saturating fan-in":
        # each tool's own publishers do not offer the same load (the offered columns): the fair
        # comparison of the two subscribers is the shared feed
        print()
        return shared_feed(exe, args.repeat)
    return 0


def shared_feed(exe: str, repeat: int) -> int:
    load = Load("saturating fan-in", 50, 1, 100_000, 1)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-emqtt-") as td:
        for r in range(repeat):
            broker = Mosquitto(Path(td))
            try:
                res = run_shared(exe, load, broker.port, Path(td), int.from_bytes(os.urandom(4), "big") | 1)
            finally:
                broker.stop()
            runs.append(res)
            print(f"[shared feed] round {r + 1}: sent {res['sent']} at {res['offered']:,.0f} msg/s, engine subscriber {100 * res['engine']:.1f} % "
                  f"({res['cpu_sub']:.2f} CPU-s), emqtt-bench subscriber {100 * res['emqtt']:.1f} % ({res['cpu_esub']:.2f} CPU-s); "
                  f"engine flagged {res['saturated']}", file=sys.stderr, flush=True)
    e = statistics.median(x["engine"] for x in runs)
    q = statistics.median(x["emqtt"] for x in runs)
    ratio = statistics.median(x["engine"] / max(x["emqtt"], 1e-9) for x in runs)
    offered = statistics.median(x["offered"] for x in runs)
    per_round = ", ".join(f"{x['engine'] / max(x['emqtt'], 1e-9):.2f}" for x in runs)
    print("| same feed: 50 pub x 1 ms (engine) -> 1 engine sub + 1 emqtt-bench sub, QoS 1, 100000 msgs | offered msg/s | delivered engine | "
          "delivered emqtt-bench | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| median of {repeat} rounds | {offered:,.0f} | {100 * e:.1f} % | {100 * q:.1f} % | {ratio:.2f} (per round {per_round}) |")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    sys.exit(main())
