"""Availability under faults: what each injected fault did to the clients and the messages.

Per fault (``faults.jsonl``), over its window (from when it was carried out to when it was
undone, or to the end of the run for a kill):

- when each balancer stopped using the failed broker, from its monitor (IPVS lists only servers
  in service; HAProxy reports ``DOWN``), and how many new connections it still sent there
  (the growth of that real server's total connections): without health checks, the clients it
  kept sending to a dead broker;
- which clients lost their connection in the window (the bench's ``outages-*.csv``), per client
  host, how long until each was back (p50, p99, max), how many never came back, and the broker
  each landed on afterwards (the brokers' own connection logs);
- deliveries lost and duplicated for messages sent inside the window and outside it. A lost
  message has no receive record; its send time comes from the same publisher's delivered
  neighbours (send times rise with the sequence number);
- for a bridge cut, the messages lost on their way across that bridge, per direction, set
  against the drop counters ($SYS) of the broker that queues for each direction: the hub's
  bridge queue for messages into the far broker, the far broker's queue for the hub's bridge
  client for messages out of it. A queue that overflows drops each message once, so the two
  agree when the bridge is all that lost.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workloads.analysis.figures import figure_html, save_figure  # noqa: E402
from workloads.analysis.load import Run, read_outages  # noqa: E402
from workloads.analysis.locality import routes  # noqa: E402
from workloads.analysis.metrics import classify_losses, client_brokers, pair_table, throughput  # noqa: E402
from workloads.describe.names import client_prefix  # noqa: E402
from workloads.rundir.records import read_faults  # noqa: E402

BROKER_LOG_TIME = "%Y-%m-%dT%H:%M:%S"  # log_timestamp_format in the rendered mosquitto.conf (local time)


def window(fault: dict[str, Any], run: Run) -> tuple[float, float]:
    """From when the fault was carried out to when it was undone; a kill lasts to the end of the
    measurement (before the teardown, whose disconnections are no fault's doing)."""
    start = float(fault["started_at"])
    end = fault.get("ended_at") or fault.get("run_ended_at") or run.manifest.get("ended_at")
    return start, float(end) if end is not None else np.inf


def _pct(x: np.ndarray) -> dict[str, float | None]:
    if not len(x):
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(x, 50)), 3), "p99": round(float(np.percentile(x, 99)), 3), "max": round(float(x.max()), 3)}


def lost_with_send_time(run: Run) -> pd.DataFrame:
    """Every lost delivery (sub, pub, seq) with the estimated send time of its message (s)."""
    pairs = pair_table(run)
    pairs = pairs[pairs["lost"] > 0]
    if pairs.empty:
        return pd.DataFrame(columns=["sub", "pub", "seq", "send_s"])
    d = run.deliveries
    got = d.loc[~d["dup"], ["sub", "pub", "seq"]].drop_duplicates()
    rows = pairs.loc[pairs.index.repeat(pairs["expected"]), ["sub", "pub"]].copy()
    rows["seq"] = rows.groupby(["sub", "pub"]).cumcount().astype("uint32")
    rows = rows.astype({"sub": "uint32", "pub": "uint32"}).merge(got.assign(hit=True), on=["sub", "pub", "seq"], how="left")
    lost = rows[rows["hit"].isna()].drop(columns="hit").reset_index(drop=True)
    lost["send_s"] = np.nan
    known = d.drop_duplicates(["pub", "seq"]).sort_values(["pub", "seq"])
    pubs = run.publishers.set_index("pub") if not run.publishers.empty else pd.DataFrame()
    for pub, idx in lost.groupby("pub").groups.items():
        k = known[known["pub"] == pub]
        seqs = lost.loc[idx, "seq"].to_numpy(dtype=float)
        xs, ys = list(k["seq"].to_numpy(dtype=float)), list(k["send_ns"].to_numpy(dtype=float) / 1e9)
        if len(xs) and pub in pubs.index:  # beyond what arrived, the publisher's own first and last send anchor the line
            row = pubs[pubs.index == pub]
            last_seq = float(row["sent"].sum()) - 1
            if xs[0] > 0:
                xs, ys = [0.0, *xs], [float(row["first_send_s"].min()), *ys]
            if last_seq > xs[-1]:
                xs, ys = [*xs, last_seq], [*ys, float(row["last_send_s"].max())]
        if len(xs) >= 2:
            lost.loc[idx, "send_s"] = np.interp(seqs, np.asarray(xs), np.asarray(ys))
        elif pub in pubs.index:  # nothing of it arrived: spread its messages over its sending time
            row = pubs[pubs.index == pub]
            first, last, sent = float(row["first_send_s"].min()), float(row["last_send_s"].max()), max(1, int(row["sent"].sum()) - 1)
            lost.loc[idx, "send_s"] = first + (last - first) * seqs / sent
    return lost


