"""`runner worker`: check the enabled executors, then consume their queues with Celery."""

from __future__ import annotations

import logging
import os
import socket

import executors
from runner.queue import make_app, worker_id
from runner.settings import Settings

log = logging.getLogger("runner.worker")


def usable_queues(settings: Settings) -> list[str]:
    """One queue per enabled executor whose check() passes; the others are refused with why."""
    queues = []
    for name in executors.enabled_names(settings):
        try:
            result = executors.create(settings, name, worker_id()).check()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the worker
            log.warning("executor %s: check crashed: %s", name, exc)
            continue
        if result.ok:
            queues.append(settings.queue_for(name))
        else:
            log.warning("executor %s is enabled but unusable, not taking its jobs: %s", name, result.summary)
    return queues


def run_worker(settings: Settings, queues: list[str] | None, concurrency: int | None, loglevel: str) -> None:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    queues = queues or usable_queues(settings)
    if not queues:
        raise SystemExit("no usable executor is enabled: run `runner doctor` to see why")
    app = make_app(settings)
    log.info("worker %s taking %s", worker_id(), ", ".join(queues))
    app.Worker(
        queues=queues, concurrency=concurrency or settings.worker.concurrency, pool="threads",
        loglevel=loglevel, hostname=f"runner-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True, without_gossip=True, without_mingle=True,
    ).start()
