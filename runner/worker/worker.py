"""One worker process and everything that lives as long as it does: the executors it serves
(made once, here, and handed to the pipeline, the reaper and the doctor), the jobs it runs
right now, where build contexts come from, and what runs when a job ends."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from executors.base import Executor, ExecutorEnv
from executors.plugins import ExecutorRegistry
from runner.config.settings import Settings
from runner.context.build_context import ContextSource
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError, InvalidJob, is_auth_error
from runner.core.executor_metrics import NO_METRICS, ExecutorMetrics
from runner.core.jobs import BuildRequest, JobRecord
from runner.core.registry_client import Registries
from runner.sources.git import GitSource
from runner.sources.upload import UploadSource
from runner.store.jobstore import JobStore
from runner.worker.supply_chain import SupplyChain

log = logging.getLogger(__name__)

class JobListener:
    """Told about a job's moments on this worker (metrics, interim commit statuses). Each
    method must return quickly; an exception is logged and never changes the job."""

    def job_started(self, record: JobRecord, request: BuildRequest) -> None:
        """The record says running (an attempt began on this worker)."""

    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        """The job ended here, however: finished by its attempt, ended before one began,
        refused (a raw message), or given up by the reaper. Told once per job, after its end
        is committed with everything it owes (JobStore.end: the final status and callback are
        in the outbox already)."""

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        """The attempt ended and the job went back to its queue."""


class RefusedLogins(JobListener):
    """A job that ended on refused credentials has every kept credential-helper answer dropped,
    so the next job asks the helpers again (a token revoked before its time)."""

    def __init__(self, registries: Registries):
        self.registries = registries

    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        if record.error is not None and (record.error.kind == "auth" or is_auth_error(record.error.message)):
            self.registries.credentials.forget_all()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def executor_env(settings: Settings, worker_id: str, metrics: ExecutorMetrics = NO_METRICS) -> ExecutorEnv:
    """What every executor of this worker may know of the runner."""
    return ExecutorEnv(worker_id=worker_id, namespace=settings.worker.namespace, workspace=settings.worker.workspace,
                       registries=Registries(settings.registries, settings.registry_auth),
                       build_secrets=dict(settings.build_secrets),
                       builder=settings.builder, metrics=metrics)


def make_executors(settings: Settings, names: list[str], env: ExecutorEnv,
                   registry: ExecutorRegistry | None = None) -> dict[str, Executor]:
    """One executor object per name, with its own config (its defaults where the file has none)."""
    registry = registry or ExecutorRegistry()
    return {name: registry.make(name, settings.executors.get(name) or registry.config_class(name)(), env) for name in names}


class Worker:
    def __init__(self, settings: Settings, names: list[str] | None = None, worker_id: str | None = None,
                 store: JobStore | None = None, registry: ExecutorRegistry | None = None,
                 metrics: ExecutorMetrics = NO_METRICS):
        self.settings = settings
        self.id = worker_id or default_worker_id()
        self.store = store or JobStore.from_settings(settings)
        self.env = executor_env(settings, self.id, metrics)
        self.executors = make_executors(settings, settings.enabled_executors() if names is None else names, self.env, registry)
        #: a job's inputs before its build, its signatures and provenance after (runner/worker/supply_chain.py)
        self.supply = SupplyChain(settings, self.env, self.store, self.id)
        #: executors this worker serves but whose check() failed: name -> why
        self.unusable: dict[str, str] = {}
        self.sources: dict[str, ContextSource] = {"upload": UploadSource(self.store.context_chunks, settings.limits),
                                                  "git": GitSource(settings)}
        #: told each job's moments: `runner worker` adds its metrics and notifications (statuses, callbacks)
        self.listeners: list[JobListener] = [RefusedLogins(self.env.registries)]
        self._active: dict[str, CancelToken] = {}
        self._lock = threading.Lock()

    # -- executors ------------------------------------------------------------------------------
    def check(self) -> dict[str, str]:
        """Run each executor's check(); remember (and return) why, for the ones that cannot work here."""
        for name, executor in self.executors.items():
            try:
                result = executor.check()
                if not result.ok:
                    self.unusable[name] = result.summary
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the worker
                self.unusable[name] = f"its check crashed: {exc}"
        return dict(self.unusable)

    def start(self) -> None:
        """Start-up hooks (warm pools) of the executors that can work here."""
        for name, executor in self.executors.items():
            if name in self.unusable:
                continue
            try:
                executor.start()
            except Exception as exc:  # noqa: BLE001 - a failed warm-up is logged, jobs still run
                log.warning("executor %s: start-up hook failed: %s", name, exc)

    def shutdown(self) -> None:
        for name, executor in self.executors.items():
            try:
                executor.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("executor %s: shutdown hook failed: %s", name, exc)

    def executor(self, name: str) -> Executor:
        """The executor a job runs on, or the error that fails the job at once."""
        if name not in self.executors:
            raise InvalidJob(f"executor {name!r} is not enabled on this worker")
        if name in self.unusable:
            raise InfrastructureError(f"executor {name!r} cannot work on this worker: {self.unusable[name]}")
        return self.executors[name]

    def tell(self, moment: str, record: JobRecord, request: BuildRequest) -> None:
        """Call `moment` (job_started, job_finished, job_requeued) on every listener."""
        for listener in self.listeners:
            try:
                getattr(listener, moment)(record, request)
            except Exception:  # noqa: BLE001 - a listener never changes the job's result
                log.exception("listener %s failed on %s for %s", type(listener).__name__, moment, record.id)

    def source(self, kind: str) -> ContextSource:
        try:
            return self.sources[kind]
        except KeyError:
            raise InfrastructureError(f"this worker cannot prepare {kind!r} contexts") from None

    # -- the jobs running here ------------------------------------------------------------------
    @contextmanager
    def running(self, job_id: str, cancel: CancelToken) -> Iterator[None]:
        with self._lock:
            self._active[job_id] = cancel
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(job_id, None)

    def running_here(self, job_id: str) -> bool:
        """Is this process running the job right now (whatever the lease in Redis says)?"""
        with self._lock:
            return job_id in self._active

    def running_jobs(self) -> list[str]:
        """The ids of the jobs this process runs now."""
        with self._lock:
            return list(self._active)

    def cancel_all(self, reason: str) -> list[str]:
        """Fire the cancel token of every job running in this process (graceful shutdown)."""
        with self._lock:
            tokens = dict(self._active)
        for token in tokens.values():
            token.set(reason)
        return list(tokens)