def _broker_times(run: Run) -> pd.DataFrame:
    c = run.connects.copy()
    if c.empty:
        return c.assign(t=pd.Series(dtype=float))
    stamps = {s: _parse_log_time(s) for s in c["time"].unique()}
    c["t"] = c["time"].map(stamps)
    return c


def _parse_log_time(s: str) -> float:
    try:
        return datetime.strptime(s, BROKER_LOG_TIME).timestamp()
    except ValueError:
        try:
            return float(s)  # mosquitto's default epoch seconds
        except ValueError:
            return np.nan


def _balancer_view(run: Run, fault: dict[str, Any], start: float, end: float) -> tuple[dict[str, float | None], int | None]:
    """Per balancer host, seconds from the fault until its monitor no longer had the broker in
    service (None: it kept it), and how many connections were still sent to it meanwhile."""
    plan = run.manifest.get("plan", {})
    addr = next((f"{b['address']}:{b['port']}" for b in plan.get("brokers", []) if b["name"] == fault["target"]), None)
    lb = run.balancers
    if addr is None or lb.empty:
        return {}, None
    out: dict[str, float | None] = {}
    sent = 0
    for host, g in lb.groupby("host"):
        g = g.sort_values("time_s")
        times = np.sort(g["time_s"].unique())
        after = times[(times >= start) & (times <= end)]
        mine = g[g["real"].astype(str).isin([addr, fault["target"]])]
        status = mine.get("status", pd.Series("UP", index=mine.index)).fillna("UP").astype(str)
        up_at = set(mine.loc[~status.str.startswith(("DOWN", "MAINT")), "time_s"])  # "no check" serves too
        gone = [t for t in after if t not in up_at]
        out[str(host)] = round(float(gone[0] - start), 3) if gone else None
        tot = pd.to_numeric(mine["total_conns"], errors="coerce").dropna() if "total_conns" in mine else pd.Series(dtype=float)
        tt = mine.loc[tot.index, "time_s"]
        before = tot[tt <= start]
        during = tot[(tt > start) & (tt <= end)]
        if len(before) and len(during):
            sent += int(during.max() - before.iloc[-1])
    return out, sent


def _bridge_nodes(bridges: list[dict[str, Any]], a: str, b: str) -> list[str]:
    """The brokers a message passes from broker ``a`` to broker ``b``, both included (empty when
    no bridges join them)."""
    edges = _bridge_path(bridges, a, b)
    nodes = [b]
    for e in edges:  # from b back to a
        (nxt,) = e - {nodes[-1]}
        nodes.append(nxt)
    return nodes[::-1] if edges or a == b else []


def _bridge_path(bridges: list[dict[str, Any]], a: str, b: str) -> list[frozenset[str]]:
    """The bridges a message crosses from broker ``a`` to broker ``b``, from ``b`` back to ``a``
    (Mosquitto forwards along the bridges; the shortest path, as ``try_private`` keeps loops out)."""
    ends = {br["name"]: frozenset((br["local"], br["remote"])) for br in bridges}
    path = routes(sorted({x for e in ends.values() for x in e} | {a, b}), bridges).get((a, b))
    return [ends[name] for name in reversed(path)] if path else []


