"""The run directory: the contract between measuring and analysing (docs/run-format.md).

Only the standard library and numpy: this runs on client VMs, where pandas is not installed.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workloads.base.numbers import dumps, rounded
from workloads.describe.scenario import QUIET_S, Scenario
from workloads.rundir.fidelity import evaluate, verdict_line
from workloads.rundir.hist import Histogram
from workloads.rundir.saturation import judge

FORMAT_VERSION = 1
# one record per delivery in bench/<host>/deliveries-*.bin (docs/run-format.md)
DELIVERY_DTYPE = np.dtype([("sub", "<u4"), ("pub", "<u4"), ("seq", "<u4"), ("dup", "<u4"), ("send_ns", "<i8"), ("recv_ns", "<i8")])
# beside it, bench/<host>/intended-*.bin: each delivery's intended send time, record for record
# (a file of its own, so run directories written before it load unchanged)
INTENDED_DTYPE = np.dtype("<i8")


class RunDirError(ValueError):
    """A run directory is missing a file or has a malformed one; names which and why."""


def versions() -> dict[str, str]:
    import paho.mqtt

    return {"python": platform.python_version(), "paho_mqtt": paho.mqtt.__version__, "kernel": platform.release()}


def machine() -> dict[str, Any]:
    """The host the run used, for a methods section: the CPU count and memory bound what a run can
    offer, so a figure without them cannot be compared with another machine's."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    return {"cpus": os.cpu_count(), "memory_bytes": mem, "hostname": platform.node(), "machine": platform.machine()}


def write_json_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(dumps(doc))  # strict JSON: a NaN or infinity becomes null
    os.replace(tmp, path)


