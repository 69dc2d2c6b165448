"""Running a campaign: the matrix in its recorded order, one normal run directory per point,
resumable, with progress and an ETA.

Each lab point is a ``mqttlab lab run`` in a child process of its own session: a crash in one
point cannot take the campaign down, the lab's own teardown runs on Ctrl-C (we forward SIGINT
and wait for it), and what a point ran is exactly what a user running ``lab run`` gets. The point
is complete only once its ``result.json`` is written, atomically, after the run directory says
``complete``; anything else (killed, interrupted, failed) is run again on resume, with what it left
moved aside under ``interrupted/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workloads.base.procs import mqttlab
from workloads.campaign.spec import Campaign, CampaignError, Point
from workloads.describe.config import ExperimentConfig
from workloads.describe.runsize import fmt_s
from workloads.describe.standin import balancing, balancing_columns
from workloads.rundir.records import read_deliveries, read_manifest, write_json_atomic

STOP_GRACE_S = 120.0  # how long a point gets to tear its lab down after SIGINT


class PointFailed(RuntimeError):
    """A point ran but did not produce a complete run; the campaign goes on with the next."""


PointRunner = Callable[[Point, ExperimentConfig, Path], dict[str, Any]]


@dataclass
class Outcome:
    done: list[str]
    ran: list[str]
    failed: dict[str, str]
    skipped: list[str]


def offered_rate(cfg: ExperimentConfig) -> float:
    """Messages per second the publishers offer together (the schedule's rate, not what got through)."""
    sc = cfg.scenario
    return sc.publishers * 1000.0 / sc.interval_ms if sc.interval_ms else float("inf")


def delivery_throughput(run_dir: Path) -> float | None:
    """Deliveries per second from the first message sent to the last delivery received, from the
    per-delivery records (exact to the nanosecond; per-second timelines are too coarse for runs
    of a few seconds)."""
    first, last, n = None, None, 0
    for p in run_dir.glob("bench/*/deliveries-*.bin"):
        rec = read_deliveries(p)
        if not len(rec):
            continue
        rec = rec[rec["dup"] == 0]
        n += len(rec)
        lo, hi = int(rec["send_ns"].min()), int(rec["recv_ns"].max())
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    if not n or first is None or last is None or last <= first:
        return None
    return n / ((last - first) / 1e9)


def point_record(point: Point, cfg: ExperimentConfig, run_dir: Path, summary: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """What the campaign keeps about a point: where its run is, what balanced it (the point's own
    ``balancer`` is the lab's choice as given, ``balancer_kind`` what ran), and the numbers
    statistics need."""
    kind = (summary.get("balancer") or {}).get("kind")
    ran = {k: v for k, v in balancing_columns(balancing(kind, cfg.balancer.scheduler) if kind else None).items() if k != "balancer"}
    return point.to_dict() | ran | {
        "status": "complete", "run_dir": str(run_dir), "duration_s": round(duration_s, 3),
        "offered_rate": offered_rate(cfg), "topology": cfg.topology,
        "qos": cfg.scenario.qos, "publishers": cfg.scenario.publishers, "subscribers": cfg.scenario.subscribers,
        "expected": summary.get("expected"), "delivered": summary.get("delivered"), "lost": summary.get("lost"),
        "loss_pct": summary.get("loss_pct"), "p99_ms": (summary.get("latency_ms") or {}).get("p99"),
        "throughput": summary.get("throughput", delivery_throughput(run_dir) if run_dir.is_dir() else None),
        "balancer_kind": (summary.get("balancer") or {}).get("kind"), "balancer_note": (summary.get("balancer") or {}).get("note"),
        "bench_saturated": summary.get("bench_saturated"), **fidelity_fields(summary.get("fidelity")),
        "overload_ratio": summary.get("overload_ratio"), "capacity": (summary.get("calibration") or {}).get("capacity"),
    } | (run_measures(run_dir) if run_dir.is_dir() else {})


def run_measures(run_dir: Path) -> dict[str, Any]:
    """What a point's run says of locality and recovery, from its own records: the share of its
    deliveries that crossed a bridge, and after its faults the reconnect storm (the clients they
    cut off, how many never came back, the time until the last had its CONNACK again, the worst
    fault's; the deliveries lost inside the fault windows)."""
    from workloads.analysis.availability import fault_table
    from workloads.analysis.load import load_run
    from workloads.analysis.locality import locality
    from workloads.analysis.metrics import client_brokers

    run = load_run(run_dir)
    out: dict[str, Any] = {"crossed_pct": (locality(run, client_brokers(run)) or {}).get("crossed_pct")}
    faults = fault_table(run)
    if not faults.empty:
        never = int(faults["never_back"].sum())
        out |= {"affected_clients": int(faults["affected_clients"].sum()), "never_back": never,
                "all_back_s": None if never else float(faults["all_back_s"].max()),  # each fault's is set once all are back
                "lost_in_faults": int(faults["lost_inside"].sum())}
    return out


def fidelity_fields(f: dict[str, Any] | None) -> dict[str, Any]:
    """The run's verdict as the campaign keeps it: ``verdict`` (valid, invalid, or None for a run
    that was not checked), the failed checks, and each check's measure against its threshold, so
    that a campaign directory without its run directories still says why a run did not count."""
    if not f:
        return {"verdict": None, "failed_checks": [], "checks": {}}
    return {"verdict": f.get("verdict"), "failed_checks": list(f.get("failed") or []),
            "checks": {c["name"]: {"value": c.get("value"), "threshold": c.get("threshold"), "passed": c.get("passed")} for c in f.get("checks") or []}}


# --------------------------------------------------------------------------- lab points


def write_point_stack(cfg: ExperimentConfig, point_dir: Path) -> Path:
    """The point's exact configuration as a stack file of its own: ``lab run`` reads it like any
    other, and it stays beside the run as the record of what ran."""
    path = point_dir / f"Pulumi.{cfg.stack}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by mqttlab campaign: the base stack with this point's overrides.\n"
                    + yaml.safe_dump({"config": dict(cfg.raw)}, sort_keys=False))
    return path


def calibration_key(cfg: ExperimentConfig) -> str:
    """What one broker's calibrated capacity depends on: its cap, the QoS, payload and protocol,
    its share of the subscribers and publishers, their rate, the topic layout and security."""
    from workloads.rundir.calibration import fanout

    sc = cfg.scenario
    return (f"cpus={cfg.brokers.cpus}-qos={sc.qos}-payload={sc.payload_bytes}-mqtt={sc.mqtt_version}-fanout={fanout(cfg)}"
            f"-publishers={-(-sc.publishers // cfg.brokers.count)}-interval={sc.interval_ms}-topics={sc.topic_layout}-security={cfg.security.mode}")


def calibration_for(cdir_path: Path, cfg: ExperimentConfig, point_dir: Path, progress: bool) -> Path:
    """The campaign's calibration of this point's broker (``calibration.json`` beside the points,
    one per :func:`calibration_key`), taken now by ``lab calibrate`` when it has none; returns a
    file holding it, for ``lab run --calibration``."""
    book_path = cdir_path / "calibration.json"
    book = json.loads(book_path.read_text()) if book_path.is_file() else {}
    key = calibration_key(cfg)
    if key not in book:
        cmd = [*mqttlab(), "lab", "calibrate", "-s", cfg.stack, "--project-dir", str(point_dir),
               "--out", str(cdir_path), "--json"] + ([] if progress else ["--quiet"])
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])
        if cp.returncode != 0:
            tail = cp.stderr.strip().splitlines()[-2:]
            raise PointFailed(f"calibration failed ({cp.returncode}): {' | '.join(tail) or 'no output'}")
        book[key] = json.loads(cp.stdout[cp.stdout.index("{"):])
        write_json_atomic(book_path, book)
    path = point_dir / "calibration.json"
    write_json_atomic(path, book[key])
    return path


