"""One process log line per job end (and per requeue), at a level an alert can key on:

  INFO     succeeded, cancelled
  WARNING  failed by the build itself (kind build or invalid: the job's author fixes it)
  ERROR    failed by what the operator runs: infrastructure, auth (the registry refused the
           configured credentials), worker_lost; and timed out

Each line carries the job's fields (job_id, executor, worker) and status, error_kind,
duration_seconds, attempts and submitted_by: JSON mode writes them as fields
(runner/core/process_log.py). A requeue is a WARNING: the build starts again elsewhere."""

from __future__ import annotations

import logging

from runner.core.jobs import BuildRequest, JobRecord, Status, seconds_between
from runner.core.process_log import CURRENT_JOB
from runner.worker.worker import JobListener

log = logging.getLogger(__name__)

#: failed jobs whose cause is the build's own (the job's author's to fix)
BUILD_FAULTS = frozenset({"build", "invalid"})
MESSAGE_CHARS = 300  # of the error message, on the line (the record keeps all of it)


def outcome_level(record: JobRecord) -> int:
    if record.status in (Status.succeeded, Status.cancelled):
        return logging.INFO
    if record.status is Status.failed and record.error is not None and record.error.kind in BUILD_FAULTS:
        return logging.WARNING
    return logging.ERROR


def job_fields(record: JobRecord) -> dict[str, object]:
    """The fields of a job's end line (`extra` of the log record)."""
    took = seconds_between(record.started_at, record.finished_at)
    running = CURRENT_JOB.get()  # a requeued record names no worker any more: the one it ran on
    worker = record.worker or (running.worker if running is not None else None)
    return {"job_id": record.id, "executor": record.executor, "worker": worker, "status": record.status.value,
            "error_kind": record.error.kind if record.error else None,
            "duration_seconds": round(took, 3) if took is not None else None, "attempts": record.attempts,
            "submitted_by": record.submitted_by}


class OutcomeLog(JobListener):
    def job_finished(self, record: JobRecord, request: BuildRequest) -> None:
        fields = job_fields(record)
        words = [f"job {record.id} {record.status.value}"]
        if record.error is not None and record.status is not Status.cancelled:
            first_line = record.error.message.strip().splitlines()[0] if record.error.message.strip() else ""
            words.append(f"({record.error.kind}: {first_line[:MESSAGE_CHARS]})")
        if fields["duration_seconds"] is not None:
            words.append(f"after {fields['duration_seconds']:.1f}s")
        words.append(f"on {record.executor}, attempt {record.attempts}")
        if record.submitted_by:
            words.append(f"submitted by {record.submitted_by}")
        log.log(outcome_level(record), "%s", " ".join(words), extra=fields)

    def job_requeued(self, record: JobRecord, request: BuildRequest) -> None:
        fields = {**job_fields(record), "status": "requeued"}
        log.warning("job %s requeued on %s (attempt %d ended here)", record.id, record.queue, record.attempts, extra=fields)
