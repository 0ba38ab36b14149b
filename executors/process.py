"""Run a build tool as a child process: stream its output into the job log line by line,
and kill its whole process group when the job is cancelled or times out."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from executors.base import CancelToken, InfrastructureError, LogSink

KILL_GRACE = 2.0


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_streaming(argv: Sequence[str], log: LogSink, cancel: CancelToken, *,
                  env: Mapping[str, str] | None = None, cwd: Path | None = None,
                  prefix: str = "") -> int:
    """Run `argv`, copy its merged stdout/stderr to `log` as it comes; return the exit code.

    Secrets must travel in files or `env`, never in argv (argv is world-readable in /proc).
    Raises Cancelled if the token fired (the process group is already dead by then).
    """
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    except FileNotFoundError:
        raise InfrastructureError(f"{argv[0]} is not installed or not on PATH") from None
    except OSError as exc:
        raise InfrastructureError(f"cannot start {argv[0]}: {exc.strerror}") from None
    unregister = cancel.on_cancel(lambda: kill_group(proc))
    try:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            log.line(prefix + raw.decode("utf-8", "replace").rstrip("\r\n"))
        code = proc.wait()
    finally:
        unregister()
        if proc.poll() is None:
            kill_group(proc)
    cancel.raise_if_set()
    return code
