"""The job's moments on this worker (started, requeued, finished) become deliveries in the
outbox: a commit status when admission says the job gets them (runner/worker/admission.py),
and the completion callback when it has a `callback_url`. The queued moment is the entry
points' (runner/entry/submission.py); a queued job cancelled there ends there too
(runner/entry/control.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from runner.core.jobs import BuildRequest, JobRecord
from runner.store.outbox import Outbox
from runner.worker.worker import JobListener


class NotifyListener(JobListener):
    def __init__(self, outbox: Outbox, gets_statuses: Callable[[JobRecord], bool]):
        """`gets_statuses`: admission's answer for a job with a record (runner/worker/lifecycle.py wires it)."""
        self.outbox, self.gets_statuses = outbox, gets_statuses

    def _status(self, record: JobRecord, key: str, moment: str, note: dict | None = None) -> None:
        if self.gets_statuses(record):
            self.outbox.add(record.id, "status", key, moment, note)

    def job_started(self, record: JobRecord, request: BuildRequest) -> None:
        self._status(record, f"started-{record.attempts}-{time.time_ns()}", "started", {"attempt": record.attempts})

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        self._status(record, f"requeued-{time.time_ns()}", "requeued")

    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        self.outbox.add_finished(record.id, self.gets_statuses(record), bool(record.request.callback_url))
