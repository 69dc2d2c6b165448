"""Load a run directory (docs/run-format.md) into pandas, checking what it reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.describe.standin import Balancing, from_manifest
from workloads.rundir.records import DELIVERY_DTYPE, RunDirError, read_deliveries, read_manifest

CONNECT = re.compile(r"^(\S+): New client connected from (\S+?):(\d+) as (\S+)", re.M)
DROPPING = re.compile(r"^(\S+): Outgoing messages are being dropped for client (\S+?)\.?$", re.M)


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    clients: pd.DataFrame
    publishers: pd.DataFrame
    subscribers: pd.DataFrame
    deliveries: pd.DataFrame
    timeline: pd.DataFrame
    brokers: pd.DataFrame
    balancers: pd.DataFrame
    connects: pd.DataFrame  # broker, time, src, port, client_id (from broker logs)
    drops: pd.DataFrame  # broker, time, client_id (the "being dropped" warnings)
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.manifest.get("status") != "complete"

    @property
    def balancing(self) -> Balancing | None:
        """What balanced the run and what it stood in for (None: a bench without a balancer)."""
        return from_manifest(self.manifest)

    @property
    def label(self) -> str:
        m = self.manifest
        ran = self.balancing
        return f"{m.get('topology', '-')}/{ran.text if ran else '-'}/qos{m.get('scenario', {}).get('qos', '?')}"


def _csv(paths: list[Path], required: list[str], dtypes: dict[str, Any] | None = None) -> pd.DataFrame:
    frames = []
    for p in paths:
        try:
            df = pd.read_csv(p, dtype=dtypes)
        except pd.errors.EmptyDataError:
            continue
        except (pd.errors.ParserError, ValueError) as exc:
            raise RunDirError(f"{p}: not a valid CSV ({exc})") from None
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise RunDirError(f"{p}: missing columns {', '.join(missing)}")
        df["source"] = p.parent.name
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*required, "source"])
    return pd.concat(frames, ignore_index=True)


def load_deliveries(paths: list[Path]) -> pd.DataFrame:
    arrays = [read_deliveries(p) for p in paths]
    rec = np.concatenate(arrays) if arrays else np.empty(0, DELIVERY_DTYPE)
    return pd.DataFrame({"sub": rec["sub"], "pub": rec["pub"], "seq": rec["seq"], "dup": rec["dup"].astype(bool),
                         "send_ns": rec["send_ns"], "recv_ns": rec["recv_ns"]})


def parse_logs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    con, drp = [], []
    for log in sorted((run_dir / "logs").glob("broker*.log")):
        text = log.read_text(errors="replace")
        for m in CONNECT.finditer(text):
            con.append((log.stem, m.group(1), m.group(2), int(m.group(3)), m.group(4)))
        for m in DROPPING.finditer(text):
            drp.append((log.stem, m.group(1), m.group(2)))
    return (pd.DataFrame(con, columns=["broker", "time", "src", "port", "client_id"]),
            pd.DataFrame(drp, columns=["broker", "time", "client_id"]))


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    try:
        from_manifest(manifest)
    except ValueError as exc:
        raise RunDirError(f"{run_dir / 'manifest.json'}: {exc}") from None
    b = run_dir / "bench"
    clients = _csv(sorted(b.glob("*/clients-*.csv")), ["client_id", "role", "index", "entry_point", "local_addr", "connected_at", "disconnects"])
    counts = dict.fromkeys(("pub", "sub", "planned", "sent", "acked", "failed", "received", "duplicates", "out_of_order"), "int64")
    pubs = _csv(sorted(b.glob("*/publishers-*.csv")), ["pub", "client_id", "planned", "sent", "acked", "failed"], counts)
    subs = _csv(sorted(b.glob("*/subscribers-*.csv")), ["sub", "client_id", "pub", "received", "duplicates", "out_of_order"], counts)
    deliveries = load_deliveries(sorted(b.glob("*/deliveries-*.bin")))
    timeline = _csv(sorted(b.glob("*/timeline-*.csv")), ["second", "sent", "acked", "received"])
    brokers = _csv(sorted((run_dir / "monitor").glob("brokers*.csv")), ["time_s", "broker", "cpu_pct", "mem_bytes", "msgs_dropped"])
    balancers = _csv(sorted((run_dir / "monitor").glob("balancer-*.csv")), ["time_s", "host", "real", "active_conns"])
    connects, drops = parse_logs(run_dir)
    notes = []
    if manifest.get("status") != "complete":
        notes.append(f"partial run ({manifest.get('reason') or 'it did not finish'})")
    if clients.empty:
        notes.append("no client records: the bench did not finish writing")
    return Run(run_dir, manifest, clients, pubs, subs, deliveries, timeline, brokers, balancers, connects, drops, notes)


OUTAGE_COLUMNS = ["client_id", "role", "lost_at", "back_at", "attempts", "local_before", "local_after"]


def read_outages(run: Run) -> pd.DataFrame:
    """Every client's outages (``outages-*.csv``: lost, back, attempts, where it landed), by host."""
    frames = []
    for p in sorted((run.path / "bench").glob("*/outages-*.csv")):
        df = pd.read_csv(p, dtype={"local_before": str, "local_after": str})
        missing = [c for c in OUTAGE_COLUMNS if c not in df.columns]
        if missing:
            raise RunDirError(f"{p}: missing columns {', '.join(missing)}")
        frames.append(df.assign(host=p.parent.name))
    if not frames:
        return pd.DataFrame(columns=[*OUTAGE_COLUMNS, "host"])
    return pd.concat(frames, ignore_index=True)
