"""The numbers the core reports, against inputs whose answer is worked out by hand: latency
histogram values, the drain rule, saturation, the run summary, the brokers' drop counters, the
comparison across runs, and partial runs. No broker and no clock: scripts/mutation.sh holds
these tests to planted bugs, so they must be fast and exact."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workloads.analysis import metrics
from workloads.analysis.load import load_run
from workloads.analysis.synthetic import reference_truth, write_run
from workloads.bench.transport import BufferedSocket
from workloads.describe.scenario import QUIET_S
from workloads.rundir import records as rundir
from workloads.rundir import saturation
from workloads.rundir.hist import LINEAR, SUB, Histogram, bucket_index, bucket_value
from workloads.rundir.records import DELIVERY_DTYPE, RunDirError

# --------------------------------------------------------------------------- histogram


def test_bucket_index_is_exact_below_2048_us_and_log_linear_above() -> None:
    v = np.array([-5, 0, 1, 2047, 2048, 2049, 2050, 4095, 4096, 4099, 4100, 8192, 1_000_000])
    assert bucket_index(v).tolist() == [0, 0, 1, 2047, 2048, 2048, 2049, 3071, 3072, 3072, 3073, 4096, 2048 + 8 * 1024 + (1_000_000 >> 9) - 1024]
    assert (LINEAR, SUB) == (2048, 1024)


def test_a_bucket_reports_its_highest_value_never_its_lowest() -> None:
    assert bucket_value(np.array([0, 7, 2047, 2048, 2049, 3071, 3072])).tolist() == [0, 7, 2047, 2049, 2051, 4095, 4099]
    # every bucket's reported value is the largest latency it holds: the next microsecond is the next bucket
    idx = np.arange(0, 2048 + 20 * 1024, 37)
    top = bucket_value(idx)
    assert (bucket_index(top) == idx).all() and (bucket_index(top + 1) == idx + 1).all()
    v = np.unique(np.geomspace(1, 5e8, 20000).astype(np.int64))
    rep = bucket_value(bucket_index(v))
    assert (rep >= v).all() and ((rep - v) / v).max() < 1e-3  # never below the latency, within 0.1 %


def test_percentiles_of_known_latencies() -> None:
    h = Histogram()
    h.record(np.arange(1, 101))  # 1..100 us, exact buckets
    assert (h.total, h.percentile(50), h.percentile(90), h.percentile(99), h.percentile(100), h.max()) == (100, 50.0, 90.0, 99.0, 100.0, 100.0)
    assert h.percentile(0) == 1.0 and h.percentile(0.5) == 1.0 and h.percentile(1.5) == 2.0
    big = Histogram()
    big.record(np.array([3000] * 9 + [10_000]))
    assert big.percentile(50) == 3001.0 and big.percentile(90) == 3001.0 and big.percentile(91) == 10_007.0 and big.max() == 10_007.0
    big.record(np.array([], dtype=np.int64))
    assert big.total == 10
    empty = Histogram()
    assert empty.percentile(50) is None and empty.max() is None and empty.total == 0


def test_histograms_merge_by_adding_counts_and_round_trip_json() -> None:
    a, b = Histogram(), Histogram()
    a.record(np.array([5, 5, 2500]))
    b.record(np.array([5, 7]))
    merged = Histogram(dict(a.counts)).merge(b)
    assert merged.counts == {5: 3, 7: 1, int(bucket_index(np.array([2500]))[0]): 1}
    assert a.counts == {5: 2, 2274: 1} and (2500 >> 1) - 1024 + 2048 == 2274
    doc = merged.to_json()
    assert doc == {"unit": "us", "sub_buckets": 1024, "counts": {"5": 3, "7": 1, "2274": 1}}
    assert Histogram.from_json(json.loads(json.dumps(doc))).counts == merged.counts
    assert Histogram.from_json({"counts": {"3": 2}}).counts == {3: 2} and Histogram.from_json({}).counts == {}
    with pytest.raises(ValueError) as info:
        Histogram.from_json({"sub_buckets": 512, "counts": {}})
    assert str(info.value) == f"histogram written with another bucket layout (512 sub-buckets, this mqttlab uses {SUB})"


# --------------------------------------------------------------------------- drain rule


class Clock:
    """time.time and time.sleep for the drain rule: deterministic, instantaneous."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(rundir, "time", c)
    return c


def test_drain_stops_at_completeness_without_waiting(clock: Clock) -> None:
    counts = iter([0, 40, 90, 100, 100])
    assert rundir.drain(lambda: next(counts), want=100, limit_s=60) == 100
    assert clock.now == pytest.approx(1000.6)  # three polls of 0.2 s, then done at once
    assert rundir.drain(lambda: 120, want=100, limit_s=60) == 120 and clock.now == pytest.approx(1000.6)


def test_drain_stops_after_quiet_s_without_deliveries(clock: Clock) -> None:
    counts = iter([5, 8] + [9] * 1000)
    assert rundir.drain(lambda: next(counts), want=100, limit_s=60, poll_s=0.5) == 9
    assert clock.now - 1000 == pytest.approx(1.0 + QUIET_S)  # 9 first seen at +1.0, then QUIET_S of nothing
    start = clock.now
    assert rundir.drain(lambda: 3, want=None, limit_s=60, poll_s=0.5) == 3 and clock.now - start == pytest.approx(QUIET_S)
    assert QUIET_S == 3.0


def test_drain_is_bounded_by_its_limit_while_deliveries_trickle_in(clock: Clock) -> None:
    n = iter(range(10_000))
    got = rundir.drain(lambda: next(n), want=None, limit_s=5, poll_s=0.5)
    assert clock.now - 1000 == pytest.approx(5.0) and got == 10
    n2 = iter(range(10_000))
    start = clock.now
    assert rundir.drain(lambda: next(n2), want=10_000, limit_s=2, poll_s=0.2) == 10 and clock.now - start == pytest.approx(2.0)


# --------------------------------------------------------------------------- run directory and bench summary


def write_self(run: Path, host: str, worker: int, /, **values: Any) -> None:
    (run / "bench" / host / f"self-run{worker}.json").write_text(json.dumps({"worker": worker, **values}))


@pytest.fixture
def known(tmp_path: Path) -> Path:
    return write_run(tmp_path / "known", reference_truth())


