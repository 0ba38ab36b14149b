"""`runner worker`: check the enabled executors, then consume their queues with Celery."""

from __future__ import annotations

import logging
import os
import socket
import threading

import executors
from runner import pipeline
from runner.pipeline import cancel_all
from runner.queue import make_app, requeuer, worker_id
from runner.reaper import Maintenance
from runner.settings import Settings

log = logging.getLogger("runner.worker")


def check_executors(settings: Settings, names: list[str]) -> dict[str, str]:
    """Run each executor's check(); return why, for the ones that cannot work here."""
    unusable = {}
    for name in names:
        try:
            result = executors.create(settings, name, worker_id()).check()
            if not result.ok:
                unusable[name] = result.summary
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the worker
            unusable[name] = f"its check crashed: {exc}"
    return unusable


def run_worker(settings: Settings, queues: list[str] | None, concurrency: int | None, loglevel: str) -> None:
    """Enabling an executor in a worker's config says "this worker serves its queue": the
    worker takes that queue even when the executor's check fails, and fails its jobs at once
    with the check's reason, so a job never waits for ever on a queue nobody serves."""
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    queues = queues or [settings.queue_for(name) for name in executors.enabled_names(settings)]
    if not queues:
        raise SystemExit("no executor is enabled: enable one under executors: (see `runner config example`)")
    names = [q.removeprefix(settings.worker.namespace + ".") for q in queues]
    unusable = check_executors(settings, [n for n in names if n in executors.known_names()])
    for name, why in unusable.items():
        log.warning("executor %s cannot work on this worker; its jobs will fail with: %s", name, why)
    pipeline.UNUSABLE.update(unusable)
    app = make_app(settings)
    lifecycle_hooks(settings, [n for n in names if n not in unusable and n in executors.known_names()])
    maintenance = Maintenance(settings, requeuer(app, settings), worker_id())
    maintenance.start()
    graceful_shutdown(settings, maintenance)
    log.info("worker %s taking %s", worker_id(), ", ".join(queues))
    app.Worker(
        queues=queues, concurrency=concurrency or settings.worker.concurrency, pool="threads",
        loglevel=loglevel, hostname=f"runner-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True, without_gossip=True, without_mingle=True,
    ).start()


def lifecycle_hooks(settings: Settings, names: list[str]) -> None:
    """Call each executor's start() now and shutdown() when the worker stops."""
    from celery.signals import worker_shutdown

    started = []
    for name in names:
        try:
            executor = executors.create(settings, name, worker_id())
            executor.start()
            started.append(executor)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up is logged, jobs still run
            log.warning("executor %s: start-up hook failed: %s", name, exc)

    @worker_shutdown.connect(weak=False)
    def stop_executors(**_) -> None:
        for executor in started:
            try:
                executor.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("executor %s: shutdown hook failed: %s", executor.name, exc)


def graceful_shutdown(settings: Settings, maintenance: Maintenance) -> None:
    """On SIGTERM Celery stops taking jobs and waits for running ones; after
    worker.shutdown_grace seconds we cancel what still runs, and the pipeline requeues it."""
    from celery.signals import worker_shutting_down

    @worker_shutting_down.connect(weak=False)
    def start_grace(**_) -> None:
        maintenance.stop()
        grace = settings.worker.shutdown_grace
        log.info("shutting down: running jobs get %.0fs to finish, then are requeued", grace)

        def expire() -> None:
            requeued = cancel_all("shutdown")
            if requeued:
                log.info("grace over: requeuing %s", ", ".join(requeued))

        timer = threading.Timer(grace, expire)
        timer.daemon = True
        timer.start()
