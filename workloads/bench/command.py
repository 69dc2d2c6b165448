"""The one command line that starts the bench on a client host, as the lab spawns it in a
namespace and a VM step runs it: the same options in both places, so a run in the lab and on
Azure differ only in where the bench runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workloads.base.procs import mqttlab
from workloads.describe.scenario import Scenario


def bench_command(role: str, scenario: Scenario, *, target: str, out: Path, host: str, index: int, count: int, tag: int,
                  security: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """``mqttlab bench <role>`` (``sub`` or ``pub``) for the ``index``-th of ``count`` client
    hosts, its clients aimed at ``target``; ``security`` is the host's client settings file."""
    return [*mqttlab(), "bench", role, "--target", target, "--out", str(out), "--host", host,
            "--host-index", str(index), "--host-count", str(count), "--tag", hex(tag), "--quiet", *scenario.cli_args(),
            *(["--security", str(security)] if security is not None else []), *extra]
