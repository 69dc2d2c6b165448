"""The table of each broker's CPU while it was busy (dropping, throttled or wanting its cap)
against its cap, with and without CPUs set apart for the brokers, from kept run records.

    sudo .venv/bin/mqttlab lab run -s distributed -q 1 --broker-cpus 0.085 --broker-cpuset auto --out runs/iso --json > summary.json
    sudo .venv/bin/mqttlab lab run -s distributed -q 1 --broker-cpus 0.085 --broker-cpuset off --out runs/iso --json > summary.json
    .venv/bin/python benchmarks/isolation_table.py docs/reproduction/isolation

Each folder under the argument holds one run's ``manifest.json`` (its verdict, as the run
recorded it) and ``summary.json`` (what ``lab run --json`` printed). Prints Markdown.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def rows(folder: Path) -> list[str]:
    out = ["| run (UTC) | brokers' CPUs | scenario | loss % | broker1 | broker2 | broker3 | host check | verdict |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for d in sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()):
        m = json.loads((d / "manifest.json").read_text())
        s = json.loads((d / "summary.json").read_text())
        f = m["fidelity"]
        by = {c["name"]: c for c in f["checks"]}
        cs = m.get("cpuset") or {}
        where = f"CPU {cs['brokers']['effective_cpus']} of their own" if cs.get("enabled") else "shared (--broker-cpuset off)"
        sc = m["scenario"]
        cap = m["plan"]["broker_cpus"]
        brokers = []
        for b in ("broker1", "broker2", "broker3"):
            c = by.get(f"broker_at_cap:{b}")
            if c is None or c["value"] is None:
                brokers.append("never busy" if c else "")
                continue
            dropped = re.search(r"dropped (\d+)", c["detail"])
            brokers.append(f"{c['value']:.1f} % of {cap}" + (f" (dropped {int(dropped.group(1)):,})" if dropped else ""))
        host = by.get("broker_cpus_foreign_use") or by.get("host_cpu_pressure") or {}
        host_text = f"{host.get('name')} {host.get('value'):.1f} %" if host.get("value") is not None else ""
        verdict = f["verdict"] + (f" ({', '.join(f['failed'])})" if f["failed"] else "")
        run = f"{d.name[9:11]}:{d.name[11:13]}:{d.name[13:15]}"  # the run id's time of day
        out.append(f"| {run} | {where} | {sc['publishers']}+{sc['subscribers']} clients, QoS {sc['qos']} | {s['loss_pct']:.1f} | "
                   + " | ".join(brokers) + f" | {host_text} | {verdict} |")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: isolation_table.py FOLDER (of kept run records: manifest.json and summary.json each)")
    print("\n".join(rows(Path(sys.argv[1]))))
