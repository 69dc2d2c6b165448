"""Did a run measure the system, or the machine it ran on? The checks, each with its measure,
threshold and result, and the verdict.

A loss figure means "the brokers lost this at their caps" only when three things held during
the run, and each can be seen in the run directory:

- **broker at its cap**: whenever a broker was dropping messages, throttled, or wanted at least
  its cap (the CPU it used plus the time its threads waited for a CPU came to its cap or more),
  it got at least ``broker_cap_pct`` of its CPU cap. From its cgroup's kernel counters
  (``monitor/cgroups.csv``: ``cpu.stat`` usage and throttling, and its threads' run-queue wait),
  not from sampled percentages. A broker that was busy but got less was starved by the host
  (or held to a lower quota than the plan says): its loss measures that, not the cap.
- **load generator on schedule**: each publisher offered the scenario's rate within
  ``offered_rate_pct``, no publisher was behind its schedule and no subscriber left data unread
  in its socket for ``client_s`` or longer (the bench's own episodes,
  :mod:`workloads.rundir.saturation`). Otherwise the offered load, or the reading of it, was not
  the scenario's.
- **the host left the brokers alone**: with CPUs of their own (a cpuset split), the share of
  those CPUs' time that anything but the brokers used (``/proc/stat`` beside the brokers'
  cgroup usage: the kernel's network work, interrupts, processes the lab did not place), below
  ``foreign_pct``. Without a split, the host's CPU pressure (``/proc/pressure/cpu``, PSI: the
  share of the run some task waited for a CPU) below ``host_psi_pct``, since then every task's
  wait can be a broker's. With a split the host's PSI is reported beside but does not decide:
  it counts the load generator's threads waiting for each other on the generator's own CPUs,
  whose effect the generator's checks measure directly.

A check that could not be measured (no cgroup counters in an Azure run, no PSI in the kernel)
says so and does not fail the run; the verdict names it. Only the standard library: this runs
wherever :mod:`workloads.rundir.records` does.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workloads.rundir.saturation import CLIENT_LIMIT_S


@dataclass(frozen=True)
class Thresholds:
    """The bounds of the checks (see the module's docstring for why each one)."""

    broker_cap_pct: float = 90.0  # CPU a busy broker must get, in % of its cap
    offered_rate_pct: float = 1.0  # each publisher's rate within this of the scenario's
    client_s: float = CLIENT_LIMIT_S  # no client behind schedule or with unread data this long
    client_bytes: int = 0  # unread data above this counts (0: any)
    host_psi_pct: float = 10.0  # host CPU pressure (some) over the run, in % (brokers without CPUs of their own)
    foreign_pct: float = 10.0  # the brokers' CPUs' time used by anything but the brokers, in %


def _check(name: str, measure: str, value: float | None, threshold: float, passed: bool | None, detail: str = "") -> dict[str, Any]:
    return {"name": name, "measure": measure, "value": None if value is None else round(value, 3), "threshold": threshold,
            "passed": passed, "detail": detail}


def read_rows(path: Path) -> list[dict[str, str]]:
    """A monitor CSV as dicts; none when the file is absent (a check without its records)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _series(rows: list[dict[str, str]], key: str, group: str, col: str) -> list[tuple[float, float]]:
    out = []
    for r in rows:
        if r.get(key) == group:
            t, v = _num(r.get("time_s")), _num(r.get(col))
            if t is not None and v is not None:
                out.append((t, v))
    return sorted(out)


def _value_at(series: list[tuple[float, float]], t: float) -> float:
    """The last value sampled at or before ``t`` (0 before the first)."""
    v = 0.0
    for ts, x in series:
        if ts > t:
            break
        v = x
    return v


def broker_checks(run_dir: Path, cap_cpus: float | None, th: Thresholds) -> list[dict[str, Any]]:
    """One check per broker: the CPU it got, as a share of its cap, over the intervals in which
    it was busy: messages dropped, CPU throttled, or a demand of at least its cap (CPU used plus
    time waiting for a CPU). A broker that waited a little while using little wanted less than
    its cap: the host delayed it but did not take its cap away."""
    groups = read_rows(run_dir / "monitor" / "cgroups.csv")
    brokers = sorted({r["group"] for r in groups if r.get("group") and r["group"] != "host"})
    if not brokers or not cap_cpus:
        return [_check("broker_at_cap", "% of the CPU cap used while busy", None, th.broker_cap_pct, None,
                       "not measured: no cgroup counters in this run (monitor/cgroups.csv)")]
    drops = read_rows(run_dir / "monitor" / "brokers.csv")
    out = []
    for b in brokers:
        usage = _series(groups, "group", b, "usage_usec")
        thr = dict(_series(groups, "group", b, "nr_throttled"))
        thr_us = dict(_series(groups, "group", b, "throttled_usec"))
        wait = dict(_series(groups, "group", b, "wait_usec"))
        dropped = _series(drops, "broker", b, "msgs_dropped")
        busy_s = used_s = throttled_s = wait_s = 0.0
        throttled = lost = 0
        for (t0, u0), (t1, u1) in zip(usage, usage[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            d_thr = thr.get(t1, 0) - thr.get(t0, 0)
            d_wait = (wait.get(t1, 0) - wait.get(t0, 0)) / 1e6
            d_drop = _value_at(dropped, t1) - _value_at(dropped, t0)
            d_use = max(0.0, u1 - u0) / 1e6
            if d_thr > 0 or d_drop > 0 or d_use + d_wait >= cap_cpus * dt:
                busy_s += dt
                used_s += d_use
                throttled += int(d_thr)
                throttled_s += (thr_us.get(t1, 0) - thr_us.get(t0, 0)) / 1e6
                wait_s += d_wait
                lost += int(max(d_drop, 0))
        detail = (f"busy {busy_s:.1f} s (dropped {lost}, throttled {throttled} times for {throttled_s:.2f} s, waited for a CPU {wait_s:.2f} s), "
                  f"used {used_s:.2f} CPU s of {busy_s * cap_cpus:.2f} allowed")
        if not busy_s:
            out.append(_check(f"broker_at_cap:{b}", "% of the CPU cap used while busy", None, th.broker_cap_pct, True,
                              "never busy: no drop, no throttling, never wanted its cap"))
            continue
        pct = 100.0 * used_s / (busy_s * cap_cpus)
        out.append(_check(f"broker_at_cap:{b}", "% of the CPU cap used while busy", pct, th.broker_cap_pct, pct >= th.broker_cap_pct, detail))
    return out


def generator_checks(run_dir: Path, scenario: dict[str, Any], th: Thresholds) -> list[dict[str, Any]]:
    """The offered rate of each publisher against the scenario's, and the bench's own episodes of
    lateness (publishers) and unread data (subscribers)."""
    interval = float(scenario.get("interval_ms") or 0) / 1000.0
    worst: tuple[float, str] | None = None
    for p in sorted((run_dir / "bench").glob("*/publishers-*.csv")):
        for r in read_rows(p):
            sent, first, last = int(r.get("sent") or 0), _num(r.get("first_send_s")) or 0.0, _num(r.get("last_send_s")) or 0.0
            if sent < 2 or not interval or last <= first:
                continue
            off = 100.0 * abs((sent - 1) * interval / (last - first) - 1.0)  # offered rate / scenario's rate, minus one
            if worst is None or off > worst[0]:
                worst = (off, r.get("client_id", r.get("pub", "")))
    if not interval:
        rate = _check("offered_rate", "worst publisher's rate off the scenario's, %", None, th.offered_rate_pct, None,
                      "not measured: the scenario has no rate (interval 0: as fast as possible)")
    elif worst is None:
        rate = _check("offered_rate", "worst publisher's rate off the scenario's, %", None, th.offered_rate_pct, None,
                      "not measured: no publisher sent two messages")
    else:
        rate = _check("offered_rate", "worst publisher's rate off the scenario's, %", worst[0], th.offered_rate_pct,
                      worst[0] <= th.offered_rate_pct, f"worst {worst[1]}")
    longest = {"behind_schedule": (0.0, ""), "receive_backlog": (0.0, "")}
    for p in sorted((run_dir / "bench").glob("*/self-*.json")):
        for c in json.loads(p.read_text()).get("clients", []):
            if c["kind"] == "receive_backlog" and c.get("max_queued_bytes", 0) <= th.client_bytes:
                continue
            if c["kind"] in longest and c["longest_s"] > longest[c["kind"]][0]:
                longest[c["kind"]] = (float(c["longest_s"]), c["client_id"])
    out = [rate]
    for name, kind, measure in (("publishers_on_schedule", "behind_schedule", "longest stretch behind schedule, s"),
                                ("subscribers_keep_up", "receive_backlog", "longest stretch with unread data, s")):
        s, who = longest[kind]
        out.append(_check(name, measure, s, th.client_s, s < th.client_s, f"worst {who}" if who else ""))
    return out


def _host_psi(rows: list[dict[str, str]]) -> tuple[float, float] | None:
    """The host's CPU pressure over the monitored span, in %, and the span in seconds."""
    psi = _series(rows, "group", "host", "psi_some_usec")
    if len(psi) < 2 or psi[-1][0] <= psi[0][0]:
        return None
    return 100.0 * (psi[-1][1] - psi[0][1]) / 1e6 / (psi[-1][0] - psi[0][0]), psi[-1][0] - psi[0][0]


def _broker_cpus(manifest: dict[str, Any]) -> int:
    """How many CPUs the brokers had to themselves, as the kernel held the cpuset (0: no split)."""
    cs = manifest.get("cpuset") or {}
    text = str((cs.get("brokers") or {}).get("effective_cpus") or "") if cs.get("enabled") else ""
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def host_check(run_dir: Path, th: Thresholds, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """With a cpuset split, what else used the brokers' CPUs; without, the host's CPU pressure."""
    rows = read_rows(run_dir / "monitor" / "cgroups.csv")
    psi = _host_psi(rows)
    ncpus = _broker_cpus(manifest or {})
    if ncpus:
        measure = "% of the brokers' CPUs' time used by anything else"
        busy = _series(rows, "group", "host", "cpus_busy_usec")
        usage = {g: dict(_series(rows, "group", g, "usage_usec")) for g in sorted({r["group"] for r in rows if r.get("group") not in (None, "", "host")})}
        span = [(t, v) for t, v in busy if all(t in u for u in usage.values())] if usage else []
        if len(span) < 2 or span[-1][0] <= span[0][0]:
            return _check("broker_cpus_foreign_use", measure, None, th.foreign_pct, None,
                          "not measured: no samples of the brokers' CPUs beside their usage (monitor/cgroups.csv)")
        (t0, b0), (t1, b1) = span[0], span[-1]
        mine = sum(u[t1] - u[t0] for u in usage.values())
        pct = max(0.0, 100.0 * (b1 - b0 - mine) / (ncpus * (t1 - t0) * 1e6))
        host = f"; host CPU pressure {psi[0]:.1f} % (not decisive with a split)" if psi else ""
        return _check("broker_cpus_foreign_use", measure, pct, th.foreign_pct, pct < th.foreign_pct,
                      f"over {t1 - t0:.1f} s on {ncpus} CPU(s): busy {(b1 - b0) / 1e6:.2f} CPU s, the brokers {mine / 1e6:.2f}{host}")
    if psi is None:
        return _check("host_cpu_pressure", "% of the run some task waited for a CPU (PSI)", None, th.host_psi_pct, None,
                      "not measured: no CPU pressure samples (a kernel without PSI, or no host monitor)")
    return _check("host_cpu_pressure", "% of the run some task waited for a CPU (PSI)", psi[0], th.host_psi_pct, psi[0] < th.host_psi_pct,
                  f"over {psi[1]:.1f} s")


def evaluate(run_dir: Path, manifest: dict[str, Any], th: Thresholds | None = None) -> dict[str, Any]:
    """The checks of a run and its verdict: ``invalid`` when any check failed (named in
    ``failed``), else ``valid``; ``unmeasured`` names what could not be checked."""
    th = th or Thresholds()
    checks = [*broker_checks(run_dir, (manifest.get("plan") or {}).get("broker_cpus"), th),
              *generator_checks(run_dir, manifest.get("scenario") or {}, th), host_check(run_dir, th, manifest)]
    failed = [c["name"] for c in checks if c["passed"] is False]
    return {"verdict": "invalid" if failed else "valid", "failed": failed, "unmeasured": [c["name"] for c in checks if c["passed"] is None],
            "checks": checks, "thresholds": asdict(th)}


def verdict_line(f: dict[str, Any]) -> str:
    """One line: the verdict, the failed checks with their measures, what was not measured."""
    by = {c["name"]: c for c in f["checks"]}
    text = f["verdict"].upper()
    if f["failed"]:
        text += ": " + "; ".join(f"{n} {by[n]['value']} (threshold {by[n]['threshold']})" for n in f["failed"])
    if f["unmeasured"]:
        text += f" (not measured: {', '.join(f['unmeasured'])})"
    return text
