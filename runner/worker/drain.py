"""The drain: a worker stops taking builds, lets the running ones finish, then exits.

What starts it: SIGTERM (scale-in, a rollout, a node drain), `POST /drain` on the worker's own
HTTP server from the same host (the Kubernetes preStop hook: `runner drain`), or the worker's
job budget (worker.max_jobs builds done, or worker.idle_exit seconds without one). The last two
send the worker SIGTERM themselves, so every drain is Celery's warm shutdown: the consumer
stops, running tasks finish, the process exits.

From its first moment the build gate is shut (the transport asks Redis for deliveries only,
runner/worker/transport.py), /readyz answers 503 saying how many builds still run, and the
recovery and reaper stop. The running builds get Settings.shutdown_grace() seconds (by default
longer than any build may run, so none is cut short); whatever still runs then is cancelled and
requeued without using up an attempt: the backstop for a platform that stops the worker sooner."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from runner.core.jobs import BuildRequest, JobRecord
from runner.worker.worker import JobListener, Worker

log = logging.getLogger(__name__)


class Drain:
    def __init__(self, worker: Worker, on_start: Callable[[], None] = lambda: None):
        self.worker = worker
        #: set when the drain starts: the transport then takes no more builds (transport option build_gate)
        self.gate = threading.Event()
        self.on_start = on_start  # /readyz turns 503, maintenance stops
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.gate.is_set()

    def request(self, why: str) -> None:
        """Start the drain from any thread: shut the gate now, and ask for Celery's warm shutdown."""
        if not self.gate.is_set():
            log.info("draining: %s", why)
        self.gate.set()
        os.kill(os.getpid(), signal.SIGTERM)

    def start(self) -> None:
        """Celery's warm shutdown began (worker_shutting_down, on SIGTERM): once, the gate, the
        readiness, and the grace timer whose end requeues what still runs."""
        with self._lock:
            if self._timer is not None:
                return
            self.gate.set()
            grace = self.worker.settings.shutdown_grace()
            self._timer = threading.Timer(grace, self._expire)
            self._timer.daemon = True
            self._timer.start()
        self.on_start()
        running = self.worker.running_jobs()
        log.info("shutting down (draining): no new builds; %d running get up to %.0fs to finish, then are requeued",
                 len(running), grace)

    def _expire(self) -> None:
        requeued = self.worker.cancel_all("shutdown")
        if requeued:
            log.warning("drain grace over: requeuing %s", ", ".join(requeued))


class JobBudget(JobListener):
    """Drains the worker after worker.max_jobs builds, or after worker.idle_exit seconds
    without one (a pod per build: it runs one and ends; it does not wait for ever for a build
    another pod took)."""

    def __init__(self, drain: Drain, max_jobs: int, idle_exit: float):
        self.drain, self.max_jobs, self.idle_exit = drain, max_jobs, idle_exit
        self.done = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def job_started(self, record: JobRecord, request: BuildRequest) -> None:
        with self._lock:
            self._last = time.monotonic()

    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        self._ended()

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        self._ended()

    def _ended(self) -> None:
        """Runs in the build's task, before its message is acked: the gate shuts before the
        transport could ask for another build."""
        with self._lock:
            self.done += 1
            self._last = time.monotonic()
            spent = self.max_jobs and self.done >= self.max_jobs
        if spent:
            self.drain.request(f"{self.done} build(s) done (worker.max_jobs)")

    def start(self) -> None:
        if self.idle_exit:
            threading.Thread(target=self._watch_idle, name="runner-idle-exit", daemon=True).start()

    def _watch_idle(self) -> None:
        while not self.stopped.wait(min(1.0, self.idle_exit)):
            with self._lock:
                idle = time.monotonic() - self._last
            if idle >= self.idle_exit and not self.drain.worker.running_jobs() and not self.drain.draining:
                self.drain.request(f"no build for {idle:.0f}s (worker.idle_exit)")
                return
