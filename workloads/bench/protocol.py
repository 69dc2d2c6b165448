"""What the orchestrator of a host and its worker processes say to each other over their pipe.

Orchestrator to worker: :class:`StartPublishers` (at the common start time), :class:`Stop`.
Worker to orchestrator: :class:`Report` (its totals as it goes: ``progress``; once all its
clients are connected and subscribed: ``ready``; once its publishers have sent everything:
``published``), then :class:`Done` with its final totals and self-check, after which it exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Totals = dict[str, int]  # connected, subscribed, sent, acked, received, planned
ReportKind = Literal["progress", "ready", "published"]


@dataclass(frozen=True)
class StartPublishers:
    at: float  # epoch seconds: every worker of every host starts publishing then


@dataclass(frozen=True)
class Stop:
    """End now: the worker stops its clients in order and still writes what it measured."""


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    totals: Totals


@dataclass(frozen=True)
class Done:
    totals: Totals
    result: dict[str, Any]  # the worker's self-check and final counts, as the run's result lists them
