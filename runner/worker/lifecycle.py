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
import threading
from collections.abc import Mapping

from executors.plugins import ExecutorRegistry
from runner.config.logs import configure_logging
from runner.config.settings import Settings
from runner.store.outbox import deliveries_queue
from runner.worker.health import WorkerService
from runner.worker.notify.deliveries import Deliverer, DeliveryScheduler
from runner.worker.notify.listener import NotifyListener
from runner.worker.queue import TASK_NAME, make_app, requeuer
from runner.worker.reaper import Maintenance
from runner.worker.worker import Worker
from runner.worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, queues: list[str] | None, concurrency: int | None, loglevel: str) -> None:
    """Enabling an executor in a worker's config says "this worker serves its queue": the
    worker takes that queue even when the executor's check fails, and fails its jobs at once
    with the check's reason, so a job never waits for ever on a queue nobody serves."""
    configure_logging(settings, loglevel, fields=[CeleryTaskJobs()])
    leave_logging_to_us()
    queues = queues or [settings.queue_for(name) for name in settings.enabled_executors()]
    if not queues:
        raise SystemExit("no executor is enabled: enable one under executors: (see `runner config example`)")
    registry = ExecutorRegistry()
    names = [name for q in queues if registry.is_known(name := q.removeprefix(settings.worker.namespace + "."))]
    builds = concurrency or settings.worker.concurrency
    metrics = WorkerMetrics(names, build_slots=builds)
    worker = Worker(settings, names, registry=registry, metrics=metrics)
    metrics.running_here = worker.running_here
    deliverer = Deliverer(settings, worker.store, worker.id)
    worker.listeners += [metrics, NotifyListener(deliverer.outbox)]
    for name, why in worker.check().items():
        log.warning("executor %s cannot work on this worker; its jobs will fail with: %s", name, why)
    app = make_app(settings, worker, deliverer, build_slots=builds)
    worker.start()
    maintenance = Maintenance(worker, requeuer(app, settings))
    maintenance.start()
    scheduler = DeliveryScheduler(deliverer)
    scheduler.start()
    service = WorkerService(worker, metrics)
    # read when /metrics is scraped: through the probe's client, so a scrape never waits out a Redis outage
    metrics.circuits_open = deliverer.circuits.reading_through(service.readiness.redis).open_by_label
    service.start()
    wire_signals(worker, maintenance, service, scheduler)
    queues = [*queues, *[q for q in [deliveries_queue(settings.worker.namespace)] if q not in queues]]
    log.info("worker %s taking %s", worker.id, ", ".join(queues))
    app.Worker(
        queues=queues, concurrency=builds + settings.deliveries.concurrency, pool="threads",
        loglevel=loglevel, hostname=f"runner-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True, without_gossip=True, without_mingle=True,
        quiet=settings.log.format == "json",  # the banner is not a log line
    ).start()


def wire_signals(worker: Worker, maintenance: Maintenance, service: WorkerService, scheduler: DeliveryScheduler) -> None:
    """On SIGTERM /readyz turns 503 at once, Celery stops taking jobs and waits for running
    ones; after worker.shutdown_grace seconds we cancel what still runs, and the pipeline
    requeues it. When Celery stops, the worker leaves the live list and the executors release
    what they hold (warm pools)."""
    from celery.signals import worker_shutdown, worker_shutting_down

    @worker_shutting_down.connect(weak=False)
    def start_grace(**_) -> None:
        service.drain()
        maintenance.stop()
        grace = worker.settings.worker.shutdown_grace
        log.info("shutting down: running jobs get %.0fs to finish, then are requeued", grace)

        def expire() -> None:
            requeued = worker.cancel_all("shutdown")
            if requeued:
                log.info("grace over: requeuing %s", ", ".join(requeued))

        timer = threading.Timer(grace, expire)
        timer.daemon = True
        timer.start()

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