def bridge_loss(run: Run, fault: dict[str, Any], start: float, end: float) -> tuple[dict[str, int], dict[str, int], float]:
    """For a bridge cut: distinct messages lost across it per direction (``into <far>``,
    ``out of <far>``; a message missed by every subscriber on the far side of the bridge while
    others got it, sent from the fault's start until the bridge had time to recover), the drop
    counters ($SYS) of both ends over the same span, and the span's end.

    The span runs past the cut: TCP's retransmission timer backs off during a cut, so the bridge
    may stay stalled up to as long again after the drop rules are gone (+1 s, +2 s for the
    counters, which Mosquitto publishes every ``sys_interval``)."""
    bridges = run.manifest.get("plan", {}).get("bridges", [])
    link = next((b for b in bridges if b["name"] == fault["target"]), None)
    measured_to = float(fault.get("run_ended_at") or run.manifest.get("ended_at") or np.inf)
    until = min(end + (end - start) + 1.0, measured_to) if np.isfinite(end) else measured_to
    if link is None:
        return {}, {}, until
    hub, far = str(link["local"]), str(link["remote"])
    edge = frozenset((hub, far))
    lost = classify_losses(run)
    lost = lost[lost["where"].astype(str).str.startswith("bridge into ")]
    out = {f"into {far}": 0, f"out of {far}": 0}
    if not lost.empty:
        timed = lost_with_send_time(run)[["sub", "pub", "seq", "send_s"]]
        lost = lost.merge(timed, on=["sub", "pub", "seq"], how="left")
        lost = lost[(lost["send_s"] >= start) & (lost["send_s"] <= until)]
        # the bridge a message was lost on: the one after the last broker on its path known to
        # have had it (its publisher's, or one whose subscribers got it); a message the hub
        # passed on to some brokers but not to a third was lost on the hub's other bridge, not
        # across the cut (a broker without subscribers cannot tell, and counts as not having it)
        sub_broker = client_brokers(run).query("role == 'sub'").set_index("index")["broker"]
        d = run.deliveries.loc[~run.deliveries["dup"], ["sub", "pub", "seq"]]
        had = set(zip(d["pub"].tolist(), d["seq"].tolist(), d["sub"].map(sub_broker).tolist(), strict=True))
        paths: dict[tuple[str, str], list[str]] = {}

        def lost_on(pub: int, seq: int, a: str, b: str) -> frozenset[str] | None:
            nodes = paths.setdefault((a, b), _bridge_nodes(bridges, a, b))
            last = max((i for i, x in enumerate(nodes) if i == 0 or (pub, seq, x) in had), default=0)
            return frozenset(nodes[last:last + 2]) if last + 1 < len(nodes) else None

        crosses = [lost_on(int(p), int(q), str(a), str(b)) == edge
                   for p, q, a, b in zip(lost["pub"], lost["seq"], lost["pub_broker"], lost["broker"], strict=True)]
        lost = lost[crosses]
        msgs = lost.drop_duplicates(["pub", "seq"])
        out = {f"into {far}": int((msgs["pub_broker"] != far).sum()), f"out of {far}": int((msgs["pub_broker"] == far).sum())}
    dropped: dict[str, int] = {}
    b = run.brokers.dropna(subset=["msgs_dropped"]) if "msgs_dropped" in run.brokers else pd.DataFrame()
    for name in (hub, far):
        g = b[b["broker"] == name].sort_values("time_s") if not b.empty else b
        before = g[g["time_s"] <= start]["msgs_dropped"]
        after = g[g["time_s"] <= until + 2.0]["msgs_dropped"]
        if len(before) and len(after):
            dropped[name] = int(after.iloc[-1] - before.iloc[-1])
    return out, dropped, until


