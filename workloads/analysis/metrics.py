"""Per-run metrics, loss attribution and the comparison across runs. Vectorised throughout: a
run can hold tens of millions of deliveries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workloads.analysis.load import Run
from workloads.analysis.locality import locality
from workloads.base.numbers import rounded
from workloads.describe.names import client_prefix
from workloads.describe.scenario import Scenario
from workloads.describe.standin import balancing_columns
from workloads.rundir import records as rundir

GROUP_KEYS = ["topology", "balancer", "scheduler", "stands_in_for", "qos", "publishers", "subscribers", "messages"]


def jain(values: list[float] | np.ndarray) -> float | None:
    """Jain's fairness index: 1 when equal, 1/n when one takes everything."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0 or not x.any():
        return None
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def sent_per_pub(run: Run) -> pd.Series:
    if run.publishers.empty:
        return pd.Series(dtype="int64")
    return run.publishers.groupby("pub")["sent"].sum()


def _counted_from_records(d: pd.DataFrame) -> pd.DataFrame:
    """(sub, pub) -> received (distinct sequence numbers), duplicates, from the raw records."""
    first = d[~d["dup"]].drop_duplicates(["sub", "pub", "seq"])
    pairs = (first.groupby(["sub", "pub"]).size().rename("received").reset_index()
             .merge(d[d["dup"]].groupby(["sub", "pub"]).size().rename("duplicates").reset_index(), how="outer", on=["sub", "pub"]))
    pairs[["received", "duplicates"]] = pairs[["received", "duplicates"]].fillna(0).astype("int64")
    pairs["out_of_order"] = 0
    return pairs


def pair_table(run: Run) -> pd.DataFrame:
    """(sub, pub) -> expected, received, duplicates, out_of_order, lost.

    A run killed before its workers wrote their counts is measured against what it planned (the
    manifest's scenario): its subscribers' pairs are rebuilt from the delivery records on disk,
    and a publisher whose count is missing is expected to have sent what it planned."""
    sent = sent_per_pub(run)
    cols = ["sub", "pub", "received", "duplicates", "out_of_order"]
    counted = (run.subscribers.groupby(["sub", "pub"], as_index=False)[cols[2:]].sum() if not run.subscribers.empty
               else pd.DataFrame(columns=cols, dtype="int64"))
    sc = run.manifest.get("scenario")
    if run.partial and sc:
        scenario = Scenario.from_dict(sc)
        planned = pd.DataFrame(scenario.planned_pairs(), columns=["sub", "pub", "planned"], dtype="int64")
        planned = planned[~planned["sub"].isin(counted["sub"])]
        d = run.deliveries
        rebuilt = _counted_from_records(d[~d["sub"].isin(counted["sub"])].astype({"sub": "int64", "pub": "int64"}))
        rebuilt = planned.merge(rebuilt, how="left", on=["sub", "pub"]).drop(columns="planned")
        rebuilt[cols[2:]] = rebuilt[cols[2:]].fillna(0).astype("int64")
        pairs = pd.concat([counted, rebuilt], ignore_index=True) if not counted.empty else rebuilt
        plan_sent = pd.Series({p: scenario.messages_of(p) for p in range(scenario.publishers)}, dtype="int64")
        sent = sent.combine_first(plan_sent)
    elif not counted.empty:
        pairs = counted
    else:
        pairs = _counted_from_records(run.deliveries)
    pairs["expected"] = pairs["pub"].map(sent).fillna(0).astype("int64")
    pairs["lost"] = (pairs["expected"] - pairs["received"]).clip(lower=0)
    return pairs


def client_brokers(run: Run) -> pd.DataFrame:
    """Bench client -> the broker it landed on and the address the broker saw, from broker logs."""
    tag = run.manifest.get("tag")
    c = run.connects
    if tag is not None:
        c = c[c["client_id"].str.startswith(client_prefix(tag))]
    # a client that reconnected is where it connected last in time (the logs are read broker by broker)
    c = c.sort_values("time", kind="stable").drop_duplicates("client_id", keep="last")
    out = run.clients[["client_id", "role", "index", "source", "entry_point", "local_addr"]].merge(
        c[["client_id", "broker", "src"]], on="client_id", how="left")
    return out.rename(columns={"source": "host"})


def offered_rate(run: Run) -> float | None:
    """What the scenario offered, in messages per second over all publishers (``publishers`` each
    sending one message every ``interval_ms``): a rate everywhere, never a count."""
    sc = run.manifest.get("scenario") or {}
    pubs, interval = sc.get("publishers"), sc.get("interval_ms")
    if not pubs or not interval:
        return None
    return rounded(pubs * 1000.0 / interval, "rate")


