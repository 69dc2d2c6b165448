"""The benchmark engine against a real Mosquitto on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import MQTTLAB, ROOT, wait_for
from workloads.bench import emqtt
from workloads.bench.payload import encode
from workloads.hosts.lab import netns
from workloads.rundir.records import deliveries_on_disk, read_deliveries, summarize


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.port = free_port()
        conf = tmp / f"mosquitto-{self.port}.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\nlog_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n" + extra
        )
        self.log = tmp / f"mosquitto-{self.port}.log"
        self.proc = netns.spawn(["mosquitto", "-c", str(conf)], None, self.log)
        netns.wait_tcp(None, "127.0.0.1", self.port)
        self.target = f"127.0.0.1:{self.port}"

    def sys_value(self, topic: str) -> int:
        out = subprocess.run(["mosquitto_sub", "-p", str(self.port), "-t", topic, "-C", "1", "-W", "5"], capture_output=True, text=True).stdout
        return int(out.strip() or 0)

    def stop(self) -> None:
        netns.stop(self.proc)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MQTTLAB, "bench", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_low_load_is_lossless_and_exact(broker: Broker, tmp_path: Path, qos: int, version: str) -> None:
    out = tmp_path / "run"
    cp = bench("run", "--target", broker.target, "--out", str(out), "--publishers", "4", "--subscribers", "3", "--messages", "200",
               "--interval-ms", "20", "--qos", str(qos), "--mqtt-version", version, "--drain-s", "3", "--json", "--quiet")
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    assert (s["expected"], s["delivered"], s["lost"], s["loss_pct"], s["duplicates"]) == (600, 600, 0, 0.0, 0)
    assert s["clients_connected"] == s["clients"] == 7 and s["disconnects"] == 0 and not s["partial"]
    assert s["sent"] == s["planned"] == 200 and s["acked"] == 200
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"] < 5000
    recs = [r for p in sorted((out / "bench" / "local").glob("deliveries-*.bin")) for r in read_deliveries(p)]
    assert len(recs) == 600 and len({(int(r["sub"]), int(r["pub"]), int(r["seq"])) for r in recs}) == 600
    # 200 messages shared by 4 publishers: 50 each, sequence numbers 0..49
    assert sorted({int(r["seq"]) for r in recs}) == list(range(50))
    clients = "".join(p.read_text() for p in (out / "bench" / "local").glob("clients-*.csv"))
    assert clients.count(broker.target) == 7 and clients.count("127.0.0.1:") >= 14  # entry point and local socket


def test_loss_equals_what_the_broker_dropped(tmp_path: Path) -> None:
    """A paused subscriber behind a small queue: the bench's lost count is the broker's drop count."""
    b = Broker(tmp_path, "max_queued_messages 5\nmax_inflight_messages 5\n")
    try:
        out = tmp_path / "run"
        dropped0 = b.sys_value("$SYS/broker/publish/messages/dropped")
        ready = tmp_path / "ready"
        common = ["--target", b.target, "--out", str(out), "--publishers", "2", "--subscribers", "2", "--messages", "400",
                  "--interval-ms", "10", "--qos", "1", "--tag", "0x5eed", "--quiet", "--time-limit-s", "60"]
        sub = subprocess.Popen([*MQTTLAB, "bench", "sub", "--host", "subs", "--workers", "1", "--ready-file", str(ready), *common],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(ready.exists, 30, "subscribers ready")
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(sub.pid)], capture_output=True, text=True).stdout.split()]
        assert workers
        pub = subprocess.Popen([*MQTTLAB, "bench", "pub", "--host", "pubs", *common], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # paused once publishing has begun (the first deliveries are on disk; a busy machine can
        # take seconds to start the publisher) until the publisher is done: bounded by progress
        wait_for(lambda: deliveries_on_disk(out) > 0, 60, "the first deliveries on disk")
        for w in workers:
            os.kill(w, signal.SIGSTOP)  # the subscribers stop reading: the broker's queue for them fills
        try:
            assert pub.wait(60) == 0, pub.stderr.read() if pub.stderr else ""
        finally:
            for w in workers:
                os.kill(w, signal.SIGCONT)
        time.sleep(2)
        sub.send_signal(signal.SIGTERM)
        sub.wait(30)
        time.sleep(1.5)  # one $SYS interval
        dropped = b.sys_value("$SYS/broker/publish/messages/dropped") - dropped0
    finally:
        b.stop()
    s = summarize(out)
    assert s["sent"] == 400 and s["expected"] == 800
    assert dropped > 0, "the pause did not make the broker drop anything"
    assert s["lost"] == dropped
    assert s["delivered"] == 800 - dropped and s["duplicates"] == 0
    assert "Outgoing messages are being dropped" in b.log.read_text()


def test_resent_sequence_numbers_are_counted_as_duplicates(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ready = tmp_path / "ready"
    sub = subprocess.Popen([*MQTTLAB, "bench", "sub", "--target", broker.target, "--out", str(out), "--publishers", "1", "--subscribers", "3",
                            "--messages", "6", "--qos", "1", "--tag", "0xabc", "--ready-file", str(ready), "--quiet", "--time-limit-s", "60"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(ready.exists, 30, "subscribers ready")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-duplicator")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    # another run's message first: each subscriber gets it before ours, in order, so once all of
    # ours are recorded it has been counted too
    c.publish("bench/test", encode(0, 0, time.time_ns(), 0xBAD, 64), qos=1).wait_for_publish(5)
    seqs = [0, 1, 2, 2, 3, 3, 3, 4, 5, 1]  # 4 resends of 6 distinct messages
    for seq in seqs:
        c.publish("bench/test", encode(0, seq, time.time_ns(), 0xABC, 64), qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    # every delivery of ours (3 subscribers x 10 publishes) on disk before stopping: bounded by progress
    wait_for(lambda: deliveries_on_disk(out) >= 3 * len(seqs), 60, "every delivery recorded")
    sub.send_signal(signal.SIGTERM)
    assert sub.wait(30) in (0, 1)
    s = summarize(out)
    assert s["delivered"] == 3 * 6
    assert s["duplicates"] == 3 * 4
    assert s["out_of_order"] == 3 * 1  # the late resend of 1 after 5, per subscriber
    assert s["foreign"] == 3


def test_connects_honour_the_connect_rate_and_ready_follows_the_last_client(broker: Broker, tmp_path: Path) -> None:
    """40 clients at 20/s over 2 workers: every client connects, no stretch of connection attempts
    outruns the rate (a worker late by up to a second may catch up, never more: slowness only
    spreads them), publishing starts once every one is connected, and the ready file is written
    after the last CONNACK."""
    out, ready, rate, workers = tmp_path / "run", tmp_path / "ready", 20, 2
    cp = bench("run", "--target", broker.target, "--out", str(out), "--publishers", "20", "--subscribers", "20", "--messages", "40",
               "--interval-ms", "10", "--qos", "1", "--connect-rate", str(rate), "--workers", str(workers), "--ready-file", str(ready),
               "--json", "--quiet")
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    assert s["clients_connected"] == s["clients"] == 40 and s["lost"] == 0
    rows = [line.split(",") for p in out.glob("bench/local/clients-*.csv") for line in p.read_text().splitlines()[1:]]
    assert len(rows) == 40 and all(float(r[6]) > 0 for r in rows)
    attempts = sorted(float(r[6]) - float(r[8]) / 1000 for r in rows)  # connected_at - connect_ms: when each attempt began
    for i in range(len(attempts)):
        for j in range(i + 1, len(attempts)):
            assert j - i + 1 <= rate * (attempts[j] - attempts[i] + 1.0) + workers, (i, j, attempts)
    # subscribers first in each worker: a worker's publishers attempt after its subscribers
    for w in range(workers):
        mine = {role: [float(r[6]) - float(r[8]) / 1000 for r in rows if r[1] == role and int(r[3]) == w] for role in ("sub", "pub")}
        assert len(mine["sub"]) == len(mine["pub"]) == 10 and max(mine["sub"]) <= min(mine["pub"])
    connected = max(float(r[6]) for r in rows)
    first_send = min(float(line.split(",")[6]) for p in out.glob("bench/local/publishers-*.csv") for line in p.read_text().splitlines()[1:])
    assert connected <= float(ready.read_text()) <= first_send


def test_killed_run_leaves_a_partial_run_that_loads(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(out), "--publishers", "2", "--subscribers", "2",
                             "--messages", "2000", "--interval-ms", "5", "--qos", "1", "--quiet"], cwd=ROOT, start_new_session=True)
    wait_for(lambda: any(p.stat().st_size > 0 for p in out.glob("bench/local/deliveries-*.bin")), 30, "first deliveries on disk")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    s = summarize(out)
    assert s["partial"] and s["status"] == "running"
    assert s["delivered"] > 0 or s["latency_ms"]["p50"] is not None
    cp = bench("summary", str(out))
    assert cp.returncode == 0 and "PARTIAL" in cp.stdout


def test_invalid_scenario_is_refused_before_connecting(tmp_path: Path) -> None:
    cp = bench("run", "--target", "127.0.0.1:1", "--out", str(tmp_path / "r"), "--qos", "3")
    assert cp.returncode == 2 and "--qos=3" in cp.stderr and "must be 0, 1 or 2" in cp.stderr
    cp = bench("run", "--target", "nowhere", "--out", str(tmp_path / "r"))
    assert cp.returncode == 2 and "--target" in cp.stderr
    assert not (tmp_path / "r").exists()


EMQTT_PUB = """\
1s connect_succ total=10 rate=10.00/sec
1s pub total=18 rate=18.00/sec
2s pub total=38 rate=20.00/sec
3s pub total=50 rate=12.00/sec
publish complete
"""
EMQTT_SUB = """\
1s connect_succ total=10 rate=10.00/sec
1s sub total=10 rate=10.00/sec
2s recv total=300 rate=300.00/sec
3s recv total=480 rate=180.00/sec
4s recv total=490 rate=10.00/sec
Connection closed: tcp_closed
"""


def test_emqtt_adapter_commands_and_estimated_summary() -> None:
    from workloads.describe.scenario import Scenario

    sc = Scenario(publishers=10, subscribers=10, messages=50, qos=1, interval_ms=500, payload_bytes=64)
    cmds = emqtt.commands(sc, ["10.3.0.10:1883"], publishers=10, subscribers=10, messages=50)
    pub = cmds["pub"]
    assert pub[:6] == ["docker", "run", "--rm", "--network", "host", emqtt.IMAGE]
    assert pub[pub.index("-L") + 1] == "50" and pub[pub.index("-c") + 1] == "10" and pub[pub.index("-q") + 1] == "1"
    assert cmds["sub"][cmds["sub"].index("-t") + 1] == "bench/test"
    s = emqtt.summarize(EMQTT_PUB, EMQTT_SUB, subscribers=10, planned=50)
    assert s["estimated"] and s["sent"] == 50 and s["expected"] == 500 and s["delivered"] == 490
    assert s["lost"] == 10 and s["loss_pct"] == 2.0 and s["publish_complete"]
    assert s["errors"] == ["Connection closed: tcp_closed"] and s["latency_ms"]["p99"] is None


def test_emqtt_counters_are_read_in_every_form_of_its_elapsed_time() -> None:
    """emqtt-bench prints its elapsed time with fmt_tdiff: nothing in its first second (the lab
    run that failed with "emqtt-bench subscribers did not all subscribe" had " sub total=3"),
    and minutes, hours and days past the first minute; every counter line counts."""
    text = ("Start with 1 workers, addrs pool size: 1 and req interval: 10 ms \n\n"
            " sub total=3 rate=2.93/sec\n"
            " connect_succ total=3 rate=2.93/sec\n"
            "59s recv total=100 rate=10.00/sec\n"
            "1m0s recv total=110 rate=10.00/sec\n"
            "2h3m4s recv total=120 rate=10.00/sec\n"
            "1d0h0m0s recv total=130 rate=10.00/sec\n"
            "client(3): EXIT for {shutdown,tcp_closed}\n")
    parsed = emqtt.parse_output(text)
    assert parsed["totals"] == {"sub": 3, "connect_succ": 3, "recv": 130}
    assert parsed["errors"] == ["client(3): EXIT for {shutdown,tcp_closed}"]


def test_clients_reconnect_after_the_broker_restarts(tmp_path: Path) -> None:
    b = Broker(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", b.target, "--out", str(out), "--publishers", "2", "--subscribers", "2",
                             "--messages", "200", "--interval-ms", "40", "--qos", "1", "--drain-s", "2", "--quiet", "--json",
                             "--reconnect-min-ms", "100", "--reconnect-max-ms", "400"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in out.glob("bench/local/deliveries-*.bin")), 30, "first deliveries")
        b.stop()
        down_at = time.time()
        time.sleep(1.5)
        up_at = time.time()
        conf = next(tmp_path.glob(f"mosquitto-{b.port}.conf"))
        b.proc = netns.spawn(["mosquitto", "-c", str(conf)], None, b.log)  # the same broker comes back
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        b.stop()
    s = json.loads(stdout)
    events = "".join(p.read_text() for p in out.glob("bench/local/events-*.csv"))
    assert events.count(",disconnect,") == 4 and events.count(",reconnect,") >= 4, events
    assert s["disconnects"] == 4 and s["clients_connected"] == 4
    assert s["sent"] == 200 and s["delivered"] > 0
    # one outage per client: lost when the broker went, back only after it returned, after several
    # refused attempts (each wait is at most 400 ms, the broker was away 1.5 s)
    rows = [line.split(",") for p in out.glob("bench/local/outages-*.csv") for line in p.read_text().splitlines()[1:]]
    assert len(rows) == 4 and {r[1] for r in rows} == {"pub", "sub"}
    for _cid, _role, lost, back, attempts, before, after in rows:
        assert float(lost) <= down_at + 0.5 and float(back) >= up_at and int(attempts) >= 2 and before and after and before != after


def test_timeline_accounts_for_every_message(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cp = bench("run", "--target", broker.target, "--out", str(out), "--publishers", "1", "--subscribers", "3", "--messages", "500",
               "--interval-ms", "0", "--qos", "0", "--json", "--quiet")
    assert cp.returncode == 0, cp.stderr
    rows = [line.split(",") for p in out.glob("bench/local/timeline-*.csv") for line in p.read_text().splitlines()[1:]]
    assert sum(int(r[2]) for r in rows) == 500 and sum(int(r[4]) for r in rows) == 1500  # sent, received


def test_reconnect_backoff_doubles_with_jitter_and_stays_bounded() -> None:
    import random

    from workloads.bench.backoff import delay_s

    rng = random.Random(1)
    for failures, (lo, hi) in enumerate([(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.8, 1.6), (1.25, 2.5), (1.25, 2.5)]):
        d = [delay_s(failures, 200, 2500, rng) for _ in range(200)]
        assert lo <= min(d) and max(d) <= hi and max(d) - min(d) > (hi - lo) / 2  # spread: jittered, not lock step
    assert delay_s(10_000, 200, 2500, rng) <= 2.5


def test_clients_reconnect_after_a_keepalive_timeout(tmp_path: Path) -> None:
    """A paused broker answers nothing: paho gives up on keepalive and closes the socket itself;
    the reconnection must reuse the freed descriptor number without tripping over the old one."""
    b = Broker(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", b.target, "--out", str(out), "--publishers", "1", "--subscribers", "1",
                             "--messages", "300", "--interval-ms", "50", "--qos", "1", "--keepalive", "5", "--drain-s", "3", "--quiet", "--json",
                             "--reconnect-min-ms", "100", "--reconnect-max-ms", "400"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in out.glob("bench/local/deliveries-*.bin")), 30, "first deliveries")
        os.kill(b.proc.pid, signal.SIGSTOP)
        wait_for(lambda: "Keep alive timeout" in "".join(p.read_text() for p in out.glob("bench/local/events-*.csv")), 60, "a keepalive timeout")
        os.kill(b.proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()
    assert proc.returncode == 0, stderr[-2000:]
    s = json.loads(stdout)
    assert s["sent"] == 300 and s["clients_connected"] == 2
    rows = [line.split(",") for p in out.glob("bench/local/outages-*.csv") for line in p.read_text().splitlines()[1:]]
    assert rows and all(float(r[3]) > float(r[2]) for r in rows)  # every lost connection came back


def _sub_and_pub(b: Broker, tmp_path: Path, name: str, throttle: Callable[[list[int]], None] | None,
                 release: Callable[[list[int]], None] | None = None, messages: int = 1600, interval_ms: int = 5,
                 publishers: int = 2) -> dict[str, Any]:
    """Subscribers in one worker process, publishers in another; ``throttle`` gets the subscriber
    worker's pids once deliveries flow, ``release`` once publishing is over. Ends when deliveries
    stopped growing (bounded)."""
    out = tmp_path / name
    ready = tmp_path / f"{name}.ready"
    common = ["--target", b.target, "--out", str(out), "--publishers", str(publishers), "--subscribers", "2", "--messages", str(messages),
              "--interval-ms", str(interval_ms), "--qos", "1", "--tag", "0x5a7", "--quiet", "--time-limit-s", "120"]
    sub = subprocess.Popen([*MQTTLAB, "bench", "sub", "--host", "subs", "--workers", "1", "--ready-file", str(ready), *common],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def on_disk() -> int:
        return sum(p.stat().st_size for p in out.glob("bench/subs/deliveries-*.bin")) // 32

    try:
        wait_for(ready.exists, 30, "subscribers ready")
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(sub.pid)], capture_output=True, text=True).stdout.split()]
        assert len(workers) == 1
        pub = subprocess.Popen([*MQTTLAB, "bench", "pub", "--host", "pubs", "--workers", "1", *common], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: on_disk() > 0, 30, "first deliveries")
        if throttle is not None:
            throttle(workers)
        assert pub.wait(100) == 0, pub.stderr.read() if pub.stderr else ""
        if release is not None:
            release(workers)
        seen, quiet = -1, time.time()
        while on_disk() < 2 * messages and time.time() - quiet < 3:  # bounded: it ends 3 s after the count stops growing
            if on_disk() != seen:
                seen, quiet = on_disk(), time.time()
            time.sleep(0.2)
    finally:
        sub.send_signal(signal.SIGTERM)
        sub.wait(60)
    return summarize(out)


def test_a_paused_subscriber_is_reported_as_the_bench_saturating(tmp_path: Path) -> None:
    """The bench made the bottleneck on purpose (its subscriber worker stopped twice for 1.2 s):
    the summary names the subscribers and how long data waited unread; unpaused, it does not."""
    b = Broker(tmp_path)

    def pause(pids: list[int]) -> None:
        for _ in range(2):
            for w in pids:
                os.kill(w, signal.SIGSTOP)
            time.sleep(1.2)
            for w in pids:
                os.kill(w, signal.SIGCONT)
            time.sleep(0.5)

    try:
        paused = _sub_and_pub(b, tmp_path, "paused", pause, messages=3200)  # 8 s of publishing: both pauses fall inside
        free = _sub_and_pub(b, tmp_path, "free", None, messages=3200)
    finally:
        b.stop()
    assert paused["delivered"] == free["delivered"] == 6400  # no loss either way: TCP buffers held the backlog
    assert paused["bench_saturated"], paused["saturation_reasons"]
    named = {c["client_id"]: c for c in paused["saturated_clients"]}
    assert set(named) == {"mqttlab-000005a7-sub0", "mqttlab-000005a7-sub1"}, paused["saturated_clients"]
    for c in named.values():
        assert c["kind"] == "receive_backlog" and c["episodes"] >= 2
        assert 1.0 <= c["longest_s"] < 5 and 2.0 <= c["seconds"] < 10
    assert any("mqttlab-000005a7-sub0 left data unread" in r for r in paused["saturation_reasons"])
    assert not free["bench_saturated"], free["saturation_reasons"]
    assert free["saturated_clients"] == []


def test_a_cpu_capped_subscriber_is_reported_as_the_bench_saturating(tmp_path: Path) -> None:
    """The subscriber worker under a 1 % CPU cap (cgroup) while 8000 deliveries a second arrive:
    its sockets' receive queues stay full, and the summary names both subscribers, or their worker's
    loop lag."""
    from workloads.hosts.lab import cgroups

    version = cgroups.detect()
    if version is None:
        pytest.skip("no cgroup hierarchy with the cpu controller here")
    # a group of its own (not named like the lab's, which `lab down` removes), 1 ms per 100 ms
    base = cgroups.ROOT if version == "v2" else cgroups.ROOT / "cpu"
    group = base / f"benchtest-{os.getpid()}"
    group.mkdir(exist_ok=True)
    if version == "v2":
        (cgroups.ROOT / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text("1000 100000")
    else:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("1000")
    root_procs = base / "cgroup.procs"
    b = Broker(tmp_path)

    def throttle(pids: list[int]) -> None:
        for w in pids:
            (group / "cgroup.procs").write_text(str(w))

    def release(pids: list[int]) -> None:
        for w in pids:
            root_procs.write_text(str(w))

    try:
        capped = _sub_and_pub(b, tmp_path, "capped", throttle, release, messages=12000, interval_ms=1, publishers=4)
        # unthrottled, the flag is honest about the machine too: a busy 2-core host can starve the
        # subscriber for a moment (0.7 s seen under a parallel test run). A flag that is wrong by
        # construction (inverted, or always on) is wrong every time, so up to three tries
        for attempt in range(3):
            free = _sub_and_pub(b, tmp_path, f"free{attempt}", None, messages=12000, interval_ms=1, publishers=4)
            if not free["bench_saturated"]:
                break
    finally:
        b.stop()
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert capped["bench_saturated"], capped
    named = {c["client_id"]: c for c in capped["saturated_clients"]}
    lagging = [r for r in capped["saturation_reasons"] if r.startswith("worker subs/sub0 loop_lag_p99_ms=")]
    # the capped worker is named either through its clients' receive backlog or through its own
    # loop lag (both seen on this kind of machine; the lag alone in 3 of 4 runs on one of them)
    assert named or lagging, capped["saturation_reasons"]
    if named:
        assert set(named) <= {"mqttlab-000005a7-sub0", "mqttlab-000005a7-sub1"}, capped["saturated_clients"]  # one or both
        assert all(c["kind"] == "receive_backlog" and c["longest_s"] >= (0.1 if c["lost"] else 0.5) for c in named.values()), named
    else:
        assert all(float(r.split("=")[1].split()[0]) >= 50.0 for r in lagging), lagging
    assert not free["bench_saturated"], free["saturation_reasons"]
    assert free["delivered"] == free["expected"] == 24000


def test_emqtt_adapter_runs_the_real_emqtt_bench(broker: Broker, tmp_path: Path) -> None:
    """`mqttlab bench emqtt --native` command lines run by the real emqtt-bench against a real
    Mosquitto; the adapter's parsed totals are what was sent and received."""
    exe = emqtt.find_native()
    if exe is None:
        pytest.skip(emqtt.missing_native())
    scenario = ["--publishers", "4", "--subscribers", "3", "--messages", "400", "--interval-ms", "10", "--qos", "1",
                "--topic", f"adapter/{os.getpid()}"]
    cp = bench("emqtt", "--target", broker.target, "--native", *scenario)
    assert cp.returncode == 0, cp.stderr
    cmds = {line.split(": ", 1)[0]: line.split(": ", 1)[1].split() for line in cp.stdout.splitlines()}
    assert cmds["pub"][0] == exe and cmds["pub"][cmds["pub"].index("-L") + 1] == "400"
    sub_log, pub_log = tmp_path / "sub.txt", tmp_path / "pub.txt"
    with sub_log.open("w") as so:
        sub = subprocess.Popen(cmds["sub"], stdout=so, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: emqtt.parse_output(sub_log.read_text())["totals"].get("sub", 0) == 3, 60, "emqtt-bench subscribed")
            with pub_log.open("w") as po:
                assert subprocess.run(cmds["pub"], stdout=po, stderr=subprocess.STDOUT, timeout=120).returncode == 0
            # the counters print once a second: wait for the last one
            wait_for(lambda: emqtt.parse_output(sub_log.read_text())["totals"].get("recv", 0) >= 1200, 60, "every delivery counted")
        finally:
            sub.terminate()
            sub.wait(30)
    cp = bench("emqtt", "--target", broker.target, *scenario, "--parse-pub", str(pub_log), "--parse-sub", str(sub_log))
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    assert s["estimated"] and s["publish_complete"]
    assert (s["planned"], s["sent"], s["expected"], s["delivered"], s["lost"], s["duplicates"]) == (400, 400, 1200, 1200, 0, 0)
    assert s["clients_connected"] == 7


