"""``--dry-run`` of ``lab run`` and ``bench run``: what a run would do, checked, with nothing done.

The plan comes from the same functions a real run calls (``build_plan``, ``split_evenly``, the
balancer choice), so what a dry run prints is what a run would start; nothing here creates a
namespace, a folder or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workloads.bench.runner import HostShare, split_evenly
from workloads.describe import runsize
from workloads.describe.config import ExperimentConfig
from workloads.describe.runsize import estimate_bench_s, estimate_run_s
from workloads.describe.scenario import Scenario


def _numbers(sc: Scenario, duration_s: float, subscribers: list[int], publishers: list[int]) -> dict[str, Any]:
    messages = sum(sc.messages_of(p) for p in publishers)
    return {"publishers": len(publishers), "subscribers": len(subscribers), "messages": messages,
            "expected_deliveries": sc.expected_deliveries(subscribers), "estimated_duration_s": round(duration_s, 1),
            "estimated_disk_bytes": runsize.disk_bytes(sc, duration_s, subscribers, len(publishers))}


def bench_plan(share: HostShare, sc: Scenario, out: Path, workers: int | None) -> dict[str, Any]:
    """One host's share of a benchmark: its clients spread over the targets as ``make_clients`` does."""
    n = len(share.targets)
    clients = [{"target": t, "subscribers": len(share.subscribers[i::n]), "publishers": len(share.publishers[i::n])}
               for i, t in enumerate(share.targets)]
    return {"dry_run": True, "kind": "bench", "host": share.host, "run_directory": str(out), "workers": workers or "one per core",
            "scenario": sc.to_dict(), "clients": clients,
            **_numbers(sc, estimate_bench_s(sc), share.subscribers, share.publishers)}


def lab_plan(cfg: ExperimentConfig, balancer: str, note: str, out: Path, vm: bool, preconditions: dict[str, str]) -> dict[str, Any]:
    """The lab a run of ``cfg`` would bring up, and where each client host's clients point."""
    from workloads.describe import standin
    from workloads.describe.plan import build_plan

    plan = build_plan(cfg)
    ran = standin.balancing(balancer, cfg.balancer.scheduler)  # what will balance, not only what was asked
    sc = cfg.scenario
    n = len(plan.clients)
    clients = []
    for i, c in enumerate(plan.clients):  # as the lab splits the scenario over the client hosts
        clients.append({"host": c.host, "address": c.address, "target": c.target, "via": c.target_host,
                        "subscribers": len(split_evenly(sc.subscribers, n, i)), "publishers": len(split_evenly(sc.publishers, n, i))})
    return {
        "dry_run": True, "kind": "lab", "stack": cfg.stack, "topology": cfg.topology, "vm": vm,
        "balancer": {"kind": balancer, "note": note, "scheduler": ran.scheduler, "requested_scheduler": cfg.balancer.scheduler,
                     "balancing": ran.text,
                     "health_check": cfg.balancer.health_check.type, "hosts": [b.host for b in plan.balancers]},
        "security": cfg.security.mode, "faults": [f.spec for f in cfg.faults],
        "run_directory": f"a new folder under {out}",
        "scenario": sc.to_dict(),
        "hosts": [{"name": h.name, "role": h.role, "address": h.address} for h in plan.hosts],
        "brokers": [{"name": b.name, "address": f"{b.address}:{b.port}", "cpus": plan.broker_cpus, "memory_mb": plan.broker_memory_mb}
                    for b in plan.brokers],
        "bridges": [b.name for b in plan.bridges],
        "links": _links(cfg, plan),
        "balancers": [{"host": b.host, "entry": f"{b.vip}:{b.port}", "scheduler": ran.text,
                       "real_servers": [f"{r.broker} {r.address}:{r.port} weight {r.weight}" for r in b.real_servers]}
                      for b in plan.balancers],
        "clients": clients,
        "preconditions": preconditions,
        **_numbers(sc, estimate_run_s(cfg, vm), list(range(sc.subscribers)), list(range(sc.publishers))),
    }


def _links(cfg: ExperimentConfig, plan: Any) -> list[dict[str, Any]]:
    """Where the lab would put each impaired class (workloads/describe/links.py), and its netem."""
    from workloads.describe.links import placements

    def where(host: str, dev: str) -> str:  # the switch's port p<j> leads to the plan's j-th host
        return f"the switch's port to {plan.hosts[int(dev[1:])].name} ({dev})" if host == "sw" else f"{host} {dev}"

    return [{"class": p.cls, "host": p.host, "dev": p.dev, "where": where(p.host, p.dev), "sources": list(p.sources),
             "netem": cfg.links.of(p.cls).shown} for p in placements(plan, cfg.links)]


def format_plan(doc: dict[str, Any]) -> str:
    lines = []
    if doc["kind"] == "lab":
        bal = doc["balancer"]
        lines.append(f"dry run: lab {doc['topology']} from stack {doc['stack']}" + (" in the micro-VM" if doc["vm"] else "")
                     + f", balancer {bal['balancing']} (health check {bal['health_check']}) on {', '.join(bal['hosts'])}"
                     + f", security {doc['security']}")
        if bal["note"]:
            lines.append(f"  note: {bal['note']}")
        lines += [f"  host     {h['name']} ({h['role']}) {h['address']}" for h in doc["hosts"]]
        lines += [f"  broker   {b['name']} {b['address']}  {b['cpus']} CPU / {b['memory_mb']} MB" for b in doc["brokers"]]
        if doc["bridges"]:
            lines.append(f"  bridges  {', '.join(doc['bridges'])}")
        lines += [f"  balancer {b['host']} {b['entry']} {b['scheduler']} -> {'; '.join(b['real_servers'])}" for b in doc["balancers"]]
        lines += [f"  clients  on {c['host']} ({c['address']}): {c['subscribers']} subscribers, {c['publishers']} publishers -> "
                  f"{c['target']} ({c['via']})" for c in doc["clients"]]
        lines += [f"  link     {k['class']}: netem {k['netem']} on {k['where']}"
                  + (f" for packets from {', '.join(k['sources'])}" if k["sources"] else "") for k in doc.get("links", [])]
        if doc["faults"]:
            lines.append(f"  faults   {', '.join(doc['faults'])}")
    else:
        lines.append(f"dry run: bench on host {doc['host']}, workers {doc['workers']}")
        lines += [f"  clients  {c['subscribers']} subscribers, {c['publishers']} publishers -> {c['target']}" for c in doc["clients"]]
    sc = doc["scenario"]
    lines.append("  scenario " + ", ".join(f"{k} {v}" for k, v in sc.items()))
    lines.append(f"  expected deliveries {doc['expected_deliveries']:,} ({doc['messages']:,} messages to {doc['subscribers']:,} subscribers)")
    lines.append(f"  estimated duration  {runsize.fmt_s(doc['estimated_duration_s'])}   "
                 f"disk about {runsize.fmt_bytes(doc['estimated_disk_bytes'])} in {doc['run_directory']}")
    if doc.get("preconditions"):
        lines.append("  preconditions (a run requires them; reported, not required here): "
                     + "; ".join(f"{what} {state}" for what, state in doc["preconditions"].items()))
    lines.append("nothing was started or created")
    return "\n".join(lines)
