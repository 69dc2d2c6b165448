"""The report: tables as CSV and JSON, plots as PNG, and one self-contained HTML file."""

from __future__ import annotations

import html
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from workloads.analysis import availability, methods  # noqa: E402
from workloads.analysis.figures import figure_html, save_figure  # noqa: E402
from workloads.analysis.load import Run  # noqa: E402
from workloads.analysis.metrics import GROUP_KEYS, attribution, comparison, summarize_run, throughput  # noqa: E402
from workloads.analysis.stats import mean_ci  # noqa: E402
from workloads.base.numbers import dumps, shown  # noqa: E402
from workloads.rundir.fidelity import evaluate, verdict_line  # noqa: E402

JAIN = "Jain's fairness index J over the brokers' client counts: 1 = clients spread equally, 1/n = all on one of n brokers"


def broker_names(run: Run) -> dict[str, str]:
    """``address`` and ``address:port`` -> broker name, from the plan, so that legends name brokers, not IPs."""
    names: dict[str, str] = {}
    for b in (run.manifest.get("plan") or {}).get("brokers", []):
        names[str(b.get("address"))] = b["name"]
        names[f"{b.get('address')}:{b.get('port')}"] = b["name"]
    return names


def plot_loss(summaries: list[dict[str, Any]], path: Path) -> Path:
    """One bar per configuration: the mean over its runs, the spread, and every run as a dot."""
    groups: dict[str, list[float]] = {}
    for s in summaries:
        ran = (s["balancing"] or "-").replace(" standing in", "\nstanding in")
        groups.setdefault(f"{s['topology']}\n{ran}\nqos{s['qos']}", []).append(s["loss_pct"])
    labels = list(groups)
    means = [float(np.mean(v)) for v in groups.values()]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in groups.values()]
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(labels)), 3.8))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="#c0392b", alpha=0.8)
    for i, v in enumerate(groups.values()):
        ax.scatter([i] * len(v), v, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    top = max([m + sd for m, sd in zip(means, stds, strict=True)] + [max(v) for v in groups.values()], default=0.0)
    if top <= 0:  # nothing lost: say so rather than draw an axis around zero
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no message lost in any run", transform=ax.transAxes, ha="center", color="grey")
    else:
        ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("message loss (% of expected deliveries)")
    ax.set_title("Message loss per configuration\n(bar: mean; whisker: standard deviation; dot: one run)", fontsize=9)
    return save_figure(fig, path)


def plot_latency(runs: list[Run], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:
        d = r.deliveries
        lat = np.sort(((d.loc[~d["dup"], "recv_ns"] - d.loc[~d["dup"], "send_ns"]) / 1e6).to_numpy())
        if len(lat):
            step = max(1, len(lat) // 2000)
            ax.plot(lat[::step], np.linspace(0, 1, len(lat))[::step], label=r.label)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, publish to delivery (ms, log scale)")
    ax.set_ylabel("fraction of deliveries at or below")
    ax.set_title("Latency distribution (cumulative) per run", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_connections(summaries: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(len(summaries), 1)
    for i, s in enumerate(summaries):
        brokers = list(s["connections_per_broker"])
        ax.bar(np.arange(len(brokers)) + i * width, list(s["connections_per_broker"].values()), width,
               label=f"{s['topology']}, {s['balancing'] or 'no balancer'}: J = {shown(s['fairness'], 'fairness')}")
        ax.set_xticks(np.arange(len(brokers)) + width * (len(summaries) - 1) / 2, brokers)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # clients are counted, never fractional
    ax.set_xlabel("broker")
    ax.set_ylabel("bench clients connected (count)")
    ax.set_title("Clients per broker at the end of the run", fontsize=10)
    top = max((max(s["connections_per_broker"].values(), default=0) for s in summaries), default=0)
    ax.set_ylim(0, max(1, top) * 1.6)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper right", title=textwrap.fill(JAIN, 60), title_fontsize=7)
    return save_figure(fig, path)


def plot_timeseries(runs: list[Run], path: Path) -> Path:
    """Per run, on one shared time axis: the publishers' send rate and the subscribers' delivery
    rate on axes of their own (with many subscribers per publisher they differ by that factor, and
    one linear axis would flatten the send rate), broker CPU and memory against their caps, and
    each balancer's connections per broker."""
    fig, axes = plt.subplots(5, 1, figsize=(10, 12.5), sharex=True)
    a_sent, a_recv, a_cpu, a_mem, a_lb = axes
    for r in runs:
        names = broker_names(r)
        t = throughput(r)
        tag = f"{r.label}: " if len(runs) > 1 else ""
        if not t.empty:
            # markers: a run of a few seconds has a few points, and a line alone would hide them
            a_sent.plot(t["t"], t["sent"], marker="o", markersize=3, label=f"{tag}sent")
            a_recv.plot(t["t"], t["received"], marker="o", markersize=3, label=f"{tag}received")
        b = r.brokers.dropna(subset=["mem_bytes"])
        t0 = float(t["second"].min()) if not t.empty else (float(b["time_s"].min()) if not b.empty else 0.0)
        for broker, g in b.groupby("broker"):
            a_cpu.plot(g["time_s"] - t0, g["cpu_pct"], label=f"{tag}{broker}")
            a_mem.plot(g["time_s"] - t0, g["mem_bytes"] / 2**20, label=f"{tag}{broker}")
        caps = r.manifest.get("broker_caps") or {}
        for ax, values, what, unit in ((a_cpu, {c.get("cpus") for c in caps.values()}, "CPU cap", "% of a core"),
                                       (a_mem, {c.get("memory_bytes") for c in caps.values()}, "memory cap", "MiB")):
            for v in sorted(x for x in values if x):  # the caps as read back from the kernel
                y = v * 100 if ax is a_cpu else v / 2**20
                ax.axhline(y, color="black", linestyle="--", linewidth=1)
                ax.annotate(f"{what} per broker: {y:.0f} {unit}", (0.005, y), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        lb = r.balancers.dropna(subset=["active_conns"])
        for (host, real), g in lb.groupby(["host", "real"]):
            a_lb.step(g["time_s"] - t0, g["active_conns"], where="post", label=f"{tag}{host} to {names.get(str(real), str(real))}")
    for ax, ylabel, title in ((a_sent, "messages / s", "Publish rate: messages sent per second, all publishers"),
                              (a_recv, "deliveries / s", "Delivery rate: messages received per second, all subscribers"),
                              (a_cpu, "% of one core", "Broker CPU use"), (a_mem, "MiB", "Broker memory (resident set size)"),
                              (a_lb, "connections (count)", "Active connections per balancer and broker")):
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since the first message")
        ax.tick_params(labelbottom=True)  # every panel its own labelled time axis, the same range for all
        if ax.lines:  # beside the plot, so it never covers the data
            ax.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    a_lb.yaxis.set_major_locator(MaxNLocator(integer=True))
    # which run: one run's legends name only its series, so the figure says whose they are
    fig.suptitle(runs[0].label if len(runs) == 1 else f"{len(runs)} runs (legends name each)", fontsize=11)
    return save_figure(fig, path)


def html_table(df: pd.DataFrame, caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return df.to_html(index=False, border=0, classes="t", na_rep="–").replace('<table border="0" class="dataframe t">', f'<table class="t">{cap}', 1)


def estimate_text(values: list[Any], quantity: str, clip_low: float | None = None, clip_high: float | None = None) -> str:
    """Mean and 95 % interval over repetitions, rounded as ``quantity`` carries it; one run is
    shown as itself with n = 1, since no interval can be drawn from it."""
    e = mean_ci([v for v in values if v is not None], clip_low=clip_low, clip_high=clip_high)
    if e.n == 0:
        return "–"
    if e.lo is None or e.hi is None:
        return f"{shown(e.mean, quantity)} (n = 1)"
    return f"{shown(e.mean, quantity)} [{shown(e.lo, quantity)}, {shown(e.hi, quantity)}]"


def links_text(links: dict[str, Any] | None) -> str:
    """``mqttlab:links`` as a run carried it out: each impaired class's netem, or why none was."""
    if not links:
        return "clean"
    parts = []
    for cls, imp in (links.get("configured") or {}).items():
        bits = [f"delay {imp['delay_ms']:g}±{imp['jitter_ms']:g} ms" if imp.get("delay_ms") else "",
                f"loss {imp['loss_pct']:g} %" if imp.get("loss_pct") else "", f"rate {imp['rate_mbit']:g} Mbit/s" if imp.get("rate_mbit") else ""]
        if any(bits):
            parts.append(f"{cls}: {', '.join(b for b in bits if b)}")
    return "; ".join(parts) + ("" if links.get("carried_out") else f" (not carried out: {links.get('why', 'unknown')})")


def runs_tables(summaries: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tables a page wide: what was offered and delivered, and how fast and how evenly."""
    load = pd.DataFrame([{
        "Run": s["run_id"], "Topology": s["topology"], "Balancer (ran)": s["balancing"] or "none", "QoS": s["qos"],
        "Offered (msg/s)": shown(s.get("offered_rate"), "rate"), "Sent (messages)": s["sent"], "Expected deliveries": s["expected"],
        "Delivered": s["delivered"], "Lost": s["lost"], "Loss (%)": shown(s["loss_pct"], "pct"), "Duplicates": s["duplicates"],
        "Out of order": s["out_of_order"]} for s in summaries])
    speed = pd.DataFrame([{
        "Run": s["run_id"], **{f"{q} latency (ms)": shown(s["latency_ms"][q], "latency_ms") for q in ("p50", "p90", "p99")},
        "max latency (ms)": shown(s["latency_ms"]["max"], "latency_ms"),
        "Clients per broker": ", ".join(f"{b} {n}" for b, n in s["connections_per_broker"].items()),
        "Jain's fairness J": shown(s["fairness"], "fairness"),
        "Across a bridge (%)": shown((s.get("locality") or {}).get("crossed_pct"), "pct"),
        "Links": links_text(s.get("links")),
        "Load generator": "saturated" if s.get("bench_saturated") else "not saturated"} for s in summaries])
    return load, speed


def comparison_table(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per configuration (runs alike in every key of GROUP_KEYS): n and each metric's mean with its
    Student's t 95 % interval, loss clipped to 0-100 %."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(dumps({k: s.get(k) for k in GROUP_KEYS}), []).append(s)
    rows = []
    for rs in groups.values():
        s = rs[0]
        rows.append({
            "Configuration": f"{s['topology']}, {s['balancing'] or 'no balancer'}, QoS {s['qos']}, "
                             f"{s['publishers']} publishers x {s['subscribers']} subscribers, {s['messages']} messages",
            "Offered (msg/s)": shown(s.get("offered_rate"), "rate"), "Runs (n)": len(rs),
            "Loss (%) mean [95 % CI]": estimate_text([r["loss_pct"] for r in rs], "pct", 0.0, 100.0),
            "p99 latency (ms) mean [95 % CI]": estimate_text([r["latency_ms"]["p99"] for r in rs], "latency_ms", 0.0),
            "Jain's J mean [95 % CI]": estimate_text([r["fairness"] for r in rs], "fairness", 0.0, 1.0),
            "Duplicates mean [95 % CI]": estimate_text([r["duplicates"] for r in rs], "rate", 0.0)})
    return pd.DataFrame(rows)


ATTRIBUTION_NAMES = {"run_id": "Run", "broker": "Broker", "where": "Where lost", "lost_deliveries": "Lost deliveries",
                     "distinct_messages": "Distinct messages", "share_pct": "Share of loss (%)", "broker_dropped_sys": "Broker's drop counter ($SYS)",
                     "evidence": "Evidence", "explained": "Explained by the broker"}

CSS = """body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;line-height:1.4;box-sizing:border-box}
table{border-collapse:collapse;font-size:13px;margin:1em 0;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top} td:first-child{overflow-wrap:anywhere}
th{background:#f4f4f4} td:first-child{text-align:left} caption{text-align:left;font-weight:bold;padding:0.3em 0}
table.methods th{text-align:left;width:11em} table.methods td{text-align:left}
img{max-width:100%;height:auto;margin:0.5em 0} figure{margin:1em 0} p.fig{font-size:12px;color:#444;margin:0}
.warn{background:#fdecea;border-left:5px solid #b00;padding:0.4em 0.9em;font-weight:bold}
.ok{background:#eef6ee;border-left:5px solid #2a7;padding:0.4em 0.9em} .partial{color:#b00}
pre,code{white-space:pre-wrap;overflow-wrap:anywhere}"""


def fidelity_html(verdicts: list[tuple[str, dict[str, Any]]]) -> str:
    """The report's first line: were the runs measuring the system? Each run's verdict, failed
    checks named."""
    bad = [(rid, f) for rid, f in verdicts if f["verdict"] == "invalid"]
    checked = [rid for rid, f in verdicts if any(c["passed"] is not None for c in f["checks"])]
    if bad:
        head = f"Fidelity: {len(bad)} of {len(verdicts)} run(s) INVALID"
    elif not checked:  # runs recorded before the checks, or without their records: no verdict to give
        head = "Fidelity: not checked (the runs have none of the records the checks read)"
    else:
        head = f"Fidelity: {len(checked)} of {len(verdicts)} run(s) checked and valid"
    items = "".join(f"<li>{html.escape(str(rid))}: {html.escape(verdict_line(f))}</li>" for rid, f in verdicts)
    return f'<p class="verdict {"partial" if bad else ""}"><b>{html.escape(head)}</b></p><ul>{items}</ul>'


def write_report(runs: list[Run], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarize_run(r) for r in runs]
    for r, s in zip(runs, summaries, strict=True):  # from each run's own records (old run directories included)
        s["fidelity"] = evaluate(r.path, r.manifest)
        s["verdict"] = s["fidelity"]["verdict"]
    per_run = pd.DataFrame([{k: v for k, v in s.items() if not isinstance(v, (dict, list))} | {f"latency_{k}_ms": v for k, v in s["latency_ms"].items()}
                            for s in summaries])
    per_run.to_csv(out / "runs.csv", index=False)
    comp = comparison(summaries)
    comp.to_csv(out / "comparison.csv", index=False)
    attributions = []
    for r, s in zip(runs, summaries, strict=True):
        a = attribution(r)
        a.insert(0, "run_id", s["run_id"])
        attributions.append(a)
        s["attribution"] = {"total_lost": a.attrs["total_lost"], "unexplained": a.attrs["unexplained"], "rows": a.drop(columns="run_id").to_dict("records")}
    att = pd.concat(attributions, ignore_index=True) if attributions else pd.DataFrame()
    att.to_csv(out / "attribution.csv", index=False)
    faults_html = availability.report_section(runs, summaries, out)
    (out / "summary.json").write_text(dumps({"runs": summaries, "comparison": comp.to_dict("records")}))
    plots = [(plot_loss(summaries, out / "loss.png"), "message loss per configuration"),
             (plot_latency(runs, out / "latency.png"), "latency distribution per run"),
             (plot_connections(summaries, out / "connections.png"), "clients per broker and Jain's fairness index"),
             (plot_timeseries(runs, out / "timeseries.png"), "send and delivery rates, broker CPU and memory, balancer connections over time")]
    notes = "".join(f"<li>{html.escape(s['run_id'] or '')}: {html.escape(n)}</li>" for s in summaries for n in s["notes"])
    top = [w for r, s in zip(runs, summaries, strict=True) for w in methods.warnings(r.manifest, s)]
    load_t, speed_t = runs_tables(summaries)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>mqttlab report</title><style>{CSS}</style></head><body>
{fidelity_html([(str(s["run_id"] or s["path"]), s["fidelity"]) for s in summaries])}
<h1>mqttlab report: {len(runs)} run(s)</h1>
{methods.warnings_html(top)}
{f'<ul class="partial">{notes}</ul>' if notes else ''}
{methods.methods_html([(f"Run {s['run_id']}", r.manifest, s) for r, s in zip(runs, summaries, strict=True)])}
<h2>Runs</h2>
<p>Offered: the scenario's publish rate over all publishers; sent: the messages the publishers sent (a count); expected deliveries:
sent times the subscribers that hear each publisher. Latencies are the bench's histogram percentiles (3 significant digits), the same as
<code>mqttlab bench summary</code> prints. {html.escape(JAIN)}.</p>
{html_table(load_t, "Load and delivery per run")}{html_table(speed_t, "Latency and balance per run")}
<h2>Comparison</h2><p>Runs grouped by topology, balancer, scheduler, QoS and load. Mean over repetitions with the Student's t 95 %
confidence interval in brackets (loss clipped to 0-100 %, J to 0-1); a configuration with one run has no interval (n = 1).</p>
{html_table(comparison_table(summaries), "Per configuration")}
<h2>Where messages were lost</h2><p>Each lost delivery classified from the bench's records, set against the brokers' own drop counters
and warnings. Unexplained: lost deliveries that no broker reported.</p>{html_table(att.rename(columns=ATTRIBUTION_NAMES), "Loss attribution") if not att.empty else '<p>No message was lost.</p>'}
{faults_html}
<h2>Figures</h2>{''.join(figure_html(p, alt) for p, alt in plots)}
</body></html>"""
    (out / "report.html").write_text(doc)
    return {"summaries": summaries, "comparison": comp, "attribution": att, "html": out / "report.html", "plots": [p for p, _ in plots]}
