"""Where a job's time goes, for the fixed-cost benchmarks: wraps named methods with timers
(measurement only; the code under test is not changed) and sums the time spent in each per
job. Calls on other threads count too (e.g. log writes from a reader thread)."""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict


class Phases:
    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def wrap(self, owner: object, method: str, phase: str) -> None:
        original = getattr(owner, method)
        phases = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with phases._lock:
                    phases.spent[phase] += time.perf_counter() - started

        setattr(owner, method, timed)

    def take(self) -> dict[str, float]:
        """The time per phase since the last take(), and start again."""
        with self._lock:
            spent, self.spent = dict(self.spent), defaultdict(float)
        return spent