def start_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Written before anything runs, with status "running": a crash leaves it so, which loaders
    report as partial."""
    doc = {"format_version": FORMAT_VERSION, "run_id": run_dir.name, "status": "running", "started_at": time.time(),
           "ended_at": None, "versions": versions(), "machine": machine()} | fields
    write_json_atomic(run_dir / "manifest.json", doc)
    return doc


def update_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    doc = read_manifest(run_dir) | fields
    write_json_atomic(run_dir / "manifest.json", doc)
    return doc


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunDirError(f"{path}: {'not a file' if path.exists() else 'missing'}; not a run directory")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8 text
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: not a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise RunDirError(f"{path}: format_version {doc.get('format_version')!r}, this mqttlab reads {FORMAT_VERSION}")
    return dict(doc)


def _rows(path: Path, required: tuple[str, ...], numbers: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a CSV with ``required`` columns; ``numbers`` (where present) must be numbers,
    so a damaged file is named here rather than failing in the sums."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise RunDirError(f"{path}: missing columns {', '.join(missing)}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path}: not a valid CSV ({exc})") from None
    for n, r in enumerate(rows, 2):
        for c in numbers:
            try:
                float(r.get(c) or 0)
            except (TypeError, ValueError):
                raise RunDirError(f"{path}: line {n}: {c} {r.get(c)!r} is not a number") from None
    return rows


def summarize(run_dir: Path) -> dict[str, Any]:
    """Exact totals over every host's bench records of a run."""
    manifest = read_manifest(run_dir)
    bench = run_dir / "bench"
    sent: dict[int, int] = {}
    accepted: dict[int, int] = {}  # sent and not refused by the broker: what subscribers can get
    planned = acked = failed = pub_refused = 0
    for p in sorted(bench.glob("*/publishers-*.csv")):
        for r in _rows(p, ("pub", "planned", "sent", "acked", "failed"), ("pub", "planned", "sent", "acked", "failed", "refused")):
            refused = int(r.get("refused") or 0)
            sent[int(r["pub"])] = sent.get(int(r["pub"]), 0) + int(r["sent"])
            accepted[int(r["pub"])] = accepted.get(int(r["pub"]), 0) + int(r["sent"]) - refused
            pub_refused += refused
            planned += int(r["planned"])
            acked += int(r["acked"])
            failed += int(r["failed"])
    # a run killed before every worker wrote its counts is measured against what it planned
    scenario = Scenario.from_dict(manifest["scenario"]) if manifest.get("status") != "complete" and manifest.get("scenario") else None
    expect_of = dict(accepted)  # refused publishes reach nobody
    if scenario is not None:
        expect_of = {p: scenario.messages_of(p) for p in range(scenario.publishers)} | expect_of
    expected = delivered = duplicates = ooo = foreign = 0
    lost_by_sub: dict[int, int] = {}
    counted: set[int] = set()
    for p in sorted(bench.glob("*/subscribers-*.csv")):
        for r in _rows(p, ("sub", "pub", "received", "duplicates", "out_of_order"),
                       ("sub", "pub", "received", "duplicates", "out_of_order", "foreign")):
            sub = int(r["sub"])
            counted.add(sub)
            expected += expect_of.get(int(r["pub"]), 0)
            lost_by_sub[sub] = lost_by_sub.get(sub, 0) + expect_of.get(int(r["pub"]), 0) - int(r["received"])
            delivered += int(r["received"])
            duplicates += int(r["duplicates"])
            ooo += int(r["out_of_order"])
            foreign += int(r.get("foreign") or 0)
    if scenario is not None:  # subscribers without counts: their delivery records against the plan
        for sub, pub, _planned in scenario.planned_pairs():
            if sub not in counted:
                expected += expect_of[pub]
        for p in sorted(bench.glob("*/deliveries-*.bin")):
            rec = read_deliveries(p)
            rec = rec[~np.isin(rec["sub"], np.fromiter(counted, dtype=np.uint32, count=len(counted)))]
            dup = rec["dup"] != 0
            duplicates += int(dup.sum())
            first = rec[~dup]
            delivered += len(np.unique(np.stack([first["sub"], first["pub"], first["seq"]], axis=1), axis=0))
    clients = connected = disconnects = 0
    for p in sorted(bench.glob("*/clients-*.csv")):
        for r in _rows(p, ("client_id", "role", "connected_at", "disconnects"), ("connected_at", "disconnects")):
            clients += 1
            connected += 1 if float(r["connected_at"] or 0) > 0 else 0
            disconnects += int(r["disconnects"])
    refusals = refusal_reasons(bench)
    hist, hist_intended = Histogram(), Histogram()
    for p in sorted(bench.glob("*/latency-*.json")):
        try:
            doc = json.loads(p.read_text())
            hist.merge(Histogram.from_json(doc))
            if "intended" in doc:  # written since the payload carries the intended send time
                hist_intended.merge(Histogram.from_json(doc["intended"]))
        except (json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise RunDirError(f"{p}: malformed latency histogram ({exc})") from None
    if not hist.total:  # killed before the end: rebuild from the raw records
        for p in sorted(bench.glob("*/deliveries-*.bin")):
            rec = read_deliveries(p)
            hist.record((rec["recv_ns"] - rec["send_ns"]) // 1000)
            intended = read_intended(p, len(rec))
            if intended is not None:
                hist_intended.record((rec["recv_ns"][: len(intended)] - intended) // 1000)
    selfs = [json.loads(p.read_text()) for p in sorted(bench.glob("*/self-*.json"))]
    reasons, saturated_clients = judge(selfs, lost_by_sub)
    lost = max(0, expected - delivered)
    return {
        "run_id": manifest.get("run_id"),
        "status": manifest.get("status"),
        "partial": manifest.get("status") != "complete",
        "planned": planned,
        "sent": sum(sent.values()),
        "acked": acked,
        "publish_failures": failed,
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "loss_pct": rounded(100.0 * lost / expected, "pct") if expected else 0.0,
        "duplicates": duplicates,
        "out_of_order": ooo,
        "foreign": foreign,
        "clients": clients,
        "clients_connected": connected,
        "disconnects": disconnects,
        # refused by a broker (authentication, TLS, ACL) is not loss: counted and explained here
        "clients_refused": len(refusals["clients"]),
        "publishes_refused": pub_refused,
        "refusal_reasons": refusals["reasons"],
        "latency_ms": latency_of(hist),
        # from the intended send time: what a message waited because its publisher was behind counts
        # (None for runs whose payload did not carry it)
        "latency_intended_ms": latency_of(hist_intended) if hist_intended.total else None,
        "bench_saturated": bool(reasons),
        "saturation_reasons": reasons,
        "saturated_clients": saturated_clients,
        "fidelity": evaluate(run_dir, manifest),
        # the load against one capped broker's calibrated capacity on this host (lab run --calibrate)
        "overload_ratio": manifest.get("overload_ratio"),
        "calibration": manifest.get("calibration"),
    }


REFUSAL_EVENTS = ("connack_error", "connect_error", "publish_refused", "suback_error")


def refusal_reasons(bench: Path) -> dict[str, Any]:
    """From the events: which clients a broker turned away and why (``{event: {reason: clients}}``)."""
    connected: set[str] = set()
    turned: dict[str, set[str]] = {}
    for p in sorted(bench.glob("*/events-*.csv")):
        for r in _rows(p, ("client_id", "event", "detail")):
            if r["event"] in ("connect", "reconnect"):
                connected.add(r["client_id"])
            elif r["event"] in REFUSAL_EVENTS:
                turned.setdefault(f"{r['event']}: {r['detail']}", set()).add(r["client_id"])
    clients = {c for key, ids in turned.items() if not key.startswith(("publish_refused", "suback_error")) for c in ids} - connected
    return {"clients": clients, "reasons": {k: len(v) for k, v in sorted(turned.items())}}


def latency_of(hist: Histogram) -> dict[str, float | None]:
    """p50, p90, p99 and max in milliseconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else rounded(v / 1000.0, "latency_ms")

    return {"p50": ms(hist.percentile(50)), "p90": ms(hist.percentile(90)), "p99": ms(hist.percentile(99)), "max": ms(hist.max())}


def read_intended(deliveries: Path, records: int) -> np.ndarray | None:
    """The intended send times beside a deliveries file, at most ``records`` of them (the two
    files are written together; a crash may tear either); None when the run did not write them."""
    path = deliveries.with_name(deliveries.name.replace("deliveries-", "intended-", 1))
    if not path.is_file():
        return None
    raw = path.read_bytes()
    n = min(records, len(raw) // INTENDED_DTYPE.itemsize)
    return np.frombuffer(raw[: n * INTENDED_DTYPE.itemsize], dtype=INTENDED_DTYPE)


def read_deliveries(path: Path) -> np.ndarray:
    """Per-delivery records; a torn last record (crash mid-write) is dropped."""
    raw = path.read_bytes()
    usable = len(raw) - len(raw) % DELIVERY_DTYPE.itemsize
    return np.frombuffer(raw[:usable], dtype=DELIVERY_DTYPE)


def deliveries_on_disk(run_dir: Path, host: str = "*") -> int:
    """How many deliveries the bench has written so far (all hosts, or one)."""
    return sum(p.stat().st_size // DELIVERY_DTYPE.itemsize for p in run_dir.glob(f"bench/{host}/deliveries-*.bin"))


def read_faults(run_dir: Path) -> list[dict[str, Any]]:
    """The faults of a run as carried out (empty when it had none): the lab's ``faults.jsonl``,
    or on Azure each injecting VM's ``faults/<host>.jsonl`` (the same records plus their place in
    ``mqttlab:faults``), merged in that order."""
    paths = [run_dir / "faults.jsonl"] if (run_dir / "faults.jsonl").exists() else sorted((run_dir / "faults").glob("*.jsonl"))
    out = []
    for path in paths:
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunDirError(f"{path}: line {i + 1} is not JSON ({exc})") from None
    return sorted(out, key=lambda r: int(r.get("index", 0)))


def drain(count: Callable[[], int], want: int | None, limit_s: float, poll_s: float = 0.2,
          stopped: Callable[[], bool] = lambda: False) -> int:
    """Wait for deliveries to settle: until ``count()`` reaches ``want``, or has not grown for
    QUIET_S, or ``limit_s`` passed, or ``stopped()``. Messages still queued in an overloaded broker
    are given the time to arrive instead of being counted as lost; returns the last count."""
    end = time.time() + limit_s
    seen, quiet_since = -1, time.time()
    while True:
        got = count()
        if (want is not None and got >= want) or stopped():
            return got
        if got != seen:
            seen, quiet_since = got, time.time()
        elif time.time() - quiet_since >= QUIET_S:
            return got
        if time.time() >= end:
            return got
        time.sleep(poll_s)


def format_summary(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    lines = [
        f"run {s['run_id']}: {'PARTIAL' if s['partial'] else 'complete'}",
        f"  clients connected  {s['clients_connected']}/{s['clients']}  (disconnects {s['disconnects']})",
        f"  published          {s['sent']}/{s['planned']}  acked {s['acked']}",
        f"  expected deliveries {s['expected']}",
        f"  delivered          {s['delivered']}",
        f"  lost               {s['lost']}  ({s['loss_pct']:.3f} %)",
        f"  duplicates         {s['duplicates']}   out of order {s['out_of_order']}",
        f"  latency ms         p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
    ]
    li = s.get("latency_intended_ms")
    if li:
        lines.append(f"    from intended    p50 {li['p50']}  p90 {li['p90']}  p99 {li['p99']}  max {li['max']}  (the schedule's send time)")
    if s.get("clients_refused") or s.get("publishes_refused"):
        lines.append(f"  refused by brokers clients {s['clients_refused']}  publishes {s['publishes_refused']} (not counted as lost)")
        lines += [f"    {n} x {why}" for why, n in s.get("refusal_reasons", {}).items()]
    if s["bench_saturated"]:
        lines.append("  WARNING bench_saturated: the load generator, not the system, may have been the limit:")
        lines += [f"    {r}" for r in s["saturation_reasons"]]
    cal = s.get("calibration")
    if cal and s.get("overload_ratio") is not None:
        lines.append(f"  overload ratio     {s['overload_ratio']}  (offered per broker over one capped broker's capacity on this host, "
                     f"{cal['capacity']:.0f} deliveries/s at {cal['broker_cpus']} CPU)")
    if s.get("fidelity"):
        lines += format_fidelity(s["fidelity"])
    return "\n".join(lines)


def format_fidelity(f: dict[str, Any]) -> list[str]:
    """The verdict, then each check: result, measure, value against its threshold, and why."""
    lines = [f"  fidelity           {verdict_line(f)}"]
    for c in f["checks"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[c["passed"]]
        value = "-" if c["value"] is None else c["value"]
        lines.append(f"    {mark} {c['name']}: {c['measure']} {value} (threshold {c['threshold']})" + (f"; {c['detail']}" if c["detail"] else ""))
    return lines
