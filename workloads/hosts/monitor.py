"""Samplers that write CSV during a run: brokers (process + ``$SYS``) and balancers (IPVS,
HAProxy or conntrack). Columns are documented in docs/run-format.md; units are plain (seconds
since the epoch, bytes, percent, counts).

Each sampler appends a row per target per interval and flushes it at once, so a crash loses at
most one interval; SIGTERM and SIGINT end the loop and close the file cleanly.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from workloads.base import procs
from workloads.base.errors import LabError
from workloads.hosts import shell

BROKER_COLUMNS = [
    "time_s", "broker", "cpu_pct", "mem_bytes", "clients_connected", "msgs_received",
    "msgs_sent", "msgs_dropped", "net_rx_bytes", "net_tx_bytes",
]
CGROUP_COLUMNS = ["time_s", "group", "usage_usec", "nr_periods", "nr_throttled", "throttled_usec", "wait_usec", "psi_some_usec",
                  "cpus_busy_usec"]
BALANCER_COLUMNS = [
    "time_s", "host", "kind", "virtual", "real", "active_conns", "inactive_conns",
    "total_conns", "packets_in", "packets_out", "bytes_in", "bytes_out", "status",
]
SYS_TOPICS = {
    "$SYS/broker/clients/connected": "clients_connected",
    "$SYS/broker/publish/messages/received": "msgs_received",
    "$SYS/broker/publish/messages/sent": "msgs_sent",
    "$SYS/broker/publish/messages/dropped": "msgs_dropped",
    "$SYS/broker/bytes/received": "net_rx_bytes",
    "$SYS/broker/bytes/sent": "net_tx_bytes",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _open_csv(path: Path, columns: list[str]) -> tuple[TextIO, csv.DictWriter[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    fh = path.open("a", newline="")
    w = csv.DictWriter(fh, fieldnames=columns)
    if new:
        w.writeheader()
        fh.flush()
    return fh, w


# --------------------------------------------------------------------------- brokers


@dataclass
class BrokerTarget:
    name: str
    host: str
    port: int
    pid: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    last_cpu: tuple[float, float] | None = None  # (wall, cpu seconds)
    security: Any = None  # workloads.render.security.ClientSecurity of the "monitor" user on secured brokers


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, from /proc."""
    fields = procs.stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return procs.cpu_ticks(fields) / CLK_TCK


