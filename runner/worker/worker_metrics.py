"""The worker's Prometheus metrics, in a registry of the Worker's own (no global state).

Job moments arrive as a JobListener (started, finished, requeued); executors report their
internals through runner.core.executor_metrics.ExecutorMetrics (they never import prometheus_client).
Labels are bounded: executor names, statuses, error kinds, phases; never a job id or an image
ref. Every labelled series this worker can have is there at 0 from start-up (but the sidecar
start times, reported only by executors with sidecars), so rate() and increase() see a job's
first failure as the step from 0 to 1. `runner serve` exports the fleet-wide series (queue
lengths, live workers, requeues, deliveries given up): entry/serve_metrics.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from runner.core.errors import ErrorKind
from runner.core.executor_metrics import PHASES, ExecutorMetrics, Phase
from runner.core.jobs import BuildRequest, JobRecord, Status, seconds_between
from runner.worker.process_metrics import process_registry
from runner.worker.worker import JobListener

#: 10 ms .. 2 h, for job durations, phases and queue waits
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
SIDECAR_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)
FINAL = [s.value for s in Status if s.finished]
#: the kinds a failed or timed-out job can end with (a cancel is no failure)
FAILURE_KINDS = [kind for kind in get_args(ErrorKind) if kind != "cancelled"]
CACHE = ("hit", "miss")
#: a job told started but never finished or requeued here (its attempt was superseded by
#: another worker's) stops counting as running once this worker no longer runs it and this
#: many seconds have passed
UNTOLD_END = 30.0


class WorkerMetrics(JobListener, ExecutorMetrics):
    def __init__(self, executors: list[str], build_slots: int = 1):
        self.registry = r = process_registry()
        self.jobs = Counter("runner_jobs_total", "Jobs this worker finished, by final status",
                            ["executor", "status"], registry=r)
        self.duration = Histogram("runner_job_duration_seconds", "Time from a job's start on this worker to its end",
                                  ["executor", "status"], buckets=JOB_BUCKETS, registry=r)
        self.queue_wait = Histogram("runner_job_queue_wait_seconds", "Time an attempt waited in the queue: from "
                                    "submission, or from the job's requeue, to its start on this worker", ["executor"],
                                    buckets=JOB_BUCKETS, registry=r)
        self.failures = Counter("runner_job_failures_total", "Jobs that ended failed or timed out, by error kind",
                                ["executor", "kind"], registry=r)
        self.phases = Histogram("runner_job_phase_seconds", "Time a job spent in each phase on this worker: context "
                                "(an upload received), clone (a git context), build, push, tags", ["executor", "phase"],
                                buckets=JOB_BUCKETS, registry=r)
        self.sidecar_start = Histogram("runner_sidecar_start_seconds", "Time for a sidecar engine (dind, sysbox) to "
                                       "become ready, warm-pool sidecars included", ["executor"], buckets=SIDECAR_BUCKETS,
                                       registry=r)
        self.pool_idle = Gauge("runner_warm_pool_sidecars", "Ready sidecars waiting in the executor's warm pool",
                               ["executor"], registry=r)
        self.push_retries = Counter("runner_push_retries_total", "Pushes retried after a connection or 5xx error",
                                    ["executor"], registry=r)
        self.steps = Counter("runner_build_steps_total", "Dockerfile steps built, by whether the layer cache had them "
                             "(where the builder reports it: BuildKit, classic)", ["executor", "cache"], registry=r)
        self.reused = Counter("runner_jobs_reused_total", "Jobs that succeeded with the image an earlier job pushed from "
                              "the same inputs put under their tags, instead of a build", ["executor"], registry=r)
        Gauge("runner_worker_build_slots", "Builds this worker runs at once (worker.concurrency): the capacity that "
              "runner_jobs_running fills", registry=r).set(build_slots)
        for executor in executors:
            self.queue_wait.labels(executor)
            self.push_retries.labels(executor)
            self.reused.labels(executor)
            for status in FINAL:
                self.jobs.labels(executor, status)
                self.duration.labels(executor, status)
            for kind in FAILURE_KINDS:
                self.failures.labels(executor, kind)
            for phase in PHASES:
                self.phases.labels(executor, phase)
            for cache in CACHE:
                self.steps.labels(executor, cache)
        self._executors = list(executors)
        #: is this process running that job now? (the Worker's running_here, set once it exists)
        self.running_here: Callable[[str], bool] = lambda job_id: False
        #: would /readyz answer 200 now? (set by the worker's HTTP service: runner/worker/health.py)
        self.ready: Callable[[], bool] = lambda: False
        #: is the worker draining (runner/worker/drain.py)? Set by its HTTP service too
        self.draining: Callable[[], bool] = lambda: False
        self._running: dict[str, tuple[str, float]] = {}  # job id -> (executor, when it was told started)
        self._lock = threading.Lock()
        #: open delivery circuits by label (the Deliverer's, read from Redis when scraped; set once it exists)
        self.circuits_open: Callable[[], dict[str, int]] = dict
        r.register(_AtScrape(self))
        r.register(_OpenCircuits(self))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- job moments (JobListener) ------------------------------------------------------------
    def job_started(self, record: JobRecord, request: BuildRequest) -> None:
        with self._lock:
            self._running[record.id] = (record.executor, time.monotonic())
        wait = seconds_between(record.waiting_since, record.started_at)
        if wait is not None:
            self.queue_wait.labels(record.executor).observe(wait)

    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        with self._lock:
            self._running.pop(record.id, None)
        if record.executor not in self._executors:
            return  # a refused raw message may name any executor: labels stay the ones this worker serves
        status = record.status.value
        self.jobs.labels(record.executor, status).inc()
        took = seconds_between(record.started_at, record.finished_at)
        if took is not None:
            self.duration.labels(record.executor, status).observe(took)
        if record.error is not None and record.status in (Status.failed, Status.timed_out):
            self.failures.labels(record.executor, record.error.kind).inc()
        if record.reused_from is not None and record.status is Status.succeeded:
            self.reused.labels(record.executor).inc()

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        """No longer running here. The requeue is counted in Redis (runner_jobs_requeued_total
        on `runner serve`): a counter here would die with this worker, which is often why."""
        with self._lock:
            self._running.pop(record.id, None)

    def running(self) -> dict[str, int]:
        """Jobs running on this worker now, by executor (every served executor, zeros too)."""
        now = time.monotonic()
        with self._lock:
            for job_id, (_, since) in list(self._running.items()):
                if now - since > UNTOLD_END and not self.running_here(job_id):
                    del self._running[job_id]
            tally = Tally(executor for executor, _ in self._running.values())
        return {executor: tally.get(executor, 0) for executor in sorted({*self._executors, *tally})}

    # -- executor reports (ExecutorMetrics) -----------------------------------------------------
    def sidecar_started(self, executor: str, seconds: float) -> None:
        self.sidecar_start.labels(executor).observe(seconds)

    def warm_pool(self, executor: str, idle: Callable[[], int]) -> None:
        self.pool_idle.labels(executor).set_function(idle)

    def push_retried(self, executor: str) -> None:
        self.push_retries.labels(executor).inc()

    def build_steps(self, executor: str, total: int, cached: int) -> None:
        self.steps.labels(executor, "hit").inc(cached)
        self.steps.labels(executor, "miss").inc(max(total - cached, 0))

    def phase_took(self, executor: str, phase: Phase, seconds: float) -> None:
        self.phases.labels(executor, phase).observe(seconds)


class _AtScrape(Collector):
    """runner_jobs_running, runner_worker_ready and runner_worker_draining, read when scraped."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("runner_jobs_running", "Jobs running on this worker now", labels=["executor"])
        for executor, count in self.metrics.running().items():
            family.add_metric([executor], count)
        yield family
        yield GaugeMetricFamily("runner_worker_ready", "1 when /readyz answers 200 (Redis answers, every executor passed "
                                "its check, not draining); 0 otherwise, /readyz says why", value=int(self.metrics.ready()))
        yield GaugeMetricFamily("runner_worker_draining", "1 while the worker drains: no new builds, its running builds "
                                "finish (up to limits.max_timeout), then it exits", value=int(self.metrics.draining()))


class _OpenCircuits(Collector):
    """runner_delivery_circuits_open, read from Redis when scraped: the circuits are shared by
    every worker, so each worker shows the same fleet-wide value (aggregate with max)."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("runner_delivery_circuits_open", "Hosts whose deliveries wait for them to answer again "
                                   "(commit status APIs by host; callback receivers counted under host=\"callbacks\"), "
                                   "the same on every worker", labels=["host"])
        try:
            found = self.metrics.circuits_open()
        except Exception:  # noqa: BLE001 - Redis away: the scrape still answers, without this family's values
            found = {}
        for host, count in sorted(found.items()):
            family.add_metric([host], count)
        yield family
