"""Faults on time, and exactly when each began and ended.

The timer counts from the start of publishing (the lab's ``start_at``, the VMs' agreed epoch);
a fault that ends (a pause, a cut, a restart) is undone at its end, and everything still in force
is undone when the run ends, whatever happened. The record is rewritten after every change, so a
crash leaves what had happened so far.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workloads.base.errors import LabError
from workloads.describe.faults import Fault


class Schedule:
    """The faults of one run on a timer thread, counted from the start of publishing, each
    record rewritten on every change. What a fault does where it runs is :meth:`begin`, which a
    subclass gives (it sets ``undo[i]`` for a fault that ends); ``say`` is where it reports."""

    def __init__(self, faults: tuple[Fault, ...], path: Path, say: Callable[[str], None]) -> None:
        self.say = say
        self.faults = faults
        self.records: list[dict[str, Any]] = [f.to_dict() | {"t0": None, "started_at": None, "ended_at": None, "detail": ""} for f in faults]
        self.undo: dict[int, Callable[[], str]] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.path = path
        self.error: str = ""

    # ------------------------------------------------------------------ schedule

    def start(self, t0: float) -> None:
        for r in self.records:
            r["t0"] = t0
        self.write()
        self.thread = threading.Thread(target=self._loop, args=(t0,), name="faults", daemon=True)
        self.thread.start()

    def _loop(self, t0: float) -> None:
        events: list[tuple[float, int, str]] = [(t0 + f.at_s, i, "begin") for i, f in enumerate(self.faults)]
        heapq.heapify(events)
        while events and not self.stopping.is_set():
            when, i, what = events[0]
            if self.stopping.wait(max(0.0, when - time.time())):
                break
            heapq.heappop(events)
            try:
                if what == "begin":
                    self.begin(i)
                    f = self.faults[i]
                    end = f.end_s if f.end_s is not None else (f.at_s if f.action == "restart" else None)
                    if i in self.undo and end is not None:
                        heapq.heappush(events, (t0 + end, i, "end"))
                else:
                    self.end(i)
            except (LabError, OSError) as exc:
                self.error = f"{self.faults[i].spec}: {exc}"
                self.records[i]["detail"] = f"failed: {exc}"
                self.write()
                self.say(f"fault {self.faults[i].spec} failed: {exc}")

    def stop(self) -> None:
        """End of run: stop the timer, reverse whatever is still in force, write the record."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        for r in self.records:  # the measurement ends here: what the teardown breaks is no fault's doing
            r["run_ended_at"] = time.time()
        for i in list(self.undo):
            try:
                self.end(i, by_teardown=True)
            except (LabError, OSError) as exc:
                self.records[i]["detail"] += f"; undo failed: {exc}"
        self.write()

    def write(self) -> None:
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            os.replace(tmp, self.path)

    def begin(self, i: int) -> None:
        """Carry out fault ``i`` where the run is; record ``started_at`` and ``detail``."""
        raise NotImplementedError

    def end(self, i: int, by_teardown: bool = False) -> None:
        undo = self.undo.pop(i)
        what = undo()
        rec = self.records[i]
        rec["ended_at"] = time.time()  # in force until undone (a restarted broker: until it listens)
        rec["detail"] += f"; ended: {what}" + (" (at the end of the run)" if by_teardown else "")
        self.write()
        self.say(f"fault {self.faults[i].spec} ended: {what}")
