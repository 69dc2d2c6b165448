"""The report: tables as CSV and JSON, plots as PNG, and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workloads.analysis import availability  # noqa: E402
from workloads.analysis.load import Run  # noqa: E402
from workloads.analysis.metrics import attribution, comparison, summarize_run, throughput  # noqa: E402
from workloads.numbers import dumps  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    ax.set_ylabel("message loss (%)")
    ax.set_title("Loss by configuration (mean, standard deviation, each run)", fontsize=9)
    return _save(fig, path)


def plot_latency(runs: list[Run], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:
        d = r.deliveries
        lat = np.sort(((d.loc[~d["dup"], "recv_ns"] - d.loc[~d["dup"], "send_ns"]) / 1e6).to_numpy())
        if len(lat):
            step = max(1, len(lat) // 2000)
            ax.plot(lat[::step], np.linspace(0, 1, len(lat))[::step], label=r.label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Latency distribution")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_connections(summaries: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(len(summaries), 1)
    for i, s in enumerate(summaries):
        brokers = list(s["connections_per_broker"])
        ax.bar(np.arange(len(brokers)) + i * width, list(s["connections_per_broker"].values()), width,
               label=f"{s['topology']}/{s['balancing'] or '-'} (J={s['fairness'] or 0:.3f})")
        ax.set_xticks(np.arange(len(brokers)) + width * (len(summaries) - 1) / 2, brokers)
    ax.set_ylabel("clients")
    ax.set_title("Connections per broker")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_timeseries(runs: list[Run], path: Path) -> Path:
    """Throughput, broker CPU and memory, and balancer connections, on one time axis per run."""
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=False)
    a1, a2, a3, a4 = axes
    for r in runs:
        t = throughput(r)
        if not t.empty:
            a1.plot(t["t"], t["received"], label=f"{r.label} received")
            a1.plot(t["t"], t["sent"], linestyle="--", label=f"{r.label} sent")
        b = r.brokers.dropna(subset=["mem_bytes"])
        t0 = float(t["second"].min()) if not t.empty else (float(b["time_s"].min()) if not b.empty else 0.0)
        for broker, g in b.groupby("broker"):
            a2.plot(g["time_s"] - t0, g["cpu_pct"], label=f"{r.label} {broker}")
            a3.plot(g["time_s"] - t0, g["mem_bytes"] / 2**20, label=f"{r.label} {broker}")
        caps = r.manifest.get("broker_caps") or {}
        for ax, values, what in ((a2, {c.get("cpus") for c in caps.values()}, "CPU cap"),
                                 (a3, {c.get("memory_bytes") for c in caps.values()}, "memory cap")):
            for v in sorted(x for x in values if x):  # the caps as read back from the kernel
                y = v * 100 if ax is a2 else v / 2**20
                ax.axhline(y, color="black", linestyle="--", linewidth=1)
                ax.annotate(f"{what} {y:.0f}", (0, y), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        lb = r.balancers.dropna(subset=["active_conns"])
        for (host, real), g in lb.groupby(["host", "real"]):
            a4.plot(g["time_s"] - t0, g["active_conns"], label=f"{r.label} {host}->{real}")
    for ax, ylabel, title in ((a1, "messages / s", "Throughput"), (a2, "% of a core", "Broker CPU"), (a3, "MiB", "Broker memory (RSS)"),
                              (a4, "active connections", "Balancer connections per real server")):
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if ax.lines:  # beside the plot, so it never covers the data
            ax.legend(fontsize=5, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for ax in (a2, a3, a4):
        ax.set_ylim(bottom=0)
    a4.set_xlabel("seconds since the first message")
    return _save(fig, path)


def _img(path: Path) -> str:
    return f'<img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, classes="t", na_rep="")


def write_report(runs: list[Run], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarize_run(r) for r in runs]
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
    plots = [plot_loss(summaries, out / "loss.png"), plot_latency(runs, out / "latency.png"),
             plot_connections(summaries, out / "connections.png"), plot_timeseries(runs, out / "timeseries.png")]
    notes = "".join(f"<li>{html.escape(s['run_id'] or '')}: {html.escape(n)}</li>" for s in summaries for n in s["notes"])
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>mqttlab report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table.t{{border-collapse:collapse;font-size:13px;margin:1em 0}}
table.t td,table.t th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} img{{max-width:100%;margin:0.5em 0}}
.partial{{color:#b00}}</style></head><body>
<h1>mqttlab report: {len(runs)} run(s)</h1>
{f'<ul class="partial">{notes}</ul>' if notes else ''}
<h2>Runs</h2>{_table(per_run.drop(columns=["path", "partial"], errors="ignore"))}
<h2>Comparison</h2><p>Grouped by topology, balancer, scheduler, QoS and load; mean and standard deviation over repetitions.</p>{_table(comp)}
<h2>Where messages were lost</h2><p>Each lost delivery classified from the bench's records, set against the brokers' own drop counters
and warnings. Unexplained: lost deliveries that no broker reported.</p>{_table(att) if not att.empty else '<p>No message was lost.</p>'}
{faults_html}
<h2>Plots</h2>{''.join(_img(p) for p in plots)}
</body></html>"""
    (out / "report.html").write_text(doc)
    return {"summaries": summaries, "comparison": comp, "attribution": att, "html": out / "report.html", "plots": plots}
