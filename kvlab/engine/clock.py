"""The engine's clock: arrival times are honoured against it, and every token's time is read from it.

WallClock replays a trace in real time on whatever device runs it (an idle engine sleeps until the next
arrival). StepClock counts steps instead — each step costs `step_s` — so tests and figures are the same on
every machine and every run.
"""
from __future__ import annotations

import math
import time


class WallClock:
    """Seconds since the clock was made, by the host's monotonic clock."""

    def __init__(self):
        self._start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._start

    def tick(self) -> None:
        """A step ended (real time has passed by itself)."""

    def wait_until(self, t_s: float) -> None:
        delay = t_s - self.now()
        if delay > 0:
            time.sleep(delay)


class StepClock:
    """Deterministic time: each step takes `step_s`; waiting for an arrival jumps to it."""

    def __init__(self, step_s: float = 1.0):
        if not (isinstance(step_s, (int, float)) and math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a finite number > 0, got {step_s!r}")
        self.step_s = float(step_s)
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def tick(self) -> None:
        self._now += self.step_s

    def wait_until(self, t_s: float) -> None:
        self._now = max(self._now, t_s)
