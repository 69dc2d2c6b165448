"""The methods section and the verdict at the top of a report, read from a run's manifest and summary.

A figure in a paper is only as good as the description of how it was made: the machine, the
kernel and the Mosquitto version bound what a run can offer; the broker caps, the scenario and the
topology are the experiment; what balanced the run (and what it stood in for) decides whether it
says anything about IPVS; a saturated load generator or a failed fidelity check makes the numbers
the tools' rather than the system's, so those come first, in words, before any table.
"""

from __future__ import annotations

import html
import time
from typing import Any

from workloads.base.numbers import shown
from workloads.describe.standin import from_manifest


def utc_time(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t))) if isinstance(t, (int, float)) else "not recorded"


def _caps(manifest: dict[str, Any]) -> str:
    caps = manifest.get("broker_caps") or {}
    if not caps:
        plan = manifest.get("plan") or {}
        if plan.get("broker_cpus") is None:
            return "not recorded"
        return f"{plan['broker_cpus']} CPU and {plan.get('broker_memory_mb')} MiB per broker (as planned; not read back)"
    seen = sorted({(c.get("cpus"), c.get("memory_bytes")) for c in caps.values()}, key=str)
    parts = [f"{shown(100 * cpus, 'rate') if cpus else 'no'} % of one core, "
             f"{shown(mem / 2**20, 'rate') if mem else 'no'} MiB memory" for cpus, mem in seen]
    return f"{'; '.join(parts)} per broker ({len(caps)} brokers, read back from the kernel's cgroups)"


def _scenario(sc: dict[str, Any]) -> str:
    if not sc:
        return "not recorded"
    per = "per publisher" if sc.get("messages_per_publisher") else "in total"
    rate = sc["publishers"] * 1000.0 / sc["interval_ms"] if sc.get("publishers") and sc.get("interval_ms") else None
    return (f"{sc.get('publishers')} publishers, {sc.get('subscribers')} subscribers, {sc.get('messages')} messages {per}, "
            f"QoS {sc.get('qos')}, one message every {sc.get('interval_ms')} ms per publisher "
            f"(offered {shown(rate, 'rate')} msg/s in all), {sc.get('payload_bytes')}-byte payload, MQTT {sc.get('mqtt_version', '?')}, "
            f"topic layout {sc.get('topic_layout', '?')}")


def _topology(manifest: dict[str, Any]) -> str:
    plan = manifest.get("plan") or {}
    brokers = [b["name"] for b in plan.get("brokers", [])]
    bals = [b["host"] for b in plan.get("balancers", [])]
    topo = manifest.get("topology") or "not recorded"
    if not brokers:
        return topo
    return f"{topo}: {len(brokers)} brokers ({', '.join(brokers)}) behind {len(bals)} balancer(s) ({', '.join(bals) or 'none'})"


def saturation_text(summary: dict[str, Any]) -> str:
    if summary.get("bench_saturated") is None:
        return "not checked"
    if not summary["bench_saturated"]:
        return "not saturated (the load generator kept its schedule and its CPU below its limits)"
    reasons = summary.get("saturation_reasons") or []
    return "SATURATED: the load generator, not the system, may have been the limit: " + "; ".join(map(str, reasons))


def load_text(manifest: dict[str, Any]) -> str:
    """The load against the capped brokers' capacity on this machine (lab run --calibrate)."""
    cal, ratio = manifest.get("calibration"), manifest.get("overload_ratio")
    if not cal or ratio is None:
        return "not calibrated (lab run --calibrate states the overload ratio)"
    return (f"overload ratio {ratio}: {float(manifest.get('offered_per_broker') or 0):,.0f} deliveries/s offered per broker against "
            f"{float(cal.get('capacity') or 0):,.0f} deliveries/s that one broker at {cal.get('broker_cpus')} CPU carried at its cap "
            f"on this machine (calibration {cal.get('at_cap_s')} s at the cap)")


def fidelity_text(manifest: dict[str, Any]) -> str:
    f = manifest.get("fidelity")
    if not f:
        return "not checked"
    failed = f.get("failed") or []
    return f"{f.get('verdict', '?')}" + (f" (failed: {', '.join(map(str, failed))})" if failed else "")


def methods_rows(manifest: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, how) for one run, in the order a methods section reads."""
    m = manifest
    mach = m.get("machine") or {}
    ver = m.get("versions") or {}
    ran = from_manifest(m)
    faults = m.get("faults") or []
    gen = "emqtt-bench, with mqttlab's bench records" if m.get("emqtt_bench") else f"mqttlab bench (Python {ver.get('python', '?')}, paho-mqtt {ver.get('paho_mqtt', '?')})"
    mem = mach.get("memory_bytes")
    return [
        ("Date", f"{utc_time(m.get('started_at'))}, {shown((m.get('ended_at') or 0) - (m.get('started_at') or 0), 'seconds') if m.get('ended_at') else '?'} s"),
        ("Machine", f"{mach.get('cpus', '?')} CPUs, {shown(mem / 2**30, 'rate') if mem else '?'} GiB memory ({mach.get('machine', '?')})"
         if mach else "not recorded"),
        ("Kernel", str(ver.get("kernel", "not recorded"))),
        ("Mosquitto", str(m.get("mosquitto") or "not recorded")),
        ("Broker caps", _caps(m)),
        ("Scenario", _scenario(m.get("scenario") or {})),
        ("Topology", _topology(m)),
        ("Balancer", (ran.text + (f". {m['balancer_note']}" if m.get("balancer_note") else "")) if ran else "none (the bench dialled the brokers)"),
        ("Security", str(m.get("security") or "none")),
        ("Faults", "; ".join(map(str, faults)) if faults else "none"),
        ("Load", load_text(m)),
        ("Load generator", f"{gen}: {saturation_text(summary)}"),
        ("Fidelity", fidelity_text(m)),
    ]


def warnings(manifest: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Sentences for the top of a report: what makes this run's numbers unfit to quote as they are."""
    rid = summary.get("run_id") or manifest.get("run_id") or "this run"
    out = []
    f = manifest.get("fidelity") or {}
    if f.get("verdict") == "invalid":
        out.append(f"Run {rid} is INVALID: its fidelity checks failed ({', '.join(map(str, f.get('failed') or [])) or 'no check named'}); "
                   "do not quote its numbers as the system's.")
    if summary.get("bench_saturated"):
        out.append(f"Run {rid}: the load generator was SATURATED, so the load generator, not the system, may have been the limit "
                   f"({'; '.join(map(str, summary.get('saturation_reasons') or []))}). Read its loss and latency as bounds.")
    if summary.get("partial"):
        out.append(f"Run {rid} is PARTIAL ({manifest.get('reason') or 'it did not finish'}).")
    return out


def warnings_html(items: list[str]) -> str:
    if not items:
        return '<p class="ok">Every run completed; no load generator was saturated; fidelity: as listed under Methods.</p>'
    return '<div class="warn" role="alert">' + "".join(f"<p>{html.escape(w)}</p>" for w in items) + "</div>"


def methods_html(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """One methods table per run: (title, manifest, summary)."""
    parts = ["<h2>Methods</h2>"]
    for title, manifest, summary in pairs:
        rows = "".join(f"<tr><th scope=\"row\">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in methods_rows(manifest, summary))
        parts.append(f'<table class="methods"><caption>{html.escape(title)}</caption>{rows}</table>')
    return "".join(parts)