def test_bench_summary_of_a_known_run(known: Path) -> None:
    s = rundir.summarize(known)
    assert s["run_id"] == "known" and s["status"] == "complete" and s["partial"] is False
    assert (s["planned"], s["sent"], s["acked"], s["publish_failures"]) == (200, 200, 200, 0)
    assert (s["expected"], s["delivered"], s["lost"], s["loss_pct"]) == (800, 781, 19, 2.375)
    assert (s["duplicates"], s["out_of_order"], s["foreign"]) == (1, 0, 0)
    assert (s["clients"], s["clients_connected"], s["disconnects"]) == (6, 6, 0)
    # 586 deliveries at 1 ms, 195 at 5 ms; a bucket reports its highest value (1000 us exact, 5000 us -> 5003 us)
    assert s["latency_ms"] == {"p50": 1.0, "p90": 5.0, "p99": 5.0, "max": 5.0}  # the 5,003 us bucket edge, at the 3 digits the histogram carries
    assert s["bench_saturated"] is False and s["saturation_reasons"] == []
    assert rundir.format_summary(s).splitlines()[8].startswith("  fidelity           VALID")  # then its checks (tests/test_fidelity.py)
    text = rundir.format_summary(s | {"fidelity": None})
    assert text.splitlines() == ["run known: complete", "  clients connected  6/6  (disconnects 0)", "  published          200/200  acked 200",
                                 "  expected deliveries 800", "  delivered          781", "  lost               19  (2.375 %)",
                                 "  duplicates         1   out of order 0", "  latency ms         p50 1.0  p90 5.0  p99 5.0  max 5.0"]


def test_summary_counts_every_row_of_the_records(known: Path) -> None:
    d = known / "bench" / "ipvs1"
    (d / "publishers-run0.csv").write_text("pub,client_id,planned,sent,acked,failed\n0,a,100,90,80,7\n")
    (d / "clients-run0.csv").write_text("client_id,role,connected_at,disconnects\na,pub,0,2\nb,sub,5.5,1\nc,sub,,3\n")
    (d / "subscribers-run0.csv").write_text("sub,client_id,pub,received,duplicates,out_of_order,foreign\n0,b,0,85,2,4,6\n0,b,1,50,0,1,\n")
    s = rundir.summarize(known)
    assert (s["planned"], s["sent"], s["acked"], s["publish_failures"]) == (200, 190, 180, 7)
    # ipvs1's subscribers now hear pub0 (90 sent) and pub1 (100 sent); ipvs2's subscribers hear both (2 x 190 expected, 393 received)
    assert (s["expected"], s["delivered"], s["duplicates"], s["out_of_order"], s["foreign"]) == (90 + 100 + 2 * 190, 135 + 393, 2, 5, 6)
    assert (s["clients"], s["clients_connected"], s["disconnects"]) == (3 + 3, 1 + 3, 6)


def sub_client(index: int, longest_s: float, **more: Any) -> dict[str, Any]:
    return {"client_id": f"sub{index}", "role": "sub", "index": index, "kind": "receive_backlog", "seconds": 0.75, "longest_s": longest_s,
            "episodes": 3, "first_s": 1.0, "last_s": 2.5, "max_queued_bytes": 4096} | more


def pub_client(index: int, longest_s: float) -> dict[str, Any]:
    return {"client_id": f"pub{index}", "role": "pub", "index": index, "kind": "behind_schedule", "seconds": 0.6, "longest_s": longest_s,
            "episodes": 2, "first_s": 0.5, "last_s": 1.5, "max_behind_ms": 212.5}


# worker limits: cpu 90 %, loop lag p99 50 ms, loop idle under 5 % over at least 1 s; one client waiting 0.5 s in one
# stretch, or 0.1 s for a subscriber that lost messages with 64 KiB waiting (sub0 of the known run lost pub0 10-19 and
# pub1's last: 11)
SATURATION_CASES: list[tuple[dict[str, Any], list[str], list[tuple[str, int]]]] = [
    ({}, [], []),
    ({"cpu_busy_pct": 90.0, "loop_lag_p99_ms": 1.0}, ["worker 3 cpu_busy_pct=90.0 >= 90.0"], []),
    ({"cpu_busy_pct": 89.9, "loop_lag_p99_ms": 49.9}, [], []),
    ({"cpu_busy_pct": 10.0, "loop_lag_p99_ms": 50.0}, ["worker 3 loop_lag_p99_ms=50.0 >= 50.0"], []),
    ({"cpu_busy_pct": 95.0, "loop_lag_p99_ms": 60.0}, ["worker 3 cpu_busy_pct=95.0 >= 90.0", "worker 3 loop_lag_p99_ms=60.0 >= 50.0"], []),
    ({"loop_idle_pct": 4.9, "measured_wall_s": 1.0}, ["worker 3 loop idle 4.9 % < 5.0 % (never waited for work)"], []),
    ({"loop_idle_pct": 5.0, "measured_wall_s": 1.0}, [], []),
    ({"loop_idle_pct": 0.0, "measured_wall_s": 0.99}, [], []),  # too short to tell
    ({"loop_idle_pct": 0.0}, [], []),  # how long it measured unknown: nothing to tell
    ({"host": "ipvs2", "label": "w3", "loop_idle_pct": 0.0, "measured_wall_s": 30.0},
     ["worker ipvs2/w3 loop idle 0.0 % < 5.0 % (never waited for work)"], []),
    # a subscriber that lost messages with 64 KiB unread: 0.1 s is enough, 0.099 s is not; with less unread it needs 0.5 s
    ({"clients": [sub_client(0, 0.1, max_queued_bytes=65536)]},
     ["sub0 left data unread in its socket for 0.1 s (0.75 s in 3 stretches, up to 65536 bytes; lost 11)"], [("sub0", 11)]),
    ({"clients": [sub_client(0, 0.099, max_queued_bytes=65536)]}, [], []),
    ({"clients": [sub_client(0, 0.499, max_queued_bytes=65535)]}, [], []),
    ({"clients": [sub_client(0, 0.5, max_queued_bytes=65535)]},
     ["sub0 left data unread in its socket for 0.5 s (0.75 s in 3 stretches, up to 65535 bytes; lost 11)"], [("sub0", 11)]),
    # a subscriber with nothing lost (index 9 has no counts) and a publisher need 0.5 s
    ({"clients": [sub_client(9, 0.499), pub_client(1, 0.499)]}, [], []),
    ({"clients": [sub_client(0, 0.099), pub_client(1, 0.5)]},  # a client under its limit does not hide the next one
     ["pub1 was behind its schedule for 0.5 s (0.6 s in 2 stretches, up to 212.5 ms late)"], [("pub1", 0)]),
    ({"clients": [sub_client(9, 0.5), pub_client(1, 0.5)]},
     ["sub9 left data unread in its socket for 0.5 s (0.75 s in 3 stretches, up to 4096 bytes; lost 0)",
      "pub1 was behind its schedule for 0.5 s (0.6 s in 2 stretches, up to 212.5 ms late)"], [("sub9", 0), ("pub1", 0)]),
]


