"""A job's interim moments on this worker (started, requeued) become commit statuses in the
outbox when the job gets them: admission's answer, stored on the record (`JobRecord.statuses`).
The queued moment is the entry points' (runner/entry/submission.py). A job's end owes its final
status and callback in the end's own transaction (JobStore.end), whoever ends it: the
pipeline, the reaper, or a cancel while queued (runner/entry/control.py)."""

from __future__ import annotations

import time

from runner.core.jobs import BuildRequest, JobRecord
from runner.store.outbox import Outbox
from runner.worker.worker import JobListener


class NotifyListener(JobListener):
    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def _status(self, record: JobRecord, key: str, moment: str, note: dict | None = None) -> None:
        if record.statuses:
            self.outbox.add(record.id, "status", key, moment, note)

    def job_started(self, record: JobRecord, request: BuildRequest) -> None:
        self._status(record, f"started-{record.attempts}-{time.time_ns()}", "started", {"attempt": record.attempts})

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        self._status(record, f"requeued-{time.time_ns()}", "requeued")
