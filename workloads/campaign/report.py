"""The campaign report: the answer first, then per-configuration estimates with 95 % intervals,
one sentence per comparison, loss against offered load with intervals, capacities.

It reads only the campaign directory (each point's ``result.json``, which points at a normal run
directory); the per-run report (``mqttlab report``) stays the place for one run's details.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workloads.analysis import methods  # noqa: E402
from workloads.analysis.figures import figure_html, save_figure  # noqa: E402
from workloads.analysis.report import CSS, html_table  # noqa: E402
from workloads.analysis.stats import Difference, Estimate, compare_sentence, holm, mean_ci, welch  # noqa: E402
from workloads.base.numbers import dumps, shown  # noqa: E402
from workloads.campaign.spec import LOAD_KEYS  # noqa: E402
from workloads.describe.standin import Balancing, balancing_columns, from_manifest  # noqa: E402

METRICS = (("loss_pct", "loss", " percentage points", 0.0), ("p99_ms", "p99 latency", " ms", 0.0), ("throughput", "throughput", " deliveries/s", 0.0),
           ("crossed_pct", "deliveries across a bridge", " percentage points", 0.0),
           ("all_back_s", "time until every client cut off was connected again", " s", 0.0))
CLIP_HIGH = {"loss_pct": 100.0, "crossed_pct": 100.0}
# the measures a campaign's runs have only when they do it (bridges, faults): a column when one has
OPTIONAL = {"crossed_pct": ("Across a bridge (%) mean [95 % CI]", "pct"), "all_back_s": ("All back after the fault (s) mean [95 % CI]", "seconds")}


SCHEDULER_KEYS = ("scheduler", "balancer.scheduler")


def _asked(key: str, value: Any) -> str:
    """A setting as the campaign file asked it; a scheduler is an IPVS one (``ipvs-lc``), which a
    stand-in may have carried out by another (the Balancer row says what ran)."""
    if key in SCHEDULER_KEYS:
        return f"ipvs-{_level(value)} asked"
    return _level(value)


def _level(v: Any) -> str:
    """A factor's level as a reader writes it: a list level (log types) as ``a/b/c``, not a repr."""
    if isinstance(v, (list, tuple)):
        return "/".join(map(str, v))
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _label(levels: dict[str, Any], keys: Iterable[str]) -> str:
    def show(k: str, v: Any) -> str:
        if k == "offered_rate":
            return f"{float(v):.0f} msg/s"
        return f"{k.split('.')[-1]} {_level(v)}"
    return ", ".join(show(k, levels[k]) for k in keys if k in levels) or "base"


def ran_of(result: dict[str, Any]) -> Balancing | None:
    """What balanced a point's run. Points recorded before result.json said so carry the balancer
    that ran and, as ``scheduler``, the one asked for, which is enough to tell."""
    return from_manifest({"balancer": result.get("balancer_kind"), "scheduler": result.get("scheduler"),
                          "requested_scheduler": result.get("requested_scheduler")})


def ran_text(result: dict[str, Any]) -> str:
    """What balanced a point's run, as every table and legend names it: ``nftables-rr standing in for ipvs-lc``."""
    ran = ran_of(result)
    return ran.text if ran else ""


RUN_FIELDS = ("offered_rate", "overload_ratio", "capacity", "expected", "delivered", "lost", "loss_pct", "p99_ms", "throughput", "bench_saturated", "duration_s", "run_dir")