@pytest.mark.parametrize(("values", "reasons", "clients"), SATURATION_CASES)
def test_bench_saturated_both_ways(known: Path, values: dict[str, Any], reasons: list[str], clients: list[tuple[str, int]]) -> None:
    write_self(known, "ipvs1", 0, cpu_busy_pct=5.0, loop_lag_p99_ms=2.0, loop_idle_pct=80.0, measured_wall_s=10.0)
    write_self(known, "ipvs2", 3, **values)
    s = rundir.summarize(known)
    assert s["bench_saturated"] is bool(reasons)
    assert s["saturation_reasons"] == reasons
    assert [(c["client_id"], c["lost"]) for c in s["saturated_clients"]] == clients
    for c in s["saturated_clients"]:  # the client's own record, whole, and what it lost
        assert c == next(x for x in values["clients"] if x["client_id"] == c["client_id"]) | {"lost": c["lost"]}
    text = rundir.format_summary(s | {"fidelity": None}).splitlines()
    if reasons:
        assert text[8:] == ["  WARNING bench_saturated: the load generator, not the system, may have been the limit:", *[f"    {r}" for r in reasons]]
    else:
        assert len(text) == 8 and "WARNING" not in "\n".join(text)


def test_data_that_waited_through_a_stop_in_the_processing_is_charged_for_it() -> None:
    """The worker reads, then processes what it read; a stop (SIGSTOP, CPU starvation) can fall in
    the processing. The queue measured empty at the read is dated at the read, so data arriving
    during the stop is charged from then, not from after the stop."""
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        bs = BufferedSocket(b, set())
        a.sendall(b"x" * 100)
        bs.probe = True
        looked_at = time.time()  # the loop looked at its sockets
        assert bs.take() == b"x" * 100
        read = time.time()
        backlog = saturation.ReceiveBacklog(looked_at - 1)
        a.sendall(b"y" * 10)  # arrives while the worker is stopped in its processing
        time.sleep(0.3)
        backlog.sample(bs.queued, bs.queued_at)  # as the worker does once the processing is done
        assert bs.queued == 0 and looked_at <= bs.queued_at <= read
        backlog.stalled(saturation.queued_bytes(b.fileno()), looked_at)  # the next turn sees the stall
        assert bs.take() == b"y" * 10
        backlog.sample(0, time.time())
        assert backlog.count == 1 and backlog.longest >= 0.3 and backlog.worst == 10
    finally:
        a.close()
        b.close()


def test_receive_backlog_and_lateness_episodes_by_hand() -> None:
    """The per-client evidence judge() reads: a stretch runs from when the data could first have
    waited to the read that emptied the queue; shorter than EPISODE_S is noise; a stall charges
    the data that waited since the loop last looked."""
    b = saturation.ReceiveBacklog(10.0)
    assert b.due(10.0) and b.empty_at == 10.0
    b.sample(1, 10.2)  # one byte still queued after a read: waiting since the queue was last empty (10.0)
    assert (b.since, b.worst, b.count) == (10.0, 1, 0) and not b.due(10.205) and b.due(10.22)
    b.sample(0, 10.5)
    assert (b.count, b.total, b.longest, b.first, b.last, b.since, b.empty_at) == (1, 0.5, 0.5, 10.0, 10.5, 0.0, 10.5)
    b.stalled(0, 10.7)
    assert b.since == 0.0
    b.stalled(1, 11.0)  # one byte waits; the loop looked last at 11.0, after the queue was empty at 10.5
    assert (b.since, b.worst) == (11.0, 1)
    b.sample(0, 11.005)  # 5 ms: noise
    assert (b.count, b.since, b.empty_at) == (1, 0.0, 11.005)
    b.sample(2000, 12.0)
    b.settle(1)
    assert b.since == 11.005
    b.settle(0)  # nothing left, so the stretch ended with the last read
    assert saturation.client_record("sub3", "sub", 3, "receive_backlog", b, 99.0) == {
        "client_id": "sub3", "role": "sub", "index": 3, "kind": "receive_backlog", "seconds": 1.495, "longest_s": 0.995, "episodes": 2,
        "first_s": 10.0, "last_s": 12.0, "max_queued_bytes": 2000}
    # an open stretch at the end ends with the last read, not when the record is written
    open_end = saturation.ReceiveBacklog(1.0)
    open_end.sample(10, 1.5)
    assert saturation.client_record("sub4", "sub", 4, "receive_backlog", open_end, 9.0) == {
        "client_id": "sub4", "role": "sub", "index": 4, "kind": "receive_backlog", "seconds": 0.5, "longest_s": 0.5, "episodes": 1,
        "first_s": 1.0, "last_s": 1.5, "max_queued_bytes": 10}
    edge = saturation.Lateness()
    edge.observe(0.125, 0.225)  # exactly LATE_S behind (both exact in binary): late
    assert edge.since == 0.125 and edge.worst == 100000
    edge.observe(0.25, 2.25)
    assert edge.worst == 2000000  # microseconds
    late = saturation.Lateness()
    late.observe(1.0, 1.0625)  # 62.5 ms behind: not late
    assert late.since == 0.0 and saturation.client_record("pub1", "pub", 1, "behind_schedule", late, 2.0) is None
    late.observe(1.0, 1.125)
    late.observe(2.0, 2.25)
    late.observe(3.0, 3.0)  # back on schedule
    late.observe(4.0, 4.5078125)  # late again until the end of the run: 507812.5 us, whole microseconds kept
    assert saturation.client_record("pub1", "pub", 1, "behind_schedule", late, 4.75) == {
        "client_id": "pub1", "role": "pub", "index": 1, "kind": "behind_schedule", "seconds": 2.75, "longest_s": 2.0, "episodes": 2,
        "first_s": 1.0, "last_s": 4.75, "max_behind_ms": 507.812}
    # clock readings carry more digits than the record keeps: milliseconds
    fine = saturation.ReceiveBacklog(100.25037)
    fine.sample(1, 100.4)
    fine.sample(0, 100.98389)
    assert saturation.client_record("sub5", "sub", 5, "receive_backlog", fine, 101.0) == {
        "client_id": "sub5", "role": "sub", "index": 5, "kind": "receive_backlog", "seconds": 0.734, "longest_s": 0.734, "episodes": 1,
        "first_s": 100.25, "last_s": 100.984, "max_queued_bytes": 1}
    a, z = socket.socketpair()
    with a, z:
        a.sendall(b"12345")
        z.recv(1, socket.MSG_PEEK)  # it has arrived (a peek leaves it queued)
        assert saturation.queued_bytes(z.fileno()) == 5
        fd = z.fileno()
    assert saturation.queued_bytes(fd) == 0 and saturation.queued_bytes(z.fileno()) == 0  # closed (EBADF, and fileno -1): nothing waits


