"""What dead workers leave behind: jobs stuck `running`, and their containers, volumes,
networks, images and workspaces. Every worker runs both sweeps at start and periodically.

Only jobs of this worker's namespace are touched (a job counts as ours when its record is
in our store), and never while a live worker holds the job's lease. What an executor left
is found by the executor itself (`sweep`), on its own engine: the reaper never names one.
"""

from __future__ import annotations

import logging
import shutil
import threading
from functools import partial

from runner.core.jobs import Status
from runner.store import jobstate
from runner.store.joblog import JobLog
from runner.worker.pipeline import MAINTENANCE_PREFIX, Requeue, count_requeue, end_job
from runner.worker.worker import Worker

log = logging.getLogger(__name__)
HOLD_SECONDS = 60.0


def recover_lost_jobs(worker: Worker, requeue: Requeue) -> list[str]:
    """Requeue running jobs whose worker stopped renewing the lease (killed, host lost), or fail
    them once they have had limits.max_attempts attempts (jobstate.lost, jobstate.give_up)."""
    store, settings = worker.store, worker.settings
    max_attempts = settings.limits.max_attempts
    recovered = []
    holder = MAINTENANCE_PREFIX + worker.id
    for job_id in store.ids(Status.running):  # the running index: cost follows running jobs, not history
        if worker.running_here(job_id):
            continue  # ours: the lease only lapsed (Redis was away); the watcher takes it back
        if store.lease_holder(job_id) is not None or not store.acquire_lease(job_id, holder, HOLD_SECONDS):
            continue
        try:
            current = store.get(job_id)
            if current is None or current.status is not Status.running:
                continue
            stopped = f"[runner] worker {current.worker} stopped (no heartbeat for {settings.worker.lease_ttl:.0f}s); "
            reap_job(worker, job_id)  # what the dead attempt left, before a new one can start
            if jobstate.gives_up(current, max_attempts):
                end_job(worker, job_id, partial(jobstate.give_up, max_attempts=max_attempts),
                        stopped + "giving up: limits.max_attempts reached")
            else:
                record, moved = store.move(job_id, partial(jobstate.lost, max_attempts=max_attempts))
                if not moved or record is None:
                    continue
                JobLog(store, job_id).line(stopped + "requeued")
                requeue(record.request, 0)  # redacted: secret values stay in the store
                count_requeue(store, record.executor, "worker_lost")
            recovered.append(job_id)
        finally:
            store.release_lease(job_id, holder)
    return recovered


def reap_job(worker: Worker, job_id: str) -> None:
    for name, executor in worker.executors.items():
        try:
            executor.cleanup(job_id)
        except Exception as exc:  # noqa: BLE001 - one executor's failure must not stop the sweep
            log.warning("reaper: %s cleanup of %s failed: %s", name, job_id, exc)
    shutil.rmtree(worker.env.job_dir(job_id), ignore_errors=True)


def is_live(worker: Worker, job_id: str) -> bool:
    """May the job's leftovers stay? Yes when it is not ours (no record in our store: another
    namespace's job on a shared engine or store), held by a worker or a sweep right now, or
    running; and when the store cannot say (unreachable): keep them, ask again next round.
    Never raises, so no executor's sweep needs to guard it."""
    try:
        record = worker.store.get(job_id)
        return record is None or record.status is Status.running or worker.store.lease_holder(job_id) is not None
    except Exception:  # noqa: BLE001 - leaving a leftover one more round is safe; removing a live job's is not
        return True


def reap(worker: Worker) -> list[str]:
    """Clean up after every job of ours that has leftovers and is not running: the ones with
    a workspace here (every executor's cleanup), then whatever each executor finds itself."""
    store, workspace = worker.store, worker.settings.worker.workspace
    reaped = []
    holder = MAINTENANCE_PREFIX + worker.id
    candidates = sorted(p.name for p in workspace.iterdir() if p.is_dir()) if workspace.is_dir() else []
    for job_id in candidates:
        record = store.get(job_id)
        if record is None or record.status is Status.running:
            continue  # not ours, or running (a lost running job is recover_lost_jobs' business)
        if not store.acquire_lease(job_id, holder, HOLD_SECONDS):
            continue  # a worker is starting it right now
        try:
            reap_job(worker, job_id)
            reaped.append(job_id)
        finally:
            store.release_lease(job_id, holder)
    for name, executor in worker.executors.items():
        try:
            reaped += executor.sweep(lambda job_id: is_live(worker, job_id))
        except Exception as exc:  # noqa: BLE001 - a sweep that fails (its engine is down) waits for the next round
            log.warning("reaper: %s sweep failed: %s", name, exc)
    if reaped:
        log.info("reaper: cleaned up after %d job(s): %s", len(reaped), ", ".join(sorted(set(reaped))))
    return sorted(set(reaped))


class Maintenance(threading.Thread):
    """Runs recovery every worker.recover_interval, and the reaper, index pruning and the
    running-list reconciliation every worker.reap_interval."""

    def __init__(self, worker: Worker, requeue: Requeue):
        super().__init__(daemon=True, name="runner-maintenance")
        self.worker, self.requeue = worker, requeue
        self.stopped = threading.Event()

    def run(self) -> None:
        settings, store = self.worker.settings, self.worker.store
        next_reap = 0.0
        elapsed = 0.0
        while not self.stopped.is_set():
            try:
                recover_lost_jobs(self.worker, self.requeue)
                if elapsed >= next_reap:
                    reap(self.worker)
                    store.prune()
                    store.reconcile_running(settings.enabled_executors())
                    next_reap = elapsed + settings.worker.reap_interval
            except Exception as exc:  # noqa: BLE001 - e.g. Redis restarting; try again next round
                log.warning("maintenance round failed: %s", exc)
            interval = settings.worker.recover_interval
            self.stopped.wait(interval)
            elapsed += interval

    def stop(self) -> None:
        self.stopped.set()
