"""A job's status, why a job went back to its queue, and a new job's id: plain values, so that
the CLI's light path (runner.core.jobview, the API client) and the job store use them without
the models."""

from __future__ import annotations

import os
from enum import Enum

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Literal


class Status(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"

    @property
    def finished(self) -> bool:
        return self not in (Status.queued, Status.running)


#: why a job went back to its queue: its worker shut down (SIGTERM past worker.shutdown_grace),
#: its engine failed (worker.engine_down_policy: requeue), or its worker was lost (recovery)
if TYPE_CHECKING:
    RequeueReason = Literal["shutdown", "engine_down", "worker_lost"]
REQUEUE_REASONS: tuple[RequeueReason, ...] = ("shutdown", "engine_down", "worker_lost")


def new_job_id() -> str:
    """uuid.uuid4().hex, without importing uuid (which loads `platform` and more: the CLI's start)."""
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)  # the RFC 4122 variant
    value = (value & ~(0xF000 << 64)) | (4 << 76)  # version 4
    return f"{value:032x}"