def test_latency_is_rebuilt_from_records_when_no_histogram_was_written(known: Path) -> None:
    for p in known.glob("bench/*/latency-*.json"):
        p.unlink()
    s = rundir.summarize(known)
    assert s["latency_ms"] == {"p50": 1.0, "p90": 5.0, "p99": 5.0, "max": 5.0}  # the duplicate's latency counts here: 1 ms
    (known / "bench" / "ipvs1" / "latency-run0.json").write_text("{not json")
    with pytest.raises(RunDirError, match="latency-run0.json: malformed latency histogram"):
        rundir.summarize(known)


def test_manifest_and_records_contract(tmp_path: Path) -> None:
    run = tmp_path / "r"
    doc = rundir.start_manifest(run, kind="bench", tag=7)
    assert (doc["format_version"], doc["run_id"], doc["status"], doc["ended_at"], doc["kind"], doc["tag"]) == (1, "r", "running", None, "bench", 7)
    assert set(doc["versions"]) == {"python", "paho_mqtt", "kernel"}
    assert rundir.read_manifest(run) == json.loads(json.dumps(doc))
    assert rundir.update_manifest(run, status="complete")["tag"] == 7 and rundir.read_manifest(run)["status"] == "complete"
    assert not list(run.glob("*.tmp*"))
    (run / "manifest.json").write_text("{")
    with pytest.raises(RunDirError, match="manifest.json: not valid JSON"):
        rundir.read_manifest(run)
    with pytest.raises(RunDirError, match="missing; not a run directory"):
        rundir.read_manifest(tmp_path / "none")
    rec = np.zeros(3, DELIVERY_DTYPE)
    rec["seq"] = [1, 2, 3]
    (run / "bench" / "h").mkdir(parents=True)
    (run / "bench" / "h" / "deliveries-run0.bin").write_bytes(rec.tobytes() + b"\x01" * 31)  # a torn last record
    (run / "bench" / "g").mkdir()
    (run / "bench" / "g" / "deliveries-sub0.bin").write_bytes(rec[:1].tobytes())
    assert rundir.read_deliveries(run / "bench" / "h" / "deliveries-run0.bin")["seq"].tolist() == [1, 2, 3]
    assert rundir.deliveries_on_disk(run) == 4 and rundir.deliveries_on_disk(run, "g") == 1 and DELIVERY_DTYPE.itemsize == 32
    with (run / "bench" / "h" / "clients-run0.csv").open("w") as f:
        f.write("client_id,role\nx,sub\n")
    (run / "manifest.json").write_text(json.dumps({"format_version": 1, "status": "complete"}))
    with pytest.raises(RunDirError, match="clients-run0.csv: missing columns connected_at, disconnects"):
        rundir.summarize(run)


# --------------------------------------------------------------------------- analysis


def brokers_csv(run: Path, rows: list[tuple[float, str, Any]]) -> None:
    with (run / "monitor" / "brokers.csv").open("w") as f:
        f.write("time_s,broker,cpu_pct,mem_bytes,clients_connected,msgs_received,msgs_sent,msgs_dropped,net_rx_bytes,net_tx_bytes\n")
        for t, b, dropped in rows:
            f.write(f"{t},{b},1,1,1,1,1,{dropped},1,1\n")


def test_dropped_delta_is_the_growth_of_counters_that_do_not_start_at_zero(known: Path) -> None:
    # rows out of time order, counters already high when the run began (the broker had been up), a blank sample
    brokers_csv(known, [(3.0, "broker1", 530), (1.0, "broker1", 500), (2.0, "broker1", 512), (1.0, "broker2", 70), (2.0, "broker2", ""),
                        (3.0, "broker2", 70), (2.5, "broker3", 9)])
    d = metrics.dropped_delta(load_run(known))
    assert d.to_dict() == {"broker1": 30, "broker2": 0, "broker3": 0}
    a = metrics.attribution(load_run(known)).set_index("where")
    assert a.loc["subscriber queue", "broker_dropped_sys"] == 30
    brokers_csv(known, [(1.0, "broker1", "")])
    assert metrics.dropped_delta(load_run(known)).empty


def test_partial_and_killed_runs_are_measured_against_their_plan(tmp_path: Path) -> None:
    t = reference_truth()
    t.status = "running"
    run = write_run(tmp_path / "killed", t)
    for p in run.glob("bench/*/*.csv"):
        if p.name.startswith(("subscribers-", "publishers-")):
            p.unlink()
    m = json.loads((run / "manifest.json").read_text())
    m["scenario"] = {"publishers": 2, "subscribers": 4, "messages": 200, "topic_layout": "shared"}
    (run / "manifest.json").write_text(json.dumps(m))
    s = metrics.summarize_run(load_run(run))
    assert s["partial"] and (s["expected"], s["delivered"], s["lost"], s["duplicates"]) == (800, 781, 19, 1)
    assert s["loss_by_broker"] == {"broker1": 12, "broker2": 1, "broker3": 6}
    b = rundir.summarize(run)
    assert (b["partial"], b["expected"], b["delivered"], b["lost"], b["duplicates"]) == (True, 800, 781, 19, 1)
    # one host's subscribers wrote their counts before the kill; the other's are rebuilt from their records
    ipvs2 = write_run(tmp_path / "whole", reference_truth()) / "bench" / "ipvs2"
    for name in ("subscribers-run0.csv", "publishers-run0.csv"):
        (run / "bench" / "ipvs2" / name).write_text((ipvs2 / name).read_text())
    for f in (metrics.summarize_run(load_run(run)), rundir.summarize(run)):
        assert (f["expected"], f["delivered"], f["lost"]) == (800, 781, 19)
    # counted and rebuilt pairs together: every lost delivery is placed once, as in the whole run
    a = metrics.attribution(load_run(run))
    assert a.attrs["total_lost"] == a["lost_deliveries"].sum() == 19 and sorted(a["lost_deliveries"]) == [4, 5, 10]
    # a planned publisher that wrote nothing and whose messages never arrived: all of it is lost
    m["scenario"] = {"publishers": 3, "subscribers": 4, "messages": 300}
    (run / "manifest.json").write_text(json.dumps(m))
    for f in (metrics.summarize_run(load_run(run)), rundir.summarize(run)):
        assert (f["expected"], f["delivered"], f["lost"]) == (800 + 2 * 100, 781, 219)
    # a complete run is never re-planned: its counts are the truth
    m["status"] = "complete"
    (run / "manifest.json").write_text(json.dumps(m))
    s = metrics.summarize_run(load_run(run))
    assert s["expected"] == 2 * 100  # ipvs2's two subscribers, pub1's 100 (pub0 wrote no count)
    # pub0's 200 deliveries to them are not charged as negative loss: sub1 lost pub1's last message, sub3 that and 5 at the bridge
    assert (s["delivered"], s["lost"]) == (393, 1 + 6)