def test_emqtt_adapter_says_when_emqtt_bench_is_missing(tmp_path: Path) -> None:
    env = dict(os.environ, EMQTT_BENCH=str(tmp_path / "nothing-here"))
    cp = subprocess.run([*MQTTLAB, "bench", "emqtt", "--target", "127.0.0.1:1883", "--native"], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=60)
    assert cp.returncode == 3 and "emqtt-bench not found" in cp.stderr and "nothing-here" in cp.stderr  # a tool missing


@pytest.mark.parametrize(("clean", "version"), [(False, "3.1.1"), (True, "3.1.1"), (False, "5")])
def test_a_subscriber_cut_off_past_its_keepalive_resumes_its_session_only_when_persistent(tmp_path: Path, clean: bool, version: str) -> None:
    """The subscriber's worker stops (keepalive 5 s: the broker drops the connection after 7.5 s)
    while publishing goes on. Back, it reconnects under the same client id: with
    ``cleanSession: false`` the broker kept its session (MQTT 5: for the session expiry interval
    the bench asks for) and what was queued meanwhile arrives, nothing lost; with a clean session
    that is lost."""
    b = Broker(tmp_path)
    try:
        out = tmp_path / "run"
        ready = tmp_path / "ready"
        common = ["--target", b.target, "--out", str(out), "--publishers", "1", "--subscribers", "1", "--messages", "600", "--interval-ms", "20",
                  "--qos", "1", "--keepalive", "5", "--clean-session", str(clean).lower(), "--mqtt-version", version,
                  "--reconnect-min-ms", "100", "--reconnect-max-ms", "200", "--tag", "0x5e55", "--quiet", "--time-limit-s", "60"]
        sub = subprocess.Popen([*MQTTLAB, "bench", "sub", "--host", "subs", "--workers", "1", "--ready-file", str(ready), *common],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(ready.exists, 30, "subscriber ready")
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(sub.pid)], capture_output=True, text=True).stdout.split()]
        assert workers
        pub = subprocess.Popen([*MQTTLAB, "bench", "pub", "--host", "pubs", *common], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # connected: subscriber and publisher ($SYS, once a second, before this query connected;
        # the broker's log is flushed only at the end)
        wait_for(lambda: b.sys_value("$SYS/broker/clients/connected") >= 2, 30, "the publisher to connect")
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        wait_for(lambda: b.sys_value("$SYS/broker/clients/connected") <= 1, 30, "the broker to drop the silent subscriber")
        for w in workers:
            os.kill(w, signal.SIGCONT)
        assert pub.wait(60) == 0, pub.stderr.read() if pub.stderr else ""
        time.sleep(2)
        sub.send_signal(signal.SIGTERM)
        sub.wait(30)
    finally:
        for p in (sub, locals().get("pub")):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(10)
        b.stop()
    s = summarize(out)
    events = "".join(p.read_text() for p in out.glob("bench/subs/events-*.csv"))
    assert ",reconnect," in events  # it was cut off and came back
    assert (",session_resumed," in events) == (not clean)
    assert s["sent"] == 600
    if clean:
        assert s["lost"] > 0, s  # what came while it was away went nowhere
    else:
        assert s["lost"] == 0 and s["delivered"] == 600, s  # queued by the broker, delivered on return (duplicates allowed)
