"""The series every runner process exports, the worker and `runner serve` alike: the process's
own (CPU, memory, open files), the interpreter's (platform, GC) and runner_build_info{version}
(1; the version label says what runs, e.g. across a rolling update)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from runner.core.version import runner_version


def process_registry() -> CollectorRegistry:
    """A registry of a process's own, holding the series every runner process exports."""
    disable_created_metrics()  # no *_created series: they double what a dashboard reads for nothing
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Gauge("runner_build_info", "The runner's version (always 1)", ["version"], registry=registry).labels(runner_version()).set(1)
    return registry
