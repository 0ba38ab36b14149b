"""`runner serve`'s view of the fleet for Prometheus, and its health probes: the router of
/healthz, /metrics and /readyz, and `install`, which makes an app's registry.

/healthz   200 when Redis answers within a second (the liveness probe), else 503.

/metrics   runner_queue_length{queue,executor}: messages waiting in each enabled executor's queue (the
           broker's list, LLEN: what KEDA reads). Exported here only, so a fleet of workers
           does not report it once each. runner_workers{executor}: workers whose heartbeat is
           live (runner/worker/health.py). runner_jobs_requeued_total{executor,reason}: jobs
           put back in their queue (counted in Redis by the pipeline and the recovery, so a
           requeue outlives the worker that shut down). runner_deliveries_gave_up_total{kind}:
           commit statuses and callbacks that gave up after their last attempt
           (runner/store/outbox.py). All read from Redis at each scrape, every known series
           at 0 too; plus the API's requests (entry/request_metrics.py) and the process's own
           series. Job counters and histograms are the workers' (their /metrics).
/readyz    200 when Redis answers within a second and the server is not stopping; else 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from runner.config.settings import Settings
from runner.core.jobs import REQUEUE_REASONS, GitHost
from runner.entry.deps import Api, ApiContext
from runner.entry.errors import ApiError
from runner.entry.request_metrics import RequestMetrics
from runner.store.jobstore import JobStore
from runner.store.outbox import Outbox
from runner.worker.process_metrics import process_registry

PROBE_TIMEOUT = 1.0  # seconds /healthz and /readyz wait for Redis
#: the deliveries a job can owe (Outbox labels): its callback and a commit status per git host
DELIVERY_KINDS = ["callback", *(f"status.{host}" for host in get_args(GitHost))]


class FleetCollector(Collector):
    def __init__(self, store: JobStore, settings: Settings):
        self.store, self.settings = store, settings

    def describe(self) -> list:  # so registering it never reads Redis
        return []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        executors = self.settings.enabled_executors()
        queues = {self.settings.queue_for(name): name for name in executors}
        queued = GaugeMetricFamily("runner_queue_length", "Jobs waiting in an executor's queue", labels=["queue", "executor"])
        for queue, length in self.store.queue_lengths(list(queues)).items():
            queued.add_metric([queue, queues[queue]], length)
        workers = GaugeMetricFamily("runner_workers", "Workers serving an executor (heartbeat live)", labels=["executor"])
        for executor, count in self.store.live_workers(executors).items():
            workers.add_metric([executor], count)
        requeued = CounterMetricFamily("runner_jobs_requeued", "Jobs put back in their queue, by why: shutdown "
                                       "(SIGTERM past worker.shutdown_grace), engine_down (engine_down_policy: "
                                       "requeue), worker_lost (recovered from a lost worker)", labels=["executor", "reason"])
        counts = self.store.requeues()
        for key in sorted({*((e, r) for e in executors for r in REQUEUE_REASONS), *counts}):
            requeued.add_metric(list(key), counts.get(key, 0))
        gave_up = CounterMetricFamily("runner_deliveries_gave_up", "Commit statuses (status.<host>) and callbacks "
                                      "that gave up after their last attempt", labels=["kind"])
        given_up = Outbox.for_store(self.store).gave_up()
        for kind in sorted({*DELIVERY_KINDS, *given_up}):
            gave_up.add_metric([kind], given_up.get(kind, 0))
        yield queued
        yield workers
        yield requeued
        yield gave_up


router = APIRouter(tags=["health"])


def stopping(app: FastAPI) -> bool:
    """Is the server shutting down? (`serve` puts the check on app.state.)"""
    check = getattr(app.state, "stopping", None)
    return bool(check and check())


def install(app: FastAPI, api: ApiContext) -> None:
    """The app's registry for /metrics (the process's series, the fleet's, the API's requests)."""
    registry = process_registry()
    registry.register(FleetCollector(api.store, api.settings))
    app.state.request_metrics = RequestMetrics(registry)  # the app's outermost layer (api.RunnerApi)
    app.state.metrics_registry = registry


@router.get("/healthz", responses={503: {"description": "Redis does not answer"}})
async def healthz(api: Api) -> dict[str, str]:
    """Up if Redis answers within a second. Async on its own: no thread, whatever else is busy."""
    if not await api.logs.ping(PROBE_TIMEOUT):
        raise ApiError(503, "unavailable", "the job store (Redis) is unreachable; retry later")
    return {"status": "ok"}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 503: {"description": "Redis does not answer"}})
async def metrics(request: Request) -> Response:
    """Prometheus text: queue lengths, live workers and requeues across the fleet; this server's requests."""
    return Response(await run_in_threadpool(generate_latest, request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", responses={503: {"description": "Redis does not answer, or the server is stopping"}})
async def readyz(request: Request, api: Api) -> JSONResponse:
    """Ready to take requests: Redis answers within a second and the server is not stopping."""
    if stopping(request.app):
        return JSONResponse({"error": "stopping", "message": "the server is shutting down"}, status_code=503)
    if not await api.logs.ping(PROBE_TIMEOUT):
        return JSONResponse({"error": "unavailable", "message": "the job store (Redis) is unreachable; retry later"},
                            status_code=503)
    return JSONResponse({"status": "ready"})