def summarize_run(run: Run) -> dict[str, Any]:
    pairs = pair_table(run)
    expected = int(pairs["expected"].sum())
    delivered = int(pairs["received"].sum())
    lost = int(pairs["lost"].sum())
    # latency and the load generator's verdict from the bench's own summary: one percentile
    # definition (the histogram's, nearest rank over its buckets) for bench summary and the reports
    bench = rundir.summarize(run.path)
    cb = client_brokers(run)
    brokers = [b["name"] for b in run.manifest.get("plan", {}).get("brokers", [])] or sorted(cb["broker"].dropna().unique())
    per_broker = {b: int(n) for b, n in cb.groupby("broker")["client_id"].nunique().reindex(brokers, fill_value=0).items()}
    target_of = {c["host"]: c["target_host"] for c in run.manifest.get("plan", {}).get("clients", [])}
    # a client host without a target (a plan without clients) is its own balancer; mapped per value,
    # since an all-missing map is float and pandas will refuse to fill it with strings
    cb["balancer"] = cb["host"].map(lambda h: target_of.get(h, h))
    per_bal = {bal: {b: int(n) for b, n in g.groupby("broker")["client_id"].nunique().reindex(brokers, fill_value=0).items()}
               for bal, g in cb.dropna(subset=["broker"]).groupby("balancer")}
    subs_broker = cb[cb["role"] == "sub"].set_index("index")["broker"]
    loss_by_broker = pairs.assign(broker=pairs["sub"].map(subs_broker)).groupby("broker")["lost"].sum()
    sc = run.manifest.get("scenario", {})
    return {
        "run_id": run.manifest.get("run_id"), "path": str(run.path), "partial": run.partial, "notes": run.notes,
        "topology": run.manifest.get("topology"), **balancing_columns(run.balancing),
        "qos": sc.get("qos"), "publishers": sc.get("publishers"), "subscribers": sc.get("subscribers"), "messages": sc.get("messages"),
        "sent": int(sent_per_pub(run).sum()), "offered_rate": offered_rate(run), "expected": expected, "delivered": delivered, "lost": lost,
        "loss_pct": rounded(100.0 * lost / expected, "pct") if expected else 0.0,
        "duplicates": int(pairs["duplicates"].sum()), "out_of_order": int(pairs["out_of_order"].sum()),
        "latency_ms": bench["latency_ms"],
        "bench_saturated": bench["bench_saturated"], "saturation_reasons": bench["saturation_reasons"],
        "fidelity": run.manifest.get("fidelity"),
        "connections_per_broker": per_broker, "connections_per_balancer": per_bal,
        "fairness": rounded(jain(list(per_broker.values())), "fairness"),
        "fairness_per_balancer": {k: rounded(jain(list(v.values())), "fairness") for k, v in per_bal.items()},
        "loss_by_broker": {str(k): int(v) for k, v in loss_by_broker.items()},
        "locality": locality(run, cb), "links": run.manifest.get("links"),
    }


def dropped_delta(run: Run) -> pd.Series:
    """Messages each broker dropped during the run, from its $SYS counter."""
    b = run.brokers.dropna(subset=["msgs_dropped"])
    if b.empty:
        return pd.Series(dtype="int64")
    g = b.sort_values("time_s").groupby("broker")["msgs_dropped"]
    return (g.last() - g.first()).astype("int64")


def classify_losses(run: Run) -> pd.DataFrame:
    """Every lost delivery (sub, pub, seq) with where it was lost, from the bench's own records:

    - missed by every subscriber: ``missed by every subscriber``, placed at the publisher's
      broker (it accepted the message; every queue and bridge it had to cross dropped it);
    - missed by every subscriber on the subscriber's broker while others got it, and that broker
      is not the publisher's: ``bridge into <broker>``;
    - otherwise: ``subscriber queue`` on the subscriber's broker.
    """
    cb = client_brokers(run)
    sub_broker = cb[cb["role"] == "sub"].set_index("index")["broker"]
    pub_broker = cb[cb["role"] == "pub"].set_index("index")["broker"]
    d = run.deliveries
    got = d.loc[~d["dup"], ["sub", "pub", "seq"]].drop_duplicates()
    all_pairs = pair_table(run)
    pairs = all_pairs[all_pairs["lost"] > 0]
    if pairs.empty:
        return pd.DataFrame(columns=["sub", "pub", "seq", "broker", "pub_broker", "where"])
    # expand only the (sub, pub) pairs that lost something
    rows = pairs.loc[pairs.index.repeat(pairs["expected"]), ["sub", "pub"]].copy()
    rows["seq"] = rows.groupby(["sub", "pub"]).cumcount().astype("uint32")
    rows = rows.astype({"sub": "uint32", "pub": "uint32"})
    rows = rows.merge(got.assign(hit=True), on=["sub", "pub", "seq"], how="left")
    missing = rows[rows["hit"].isna()].drop(columns="hit")
    missing["broker"] = missing["sub"].map(sub_broker)
    missing["pub_broker"] = missing["pub"].map(pub_broker)
    hearers = all_pairs.groupby("pub")["sub"].nunique()
    subs_on = all_pairs.assign(broker=all_pairs["sub"].map(sub_broker)).groupby(["pub", "broker"])["sub"].nunique()
    miss_all = missing.groupby(["pub", "seq"])["sub"].transform("size")
    miss_on = missing.groupby(["pub", "seq", "broker"])["sub"].transform("size")
    total_on = pd.Series(list(zip(missing["pub"], missing["broker"], strict=True))).map(subs_on).to_numpy()
    everywhere = miss_all.to_numpy() >= missing["pub"].map(hearers).to_numpy()
    whole_broker = (miss_on.to_numpy() >= total_on) & (missing["broker"].to_numpy() != missing["pub_broker"].to_numpy())
    missing["where"] = np.where(everywhere, "missed by every subscriber", np.where(whole_broker, "bridge into " + missing["broker"].astype(str),
                                                                            "subscriber queue"))
    # the broker a loss is charged to: the subscriber's, or the publisher's when nobody got it
    missing["at"] = np.where(everywhere, missing["pub_broker"], missing["broker"])
    return missing.reset_index(drop=True)