def fault_table(run: Run) -> pd.DataFrame:
    faults = read_faults(run.path)
    cols = ["run_id", "spec", "kind", "target", "started_at", "ended_at", "window_s", "balancer_out_after_s", "sent_to_failed_broker",
            "affected_clients", "affected_by_host", "never_back", "all_back_s", "reconnect_p50_s", "reconnect_p99_s", "reconnect_max_s", "attempts",
            "back_on", "lost_inside", "lost_outside", "dup_inside", "dup_outside", "bridge_lost_messages", "bridge_dropped_sys", "affected"]
    if not faults:
        return pd.DataFrame(columns=cols)
    outages = read_outages(run)
    tag = run.manifest.get("tag")
    keepalive = float(run.manifest.get("scenario", {}).get("keepalive", 60))
    lost = lost_with_send_time(run)
    d = run.deliveries
    dup_s = (d.loc[d["dup"], "send_ns"] / 1e9).to_numpy()
    connects = _broker_times(run)
    if tag is not None and not connects.empty:
        connects = connects[connects["client_id"].str.startswith(client_prefix(tag))]
    rows = []
    for f in faults:
        if f.get("started_at") is None:
            continue  # never carried out (the run ended first, or it failed: see its detail)
        start, end = window(f, run)
        measured_to = float(f.get("run_ended_at") or run.manifest.get("ended_at") or np.inf)
        # a silent failure is noticed only by keepalive (1.5 x), so outages that begin that late still belong to it
        notice = min(end + 1.5 * keepalive, measured_to) if f["kind"] == "director" else end
        o = outages[(outages["lost_at"] >= start - 0.001) & (outages["lost_at"] <= notice)]
        o = o.assign(back_at=o["back_at"].where(o["back_at"] <= measured_to, 0))  # back only once the teardown lifted it: not back
        back = o[o["back_at"] > 0]
        took = (back["back_at"] - back["lost_at"]).to_numpy(dtype=float)
        after = connects.merge(o[["client_id", "lost_at"]], on="client_id") if not connects.empty else pd.DataFrame()
        if not after.empty:
            after = after[after["t"] >= np.floor(after["lost_at"])].sort_values("t").drop_duplicates("client_id", keep="last")
        view, sent = _balancer_view(run, f, start, end) if f["kind"] == "broker" else ({}, None)
        inside = (lost["send_s"] >= start) & (lost["send_s"] <= end)
        dins = (dup_s >= start) & (dup_s <= end)
        pct = _pct(took)
        across, dropped = bridge_loss(run, f, start, end)[:2] if f["kind"] == "bridge" else ({}, {})
        rows.append({
            "run_id": run.manifest.get("run_id"), "spec": f["spec"], "kind": f["kind"], "target": f["target"], "started_at": start,
            "ended_at": f.get("ended_at"), "window_s": round(end - start, 3) if np.isfinite(end) else None,
            "balancer_out_after_s": view, "sent_to_failed_broker": sent,
            "affected_clients": int(o["client_id"].nunique()), "affected_by_host": {str(k): int(v) for k, v in o.groupby("host")["client_id"].nunique().items()},
            "never_back": int((o["back_at"] <= 0).sum()),
            # the reconnect storm's length: from the fault until the last client it cut off had its
            # CONNACK again; none while one is still away (0 when it cut nobody off)
            "all_back_s": None if (o["back_at"] <= 0).any() else round(float(back["back_at"].max() - start), 3) if len(back) else 0.0,
            "reconnect_p50_s": pct["p50"], "reconnect_p99_s": pct["p99"], "reconnect_max_s": pct["max"],
            "attempts": int(o["attempts"].sum()),
            "back_on": {str(k): int(v) for k, v in after.groupby("broker")["client_id"].nunique().items()} if not after.empty else {},
            "lost_inside": int(inside.sum()), "lost_outside": int((~inside).sum()),
            "dup_inside": int(dins.sum()), "dup_outside": int((~dins).sum()),
            "bridge_lost_messages": across, "bridge_dropped_sys": dropped,
            "affected": sorted(o["client_id"].unique().tolist()),
        })
    return pd.DataFrame(rows, columns=cols)