def runs_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per complete point: which configuration and repetition, what balanced it (the
    balancer and scheduler that ran, what they stood in for, what was asked, each a column), its numbers."""
    return pd.DataFrame([{"point_id": r["point_id"], "config_id": r["config_id"], "configuration": _label(r["levels"], r["levels"]),
                          "rep": r["rep"], **balancing_columns(ran_of(r)), **{k: r.get(k) for k in RUN_FIELDS},
                          "verdict": r.get("verdict"), "failed_checks": "; ".join(r.get("failed_checks") or [])} for r in results])


@dataclass(frozen=True)
class ConfigStats:
    """One configuration: its factor levels, its offered rate, n, and each metric's estimate."""

    config_id: str
    levels: dict[str, Any]
    n: int
    offered_rate: float
    loss_pct: Estimate
    p99_ms: Estimate
    throughput: Estimate
    saturated: int = 0  # runs whose load generator said it was the limit: their loss may be the generator's
    ran: str = ""  # what balanced its runs (one name; several if its runs differ)
    invalid: int = 0  # runs whose fidelity checks failed: counted, never in the estimates
    unjudged: int = 0  # runs recorded without a verdict (made before the checks existed): in the estimates, counted
    overload_ratio: float | None = None  # offered per broker over the calibrated capacity (campaign run --calibrate)
    crossed_pct: Estimate = Estimate(float("nan"), None, None, 0, None)  # deliveries that crossed a bridge
    all_back_s: Estimate = Estimate(float("nan"), None, None, 0, None)  # the reconnect storm after the faults

    @property
    def runs(self) -> str:
        """How many runs the estimates use, and what was left out or not judged."""
        extra = [f"{self.invalid} invalid left out"] if self.invalid else []
        extra += [f"{self.unjudged} not judged"] if self.unjudged else []
        return f"{self.n}" + (f" ({', '.join(extra)})" if extra else "")

    def name(self, keys: Iterable[str]) -> str:
        """Its levels of ``keys`` and what balanced it: a level ``scheduler lc`` alone would claim lc ran."""
        label = _label(self.levels, keys)
        return f"{label}: {self.ran}" if self.ran else label