def lab_runner(campaign: Campaign, progress: bool = False, calibrate: bool = False) -> PointRunner:
    """Each point a ``lab run`` of its own stack file; with ``calibrate``, its load stated against
    the campaign's calibration of its broker (:func:`calibration_for`)."""
    def run(point: Point, cfg: ExperimentConfig, point_dir: Path) -> dict[str, Any]:
        write_point_stack(cfg, point_dir)
        runs = point_dir / "runs"
        cmd = [*mqttlab(), "lab", "run", "-s", cfg.stack, "--project-dir", str(point_dir), "--out", str(runs),
               "--json"]
        if calibrate:
            cmd += ["--calibration", str(calibration_for(point_dir.parent.parent, cfg, point_dir, progress))]
        cmd += ["--balancer", point.balancer] if point.balancer else []
        cmd += ["--vm"] if campaign.vm else []
        cmd += [] if progress else ["--quiet"]
        return run_child(cmd, point_dir, runs, bound_s=cfg.scenario.time_limit_s + (1800 if campaign.vm else 180))
    return run


def run_child(cmd: list[str], point_dir: Path, runs: Path, bound_s: float) -> dict[str, Any]:
    """Run one point's command in a session of its own; forward Ctrl-C and wait for its teardown."""
    log = point_dir / "point.log"
    with log.open("ab") as err, (point_dir / "point.out").open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, cwd=Path(__file__).resolve().parents[2])
        try:
            rc = proc.wait(timeout=bound_s)
        except BaseException as exc:  # Ctrl-C, or the bound
            _stop(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise PointFailed(f"still running after {bound_s:.0f} s; stopped") from None
            raise
    text = (point_dir / "point.out").read_text()
    dirs = sorted(p for p in runs.iterdir() if (p / "manifest.json").is_file()) if runs.is_dir() else []
    if rc != 0 or len(dirs) != 1:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise PointFailed(f"lab run exited {rc}: {' | '.join(tail) or 'no output'}")
    status = read_manifest(dirs[0]).get("status")
    if status != "complete":
        raise PointFailed(f"run {dirs[0].name} is {status}")
    summary = json.loads(text[text.index("{"):]) if "{" in text else {}
    summary["run_dir"] = str(dirs[0])
    return dict(summary)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the lab tears down on it), then SIGKILL to the session we started, by its id."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- the campaign directory


