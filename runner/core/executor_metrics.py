"""What executors report for graphs, without knowing any metrics library.

An executor calls these on `self.env.metrics` (executors.base.ExecutorEnv); the worker passes
an implementation that feeds Prometheus (runner/worker/worker_metrics.py). This base records nothing,
so tools that make executors outside a worker (the doctor, tests) need none. Every method must
return at once and never raise into a build."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

#: the timed parts of a job. context: receiving an uploaded context (spooled and checked);
#: clone: a git context (fetch, checkout, pack, check); build: the builder's run; push: the
#: first push of the image to each registry; tags: every further tag (a manifest put, or a push
#: where the registry declines)
Phase = Literal["context", "clone", "build", "push", "tags", "provenance"]
PHASES: tuple[Phase, ...] = get_args(Phase)


class ExecutorMetrics:
    def sidecar_started(self, executor: str, seconds: float) -> None:
        """A sidecar engine (dind, sysbox) became ready `seconds` after it was asked for."""

    def warm_pool(self, executor: str, idle: Callable[[], int]) -> None:
        """`idle()` tells how many ready sidecars wait in the executor's warm pool right now
        (asked whenever metrics are read)."""

    def push_retried(self, executor: str) -> None:
        """A push failed for a reason worth retrying and is tried again."""

    def build_steps(self, executor: str, total: int, cached: int) -> None:
        """A build ran `total` Dockerfile steps, `cached` of them taken from the layer cache
        (reported where the builder says so: BuildKit, the classic builder)."""

    def phase_took(self, executor: str, phase: Phase, seconds: float) -> None:
        """One phase of a job took `seconds` (whether it ended well or not)."""


#: the default: reports go nowhere
NO_METRICS = ExecutorMetrics()


class PhaseClock:
    """Times one job's phases for `metrics`: `with clock("build"): ...`, or `switch(phase)` where
    one process runs two phases and only its output tells where the first ends (buildah builds
    and pushes in one go). A phase that runs more than once (a push per registry) is summed,
    and each phase is reported once, by `report()` at the job's end."""

    def __init__(self, metrics: ExecutorMetrics, executor: str):
        self.metrics, self.executor = metrics, executor
        self.spent: dict[Phase, float] = {}
        self._current: tuple[Phase, float] | None = None
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, phase: Phase) -> Iterator[None]:
        self.switch(phase)
        try:
            yield
        finally:
            self.stop()

    def switch(self, phase: Phase) -> None:
        """End the running phase (if any) and start `phase`."""
        with self._lock:
            self._end(time.monotonic())
            self._current = (phase, time.monotonic())

    def stop(self) -> None:
        with self._lock:
            self._end(time.monotonic())

    def _end(self, at: float) -> None:
        if self._current is not None:
            phase, since = self._current
            self.spent[phase] = self.spent.get(phase, 0.0) + (at - since)
            self._current = None

    def report(self) -> None:
        """Tell `metrics` each phase's time (a running one ends now). Once."""
        self.stop()
        spent, self.spent = self.spent, {}
        for phase, seconds in spent.items():
            self.metrics.phase_took(self.executor, phase, seconds)

    def __enter__(self) -> PhaseClock:
        return self

    def __exit__(self, *_: object) -> None:
        self.report()
