"""How big a run is before it starts, and how far it has got while it runs.

One place for the numbers a user wants before committing to a long run (clients, messages,
expected deliveries, time, disk) and for the progress line both the lab and the bench print, so
the two speak the same units. Standard library only: it runs on the client VMs too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workloads.describe.scenario import QUIET_S, Scenario

if TYPE_CHECKING:
    from workloads.describe.config import ExperimentConfig

# What a run directory takes, measured on two small lab runs (distributed, nftables, 4 publishers,
# 4 subscribers, 2 workers per client host): 40 messages, 160 deliveries, 4.6 s: 102,533 bytes;
# 800 messages, 3,200 deliveries, 15.9 s: 237,788 bytes. Of that, bench/*/deliveries-*.bin held
# exactly 32 bytes per delivery (one rundir.DELIVERY_DTYPE record, the only part that grows with
# the messages), subscribers-*.csv about 60 bytes per (subscriber, publisher) pair, each client
# about 600 bytes (its rows in clients-*.csv and events-*.csv, its lines in the broker logs and
# connection tables), the per-second timelines and the monitors about 3.5 KB per second of run,
# and the rendered files, manifest, logs and balancer tables 74-76 KB whatever the size. The
# model below gives 107 KB and 244 KB for those two runs.
DISK_FIXED_B = 80_000
DISK_PER_CLIENT_B = 600
DISK_PER_PAIR_B = 60
DISK_PER_SECOND_B = 3_500
DELIVERY_RECORD_B = 32  # rundir.DELIVERY_DTYPE.itemsize, spelled out so this module needs no numpy

# from here on a run says how big it is before it starts
LARGE_DELIVERIES = 100_000
LARGE_SECONDS = 120.0


def fmt_s(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def pairs(sc: Scenario, subscribers: list[int] | None = None) -> int:
    """(subscriber, publisher) pairs: one row each in subscribers-*.csv."""
    subs = set(range(sc.subscribers) if subscribers is None else subscribers)
    return sum(1 for s, _p, _m in sc.planned_pairs() if s in subs)


def disk_bytes(sc: Scenario, duration_s: float, subscribers: list[int] | None = None, publishers: int | None = None) -> int:
    """The run directory's expected size for ``sc`` (or one host's share of it)."""
    subs = list(range(sc.subscribers)) if subscribers is None else subscribers
    clients = len(subs) + (sc.publishers if publishers is None else publishers)
    return int(DISK_FIXED_B + DISK_PER_CLIENT_B * clients + DISK_PER_PAIR_B * pairs(sc, subs)
               + DELIVERY_RECORD_B * sc.expected_deliveries(subs) + DISK_PER_SECOND_B * duration_s)


def is_large(expected: int, duration_s: float) -> bool:
    return expected >= LARGE_DELIVERIES or duration_s >= LARGE_SECONDS


def size_line(publishers: int, subscribers: int, messages: int, expected: int, duration_s: float) -> str:
    return (f"size: {publishers + subscribers:,} clients ({publishers:,} publishers, {subscribers:,} subscribers), {messages:,} messages, "
            f"{expected:,} expected deliveries, about {fmt_s(duration_s)}")


def progress(done: int, total: int, elapsed_s: float, unit: str) -> str:
    """``done/total unit (pct), rate, ETA``: the rate over the whole phase so far, the ETA at that rate."""
    if total <= 0:
        return f"{done:,} {unit}"
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = fmt_s((total - done) / rate) if rate > 0 and done < total else ("0 s" if done >= total else "-")
    return f"{done:,}/{total:,} {unit} ({100.0 * done / total:.1f} %), {rate:,.0f}/s, ETA {eta}"


# how long a run takes, before it starts: the lab's and the micro-VM's costs
VM_BOOT_S = 90.0  # booting the micro-VM under software emulation
# a small lab run in the micro-VM (CPU emulation) against the same run on the host. Measured on a
# 2-core machine at load average 9: bringing the lab up took about a minute (1.5-3 s on the host), ten
# subscribers took 326 s to start and connect (a whole small point: 8-9 s on the host); a guess
# for a guessing machine: the ETA rescales after the first point.
VM_SLOWDOWN = 30.0
LAB_OVERHEAD_S = 4.0  # lab up + down and process start-up per point, measured 1.5-3 s on a 2-core machine


def estimate_bench_s(sc: Scenario) -> float:
    """A benchmark's expected wall time: connecting, publishing on schedule, draining."""
    per_pub = sc.messages_of(0)  # publisher 0 sends the most when the total does not divide evenly
    connect = (sc.publishers + sc.subscribers) / max(sc.connect_rate, 1)
    publish = per_pub * sc.interval_ms / 1000.0
    return connect + publish + 1.0 + QUIET_S * 0.5


def estimate_point_s(cfg: ExperimentConfig) -> float:
    """A point's expected wall time: the benchmark plus the lab's up and down."""
    return LAB_OVERHEAD_S + estimate_bench_s(cfg.scenario)


def estimate_run_s(cfg: ExperimentConfig, vm: bool = False, own_boot: bool = True) -> float:
    """A lab run's expected wall time; in the micro-VM slowed by the emulation, plus a boot of its
    own unless it shares the boot of a whole campaign."""
    if not vm:
        return estimate_point_s(cfg)
    return estimate_point_s(cfg) * VM_SLOWDOWN + (VM_BOOT_S if own_boot else 0.0)