def summary(**over: Any) -> dict[str, Any]:
    base = {"topology": "distributed", "balancer": "ipvs", "scheduler": "lc", "qos": 1, "publishers": 10, "subscribers": 10,
            "messages": 100, "loss_pct": 1.0, "latency_ms": {"p99": 10.0}, "fairness": 1.0, "duplicates": 0}
    return base | over


@pytest.mark.parametrize("key", ["topology", "balancer", "scheduler", "qos", "publishers", "subscribers", "messages"])
def test_comparison_groups_on_every_key(key: str) -> None:
    other = {"topology": "centralized", "balancer": "haproxy", "scheduler": "rr", "qos": 2, "publishers": 20, "subscribers": 30,
             "messages": 400}[key]
    rows = [summary(loss_pct=1.0, latency_ms={"p99": 10.0}), summary(loss_pct=3.0, latency_ms={"p99": 30.0}, duplicates=2, fairness=0.5),
            summary(**{key: other, "loss_pct": 50.0})]
    comp = metrics.comparison(rows)
    assert len(comp) == 2 and list(comp.columns[:len(metrics.GROUP_KEYS)]) == metrics.GROUP_KEYS
    same = comp[comp[key] != other].iloc[0]
    assert (same["runs"], same["loss_pct_mean"], same["p99_ms_mean"], same["fairness_mean"], same["duplicates_mean"]) == (2, 2.0, 20.0, 0.75, 1.0)
    assert same["loss_pct_std"] == pytest.approx(2 ** 0.5, abs=1e-3) and same["p99_ms_std"] == pytest.approx(14.142, abs=1e-3)
    alone = comp[comp[key] == other].iloc[0]
    assert alone["runs"] == 1 and alone["loss_pct_mean"] == 50.0 and pd.isna(alone["loss_pct_std"])


def test_comparison_keeps_runs_with_unknown_keys_and_rounds() -> None:
    comp = metrics.comparison([summary(balancer=None, loss_pct=1.0 / 3), summary(balancer=None, loss_pct=1.0 / 3)])
    assert len(comp) == 1 and comp.iloc[0]["runs"] == 2 and comp.iloc[0]["loss_pct_mean"] == 0.333


def test_jain_fairness_and_throughput(known: Path) -> None:
    assert metrics.jain([5, 5, 5]) == 1.0 and metrics.jain([9, 0, 0]) == pytest.approx(1 / 3) and metrics.jain([1, 3]) == pytest.approx(16 / 20)
    assert metrics.jain([]) is None and metrics.jain([0, 0]) is None
    tp = metrics.throughput(load_run(known))
    # two hosts, ten seconds each: per second 10 sent, 10 acked, 40 received on each host
    assert tp["t"].tolist() == list(range(10)) and (tp["sent"] == 20).all() and (tp["received"] == 80).all() and (tp["acked"] == 20).all()
    assert tp["second"].iloc[0] == 1_800_000_000


def test_summary_with_no_deliveries_at_all(tmp_path: Path) -> None:
    t = reference_truth()
    t.lost = {(s, p, q) for s in range(4) for p in range(2) for q in range(100)}
    t.dups = []
    s = metrics.summarize_run(load_run(write_run(tmp_path / "none", t)))
    assert (s["expected"], s["delivered"], s["lost"], s["loss_pct"]) == (800, 0, 800, 100.0)
    assert s["latency_ms"] == {"p50": None, "p90": None, "p99": None, "max": None}
    assert s["sent"] == 200 and s["loss_by_broker"] == {"broker1": 400, "broker2": 200, "broker3": 200}


def test_histogram_edges() -> None:
    h = Histogram()
    h.record(np.array([5]))
    h.record(np.array([5]))
    assert h.counts == {5: 2}  # one value is recorded; recording again adds
    many = Histogram()
    many.record(np.arange(1, 1001))
    assert (many.percentile(100), many.percentile(99), many.percentile(50)) == (1000.0, 990.0, 500.0)
    # where float log2 rounds up (2**53 - 1 and 2**60 - 1 become powers of two as floats), the bucket is still the right one
    huge = np.array([2**53 - 1, 2**60 - 1, 2**53, 2**40 + 12345])
    top = bucket_value(bucket_index(huge))
    assert (top >= huge).all() and (((top - huge) / huge.astype(float)) < 1e-3).all()
    assert (bucket_index(huge) == np.array([2048 + 41 * 1024 + 1023, 2048 + 48 * 1024 + 1023, 2048 + 42 * 1024, 2048 + 29 * 1024])).all()


