"""emqtt-bench adapter: the reference's load generator, from the same scenario.

emqtt-bench prints only per-second counters (``<elapsed> <name> total=N rate=X/sec``), so the
summary built from it is marked ``estimated``: loss is inferred from totals, never per message,
and it has no latency percentiles.

``<elapsed>`` is its ``fmt_tdiff`` (emqtt_bench.erl, 0.4.21 and 0.4.25): whole seconds since it
started, in days, hours, minutes and seconds with every unit from the largest non-zero one down
(``59s``, ``1m0s``, ``2h3m4s``), and the empty string in its first second.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workloads.describe.scenario import Scenario

if TYPE_CHECKING:  # only a type here; importing it loads cryptography, which a bench process never needs
    from workloads.render.security import ClientSecurity

IMAGE = "emqx/emqtt-bench:0.4.25"
_COUNTER = re.compile(r"^\s*(?:\d+[dhms])*\s+([A-Za-z_]+)\s+total=(\d+)\s+rate=([\d.]+)(?:/sec)?")
_ERROR = re.compile(r"error|fail|refused|closed|timeout", re.IGNORECASE)


def find_native() -> str | None:
    """The emqtt_bench executable: ``EMQTT_BENCH`` if set (None when it is not executable), else
    ``emqtt_bench`` on PATH."""
    env = os.environ.get("EMQTT_BENCH")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("emqtt_bench")


def missing_native() -> str:
    """What to tell a user who has no native emqtt-bench."""
    env = os.environ.get("EMQTT_BENCH")
    where = f"EMQTT_BENCH={env} is not an executable file" if env else "no emqtt_bench on PATH and EMQTT_BENCH is not set"
    return f"emqtt-bench not found: {where} (it also needs Erlang: apt-get install erlang-base erlang-ssl)"


def security_flags(sec: ClientSecurity | None) -> list[str]:
    """emqtt-bench's ``-u -P -S --certfile --keyfile``. It has no CA option: under TLS it does
    not verify the broker (our engine does), and its password is on its command line, which
    :func:`redact` hides whenever we print one."""
    if sec is None or sec.mode == "none":
        return []
    out = ["-u", str(sec.username), "-P", str(sec.password)]
    if sec.tls:
        out.append("-S")
    if sec.cert and sec.key:
        out += ["--certfile", sec.cert, "--keyfile", sec.key]
    return out


def redact(cmd: list[str]) -> list[str]:
    return [("'<password from client.json>'" if i and cmd[i - 1] == "-P" else a) for i, a in enumerate(cmd)]


def commands(scenario: Scenario, targets: list[str], publishers: int, subscribers: int, messages: int,
             docker: bool = True, image: str = IMAGE, security: dict[str, ClientSecurity] | None = None) -> dict[str, list[str]]:
    """The ``pub`` and ``sub`` command lines for one client host.

    ``messages`` is this host's share of the total: emqtt-bench's ``-L`` is one global count for
    all publishers of the process (the reference's launcher wrongly called it per publisher).
    ``security``: role -> credentials (a secured broker); certificate folders are mounted read-only.
    """
    hosts = ",".join(t.rsplit(":", 1)[0] for t in targets)
    port = targets[0].rsplit(":", 1)[1]
    version = "5" if scenario.mqtt_version == "5" else "4"
    security = security or {}

    def prefix(role: str) -> list[str]:
        if not docker:
            return [find_native() or "emqtt_bench"]
        sec = security.get(role)
        mounts = sorted({str(Path(f).parent) for f in (sec.cert, sec.key) if f}) if sec else []
        return ["docker", "run", "--rm", "--network", "host", *(x for m in mounts for x in ("-v", f"{m}:{m}:ro")), image]

    common = ["-h", hosts, "-p", port, "-V", version, "-q", str(scenario.qos), "-R", str(scenario.connect_rate)]
    out: dict[str, list[str]] = {}
    if subscribers:
        out["sub"] = [*prefix("sub"), "sub", *common, *security_flags(security.get("sub")), "-c", str(subscribers), "-t", scenario.topic]
    if publishers:
        out["pub"] = [*prefix("pub"), "pub", *common, *security_flags(security.get("pub")), "-c", str(publishers), "-I", str(scenario.interval_ms),
                      "-L", str(messages), "-t", scenario.topic, "-s", str(scenario.payload_bytes)]
    return out


def parse_output(text: str) -> dict[str, Any]:
    """Final totals per counter name (the last ``total=`` seen), plus error lines."""
    totals: dict[str, int] = {}
    errors: list[str] = []
    complete = False
    for line in text.splitlines():
        m = _COUNTER.match(line)
        if m:
            totals[m.group(1)] = int(m.group(2))
            continue
        if "publish complete" in line.lower():
            complete = True
        elif _ERROR.search(line):
            errors.append(line.strip())
    return {"totals": totals, "errors": errors, "publish_complete": complete}


def summarize(pub_output: str, sub_output: str, subscribers: int, planned: int) -> dict[str, Any]:
    """The bench summary's fields from emqtt-bench consoles, estimated from totals."""
    pub = parse_output(pub_output)
    sub = parse_output(sub_output)
    # the counters print once a second, so the last "pub total=" can trail the end: a process that
    # printed "publish complete" sent its whole -L
    sent = planned if pub["publish_complete"] else pub["totals"].get("pub", 0)
    expected = sent * subscribers
    delivered = sub["totals"].get("recv", 0)
    lost = max(expected - delivered, 0)
    return {
        "estimated": True,
        "planned": planned,
        "sent": sent,
        "acked": pub["totals"].get("pub_succ", sent),
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "loss_pct": round(100.0 * lost / expected, 3) if expected else 0.0,
        # over-delivery is all emqtt-bench can show of duplicates
        "duplicates": max(delivered - expected, 0),
        "clients_connected": pub["totals"].get("connect_succ", 0) + sub["totals"].get("connect_succ", 0),
        "latency_ms": {"p50": None, "p90": None, "p99": None, "max": None},
        "publish_complete": pub["publish_complete"],
        "errors": pub["errors"] + sub["errors"],
    }