def attribution(run: Run) -> pd.DataFrame:
    """Per broker and place: lost deliveries measured by the bench, set against what the brokers
    report (their $SYS drop counters and the "Outgoing messages are being dropped" warnings)."""
    lost = classify_losses(run)
    total = int(pair_table(run)["lost"].sum())
    drops = dropped_delta(run)
    logged = run.drops
    cb = client_brokers(run)
    sub_id = cb[cb["role"] == "sub"].set_index("index")["client_id"]
    rows = []
    if not lost.empty:
        for (broker, where), g in lost.groupby(["at", "where"], dropna=False):
            if where == "subscriber queue":
                ids = set(g["sub"].map(sub_id))
                n_logged = logged[(logged["broker"] == broker) & logged["client_id"].isin(ids)]["client_id"].nunique()
                evidence = f"{n_logged} of {len(ids)} subscribers logged as dropping on {broker}"
                explained = n_logged > 0
            elif str(where).startswith("bridge"):
                bridges = logged[logged["client_id"].str.contains("bridge", na=False)]
                evidence = f"bridge clients logged as dropping: {', '.join(sorted(set(bridges['broker'] + ':' + bridges['client_id']))) or 'none'}"
                explained = not bridges.empty
            else:
                n_dropped = int(drops.get(broker, 0)) if isinstance(broker, str) else 0
                evidence = f"the publishers' broker {broker} dropped {n_dropped} messages ($SYS)"
                explained = n_dropped > 0
            rows.append({"broker": broker, "where": where, "lost_deliveries": len(g), "distinct_messages": g[["pub", "seq"]].drop_duplicates().shape[0],
                         "share_pct": round(100.0 * len(g) / total, 2) if total else 0.0,
                         "broker_dropped_sys": int(drops.get(broker, 0)) if isinstance(broker, str) else 0,
                         "evidence": evidence, "explained": explained})
    table = pd.DataFrame(rows, columns=["broker", "where", "lost_deliveries", "distinct_messages", "share_pct", "broker_dropped_sys",
                                        "evidence", "explained"])
    unexplained = int(table.loc[~table["explained"].astype(bool), "lost_deliveries"].sum()) if not table.empty else 0
    table.attrs["total_lost"] = total
    table.attrs["unexplained"] = unexplained
    return table


def comparison(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame([{k: s.get(k) for k in GROUP_KEYS} | {"loss_pct": s["loss_pct"], "p99_ms": s["latency_ms"]["p99"],
                                                               "fairness": s["fairness"], "duplicates": s["duplicates"]} for s in summaries])
    g = df.groupby(GROUP_KEYS, dropna=False)
    out = g.agg(runs=("loss_pct", "size"), loss_pct_mean=("loss_pct", "mean"), loss_pct_std=("loss_pct", "std"),
                p99_ms_mean=("p99_ms", "mean"), p99_ms_std=("p99_ms", "std"), fairness_mean=("fairness", "mean"),
                duplicates_mean=("duplicates", "mean")).reset_index()
    return out.round(3)


def throughput(run: Run) -> pd.DataFrame:
    t = run.timeline
    if t.empty:
        return pd.DataFrame(columns=["second", "sent", "acked", "received"])
    out = t.groupby("second")[["sent", "acked", "received"]].sum().reset_index()
    out["t"] = out["second"] - out["second"].min()
    return out