def process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _sys_subscriber(target: BrokerTarget, stop: procs.StopFlag) -> None:
    """Keep ``target.values`` current from the broker's ``$SYS`` tree (reconnecting as needed)."""
    import paho.mqtt.client as mqtt

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        col = SYS_TOPICS.get(msg.topic)
        if col:
            try:
                target.values[col] = float(msg.payload)
            except ValueError:
                pass

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe([(t, 0) for t in SYS_TOPICS])

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"mqttlab-monitor-{target.name}-{os.getpid()}")
    client.on_message = on_message
    client.on_connect = on_connect
    client.reconnect_delay_set(1, 5)
    if target.security is not None:
        target.security.apply(client)
    client.connect_async(target.host, target.port, keepalive=30)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def listener_pid(host: str, port: int) -> int | None:
    """The process listening on host:port (or on every address at that port) in this network
    namespace: its socket's inode from ``/proc/net/tcp``, then the process holding it."""
    inodes = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    ours = {"00000000"}
    try:
        ours.add(socket.inet_aton(host)[::-1].hex().upper())
    except OSError:
        pass
    for line in lines:
        f = line.split()
        addr, hexport = f[1].split(":")
        if f[3] == "0A" and hexport == f"{port:04X}" and addr in ours:
            inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def broker_row(t: BrokerTarget, now: float) -> dict[str, object]:
    row: dict[str, object] = {"time_s": f"{now:.3f}", "broker": t.name, "cpu_pct": "", "mem_bytes": ""}
    alive = bool(t.pid) and procs.is_running(t.pid or 0, None)
    if t.pid and not alive:
        # the broker died (gone, or a zombie its parent has not reaped): blank while nothing
        # listens in its place; a broker started again (a restart fault) is found by its
        # listening socket and sampled from then on
        again = listener_pid(t.host, t.port)
        if again is not None:
            t.pid, t.last_cpu, alive = again, None, True
    if t.pid and alive:
        try:
            cpu = process_cpu_seconds(t.pid)
            if t.last_cpu:
                wall0, cpu0 = t.last_cpu
                row["cpu_pct"] = f"{100.0 * (cpu - cpu0) / max(now - wall0, 1e-6):.1f}"
            t.last_cpu = (now, cpu)
            row["mem_bytes"] = process_rss_bytes(t.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    for col in SYS_TOPICS.values():
        v = t.values.get(col)
        row[col] = "" if v is None else int(v)
    return row


def run_broker_monitor(targets: list[BrokerTarget], out: Path, interval: float, stopper: procs.StopFlag, duration: float | None = None) -> int:
    threads = [threading.Thread(target=_sys_subscriber, args=(t, stopper), daemon=True) for t in targets]
    for th in threads:
        th.start()
    fh, w = _open_csv(out, BROKER_COLUMNS)
    rows = 0
    end = time.time() + duration if duration else None
    try:
        while not stopper.wait(interval):
            now = time.time()
            for t in targets:
                w.writerow(broker_row(t, now))
                rows += 1
            fh.flush()
            if end and now >= end:
                break
    finally:
        stopper.set()
        fh.close()
        for th in threads:
            th.join(timeout=5)
    return rows


# --------------------------------------------------------------------------- cgroups and host pressure


@dataclass
class CgroupTarget:
    """A broker's cap group: ``dirs`` its folders (the ``cpu`` one first), ``acct`` its v1
    ``cpuacct`` folder where that controller is mounted apart."""

    name: str
    version: str
    dirs: tuple[Path, ...]
    acct: Path | None = None


def cgroup_row(t: CgroupTarget, now: float) -> dict[str, object]:
    """The kernel's counters of one group: its CPU use and throttling (``cpu.stat``) and how long
    its processes waited for a CPU (their schedstat). Blank once the group is gone."""
    from workloads.hosts.lab.cgroups import Cap

    cap = Cap(t.version, t.dirs, acct=t.acct)
    row: dict[str, object] = {"time_s": f"{now:.3f}", "group": t.name}
    if not t.dirs[0].is_dir():
        return row
    row |= cap.cpu_stat()
    row["wait_usec"] = sum(procs.run_queue_wait_ns(pid) for pid in cap.pids()) // 1000
    return row


def run_cgroup_monitor(targets: list[CgroupTarget], out: Path, interval: float, stopper: procs.StopFlag, duration: float | None = None,
                       cpus: Sequence[int] = ()) -> int:
    """A row per group per interval, and one for the host: its CPU pressure (where it has PSI)
    and, with ``cpus`` (the brokers' own), the CPU time anything spent on those CPUs."""

    def rows_at(now: float) -> list[dict[str, object]]:
        psi = procs.cpu_pressure_us()
        busy = procs.cpus_busy_us(cpus) if cpus else None
        host: dict[str, object] = {"time_s": f"{now:.3f}", "group": "host", "psi_some_usec": "" if psi is None else psi, "cpus_busy_usec": "" if busy is None else busy}
        return [*(cgroup_row(t, now) for t in targets), host]

    return _sample_every(out, CGROUP_COLUMNS, rows_at, interval, stopper, duration)


def _sample_every(out: Path, columns: list[str], rows_at: Callable[[float], list[dict[str, object]]], interval: float, stopper: procs.StopFlag,
                  duration: float | None) -> int:
    """Append ``rows_at(now)`` to the CSV ``out`` every ``interval`` (a first row at once) until
    stopped or ``duration`` passed, flushing each time; returns the rows written."""
    fh, w = _open_csv(out, columns)
    rows = 0
    end = time.time() + duration if duration else None
    try:
        while True:
            for r in rows_at(time.time()):
                w.writerow(r)
                rows += 1
            fh.flush()
            if stopper.wait(interval) or (end and time.time() >= end):
                break
    finally:
        fh.close()
    return rows


# --------------------------------------------------------------------------- balancers

_IPVS_LINE = re.compile(r"^\s*(TCP|UDP)\s+(\S+)\s+(\S+)?")


def parse_ipvs(stats_text: str, conns_text: str) -> list[dict[str, object]]:
    """Join ``ipvsadm -Ln --stats --exact`` (totals) with ``ipvsadm -Ln`` (active/inactive)."""
    rows: dict[tuple[str, str], dict[str, object]] = {}
    virtual = ""
    for line in stats_text.splitlines():
        parts = line.split()
        if parts[:1] in (["TCP"], ["UDP"]):
            virtual = parts[1]
        elif parts[:1] == ["->"] and len(parts) >= 7 and parts[1][0].isdigit():
            rows[(virtual, parts[1])] = {  # listed means in service: keepalived removes failed servers
                "virtual": virtual, "real": parts[1], "status": "UP", "total_conns": int(parts[2]), "packets_in": int(parts[3]),
                "packets_out": int(parts[4]), "bytes_in": int(parts[5]), "bytes_out": int(parts[6]),
            }
    for line in conns_text.splitlines():
        parts = line.split()
        if parts[:1] in (["TCP"], ["UDP"]):
            virtual = parts[1]
        elif parts[:1] == ["->"] and len(parts) >= 6 and parts[1][0].isdigit():
            r = rows.setdefault((virtual, parts[1]), {"virtual": virtual, "real": parts[1], "status": "UP"})
            r["active_conns"] = int(parts[4])
            r["inactive_conns"] = int(parts[5])
    return list(rows.values())


def sample_ipvs() -> list[dict[str, object]]:
    stats = shell.run(["ipvsadm", "-Ln", "--stats", "--exact"], timeout=10).stdout
    conns = shell.run(["ipvsadm", "-Ln"], timeout=10).stdout
    return parse_ipvs(stats, conns)


def parse_haproxy_stat(csv_text: str) -> list[dict[str, object]]:
    """HAProxy ``show stat`` CSV -> per-server rows (current sessions count as active)."""
    lines = csv_text.lstrip("# ").splitlines()
    rows = []
    for rec in csv.DictReader(lines):
        if rec.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        rows.append({
            "virtual": rec["pxname"], "real": rec.get("addr") or rec["svname"], "active_conns": int(rec["scur"] or 0),
            "inactive_conns": 0, "total_conns": int(rec["stot"] or 0), "bytes_in": int(rec["bin"] or 0),
            "bytes_out": int(rec["bout"] or 0), "packets_in": "", "packets_out": "",
            "status": (rec.get("status") or "").strip(),  # UP, DOWN, "UP 1/2" (going down), "no check"
        })
    return rows


def sample_haproxy(sock_path: str) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return parse_haproxy_stat(data.decode())


def parse_conntrack(text: str, vip: str, port: int) -> list[dict[str, object]]:
    """``conntrack -L`` -> connections per real server for kernel DNAT to ``vip:port``."""
    counts: dict[str, list[int]] = {}
    for line in text.splitlines():
        if f"dst={vip} " not in line or f"dport={port} " not in line:
            continue
        m = re.findall(r"src=(\S+)", line)
        if len(m) < 2:
            continue
        real = m[1]  # reply direction's source is the broker the connection was sent to
        c = counts.setdefault(real, [0, 0])
        if "ESTABLISHED" in line:
            c[0] += 1
        else:
            c[1] += 1
    return [
        {"virtual": f"{vip}:{port}", "real": f"{r}:{port}", "active_conns": a, "inactive_conns": i, "total_conns": "",
         "packets_in": "", "packets_out": "", "bytes_in": "", "bytes_out": ""}
        for r, (a, i) in sorted(counts.items())
    ]


def sample_conntrack(vip: str, port: int) -> list[dict[str, object]]:
    out = shell.run(["conntrack", "-L", "-p", "tcp"], check=False, timeout=10).stdout
    return parse_conntrack(out, vip, port)


def run_balancer_monitor(host: str, kind: str, sampler: Callable[[], list[dict[str, object]]], out: Path, interval: float,
                         stopper: procs.StopFlag, duration: float | None = None) -> int:
    def rows_at(now: float) -> list[dict[str, object]]:
        try:
            return [{c: "" for c in BALANCER_COLUMNS} | r | {"time_s": f"{now:.3f}", "host": host, "kind": kind} for r in sampler()]
        except (LabError, OSError) as exc:
            print(f"monitor: {kind} sample failed: {exc}", flush=True)
            return []

    return _sample_every(out, BALANCER_COLUMNS, rows_at, interval, stopper, duration)


def connection_table(kind: str) -> str:
    """The balancer's connection table as text, for joining clients to brokers after a run."""
    cmd = ["ipvsadm", "-Lnc"] if kind == "ipvs" else ["conntrack", "-L", "-p", "tcp"]
    return shell.run(cmd, check=False, timeout=30).stdout


# --------------------------------------------------------------------------- CLI


def _broker_arg(text: str) -> BrokerTarget:
    """``name=host:port[@pid]``"""
    try:
        name, rest = text.split("=", 1)
        addr, _, pid = rest.partition("@")
        host, port = addr.rsplit(":", 1)
        return BrokerTarget(name, host, int(port), int(pid) if pid else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected name=host:port[@pid], got {text!r}") from None


def cmd_brokers(args: argparse.Namespace) -> int:
    from workloads.base.clipaths import out_file

    out = out_file(args.out, "--out")
    if args.security:
        from workloads.render.security import load_client

        for t in args.broker:
            t.security = load_client(args.security, "monitor")
    stopper = procs.StopFlag()
    stopper.install((signal.SIGTERM, signal.SIGINT))
    rows = run_broker_monitor(args.broker, out, args.interval, stopper, args.duration)
    print(f"monitor brokers: {rows} rows in {args.out}")
    return 0


def _cpu_list(text: str) -> tuple[int, ...]:
    """``1``, ``0,2`` or ``2-3``: a CPU list as the kernel writes one."""
    from workloads.hosts.lab.cgroups import parse_cpulist

    try:
        return tuple(parse_cpulist(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a CPU list such as 1 or 2-3, got {text!r}") from None


def _cgroup_arg(text: str) -> CgroupTarget:
    """``name=v1|v2:DIR[,DIR...][+ACCT]``"""
    try:
        name, rest = text.split("=", 1)
        version, dirs = rest.split(":", 1)
        dirs, _, acct = dirs.partition("+")
        if version not in ("v1", "v2") or not dirs:
            raise ValueError
        return CgroupTarget(name, version, tuple(Path(d) for d in dirs.split(",")), Path(acct) if acct else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected name=v1|v2:DIR[,DIR...][+ACCTDIR], got {text!r}") from None


def cmd_cgroups(args: argparse.Namespace) -> int:
    stopper = procs.StopFlag()
    stopper.install((signal.SIGTERM, signal.SIGINT))
    rows = run_cgroup_monitor(args.group, Path(args.out), args.interval, stopper, args.duration, args.cpus)
    print(f"monitor cgroups: {rows} rows in {args.out}")
    return 0


def cmd_balancer(args: argparse.Namespace) -> int:
    from workloads.base.clipaths import out_file
    from workloads.describe.config import ConfigError

    out = out_file(args.out, "--out")
    table = out_file(args.conn_table, "--conn-table") if args.conn_table else None
    if args.kind == "haproxy" and not args.haproxy_socket:
        raise ConfigError("--haproxy-socket", None, "--kind haproxy needs the HAProxy stats socket")
    if args.kind == "nftables":
        vip, _, port = (args.vip or "").rpartition(":")
        if not vip or not port.isdigit():
            raise ConfigError("--vip", args.vip, "--kind nftables needs the entry point as VIP:PORT")
    stopper = procs.StopFlag()
    stopper.install((signal.SIGTERM, signal.SIGINT))
    sampler: Callable[[], list[dict[str, object]]]
    if args.kind == "ipvs":
        sampler = sample_ipvs
    elif args.kind == "haproxy":
        sampler = lambda: sample_haproxy(args.haproxy_socket)  # noqa: E731
    else:
        sampler = lambda: sample_conntrack(vip, int(port))  # noqa: E731
    rows = run_balancer_monitor(args.host, args.kind, sampler, out, args.interval, stopper, args.duration)
    if table:
        table.parent.mkdir(parents=True, exist_ok=True)  # checked creatable before sampling (clipaths.out_file)
        table.write_text(connection_table(args.kind))
    print(f"monitor balancer: {rows} rows in {args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("monitor", help="sample brokers or balancers into CSV until SIGTERM")
    msub = p.add_subparsers(dest="monitor", required=True)
    b = msub.add_parser("brokers", help="per-broker CPU, memory and $SYS counters")
    b.add_argument("--broker", action="append", type=_broker_arg, required=True, help="name=host:port[@pid], repeatable")
    b.add_argument("--out", required=True, help="the CSV file samples are appended to")
    b.add_argument("--interval", type=float, default=1.0, help="seconds between rows (default 1)")
    b.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGTERM)")
    b.add_argument("--security", help="a rendered brokers/security/client.json (secured brokers)")
    b.set_defaults(func=cmd_brokers)
    g = msub.add_parser("cgroups", help="per-group CPU use, throttling and CPU wait (kernel counters), and the host's CPU pressure")
    g.add_argument("--group", action="append", type=_cgroup_arg, required=True, help="name=v1|v2:DIR[,DIR...][+ACCTDIR], repeatable")
    g.add_argument("--out", required=True, help="the CSV file samples are appended to")
    g.add_argument("--interval", type=float, default=0.5, help="seconds between rows (default 0.5)")
    g.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGTERM)")
    g.add_argument("--cpus", type=_cpu_list, default=(), metavar="LIST",
                   help="the brokers' own CPUs (e.g. 1 or 2-3): the host's row adds the CPU time anything spent on them")
    g.set_defaults(func=cmd_cgroups)
    c = msub.add_parser("balancer", help="per-real-server connections and traffic")
    c.add_argument("--kind", choices=("ipvs", "haproxy", "nftables"), default="ipvs", help="the balancer to read (default ipvs)")
    c.add_argument("--host", default=socket.gethostname(), help="this balancer host's name in the CSV (default: the host name)")
    c.add_argument("--vip", help="VIP:PORT (nftables)")
    c.add_argument("--haproxy-socket", help="HAProxy stats socket path (haproxy)")
    c.add_argument("--out", required=True, help="the CSV file samples are appended to")
    c.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    c.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGTERM)")
    c.add_argument("--conn-table", help="write the connection table here on exit")
    c.set_defaults(func=cmd_balancer)