class CampaignDir:
    """``campaign.yaml`` (the file as given), ``campaign.json`` (the spec and the recorded order),
    ``events.jsonl`` (every start, finish, failure and interruption), ``points/<id>/``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def spec(self) -> dict[str, Any]:
        meta = self.path / "campaign.json"
        if not meta.is_file():
            raise CampaignError(f"{self.path}: not a campaign directory (no campaign.json; campaign run --out makes one)")
        try:
            doc = json.loads(meta.read_text())
        except ValueError as exc:  # not JSON, or not text
            raise CampaignError(f"{meta}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("campaign"), dict):
            raise CampaignError(f"{meta}: not a campaign record (no campaign mapping)")
        return doc

    def point_dir(self, point_id: str) -> Path:
        return self.path / "points" / point_id

    def result(self, point_id: str) -> dict[str, Any] | None:
        p = self.point_dir(point_id) / "result.json"
        return dict(json.loads(p.read_text())) if p.is_file() else None

    def results(self) -> list[dict[str, Any]]:
        return [r for pid in self.spec["order"] if (r := self.result(pid))]

    def event(self, kind: str, point_id: str | None = None, **fields: Any) -> None:
        with (self.path / "events.jsonl").open("a") as fh:
            fh.write(json.dumps({"t": round(time.time(), 3), "event": kind, "point": point_id} | fields) + "\n")

    def events(self) -> list[dict[str, Any]]:
        p = self.path / "events.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []

    def open(self, campaign: Campaign, order: list[Point], kind: str = "matrix") -> list[Point]:
        """Start a new campaign directory, or check that an existing one is this campaign and
        return its recorded order (the seed's order, whatever this process would draw)."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "campaign.json"
        if meta.is_file():
            old = self.spec
            if old.get("source") != campaign.source or old.get("kind") != kind:
                raise CampaignError(f"{self.path} holds another campaign (a different file or kind); resume it with the file it was "
                                    "started with, or choose another --out")
            by_id = {p.point_id: p for p in order}
            return [by_id[i] for i in old["order"] if i in by_id]
        write_json_atomic(meta, {"kind": kind, "created_at": time.time(), "campaign": campaign.to_dict(), "source": campaign.source,
                                 "order": [p.point_id for p in order], "points": {p.point_id: p.to_dict() for p in order}})
        (self.path / "campaign.yaml").write_text(campaign.source)
        return order


def retake_invalid(cdir: CampaignDir, order: list[Point]) -> list[str]:
    """Make every point whose run was judged invalid due again: its record and run directory are
    kept, set aside under ``points/<id>/invalid/<time>/``, and the point runs anew. Returns them."""
    out = []
    for p in order:
        rec = cdir.result(p.point_id)
        if rec is None or rec.get("verdict") != "invalid":
            continue
        pdir = cdir.point_dir(p.point_id)
        dest = pdir / "invalid" / time.strftime("%Y%m%d-%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        if (pdir / "runs").is_dir():
            (pdir / "runs").rename(dest / "runs")
        (pdir / "result.json").rename(dest / "result.json")
        cdir.event("retake", p.point_id, failed=rec.get("failed_checks"), kept=str(dest))
        out.append(p.point_id)
    return out


def execute_points(cdir: CampaignDir, campaign: Campaign, order: list[Point], runner: PointRunner, progress: bool = True,
                   on_point: Callable[[dict[str, Any]], None] | None = None, deadline: float | None = None,
                   own_boot: bool = True) -> Outcome:
    """Run every point of ``order`` that is not complete yet; progress and ETA on stderr.

    With a ``deadline`` (a time.time()), a point is started only if its estimate, scaled by how
    long the points run so far actually took against theirs, ends before it: the rest are
    ``skipped`` and the next invocation resumes with them. This is how a long campaign is run in
    slices on a shared machine without killing a point half-way."""
    cfgs = {p.point_id: campaign.validate_point(p.overrides, f"point {p.point_id}") for p in order}
    est = {pid: campaign.estimate_s(c, own_boot) for pid, c in cfgs.items()}
    todo = [p for p in order if cdir.result(p.point_id) is None]
    out = Outcome(done=[p.point_id for p in order if p not in todo], ran=[], failed={}, skipped=[])
    spent = estimated = 0.0

    def say(text: str) -> None:
        if progress:
            print(f"[campaign {campaign.name}] {text}", file=sys.stderr, flush=True)

    if out.done:
        say(f"resuming: {len(out.done)} of {len(order)} points already complete, {len(todo)} to run")
    for i, p in enumerate(todo):
        if deadline is not None and time.time() + est[p.point_id] * (spent / estimated if estimated else 1.0) > deadline:
            out.skipped = [q.point_id for q in todo[i:]]
            cdir.event("budget", p.point_id, left=len(out.skipped))
            say(f"the time budget ends before {p.point_id} would; {len(out.skipped)} points left for the next invocation")
            break
        pdir = cdir.point_dir(p.point_id)
        set_aside(pdir)
        pdir.mkdir(parents=True, exist_ok=True)
        n = len(out.done) + len(out.ran) + len(out.failed) + 1
        say(f"{n}/{len(order)} {p.point_id} starting (about {fmt_s(est[p.point_id])})")
        cdir.event("start", p.point_id)
        t0 = time.time()
        try:
            summary = runner(p, cfgs[p.point_id], pdir)
        except PointFailed as exc:
            cdir.event("failed", p.point_id, reason=str(exc))
            out.failed[p.point_id] = str(exc)
            say(f"{n}/{len(order)} {p.point_id} FAILED: {exc}")
            # a failed point's time counts too: one that timed out says most about how slow this machine is
            spent += time.time() - t0
            estimated += est[p.point_id]
            continue
        except KeyboardInterrupt:
            cdir.event("interrupted", p.point_id)
            say(f"interrupted during {p.point_id}; its lab was torn down. Run the same command again to resume "
                f"({len(out.done) + len(out.ran)} of {len(order)} points complete).")
            raise
        dt = time.time() - t0
        rec = point_record(p, cfgs[p.point_id], Path(summary.get("run_dir", "")), summary, dt)
        write_json_atomic(pdir / "result.json", rec)
        cdir.event("complete", p.point_id, duration_s=round(dt, 3))
        out.ran.append(p.point_id)
        if on_point:
            on_point(rec)
        spent += dt
        estimated += est[p.point_id]
        left = todo[i + 1:]
        eta = sum(est[q.point_id] for q in left) * (spent / estimated if estimated else 1.0)
        finish = time.strftime("%H:%M", time.localtime(time.time() + eta))
        verdict = f", {rec['verdict']}" + (f" ({', '.join(rec['failed_checks'])})" if rec["failed_checks"] else "") if rec["verdict"] else ""
        say(f"{n}/{len(order)} {p.point_id} done in {fmt_s(dt)}: loss {rec['loss_pct']} %, p99 {rec['p99_ms']} ms{verdict}; "
            f"{len(left)} left, ETA {fmt_s(eta)} (about {finish})")
    return out


KEPT_CAMPAIGN_FILES = ("campaign.json", "campaign.yaml", "events.jsonl", "calibration.json", "capacity.json")
KEPT_RUN_FILES = ("manifest.json", "monitor/cgroups.csv", "monitor/brokers.csv")


def keep_records(src: Path, dest: Path) -> dict[str, int]:
    """The records a campaign's figures come from, without the raw deliveries: the campaign's
    own files, each point's ``result.json`` and stack file, and of its run the manifest (the
    verdict, caps, machine) and the kernel and broker counters the checks read. Each point's
    ``run_dir`` is made relative to ``dest``, so ``campaign report DEST`` re-derives the tables
    and the methods from the records alone, wherever the repository is. Returns the counts."""
    cdir = CampaignDir(src)
    cdir.spec  # noqa: B018  (refuses a folder that is not a campaign directory, or whose record is not JSON)
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT_CAMPAIGN_FILES:
        if (src / name).is_file():
            (dest / name).write_bytes((src / name).read_bytes())

    def keep_run(run_dir: Path, into: Path) -> str:
        for name in KEPT_RUN_FILES:
            if (run_dir / name).is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                (into / name).write_bytes((run_dir / name).read_bytes())
        return str(into.relative_to(dest))

    if (dest / "calibration.json").is_file():  # the floods the capacities come from, kept the same way
        book = json.loads((dest / "calibration.json").read_text())
        for cal in book.values():
            flood = Path(cal.get("run_dir") or "")
            if flood.is_absolute() and flood.is_dir():
                cal["run_dir"] = keep_run(flood, dest / "calibration" / flood.name)
        write_json_atomic(dest / "calibration.json", book)
    points = runs = 0
    for pdir in sorted((src / "points").glob("*")) if (src / "points").is_dir() else []:
        rec = cdir.result(pdir.name)
        if rec is None:
            continue
        out = dest / "points" / pdir.name
        out.mkdir(parents=True, exist_ok=True)
        for stack in pdir.glob("Pulumi.*.yaml"):
            (out / stack.name).write_bytes(stack.read_bytes())
        run_dir = Path(rec.get("run_dir") or "")
        if run_dir.is_absolute() and run_dir.is_dir():
            rec = rec | {"run_dir": keep_run(run_dir, out / "runs" / run_dir.name)}
            runs += 1
        write_json_atomic(out / "result.json", rec)
        points += 1
    return {"points": points, "runs": runs}


def set_aside(point_dir: Path) -> None:
    """What an interrupted or failed attempt left is kept for diagnosis, out of the analysis's way."""
    runs = point_dir / "runs"
    if not runs.is_dir() or not any(runs.iterdir()):
        return
    dest = point_dir / "interrupted" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for child in runs.iterdir():
        child.rename(dest / child.name)