def test_run_directory_writing_and_its_errors(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "doc.json"
    rundir.write_json_atomic(target, {"x": 1, "p": Path("/q")})
    assert target.read_text() == '{\n  "x": 1,\n  "p": "/q"\n}\n'
    doc = rundir.start_manifest(tmp_path / "r")
    assert abs(doc["started_at"] - __import__("time").time()) < 3600 and list(doc)[:6] == ["format_version", "run_id", "status", "started_at",
                                                                                            "ended_at", "versions"]
    (tmp_path / "r" / "manifest.json").write_text('{"format_version": 2}')
    with pytest.raises(RunDirError) as info:
        rundir.read_manifest(tmp_path / "r")
    assert str(info.value) == f"{tmp_path}/r/manifest.json: format_version 2, this mqttlab reads 1"


def test_bench_summary_numbers_at_their_edges(known: Path, tmp_path: Path) -> None:
    d = known / "bench" / "ipvs1"
    (d / "publishers-run1.csv").write_text("pub,client_id,planned,sent,acked,failed\n0,a,0,10,10,0\n")  # the same publisher, another writer
    (d / "subscribers-run1.csv").write_text("sub,client_id,pub,received,duplicates,out_of_order\n9,z,7,0,0,0\n")  # a publisher nobody ran
    (d / "clients-run1.csv").write_text("client_id,role,connected_at,disconnects\nz,sub,0.5,0\n")
    lat = Histogram()
    lat.record(np.arange(1, 101))
    (d / "latency-run0.json").write_text(json.dumps(lat.to_json()))
    (known / "bench" / "ipvs2" / "latency-run0.json").write_text(json.dumps(Histogram().to_json()))
    s = rundir.summarize(known)
    assert s["sent"] == 210 and (s["expected"], s["delivered"], s["lost"]) == (800 + 40, 781, 59) and s["loss_pct"] == 7.024
    assert s["clients_connected"] == 7 and s["latency_ms"] == {"p50": 0.05, "p90": 0.09, "p99": 0.099, "max": 0.1}
    write_self(known, "ipvs1", 1, cpu_busy_pct=95.0, loop_lag_p99_ms=60.0)
    s = rundir.summarize(known) | {"partial": True, "fidelity": None}
    assert rundir.format_summary(s).splitlines()[0] == "run known: PARTIAL"
    assert rundir.format_summary(s).endswith("may have been the limit:\n    worker 1 cpu_busy_pct=95.0 >= 90.0\n    worker 1 loop_lag_p99_ms=60.0 >= 50.0")
    t = reference_truth()
    t.lost, t.dups = set(), []
    whole = rundir.summarize(write_run(tmp_path / "whole", t))
    assert (whole["expected"], whole["delivered"], whole["lost"], whole["loss_pct"]) == (800, 800, 0, 0.0)
    empty = write_run(tmp_path / "empty", reference_truth())
    for p in empty.glob("bench/*/*"):
        if p.name.startswith(("subscribers-", "deliveries-", "latency-")):
            p.unlink()
    e = rundir.summarize(empty)
    assert (e["expected"], e["delivered"], e["lost"], e["loss_pct"]) == (0, 0, 0, 0.0)
    assert e["latency_ms"] == {"p50": None, "p90": None, "p99": None, "max": None}


def test_every_field_of_the_run_summary(tmp_path: Path) -> None:
    t = reference_truth()
    t.latency_ms = {0: 1.1, 1: 2.2, 2: 3.3, 3: 7.7}
    run = write_run(tmp_path / "k", t)
    m = json.loads((run / "manifest.json").read_text())
    m["scenario"] = {"qos": 2, "publishers": 2, "subscribers": 4, "messages": 200}
    (run / "manifest.json").write_text(json.dumps(m))
    s = metrics.summarize_run(load_run(run))
    # sub0 189 at 1.1 ms, sub1 199 at 2.2, sub2 199 at 3.3, sub3 194 at 7.7 (the bench's histogram, nearest rank over 781 deliveries)
    assert s == {
        "run_id": "k", "path": str(run), "partial": False, "notes": [], "topology": "distributed", "balancer": "ipvs", "scheduler": "lc",
        "stands_in_for": "", "requested_balancer": "ipvs", "requested_scheduler": "lc", "balancing": "ipvs-lc",
        "qos": 2, "publishers": 2, "subscribers": 4, "messages": 200, "sent": 200, "offered_rate": None, "expected": 800, "delivered": 781, "lost": 19,
        "loss_pct": 2.375, "duplicates": 1, "out_of_order": 0, "latency_ms": {"p50": 3.3, "p90": 7.7, "p99": 7.7, "max": 7.7},
        "bench_saturated": False, "saturation_reasons": [], "fidelity": None,
        "connections_per_broker": {"broker1": 3, "broker2": 2, "broker3": 1},
        "connections_per_balancer": {"ipvs1": {"broker1": 2, "broker2": 1, "broker3": 0}, "ipvs2": {"broker1": 1, "broker2": 1, "broker3": 1}},
        "fairness": round(36 / 42, 3), "fairness_per_balancer": {"ipvs1": round(9 / 15, 3), "ipvs2": 1.0},
        "loss_by_broker": {"broker1": 12, "broker2": 1, "broker3": 6},
        "locality": None, "links": None,  # this plan does not say how its brokers are joined; its links were clean
    }
    assert s["latency_ms"] == rundir.summarize(run)["latency_ms"]  # the same numbers bench summary prints
    # without a plan in the manifest, brokers and balancers come from the brokers' logs and the client hosts
    del m["plan"]
    (run / "manifest.json").write_text(json.dumps(m))
    s = metrics.summarize_run(load_run(run))
    assert s["connections_per_broker"] == {"broker1": 3, "broker2": 2, "broker3": 1}
    assert set(s["connections_per_balancer"]) == {"ipvs1", "ipvs2"}


def attribution_rows(run: Path) -> tuple[dict[tuple[Any, Any], Any], pd.DataFrame]:
    a = metrics.attribution(load_run(run))
    return {(r["broker"] if isinstance(r["broker"], str) else None, r["where"]): r for r in a.to_dict("records")}, a


def test_a_partial_loss_on_a_bridged_broker_is_its_subscribers_queue_and_explained_only_by_their_logs(tmp_path: Path) -> None:
    t = reference_truth()
    t.lost |= {(1, 1, 7)}  # sub1 on broker1 misses pub1's (broker2's) message 7, which sub0 on broker1 got: not the bridge
    rows, a = attribution_rows(write_run(tmp_path / "logged", t))
    q = rows[("broker1", "subscriber queue")]
    assert (q["lost_deliveries"], q["distinct_messages"], q["explained"]) == (11, 11, True) and ("broker1", "bridge into broker1") not in rows
    assert "1 of 2 subscribers logged as dropping on broker1" in q["evidence"]
    # shares of the 20 lost deliveries, to the hundredth
    assert {k: r["share_pct"] for k, r in rows.items()} == {("broker1", "subscriber queue"): 55.0, ("broker3", "bridge into broker3"): 25.0,
                                                             ("broker2", "missed by every subscriber"): 20.0}
    t.drops_logged = [("broker1", "mqttlab-bridge-x-broker1-broker3-local")]  # no subscriber's drops logged: unexplained
    rows, a = attribution_rows(write_run(tmp_path / "silent", t))
    q = rows[("broker1", "subscriber queue")]
    assert (q["explained"], a.attrs["unexplained"]) == (False, 11 + 4) and "0 of 2 subscribers logged" in q["evidence"]


def test_shares_of_the_loss_to_the_hundredth(known: Path) -> None:
    rows, _ = attribution_rows(known)  # 10, 5 and 4 of 19
    assert {k: r["share_pct"] for k, r in rows.items()} == {("broker1", "subscriber queue"): 52.63, ("broker3", "bridge into broker3"): 26.32,
                                                             ("broker2", "missed by every subscriber"): 21.05}


def test_a_loss_nobody_heard_is_explained_by_the_publishers_broker_counter_and_kept_when_that_broker_is_unknown(tmp_path: Path) -> None:
    t = reference_truth()
    t.sys_dropped = {"broker2": 1}  # one message dropped is evidence enough
    run = write_run(tmp_path / "k", t)
    rows, _ = attribution_rows(run)
    everyone = rows[("broker2", "missed by every subscriber")]
    assert (everyone["broker_dropped_sys"], everyone["explained"]) == (1, True) and "broker2 dropped 1 messages" in everyone["evidence"]
    # the monitor never sampled broker2: no counter is no evidence
    brokers_csv(run, [(1.0, "broker1", 0), (2.0, "broker1", 15)])
    rows, a = attribution_rows(run)
    everyone = rows[("broker2", "missed by every subscriber")]
    assert (everyone["broker_dropped_sys"], everyone["explained"]) == (0, False) and a.attrs["unexplained"] == 4
    # the publisher's connection is missing from the broker logs: its loss has no broker but stays in the table
    log = run / "logs" / "broker2.log"
    log.write_text("".join(line for line in log.read_text().splitlines(keepends=True) if "pub1" not in line))
    brokers_csv(run, [(1.0, "broker1", 0), (2.0, "broker1", 15), (1.0, "broker2", 0), (2.0, "broker2", 7)])
    rows, a = attribution_rows(run)
    nobody = rows[(None, "missed by every subscriber")]
    assert (nobody["lost_deliveries"], nobody["broker_dropped_sys"], nobody["explained"]) == (4, 0, False)
    assert a["lost_deliveries"].sum() == a.attrs["total_lost"] == 19 and a.attrs["unexplained"] == 4


def test_a_run_without_loss_has_an_empty_attribution_with_its_columns(tmp_path: Path) -> None:
    t = reference_truth()
    t.lost = set()
    a = metrics.attribution(load_run(write_run(tmp_path / "k", t)))
    assert a.empty and list(a.columns) == ["broker", "where", "lost_deliveries", "distinct_messages", "share_pct", "broker_dropped_sys",
                                           "evidence", "explained"]
    assert (a.attrs["total_lost"], a.attrs["unexplained"]) == (0, 0)


def test_a_client_is_on_the_broker_it_connected_to_last(known: Path) -> None:
    # sub0 connected to broker1 at 08:00:00 (broker1.log); an earlier attempt landed on broker3, a later reconnect on broker2
    with (known / "logs" / "broker3.log").open("a") as f:
        f.write("2027-01-15T07:59:59: New client connected from 10.3.0.10:50100 as mqttlab-1234abcd-sub0 (p2, c1, k60).\n")
    s = metrics.summarize_run(load_run(known))
    assert s["connections_per_broker"] == {"broker1": 3, "broker2": 2, "broker3": 1}
    with (known / "logs" / "broker2.log").open("a") as f:
        f.write("2027-01-15T08:00:09: New client connected from 10.3.0.10:50200 as mqttlab-1234abcd-sub0 (p2, c1, k60).\n")
    s = metrics.summarize_run(load_run(known))
    assert s["connections_per_broker"] == {"broker1": 2, "broker2": 3, "broker3": 1}
    assert s["loss_by_broker"] == {"broker1": 1, "broker2": 12, "broker3": 6}  # sub0's 11 losses follow it


def test_report_and_bench_summary_show_one_p99(tmp_path: Path) -> None:
    # latencies between histogram buckets: linear percentiles over the raw records would give
    # another p99 than the histogram's nearest rank, which is what bench summary prints
    t = reference_truth()
    t.latency_ms = {0: 30.3861, 1: 30.3992, 2: 12.34567, 3: 7.0}
    run = write_run(tmp_path / "p", t)
    report_lat = metrics.summarize_run(load_run(run))["latency_ms"]
    bench = rundir.summarize(run)
    assert report_lat == bench["latency_ms"]
    assert report_lat["p99"] == 30.4  # 3 significant digits, what the histogram carries
    assert f"p99 {report_lat['p99']} " in rundir.format_summary(bench)


def test_one_broker_alone_is_perfectly_fair() -> None:
    assert metrics.jain([4]) == 1.0 and metrics.jain(np.array([0, 6])) == 0.5


def test_a_complete_run_without_subscriber_counts_is_measured_from_its_records(known: Path) -> None:
    for p in known.glob("bench/*/subscribers-*.csv"):
        p.unlink()
    s = metrics.summarize_run(load_run(known))
    # pub0's duplicate (sub2, seq 3) counts once as received and once as a duplicate; order is not measured from records
    assert (s["expected"], s["delivered"], s["lost"], s["duplicates"], s["out_of_order"]) == (800, 781, 19, 1, 0)
    assert s["loss_by_broker"] == {"broker1": 12, "broker2": 1, "broker3": 6}


def test_nothing_expected_is_no_loss(known: Path) -> None:
    for p in known.glob("bench/*/*"):
        if p.name.startswith(("subscribers-", "deliveries-")):
            p.unlink()
    s = metrics.summarize_run(load_run(known))
    assert (s["expected"], s["delivered"], s["lost"], s["loss_pct"]) == (0, 0, 0, 0.0)


def test_loss_percentage_to_three_decimals(tmp_path: Path) -> None:
    t = reference_truth(sent=300)  # 2400 expected
    t.lost = {(0, 0, 5)}
    assert metrics.summarize_run(load_run(write_run(tmp_path / "k", t)))["loss_pct"] == 0.042  # 100 / 2400 = 0.04166...


def test_a_planned_broker_nobody_reached_counts_in_the_fairness(tmp_path: Path) -> None:
    t = reference_truth()
    t.subs[3] = ("ipvs2", "broker2")  # broker3 is in the plan but gets no client
    s = metrics.summarize_run(load_run(write_run(tmp_path / "k", t)))
    assert s["connections_per_broker"] == {"broker1": 3, "broker2": 3, "broker3": 0}
    assert s["fairness"] == round(36 / (3 * 18), 3)  # (3 + 3 + 0)^2 / (3 * (9 + 9)) = 2/3
    assert s["connections_per_balancer"]["ipvs2"] == {"broker1": 1, "broker2": 2, "broker3": 0}


def test_centralized_clients_are_counted_at_the_balancer_they_dialled(tmp_path: Path) -> None:
    t = reference_truth()
    t.topology = "centralized"  # both client hosts dial ipvs1
    s = metrics.summarize_run(load_run(write_run(tmp_path / "k", t)))
    assert s["connections_per_balancer"] == {"ipvs1": {"broker1": 3, "broker2": 2, "broker3": 1}}
    assert s["fairness_per_balancer"] == {"ipvs1": round(36 / 42, 3)}


def test_a_sample_without_a_cpu_reading_still_counts_its_drop_counter(known: Path) -> None:
    with (known / "monitor" / "brokers.csv").open("w") as f:
        f.write("time_s,broker,cpu_pct,mem_bytes,clients_connected,msgs_received,msgs_sent,msgs_dropped,net_rx_bytes,net_tx_bytes\n"
                "1.0,broker1,5,1,1,1,1,100,1,1\n2.0,broker1,,1,1,1,1,108,1,1\n")
    assert metrics.dropped_delta(load_run(known)).to_dict() == {"broker1": 8}


def test_bridge_loss_evidence_names_every_bridge_client_logged(tmp_path: Path) -> None:
    t = reference_truth()
    t.drops_logged = [("broker1", t.cid("sub", 0))]
    rows, _ = attribution_rows(write_run(tmp_path / "none", t))
    br = rows[("broker3", "bridge into broker3")]
    assert (br["evidence"], br["explained"]) == ("bridge clients logged as dropping: none", False)
    t.drops_logged += [("broker2", "mqttlab-bridge-x-broker2-broker3"), ("broker1", "mqttlab-bridge-x-broker1-broker3-local")]
    rows, _ = attribution_rows(write_run(tmp_path / "two", t))
    br = rows[("broker3", "bridge into broker3")]
    assert br["evidence"] == ("bridge clients logged as dropping: broker1:mqttlab-bridge-x-broker1-broker3-local, "
                              "broker2:mqttlab-bridge-x-broker2-broker3") and br["explained"]


def test_the_bench_summary_lists_what_brokers_refused(known: Path) -> None:
    s = rundir.summarize(known) | {"fidelity": None}
    assert "refused" not in rundir.format_summary(s)
    text = rundir.format_summary(s | {"clients_refused": 0, "publishes_refused": 3, "refusal_reasons": {"publish_refused 135 not authorized": 3}})
    assert text.splitlines()[0] == "run known: complete"
    assert text.endswith("\n  refused by brokers clients 0  publishes 3 (not counted as lost)\n    3 x publish_refused 135 not authorized")
    text = rundir.format_summary(s | {"clients_refused": 2, "publishes_refused": 0, "refusal_reasons": {"connack_error 134 bad user name or password": 2}})
    assert text.endswith("\n  refused by brokers clients 2  publishes 0 (not counted as lost)\n    2 x connack_error 134 bad user name or password")


def test_publishes_a_broker_refused_are_not_expected_and_refused_clients_are_named(known: Path) -> None:
    """What a broker refused (ACL, authentication, TLS) reaches nobody: it is taken off what the
    subscribers should get, counted apart, and a client counts as refused only if it never got in."""
    b = known / "bench"
    head = "pub,client_id,planned,sent,acked,failed,first_send_s,last_send_s,max_behind_ms,refused\n"
    (b / "ipvs1" / "publishers-run0.csv").write_text(head + "0,p0,100,100,100,0,1.0,2.0,0.5,10\n")
    (b / "ipvs2" / "publishers-run0.csv").write_text(head + "1,p1,100,100,100,0,1.0,2.0,0.5,6\n")
    head = "sub,client_id,pub,received,duplicates,out_of_order,foreign\n"
    (b / "ipvs1" / "subscribers-run0.csv").write_text(head + "0,s0,0,90,0,0,0\n0,s0,1,94,0,0,0\n2,s2,0,90,0,0,0\n2,s2,1,93,0,0,0\n")
    (b / "ipvs2" / "subscribers-run0.csv").write_text(head + "1,s1,0,88,0,0,0\n1,s1,1,94,0,0,0\n3,s3,0,90,0,0,0\n3,s3,1,94,0,0,0\n"
                                                      "3,s3,2,0,0,0,0\n")  # a publisher nobody saw send: nothing expected of it
    head = "time_s,client_id,event,detail\n"
    (b / "ipvs1" / "events-run0.csv").write_text(head + "1.0,x,connack_error,Not authorized\n1.1,x,connack_error,Not authorized\n"
                                                 "1.2,y,connect_error,tls handshake\n1.3,z,connack_error,Not authorized\n1.4,z,connect,\n"
                                                 "1.5,p,publish_refused,Not authorized\n1.6,q,publish_refused,Not authorized\n")
    (b / "ipvs2" / "events-run0.csv").write_text(head + "1.0,r,connack_error,Not authorized\n1.1,r,reconnect,\n1.2,w,suback_error,128\n")
    s = rundir.summarize(known)
    # each of the 4 subscribers should get pub0's 90 and pub1's 94 accepted publishes: 736, of which 733 arrived
    assert (s["sent"], s["expected"], s["delivered"], s["lost"], s["loss_pct"]) == (200, 736, 733, 3, 0.408)
    assert s["publishes_refused"] == 16
    # each subscriber's loss is against its publishers' own accepted counts: only sub1 (2 short of pub0) and sub2
    # (1 short of pub1) lost any, so only they are judged by the lossy clients' shorter limit
    write_self(known, "ipvs2", 3, clients=[sub_client(i, 0.1, max_queued_bytes=65536) for i in range(4)])
    assert [(c["client_id"], c["lost"]) for c in rundir.summarize(known)["saturated_clients"]] == [("sub1", 2), ("sub2", 1)]
    # x and y never got in; z and r did later; p, q and w were refused a publish or a subscription, not the connection
    assert s["clients_refused"] == 2
    assert s["refusal_reasons"] == {"connack_error: Not authorized": 3, "connect_error: tls handshake": 1,
                                    "publish_refused: Not authorized": 2, "suback_error: 128": 1}


def test_a_runs_fault_records_are_read_from_the_lab_file_or_merged_from_every_vm_in_fault_order(tmp_path: Path) -> None:
    assert rundir.read_faults(tmp_path) == []  # a run without faults
    vm = tmp_path / "faults"
    vm.mkdir()
    (vm / "ipvs2.jsonl").write_text(json.dumps({"index": 2, "spec": "director:ipvs2:kill@8s"}) + "\n\n")
    (vm / "brokers.jsonl").write_text(json.dumps({"index": 3, "spec": "broker1:pause@9s+1s"}) + "\n\n"  # a blank line is no record
                                      + json.dumps({"index": 0, "spec": "broker2:kill@5s"}) + "\n")
    assert [r["index"] for r in rundir.read_faults(tmp_path)] == [0, 2, 3]  # Azure: each VM's file, in mqttlab:faults' order
    (tmp_path / "faults.jsonl").write_text(json.dumps({"spec": "broker2:kill@1s"}) + "\n" + json.dumps({"spec": "broker3:kill@2s"}) + "\n")
    assert [r["spec"] for r in rundir.read_faults(tmp_path)] == ["broker2:kill@1s", "broker3:kill@2s"]  # the lab's one file, as written
    (vm / "brokers.jsonl").write_text('{"index": 1}\nnot json\n')
    (tmp_path / "faults.jsonl").unlink()
    with pytest.raises(RunDirError, match=r"brokers.jsonl: line 2 is not JSON"):
        rundir.read_faults(tmp_path)
