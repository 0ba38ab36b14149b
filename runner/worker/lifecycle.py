"""`runner worker`: make the Worker (its executors, checked), then consume their queues with
Celery; recovery and the reaper run beside it, and so do the HTTP server for /metrics,
/healthz and /readyz and the heartbeat (runner/worker/health.py); SIGTERM drains.

Every worker also takes `<namespace>.deliveries` (commit statuses and callbacks) on
`deliveries.concurrency` threads of its own beside its build slots, and runs the delivery
scheduler (runner/worker/notify/deliveries.py)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from executors.plugins import ExecutorRegistry
from runner.config.logs import configure_logging
from runner.config.settings import Settings
from runner.store.outbox import deliveries_queue
from runner.store.redis_clients import FailoverWatch
from runner.worker.drain import Drain, JobBudget
from runner.worker.health import WorkerService
from runner.worker.notify.deliveries import Deliverer, DeliveryScheduler
from runner.worker.notify.listener import NotifyListener
from runner.worker.outcome_log import OutcomeLog
from runner.worker.queue import TASK_NAME, make_app, requeuer
from runner.worker.reaper import Maintenance
from runner.worker.worker import Worker
from runner.worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, queues: list[str] | None, concurrency: int | None, loglevel: str | None = None) -> None:
    """Enabling an executor in a worker's config says "this worker serves its queue": the
    worker takes that queue even when the executor's check fails, and fails its jobs at once
    with the check's reason, so a job never waits for ever on a queue nobody serves.
    `loglevel`: `--loglevel`, else log.level."""
    loglevel = loglevel or settings.log.level
    configure_logging(settings, loglevel, fields=[CeleryTaskJobs()])
    leave_logging_to_us()
    queues = queues or [settings.queue_for(name) for name in settings.enabled_executors()]
    if not queues:
        raise SystemExit("no executor is enabled: enable one under executors: (see `runner config example`)")
    registry = ExecutorRegistry()
    names = [name for q in queues if registry.is_known(name := q.removeprefix(settings.worker.namespace + "."))]
    builds = concurrency or settings.worker.concurrency
    if settings.worker.max_jobs:
        builds = min(builds, settings.worker.max_jobs)
    metrics = WorkerMetrics(names, build_slots=builds)
    worker = Worker(settings, names, registry=registry, metrics=metrics)
    FailoverWatch(settings.redis_target(), worker.store.clients()).start()  # with Sentinel only
    metrics.running_here = worker.running_here
    deliverer = Deliverer(settings, worker.store, worker.id)
    drain = Drain(worker)
    budget = JobBudget(drain, settings.worker.max_jobs, settings.worker.idle_exit)
    worker.listeners += [metrics, OutcomeLog(), NotifyListener(deliverer.outbox), budget]
    for name, why in worker.check().items():
        log.warning("executor %s cannot work on this worker; its jobs will fail with: %s", name, why)
    app = make_app(settings, worker, deliverer, build_slots=builds, build_gate=drain.gate)
    worker.start()
    maintenance = Maintenance(worker, requeuer(app, settings))
    maintenance.start()
    scheduler = DeliveryScheduler(deliverer)
    scheduler.start()
    service = WorkerService(worker, metrics, on_drain=drain.request)
    # read when /metrics is scraped: through the probe's client, so a scrape never waits out a Redis outage
    metrics.circuits_open = deliverer.circuits.reading_through(service.readiness.redis).open_by_label
    service.start()

    def drain_started() -> None:
        service.drain()
        maintenance.stop()
        budget.stopped.set()

    drain.on_start = drain_started
    wire_signals(drain, worker, service, scheduler)
    budget.start()
    queues = [*queues, *[q for q in [deliveries_queue(settings.worker.namespace)] if q not in queues]]
    log.info("worker %s taking %s", worker.id, ", ".join(queues))
    app.Worker(
        queues=queues, concurrency=builds + settings.deliveries.concurrency, pool="threads",
        loglevel=loglevel, hostname=f"runner-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True, without_gossip=True, without_mingle=True,
        quiet=settings.log.format == "json",  # the banner is not a log line
    ).start()


def wire_signals(drain: Drain, worker: Worker, service: WorkerService, scheduler: DeliveryScheduler) -> None:
    """On SIGTERM (Celery's warm shutdown) the drain starts (runner/worker/drain.py): no new
    build, /readyz 503, running builds finish within Settings.shutdown_grace() or are requeued.
    When Celery stops, the worker leaves the live list and the executors release what they
    hold (warm pools)."""
    from celery.signals import worker_shutdown, worker_shutting_down

    @worker_shutting_down.connect(weak=False)
    def start_drain(**_) -> None:
        drain.start()

    @worker_shutdown.connect(weak=False)
    def stop_executors(**_) -> None:
        scheduler.stop()
        service.stop()
        worker.shutdown()


def leave_logging_to_us() -> None:
    """Celery configures logging only when nobody answers its setup_logging signal: we did
    (configure_logging), so its lines go through our handler, masked and formatted alike."""
    from celery.signals import setup_logging

    @setup_logging.connect(weak=False)
    def configured(**_) -> None:
        pass


class CeleryTaskJobs(logging.Filter):
    """Celery's lines about a build task ("received", "succeeded in") carry its job id: the
    task id is the job id."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping) and args.get("name") == TASK_NAME and getattr(record, "job_id", None) is None:
            record.job_id = str(args.get("id"))
        return True
