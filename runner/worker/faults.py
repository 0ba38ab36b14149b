"""Fault points, for the tests that kill a worker between two steps of a job's end
(tests/test_job_end.py): with RUNNER_TEST_FAULT=after:STEP in its environment, a worker
SIGKILLs itself right after STEP. Read once, when the worker starts; unset (always, outside
those tests) a fault point costs one test of an empty string.

The steps of a job's end on a worker, in order: `result` (the attempt's outcome is known),
`end` (JobStore.end committed it), `told` (listeners heard "finished"), `cleanup` (the
executor's and the workspace's leftovers removed), `release` (the lease released; the task's
message is acknowledged next)."""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("RUNNER_TEST_FAULT", "")


def after(step: str) -> None:
    """Die here (SIGKILL: no handler, no finally) when the tests asked for it."""
    if _AT and _AT == f"after:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
