"""Locality: how many deliveries the publisher's own broker served, and how many crossed bridges.

An L4 balancer attaches each client to a broker without knowing who talks to whom, so a message
whose publisher and subscriber landed on different brokers crosses one bridge or more (Detti et
al., IEEE TNSM 2020, measure what this costs a cluster's scaling). From a run's own records: each
client's broker (the brokers' connection lines), each delivery's publisher and subscriber (the
bench's records), and the plan's bridges, whose shortest path between two brokers is the route a
message takes (a star: one bridge to or from the hub, two between two spokes).

Per number of bridges crossed: deliveries, their share and their latency, so an impaired bridge
(``mqttlab:links.bridge``) shows up where it must, on the deliveries that crossed it. Per bridge:
the distinct messages seen to cross it (a lower bound of what it carried: a message forwarded to a
broker without subscribers is not seen) and their payload bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workloads.analysis.load import Run
from workloads.base.numbers import rounded


def routes(brokers: Sequence[str], bridges: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(from broker, to broker) -> the bridges a message crosses, by their names (breadth first;
    a pair with no route is absent: its messages never arrive)."""
    graph: dict[str, list[tuple[str, str]]] = {b: [] for b in brokers}
    for br in bridges:
        graph.setdefault(br["local"], []).append((br["remote"], br["name"]))
        graph.setdefault(br["remote"], []).append((br["local"], br["name"]))
    out: dict[tuple[str, str], list[str]] = {}
    for start in graph:
        seen = {start: list[str]()}
        todo = deque([start])
        while todo:
            here = todo.popleft()
            for there, name in graph[here]:
                if there not in seen:
                    seen[there] = [*seen[here], name]
                    todo.append(there)
        out.update({(start, end): path for end, path in seen.items()})
    return out


def _latency(ms: pd.Series) -> dict[str, float | None]:
    if ms.empty:
        return {"min": None, "p50": None, "p95": None, "mean": None}
    return {"min": rounded(float(ms.min()), "latency_ms"), "p50": rounded(float(np.percentile(ms, 50)), "latency_ms"), "p95": rounded(float(np.percentile(ms, 95)), "latency_ms"),
            "mean": rounded(float(ms.mean()), "latency_ms")}


def locality(run: Run, clients: pd.DataFrame) -> dict[str, Any] | None:
    """The run's locality, or None where its records cannot say (no deliveries, or no client
    whose broker is known). ``clients``: each client's broker (metrics.client_brokers)."""
    d = run.deliveries
    if d.empty:
        return None
    cb = clients.dropna(subset=["broker"])
    pub_broker = cb[cb["role"] == "pub"].set_index("index")["broker"]
    sub_broker = cb[cb["role"] == "sub"].set_index("index")["broker"]
    if pub_broker.empty or sub_broker.empty:
        return None
    plan = run.manifest.get("plan") or {}
    if "bridges" not in plan:
        return None  # a plan that does not say how its brokers are joined cannot say what crossed
    brokers = [b["name"] for b in plan.get("brokers", [])]
    route = routes(brokers, plan.get("bridges", []))
    first = d[~d["dup"]]
    frame = pd.DataFrame({"pub": first["pub"].astype("int64"), "seq": first["seq"], "from": first["pub"].astype("int64").map(pub_broker),
                          "to": first["sub"].astype("int64").map(sub_broker),
                          "latency_ms": (first["recv_ns"] - first["send_ns"]) / 1e6}).dropna(subset=["from", "to"])
    if frame.empty:
        return None
    pairs = frame[["from", "to"]].drop_duplicates()
    hops = {(f, t): route.get((f, t)) for f, t in pairs.itertuples(index=False)}
    # a pair no bridge joins (-1) was delivered by no route of the plan: counted apart, never as local
    counts = pd.DataFrame([(f, t, -1 if path is None else len(path)) for (f, t), path in hops.items()], columns=["from", "to", "bridges"])
    frame = frame.merge(counts, on=["from", "to"], how="left")  # vectorised: a run holds millions of deliveries
    unrouted = int((frame["bridges"] < 0).sum())
    frame = frame[frame["bridges"] >= 0]
    if frame.empty:
        return None
    total = len(frame)
    by_hops: dict[str, dict[str, Any]] = {}
    for n, g in frame.groupby("bridges"):
        by_hops[str(n)] = {"deliveries": len(g), "share_pct": rounded(100.0 * len(g) / total, "pct"), "latency_ms": _latency(g["latency_ms"])}
    payload = int((run.manifest.get("scenario") or {}).get("payload_bytes") or 0)
    crossing = pd.DataFrame([(f, t, name) for (f, t), path in hops.items() for name in path or ()], columns=["from", "to", "bridge"])
    seen = crossing.merge(frame[["from", "to", "pub", "seq"]], on=["from", "to"]).drop_duplicates(["bridge", "pub", "seq"])
    out_bridges = {str(name): {"messages": int(n), "payload_bytes": int(n) * payload} for name, n in seen.groupby("bridge").size().items()}
    local = int(by_hops.get("0", {}).get("deliveries", 0))
    return {"deliveries": total, "unrouted": unrouted, "local_pct": rounded(100.0 * local / total, "pct"),
            "crossed_pct": rounded(100.0 * (total - local) / total, "pct"), "by_bridges_crossed": by_hops, "per_bridge": out_bridges}

