"""Hostile input and heavy load, as an attacker or a heavy user would send them.

Real-process cases run a worker on each Python the runner may meet: the venv's, and Debian's
own python3 (3.11.2 on Debian 12, which has no tarfile extraction filters), so no guarantee
here depends on the host's Python patch release. scripts/venv.sh makes both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEBIAN_RUNNER, RUNNER

WORKER_RUNNERS = {"venv-python": RUNNER, "debian-python": DEBIAN_RUNNER}


def python_version(runner: str) -> str:
    python = Path(runner).with_name("python")
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module", params=list(WORKER_RUNNERS), ids=list(WORKER_RUNNERS))
def worker_runner(request) -> str:
    """The `runner` executable a real-process hostile test starts its worker with."""
    runner = WORKER_RUNNERS[request.param]
    assert Path(runner).exists(), f"{runner} is missing: scripts/venv.sh makes it"
    return runner
