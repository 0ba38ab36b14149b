"""What executors report for graphs, without knowing any metrics library.

An executor calls these on `self.env.metrics` (executors.base.ExecutorEnv); the worker passes
an implementation that feeds Prometheus (runner/worker/metrics.py). This base records nothing,
so tools that make executors outside a worker (the doctor, tests) need none. Every method must
return at once and never raise into a build."""

from __future__ import annotations

from collections.abc import Callable


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


#: the default: reports go nowhere
NO_METRICS = ExecutorMetrics()
