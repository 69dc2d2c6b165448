"""What one delivery costs the engine's subscriber, and where a saturated subscriber's time goes.

Default: the hot path alone. ``BenchClient.fast_read`` over pre-framed QoS 1 PUBLISH packets
(``--per-read`` of them per kernel read, from a stand-in socket), with the real ``Recorder``
(records flushed every 10,000 as the worker does twice a second): PUBLISH parse, PUBACK
framing, sequence bitmap, delivery record. Prints CPU microseconds per message; ``--profile``
adds cProfile's table.

``--live``: one subscriber worker run in this process under cProfile while ``mqttlab bench pub``
sends the saturating fan-in (50 publishers at 1 ms, QoS 1) through a fresh Mosquitto on
loopback; prints deliveries, CPU per delivery and where the wall time went (``epoll`` is idle).

    .venv/bin/python benchmarks/profile_subscriber.py [--per-read 20] [--profile] [--live [--messages 100000]]
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from benchmarks.bench_vs_emqtt import Mosquitto  # noqa: E402
from workloads.bench.client import BenchClient  # noqa: E402
from workloads.bench.payload import encode  # noqa: E402
from workloads.bench.recorder import Recorder  # noqa: E402
from workloads.bench.state import ClientSpec, ClientState, WorkerSpec  # noqa: E402
from workloads.bench.transport import BufferedSocket  # noqa: E402
from workloads.bench.worker import Worker  # noqa: E402
from workloads.describe.scenario import Scenario  # noqa: E402

TAG = 0x77


class _Feed:
    """A socket stand-in that returns one prepared chunk per ``recv``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.i = 0

    def recv(self, n: int) -> bytes:
        if self.i >= len(self.chunks):
            raise BlockingIOError
        self.i += 1
        return self.chunks[self.i - 1]

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


def hot(per_read: int, total: int, profile: bool) -> None:
    sc = Scenario(publishers=50, subscribers=1, messages=total, qos=1, payload_bytes=64)
    topic = b"cmp/1"
    chunks, seq, k = [], [0] * 50, 0
    for _ in range(total // per_read):
        b = bytearray()
        for _ in range(per_read):
            p = k % 50
            body = len(topic).to_bytes(2, "big") + topic + (k % 65535 + 1).to_bytes(2, "big") + encode(p, seq[p], time.time_ns(), TAG, 64)
            b += bytes((0x32, len(body))) + body
            seq[p] += 1
            k += 1
        chunks.append(bytes(b))
    with tempfile.TemporaryDirectory() as td:
        rec = Recorder(Path(td), "sub0", 0, TAG, sc)
        st = ClientState(ClientSpec("sub", 0, "s", "x:1"))
        c = BenchClient(CallbackAPIVersion.VERSION2, client_id="s", userdata=st)
        sock = BufferedSocket(_Feed(chunks), set())  # type: ignore[arg-type]
        c._sock = sock  # type: ignore[assignment]
        c.payload_handler = rec.payload
        c._fast_out = {}
        every = max(1, 10_000 // per_read)

        def run() -> None:
            for i in range(len(chunks)):
                c.fast_read()
                sock.wbuf.clear()  # the PUBACKs, which the worker would send
                if i % every == 0:
                    rec.flush()
            rec.flush()

        prof = cProfile.Profile() if profile else None
        t = time.process_time()
        if prof:
            prof.runcall(run)
        else:
            run()
        cpu = time.process_time() - t
        assert rec.received == k, (rec.received, k)
        print(f"{per_read} packets per read: {cpu / k * 1e6:.2f} us CPU per message, {k / cpu:,.0f} messages per CPU-second"
              + (" (under cProfile)" if prof else ""))
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(10)
        c._sock = None


def live(messages: int) -> None:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        broker = Mosquitto(tmp)
        try:
            sc = Scenario(publishers=50, subscribers=1, messages=messages, qos=1, interval_ms=1, payload_bytes=64, topic="cmp/1", time_limit_s=600)
            out = tmp / "run"
            spec = WorkerSpec(0, "subs", str(out / "bench" / "subs"), sc, TAG, [ClientSpec("sub", 0, "profiled-sub0", f"127.0.0.1:{broker.port}")],
                              100.0, "sub")
            parent, child = mp.Pipe()
            w = Worker(spec, child)

            def drive() -> None:
                while not parent.poll(60) or parent.recv()[0] != "ready":
                    pass
                subprocess.run([sys.executable, "-m", "workloads.cli", "bench", "pub", "--target", f"127.0.0.1:{broker.port}", "--out", str(out),
                                "--host", "pubs", "--publishers", "50", "--subscribers", "1", "--messages", str(messages), "--interval-ms", "1",
                                "--qos", "1", "--payload-bytes", "64", "--topic", "cmp/1", "--tag", hex(TAG), "--quiet"], cwd=ROOT, check=False)
                last, since = -1, time.time()
                while time.time() - since < 3:  # until nothing more arrives
                    if w.rec.received != last:
                        last, since = w.rec.received, time.time()
                    time.sleep(0.2)
                parent.send(("stop",))

            threading.Thread(target=drive, daemon=True).start()
            prof = cProfile.Profile()
            c0, t0 = time.process_time(), time.time()
            prof.runcall(w.run)
            cpu, wall = time.process_time() - c0, time.time() - t0
            n = w.rec.received
            print(f"received {n}/{messages} in {wall:.1f} s, worker CPU {cpu:.2f} s, {cpu / max(n, 1) * 1e6:.1f} us per delivery (under cProfile)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(10)
        finally:
            broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-read", type=int, default=20, help="packets per kernel read (Mosquitto sends at most 20 QoS 1 in flight)")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--live", action="store_true")
    args = ap.parse_args()
    if args.live:
        live(args.messages)
    else:
        hot(args.per_read, args.messages, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