def plot_fault_timeline(runs: list[Run], path: Path) -> Path | None:
    """Per run with faults: deliveries per second and connected clients per broker, the fault
    windows shaded and labelled."""
    runs = [r for r in runs if read_faults(r.path)]
    if not runs:
        return None
    fig, axes = plt.subplots(2 * len(runs), 1, figsize=(7.5, 5 * len(runs)), squeeze=False)
    for k, r in enumerate(runs):
        a1, a2 = axes[2 * k][0], axes[2 * k + 1][0]
        t = throughput(r)
        t0 = float(t["second"].min()) if not t.empty else float(r.manifest.get("started_at", 0))
        if not t.empty:
            a1.plot(t["second"] - t0, t["received"], label="delivered / s")
            a1.plot(t["second"] - t0, t["sent"], linestyle="--", label="published / s")
        b = r.brokers.dropna(subset=["clients_connected"]) if "clients_connected" in r.brokers else pd.DataFrame()
        for broker, g in (b.groupby("broker") if not b.empty else []):
            a2.plot(g["time_s"] - t0, g["clients_connected"], label=str(broker))
        for f in read_faults(r.path):
            if f.get("started_at") is None:
                continue
            s, e = window(f, r)
            e = e if np.isfinite(e) else (float(t["second"].max()) + 1 if not t.empty else s + 1)
            for ax in (a1, a2):
                ax.axvspan(s - t0, e - t0, color="#e74c3c", alpha=0.15)
                ax.axvline(s - t0, color="#c0392b", linewidth=1)
            a1.annotate(f["spec"], (s - t0, 1), xycoords=("data", "axes fraction"), fontsize=7, va="top", rotation=90, color="#c0392b")
        a1.set_title(f"{r.manifest.get('run_id', r.path.name)}: throughput, faults shaded", fontsize=9)
        a1.set_ylabel("messages / s")
        a2.set_title("connected clients per broker ($SYS, includes the monitor)", fontsize=9)
        a2.set_ylabel("clients")
        a2.set_xlabel("seconds since the first message")
        for ax in (a1, a2):
            if ax.lines:
                ax.legend(fontsize=6)
    return save_figure(fig, path)


FAULT_FIELDS = {"run_id": "Run", "kind": "Kind", "target": "Target", "window_s": "Fault window (s)",
                "balancer_out_after_s": "Balancer stopped using the broker after (s)", "sent_to_failed_broker": "Connections still sent there",
                "affected_clients": "Clients that lost their connection", "affected_by_host": "... per client host",
                "never_back": "Clients never back", "reconnect_p50_s": "Reconnect time p50 (s)", "reconnect_p99_s": "Reconnect time p99 (s)",
                "reconnect_max_s": "Reconnect time max (s)", "attempts": "Reconnect attempts", "back_on": "Clients back on (broker: count)",
                "lost_inside": "Deliveries lost, sent inside the window", "lost_outside": "Deliveries lost, sent outside it",
                "dup_inside": "Duplicates, inside the window", "dup_outside": "Duplicates, outside it",
                "bridge_lost_messages": "Messages lost across the bridge", "bridge_dropped_sys": "Bridge ends' drop counters ($SYS)"}


def report_section(runs: list[Run], summaries: list[dict[str, Any]], out: Path) -> str:
    """Adds ``faults`` to each run's summary, writes ``availability.csv`` and
    ``availability.png``; returns the report's HTML section ("" when no run had a fault)."""
    import html

    tables = []
    for r, s in zip(runs, summaries, strict=True):
        t = fault_table(r)
        s["faults"] = t.to_dict("records")
        tables.append(t)
    if not any(len(t) for t in tables):
        return ""
    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    table.to_csv(out / "availability.csv", index=False)
    plot = plot_fault_timeline(runs, out / "availability.png")
    # one column per fault, one row per quantity: twenty quantities side by side would not fit a page
    shown = (table.drop(columns=["affected", "started_at", "ended_at"]).astype(str).set_index("spec").T
             .rename(index=FAULT_FIELDS).rename_axis("Fault").reset_index())
    img = figure_html(plot, "throughput and connected clients per broker with the fault windows shaded") if plot is not None else ""
    return (f"<h2>Availability under faults</h2><p>Per injected fault: when each balancer stopped using the broker (from its monitor), "
            f"connections it still sent there, clients that lost their connection and how long until they were back, where they went, "
            f"deliveries lost or duplicated for messages sent inside the fault window versus outside it, and for a bridge cut the "
            f"messages lost across that bridge per direction beside both ends' own drop counters ($SYS) over the same span.</p>"
            f"{shown.to_html(index=False, border=0, classes='t', na_rep='')}{img}"
            f"<p>Affected clients: {html.escape('; '.join(f'{s}: {len(a)}' for s, a in zip(table['spec'], table['affected'], strict=True)))}</p>")
