"""What dead workers leave behind: jobs stuck `running`, and their containers, volumes,
networks, images and workspaces. Every worker runs both sweeps at start and periodically.

Only jobs of this worker's namespace are touched (a job counts as ours when its record is
in our store), and never while a live worker holds the job's lease.
"""

from __future__ import annotations

import logging
import shutil
import threading

import executors
from runner.joblog import JobLog
from runner.jobs import JobError, JobRecord, Status, now
from runner.pipeline import MAINTENANCE_PREFIX, Requeue, running_here
from runner.settings import Settings
from runner.store import JobStore

log = logging.getLogger("runner.reaper")
HOLD_SECONDS = 60.0


def recover_lost_jobs(settings: Settings, store: JobStore, requeue: Requeue, me: str) -> list[str]:
    """Requeue running jobs whose worker stopped renewing the lease (killed, host lost)."""
    recovered = []
    holder = MAINTENANCE_PREFIX + me
    for job_id in store.ids(Status.running):  # the running index: cost follows running jobs, not history
        if running_here(job_id):
            continue  # ours: the lease only lapsed (Redis was away); the watcher takes it back
        if store.lease_holder(job_id) is not None or not store.acquire_lease(job_id, holder, HOLD_SECONDS):
            continue
        try:
            current = store.get(job_id)
            if current is None or current.status is not Status.running:
                continue
            give_up = current.attempts >= settings.limits.max_attempts
            store.update(job_id, lambda r, give_up=give_up: _lost(r, give_up, settings))
            JobLog(store, job_id).line(
                f"[runner] worker {current.worker} stopped (no heartbeat for {settings.worker.lease_ttl:.0f}s); "
                + ("giving up: limits.max_attempts reached" if give_up else "requeued"))
            reap_job(settings, store, job_id, me)
            if give_up:
                store.end_log(job_id, Status.failed)
                store.delete_context(job_id)
                store.delete_secrets(job_id)
            else:
                requeue(current.request, 0)  # redacted: secret values stay in the store
            recovered.append(job_id)
        finally:
            store.release_lease(job_id, holder)
    return recovered


def _lost(record: JobRecord, give_up: bool, settings: Settings) -> JobRecord:
    if give_up:
        message = (f"gave up after {record.attempts} attempts: each attempt lost its worker "
                   f"(limits.max_attempts={settings.limits.max_attempts})")
        return record.model_copy(update={"status": Status.failed, "finished_at": now(),
                                         "error": JobError(kind="worker_lost", message=message)})
    return record.model_copy(update={"status": Status.queued, "worker": None, "started_at": None})


def reap_job(settings: Settings, store: JobStore, job_id: str, me: str) -> None:
    for name in executors.enabled_names(settings):
        try:
            executors.create(settings, name, me).cleanup(job_id)
        except Exception as exc:  # noqa: BLE001 - one executor's failure must not stop the sweep
            log.warning("reaper: %s cleanup of %s failed: %s", name, job_id, exc)
    shutil.rmtree(settings.worker.workspace / job_id, ignore_errors=True)


def candidate_job_ids(settings: Settings, me: str) -> set[str]:
    ids: set[str] = set()
    workspace = settings.worker.workspace
    if workspace.is_dir():
        ids.update(p.name for p in workspace.iterdir() if p.is_dir())
    for name in executors.enabled_names(settings):
        try:
            ids.update(executors.create(settings, name, me).leftover_job_ids())
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: %s could not list leftovers: %s", name, exc)
    return ids


def reap_sidecars(settings: Settings, store: JobStore) -> None:
    """dind/sysbox objects (sidecars, volumes, networks, warm-pool sidecars of dead workers)
    of our namespace whose job is not live."""
    names = [n for n in ("dind", "sysbox") if executors.is_enabled(settings, n)]
    if not names:
        return
    from executors.dind import reap as reap_engine_objects
    from executors.engine import connect

    def is_live(job_id: str) -> bool:
        record = store.get(job_id)
        return store.lease_holder(job_id) is not None or (record is not None and record.status is Status.running)

    api = connect(settings.executors.dind.docker_host, timeout=30)
    try:
        reap_engine_objects(api, is_live, tuple(names), namespace=settings.worker.namespace)
    finally:
        api.close()


def reap(settings: Settings, store: JobStore, me: str) -> list[str]:
    """Clean up after every job of ours that has leftovers and is not running."""
    reaped = []
    holder = MAINTENANCE_PREFIX + me
    for job_id in sorted(candidate_job_ids(settings, me)):
        record = store.get(job_id)
        if record is None or record.status is Status.running:
            continue  # not ours, or running (a lost running job is recover_lost_jobs' business)
        if not store.acquire_lease(job_id, holder, HOLD_SECONDS):
            continue  # a worker is starting it right now
        try:
            reap_job(settings, store, job_id, me)
            reaped.append(job_id)
        finally:
            store.release_lease(job_id, holder)
    if reaped:
        log.info("reaper: cleaned up after %d job(s): %s", len(reaped), ", ".join(reaped))
    try:
        reap_sidecars(settings, store)
    except Exception as exc:  # noqa: BLE001 - no engine: nothing of dind's to reap here
        log.warning("reaper: sidecar sweep failed: %s", exc)
    return reaped


class Maintenance(threading.Thread):
    """Runs recovery every worker.recover_interval and the reaper every worker.reap_interval."""

    def __init__(self, settings: Settings, requeue: Requeue, me: str):
        super().__init__(daemon=True, name="runner-maintenance")
        self.settings, self.requeue, self.me = settings, requeue, me
        self.stopped = threading.Event()

    def run(self) -> None:
        store = JobStore.from_settings(self.settings)
        next_reap = 0.0
        elapsed = 0.0
        while not self.stopped.is_set():
            try:
                recover_lost_jobs(self.settings, store, self.requeue, self.me)
                if elapsed >= next_reap:
                    reap(self.settings, store, self.me)
                    store.prune()
                    store.reconcile_running(executors.enabled_names(self.settings))
                    next_reap = elapsed + self.settings.worker.reap_interval
            except Exception as exc:  # noqa: BLE001 - e.g. Redis restarting; try again next round
                log.warning("maintenance round failed: %s", exc)
            interval = self.settings.worker.recover_interval
            self.stopped.wait(interval)
            elapsed += interval

    def stop(self) -> None:
        self.stopped.set()