def _group(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Repetitions of one setting: the same configuration at the same offered rate (a capacity
    search runs one configuration at many rates)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(f"{r['config_id']}@{float(r['offered_rate']):.6g}", []).append(r)
    return by


def counted(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the estimates and comparisons use: all but those judged invalid. A run recorded
    without a verdict (before the checks existed) is used and counted as not judged."""
    return [r for r in results if r.get("verdict") != "invalid"]


def _ratio(rs: list[dict[str, Any]]) -> float | None:
    """The configuration's overload ratio: one calibration serves all its runs, so one value."""
    vals = [float(r["overload_ratio"]) for r in rs if r.get("overload_ratio") is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def configurations(results: list[dict[str, Any]]) -> list[ConfigStats]:
    """One entry per configuration: n (its valid or unjudged runs), mean with 95 % CI for each
    metric over those, and how many runs were invalid and left out."""
    by = _group(results)
    out = []
    for every in by.values():
        rs = counted(every)
        est = {key: mean_ci([r[key] for r in rs if r.get(key) is not None], clip_low=low, clip_high=CLIP_HIGH.get(key))
               for key, _n, _u, low in METRICS}
        out.append(ConfigStats(every[0]["config_id"], every[0]["levels"], len(rs), float(every[0]["offered_rate"]), est["loss_pct"], est["p99_ms"],
                               est["throughput"], sum(1 for r in rs if r.get("bench_saturated")),
                               "; ".join(sorted({ran_text(r) for r in every} - {""})), len(every) - len(rs),
                               sum(1 for r in rs if r.get("verdict") is None), _ratio(every), est["crossed_pct"], est["all_back_s"]))
    return sorted(out, key=lambda c: (json.dumps({k: v for k, v in c.levels.items() if k != "offered_rate"}, sort_keys=True, default=str),
                                      c.offered_rate))


def p99_confounder(rs_a: list[dict[str, Any]], rs_b: list[dict[str, Any]], factor: str) -> str:
    """Why a p99 difference between two configurations cannot be read as the factor's effect, or ''.

    p99 is taken over the messages that arrived, at the load each configuration was offered: when
    the offered loads differ, or one side lost messages (its slowest ones are missing from its
    percentile), or its load generator was saturated (the latency is partly the generator's), the
    difference mixes the factor with load, loss or the tool. The interval is still shown."""
    rates = {float(r["offered_rate"]) for r in rs_a + rs_b if r.get("offered_rate") is not None}
    if factor in LOAD_KEYS or len(rates) > 1:
        return "the two were offered different loads, and p99 latency grows with the load"
    if any((r.get("loss_pct") or 0) > 0 for r in rs_a + rs_b):
        return "messages were lost, so each p99 covers only the messages that arrived"
    if any(r.get("bench_saturated") for r in rs_a + rs_b):
        return "the load generator was saturated in some of these runs, so part of the latency is its own"
    return ""


def comparisons(results: list[dict[str, Any]], compare: list[str]) -> list[dict[str, Any]]:
    """Each pair of configurations that differ only in a compared factor, at the same other levels.

    Every metric's tests form one family, adjusted by Holm's method: the verdicts then hold for
    the campaign as a whole, not one pair at a time. p99 latency gets no verdict where it is
    confounded (:func:`p99_confounder`)."""
    by = _group(results)
    out = []
    ids = list(by)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            la, lb = by[a][0]["levels"], by[b][0]["levels"]
            diff = [k for k in la if la[k] != lb.get(k)]
            if len(diff) != 1 or diff[0] not in compare:
                continue
            k = diff[0]
            rest = _label(la, [x for x in la if x != k])
            # a balancer or scheduler level is named for what ran at it: "lc" may have been nftables round robin
            name_a, name_b = ((ran_text(by[a][0]) or _level(la[k]), ran_text(by[b][0]) or _level(lb[k])) if k in ("balancer", "scheduler")
                              else (_level(la[k]), _level(lb[k])))
            row: dict[str, Any] = {"factor": k, "a": la[k], "b": lb[k], "a_name": name_a, "b_name": name_b, "at": rest,
                                   "config_a": by[a][0]["config_id"], "config_b": by[b][0]["config_id"], "_a": by[a], "_b": by[b]}
            for key, _name, _unit, _low in METRICS:
                va = [r[key] for r in by[a] if r.get(key) is not None]
                vb = [r[key] for r in by[b] if r.get(key) is not None]
                row[key] = welch(va, vb) if va and vb else None
            row["p99_ms_confounded"] = p99_confounder(by[a], by[b], k)
            out.append(row)
    for key, name, unit, _low in METRICS:
        family = [i for i, row in enumerate(out) if row[key] is not None and not (key == "p99_ms" and row["p99_ms_confounded"])]
        adjusted = holm([out[i][key].p for i in family])
        for i, row in enumerate(out):
            row[f"{key}_p_holm"] = adjusted[family.index(i)] if i in family else None
            va = [r[key] for r in row["_a"] if r.get(key) is not None]
            vb = [r[key] for r in row["_b"] if r.get(key) is not None]
            no_verdict = row["p99_ms_confounded"] if key == "p99_ms" else ""
            if not va and not vb:  # a metric these runs did not record (throughput of replayed points): no sentence
                row[f"{key}_sentence"] = None
                continue
            row[f"{key}_sentence"] = f"At {row['at']}: " + compare_sentence(
                row["a_name"], row["b_name"], name, unit, va, vb, level_unit=" %" if key == "loss_pct" else None,
                p_adjusted=row[f"{key}_p_holm"], adjustment=f"Holm-adjusted over {len(family)} tests", no_verdict=no_verdict)
    for row in out:
        del row["_a"], row["_b"]
    return out


def _fmt(e: Estimate, quantity: str = "pct") -> str:
    """Mean [95 % CI], rounded by the one function every report uses (workloads/base/numbers.py)."""
    if e.n == 0:
        return ""
    if e.lo is None or e.hi is None:
        return f"{shown(e.mean, quantity)} (n = 1)"
    return f"{shown(e.mean, quantity)} [{shown(e.lo, quantity)}, {shown(e.hi, quantity)}]"


def _manifest_of(result: dict[str, Any], base: Path | None = None) -> dict[str, Any] | None:
    """The run's manifest, when its run directory is still beside the campaign (a relative
    ``run_dir``, as kept records have it, is inside the campaign directory ``base``)."""
    from workloads.rundir.records import RunDirError, read_manifest

    run_dir = result.get("run_dir")
    if run_dir and base is not None and not Path(run_dir).is_absolute():
        run_dir = str(base / run_dir)
    if not run_dir or not (Path(run_dir) / "manifest.json").is_file():
        return None
    try:
        return read_manifest(Path(run_dir))
    except RunDirError:
        return None


def methods_section(camp: dict[str, Any], results: list[dict[str, Any]], status: str, base: Path | None = None) -> tuple[str, list[str]]:
    """The campaign's methods (what was fixed, what varied, how it was run and tested) and, from
    the runs' own manifests where they are on disk, the machine and software; with the warnings
    for the top of the report: saturated load generators and invalid runs, counted."""
    fixed = camp.get("set") or {}
    rows = [("Campaign", f"{camp['name']}: stack {camp['stack']} ({camp['place']}), {status}, {camp.get('repetitions', '?')} repetitions "
                         f"per configuration, run in a randomized order (seed {camp['seed']})"),
            ("Fixed settings", "; ".join(f"{k} {_asked(k, v)}" for k, v in fixed.items()) or "none beyond the stack's own"),
            ("Factors", "; ".join(f"{k}: {', '.join(_asked(k, x) for x in v)}" for k, v in camp["factors"].items())),
            ("Statistics", "Student's t 95 % confidence intervals over repetitions (loss clipped to 0-100 %); differences by Welch's t-test, "
                           "each metric's tests adjusted together by Holm's method; p99 latency without a verdict where it is confounded "
                           "(different offered loads, lost messages or a saturated load generator)")]
    manifests = [(r, m) for r in results if (m := _manifest_of(r, base)) is not None]
    if manifests:
        starts = [m["started_at"] for _r, m in manifests if isinstance(m.get("started_at"), (int, float))]
        keep = {"Machine", "Kernel", "Mosquitto", "Broker caps", "Topology", "Security", "Faults"}
        # every distinct value the runs recorded: a factor (topology, caps) makes them differ
        seen: dict[str, list[str]] = {}
        for r, m in manifests:
            for k, v in methods.methods_rows(m, r):
                if k in keep and v not in seen.setdefault(k, []):
                    seen[k].append(v)
        rows += [(k, "; ".join(vs) if len(vs) == 1 else "varies by run: " + "; ".join(vs)) for k, vs in seen.items()]
        if starts:
            rows.insert(1, ("Dates", f"{methods.utc_time(min(starts))} to {methods.utc_time(max(starts))} ({len(manifests)} run manifests read)"))
    else:
        rows.append(("Machine and software", "not recorded here: the points' run directories are not beside this campaign"))
    sat = sum(1 for r in results if r.get("bench_saturated"))
    rows.append(("Load generator", f"saturated in {sat} of {len(results)} runs" if results else "no runs"))
    verdicts = {r["point_id"]: r.get("verdict") or (m.get("fidelity") or {}).get("verdict") for r, m in
                [(r, _manifest_of(r, base) or {}) for r in results]}
    invalid = sorted(p for p, v in verdicts.items() if v == "invalid")
    checked = sum(1 for v in verdicts.values() if v)
    rows.append(("Fidelity", f"{checked} of {len(results)} runs checked, {checked - len(invalid)} valid, {len(invalid)} invalid "
                             "(invalid runs are counted but left out of every estimate and comparison)" if checked else "not checked"))
    top = []
    if sat:
        top.append(f"The load generator was SATURATED in {sat} of {len(results)} runs: in those the load generator, not the system, "
                   "may have been the limit; read their loss and latency as bounds.")
    if invalid:
        top.append(f"{len(invalid)} run(s) are INVALID (fidelity checks failed) and left out of the estimates: {', '.join(invalid)}; "
                   "`mqttlab campaign run FILE --out DIR --retake-invalid` runs them again.")
    body = "".join(f"<tr><th scope=\"row\">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<h2>Methods</h2><table class="methods">{body}</table>', top


def answer(conf: list[ConfigStats], comps: list[dict[str, Any]]) -> str:
    """The opening paragraph: which level of the compared factor lost least, at how many of the
    settings compared, how many of those differences are significant, and the largest one."""
    if not conf:
        return "No point of this campaign is complete yet."
    if all(r.loss_pct.mean == 0 for r in conf):
        return (f"No configuration lost any message ({sum(r.n for r in conf)} runs, {len(conf)} configurations); "
                "they differ only in latency and throughput, below.")
    parts = []
    loss_comps = [c for c in comps if c["loss_pct"] is not None]
    if loss_comps:
        wins: dict[str, int] = {}
        sig: dict[str, int] = {}
        ties = 0
        for c in loss_comps:
            d = c["loss_pct"]
            if d.diff == 0:
                ties += 1
                continue
            w = c["b_name"] if d.diff > 0 else c["a_name"]
            wins[w] = wins.get(w, 0) + 1
            if c["loss_pct_p_holm"] is not None and c["loss_pct_p_holm"] < 0.05:
                sig[w] = sig.get(w, 0) + 1
        if wins:
            best = max(wins, key=lambda k: (wins[k], sig.get(k, 0)))
            parts.append(f"{html.escape(best)} lost least: less loss at {wins[best]} of the {len(loss_comps)} settings compared "
                         f"({sig.get(best, 0)} of them significant at 5 % after Holm's adjustment)" + (f", the same loss at {ties}" if ties else "") + ".")
        biggest = max(loss_comps, key=lambda c: abs(c["loss_pct"].diff))
        parts.append("Largest difference: " + html.escape(biggest["loss_pct_sentence"]))
    best_cfg = min(conf, key=lambda r: (r.loss_pct.mean, -r.offered_rate))
    parts.append(f"Least loss of all: {html.escape(best_cfg.name(best_cfg.levels))}, {best_cfg.loss_pct.text(' %', 3)}.")
    return " ".join(parts)


def _loss_axis(ax: Any, tops: list[float]) -> None:
    """Loss is never negative and never above 100 %; with nothing lost, say so rather than stretch
    the axis around zero. A configuration without a valid run has no estimate (NaN): it sets no
    limit, and when none has one the plot says so."""
    finite = [v for v in tops if math.isfinite(v)]
    top = max(finite, default=0.0)
    if top <= 0:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no message lost in any run" if finite or not tops else "no valid run to show", transform=ax.transAxes,
                ha="center", color="grey")
    else:
        ax.set_ylim(0, min(top * 1.15, 100.0))


def plot_loss_curves(conf: list[ConfigStats], load_keys: list[str], capacities: dict[str, Any], path: Path) -> Path:
    """Mean loss against offered rate, one line per configuration (all factors but the load),
    95 % intervals as error bars; the y axis starts at 0 (loss is never negative) and is not
    stretched around zero when nothing was lost."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    series: dict[str, list[tuple[float, Estimate]]] = {}
    names: dict[str, str] = {}
    for r in conf:
        keys = [k for k in r.levels if k not in load_keys]
        key = _label(r.levels, keys)
        series.setdefault(key, []).append((r.offered_rate, r.loss_pct))
        names.setdefault(key, r.name(keys))
    tops: list[float] = []
    colours: dict[str, Any] = {}
    for name, pts in series.items():
        pts.sort(key=lambda t: t[0])
        x = [p[0] for p in pts]
        y = [p[1].mean for p in pts]
        err = [[p[1].mean - (p[1].lo if p[1].lo is not None else p[1].mean) for p in pts],
               [(p[1].hi if p[1].hi is not None else p[1].mean) - p[1].mean for p in pts]]
        colours[name] = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=names[name]).lines[0].get_color()
        tops += [(p[1].hi if p[1].hi is not None else p[1].mean) for p in pts]
    for c in capacities.values():  # the bracket: highest rate that passed to lowest that failed
        name = _label(c["levels"], [k for k in c["levels"] if k not in load_keys])
        if c.get("capacity") and c.get("upper"):
            ax.axvspan(c["capacity"], c["upper"], color=colours.get(name, "grey"), alpha=0.2,
                       label=f"capacity, {names.get(name, name)}: {c['capacity']:.0f}-{c['upper']:.0f} msg/s")
    _loss_axis(ax, tops)
    ax.set_xlabel("offered rate (messages/s published, all publishers)")
    ax.set_ylabel("message loss (%)")
    ax.set_title("Loss against offered load (mean, 95 % CI)")
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, path)


def plot_loss_by_configuration(conf: list[ConfigStats], path: Path) -> Path:
    """Every configuration at one offered rate (a reproduction, an ablation): a curve against load
    would be a single column of overlapping points on a meaningless rate axis, so each
    configuration gets its own place, its mean and 95 % interval, and every run's own loss is not
    needed to read it."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(conf) + 2), 4.5))
    x = list(range(len(conf)))
    for i, r in enumerate(conf):
        e = r.loss_pct
        lo = e.lo if e.lo is not None else e.mean
        hi = e.hi if e.hi is not None else e.mean
        ax.errorbar([i], [e.mean], yerr=[[e.mean - lo], [hi - e.mean]], marker="o", capsize=4, color="#2c7fb8")
        if math.isfinite(e.mean):
            ax.annotate(f"{e.mean:.1f} %", (i, e.mean), textcoords="offset points", xytext=(8, 0), fontsize=8, va="center")
        else:
            ax.annotate("no valid run", (i, 0), textcoords="offset points", xytext=(0, 6), fontsize=8, ha="center", color="grey")
    _loss_axis(ax, [(r.loss_pct.hi if r.loss_pct.hi is not None else r.loss_pct.mean) for r in conf])
    names = [textwrap.fill(r.name([k for k in r.levels if k != "offered_rate"]), 30) for r in conf]
    ax.set_xticks(x, [f"{name}\n(n = {r.n})" for name, r in zip(names, conf, strict=True)], fontsize=8)
    ax.set_xlim(-0.5, len(conf) - 0.5)
    ax.set_ylabel("message loss (%)")
    rate = conf[0].offered_rate if conf else 0.0
    ax.set_title(f"Loss by configuration at {rate:.0f} msg/s offered (mean, 95 % CI)")
    return save_figure(fig, path)


def plot_capacity(capacities: dict[str, Any], path: Path) -> Path:
    """Each configuration's capacity as a bracket: the highest rate that passed to the lowest that failed."""
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.5 * max(1, len(capacities))))
    for i, c in enumerate(capacities.values()):
        lo, hi = c.get("capacity"), c.get("upper")
        if lo is not None:
            ax.plot([lo, hi if hi is not None else lo], [i, i], linewidth=6, color="#2c7fb8", solid_capstyle="butt")
            ax.plot([lo], [i], marker="|", markersize=14, color="black")
        elif hi is not None:
            ax.plot([hi], [i], marker="<", color="#c0392b")
    ax.set_yticks(range(len(capacities)), list(capacities), fontsize=7)
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_title("Capacity: highest rate that passed to lowest that failed")
    return save_figure(fig, path)


def write_campaign_report(campaign_dir: Path, out: Path | None = None) -> dict[str, Any]:
    from workloads.campaign.run import CampaignDir

    cdir = CampaignDir(campaign_dir)
    spec = cdir.spec
    out = out or campaign_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = [r for r in (cdir.result(p.name) for p in sorted((campaign_dir / "points").glob("*"))) if r] \
        if (campaign_dir / "points").is_dir() else []
    camp = spec["campaign"]
    factors = list(camp["factors"])
    load_keys = [k for k in factors if k in LOAD_KEYS] + ["offered_rate"]
    compare = camp.get("compare") or factors[:1]
    capacities = json.loads((campaign_dir / "capacity.json").read_text())["configurations"] if (campaign_dir / "capacity.json").is_file() else {}
    conf = configurations(results)
    comps = comparisons(counted(results), compare)
    table = pd.DataFrame([{"Configuration": _label(r.levels, r.levels), "Balancer (ran)": r.ran, "Runs (n)": r.runs,
                           "Offered (msg/s)": shown(r.offered_rate, "rate"),
                           **({"Overload ratio": "" if r.overload_ratio is None else f"{r.overload_ratio:.2f}"} if any(c.overload_ratio for c in conf) else {}),
                           "Loss (%) mean [95 % CI]": _fmt(r.loss_pct, "pct"), "p99 latency (ms) mean [95 % CI]": _fmt(r.p99_ms, "latency_ms"),
                           "Deliveries per second mean [95 % CI]": _fmt(r.throughput, "rate"),
                           **{col: _fmt(getattr(r, key), q) for key, (col, q) in OPTIONAL.items() if any(getattr(c, key).n for c in conf)},
                           "Load generator saturated (runs)": r.saturated} for r in conf])
    table.to_csv(out / "configurations.csv", index=False)
    runs_table(results).to_csv(out / "runs.csv", index=False)
    sentences = [c[f"{k}_sentence"] for c in comps for k, *_ in METRICS if c[f"{k}_sentence"]]
    (out / "comparisons.txt").write_text("\n".join(sentences) + ("\n" if sentences else ""))
    one_rate = len({r.offered_rate for r in conf}) == 1 and not capacities
    plots = [plot_loss_by_configuration(conf, out / "loss-by-configuration.png") if one_rate
             else plot_loss_curves(conf, load_keys, capacities, out / "loss-vs-load.png")]
    (out / ("loss-vs-load.png" if one_rate else "loss-by-configuration.png")).unlink(missing_ok=True)  # a rewrite leaves no stale plot
    if capacities:
        plots.append(plot_capacity(capacities, out / "capacity.png"))
    expected = len(spec["order"]) if spec.get("kind") == "matrix" else len(results)
    status = f"{len(results)} of {expected} points complete" if spec.get("kind") == "matrix" else f"{len(results)} runs"
    methods_html, top = methods_section(camp, results, status, campaign_dir)
    cap_rows = "".join(f"<tr><td>{html.escape(cid)}</td><td>{html.escape(c['text'])}</td><td>{len(c['steps'])}</td></tr>"
                       for cid, c in capacities.items())
    comp_html = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>mqttlab campaign {html.escape(camp['name'])}</title>
<style>{CSS} .answer{{font-size:1.15em;background:#eef6ee;padding:0.8em;border-left:4px solid #2a7}}</style></head><body>
<h1>Campaign {html.escape(camp['name'])}</h1>
{methods.warnings_html(top) if top else ''}
<p class="answer">{answer(conf, comps)}</p>
{methods_html}
<h2>Configurations</h2>{html_table(table, "Per configuration and offered rate")}
<h2>Comparisons</h2><p>Each pair of configurations that differ in one compared factor. Verdicts use Holm-adjusted p-values per metric;
p99 latency is given with its interval but no verdict where it is confounded, with the reason.</p>
<ul>{comp_html or '<li>No pair of configurations differs in exactly one compared factor.</li>'}</ul>
{f'<h2>Capacity</h2><table><tr><th>Configuration</th><th>Capacity (loss at most the threshold)</th><th>Steps</th></tr>{cap_rows}</table>' if capacities else ''}
<h2>Figures</h2>{''.join(figure_html(p, p.stem.replace("-", " ")) for p in plots)}
<p>Each point is a normal run directory (see <code>points/*/result.json</code>); <code>mqttlab report</code> on it gives the run's details.</p>
</body></html>"""
    (out / "report.html").write_text(doc)
    summary = {"points": len(results), "warnings": top, "configurations": [{"config_id": r.config_id, "levels": r.levels, "n": r.n, "invalid": r.invalid, "overload_ratio": r.overload_ratio,
                                                             "unjudged": r.unjudged, "bench_saturated": r.saturated,
                                                             **{k: vars(getattr(r, k)) for k, *_ in METRICS}} for r in conf],
               "comparisons": sentences, "comparison_tests": [{k: (vars(v) if isinstance(v, Difference) else v) for k, v in c.items()} for c in comps],
               "capacity": capacities}
    (out / "summary.json").write_text(dumps(summary))
    return summary | {"html": out / "report.html"}
