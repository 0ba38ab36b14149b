"""Per-executor test support: one module per executor in this package, each defining
`SUPPORT = ExecutorSupport(...)`. The conftest builds the test config and the contract
suite's parameters from them, so adding an executor to the suite touches only its module."""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExecutorSupport:
    name: str
    #: the executor's config section for the test worker (given the services env dict)
    config: Callable[[dict], dict]
    #: None when the executor can run here, else why not (naming the missing tool)
    skip_reason: Callable[[], str | None] = lambda: None
    #: which registry host the tags of this executor's builds use (services env key)
    registry_key: str = "RUNNER_DEV_REGISTRY"
    #: True for executors that build through a Docker Engine (BuildKit cases apply)
    engine: bool = False
    #: the base image the contract builds FROM, when this executor cannot reach the default
    #: one (given the services env dict; e.g. dind reaches the registry by name, not loopback)
    base_image: Callable[[dict], str] | None = None
    extra: dict = field(default_factory=dict)


def all_support() -> dict[str, ExecutorSupport]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        support = getattr(module, "SUPPORT", None)
        if isinstance(support, ExecutorSupport):
            found[support.name] = support
    return dict(sorted(found.items()))


class ListLog:
    """A LogSink that keeps what a job log would show: the lines, when each came, how many
    writes brought them, and the secrets it was asked to mask."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.times: list[float] = []
        self.secrets: list[str] = []
        self.writes = 0

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.times.append(time.monotonic())

    def write(self, chunk: str) -> None:
        self.writes += 1
        for text in chunk.splitlines():
            self.line(text)

    def add_secret(self, value: str) -> None:
        self.secrets.append(value)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def executor_for(settings, name: str, worker_id: str = "test"):
    """The executor object a worker with these settings would make for `name`."""
    from runner.worker.worker import executor_env, make_executors

    return make_executors(settings, [name], executor_env(settings, worker_id))[name]


def spooled_context(settings, job, source, files: dict[str, str]):
    """`files` written into the folder `source`, packed and spooled as the worker would for `job`:
    the BuildContext an executor is handed."""
    import io

    from runner.context.pack import write_tar
    from runner.context.spool import spool_context

    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    buffer = io.BytesIO()
    write_tar(source, buffer, job.dockerfile)
    return spool_context([buffer.getvalue()], settings.worker.workspace / job.id, job.dockerfile, 10**8)


def every_value(store, *patterns: str) -> str:
    """Every value Redis holds under the store's namespace (and `patterns`, e.g. kombu's
    "unacked*"), read by type and decoded: a secret search must see the values themselves
    (DUMP compresses strings, so a secret inside one need not appear in it)."""
    r, out = store.raw, []
    for key in [key for pattern in (f"{store.ns}*", *patterns) for key in r.scan_iter(pattern)]:
        kind = r.type(key)
        if kind == b"string":
            out.append(r.get(key))
        elif kind == b"list":
            out += r.lrange(key, 0, -1)
        elif kind == b"hash":
            out += [part for pair in r.hgetall(key).items() for part in pair]
        elif kind == b"set":
            out += r.smembers(key)
        elif kind == b"zset":
            out += r.zrange(key, 0, -1)
        elif kind == b"stream":
            out += [part for _, fields in r.xrange(key) for pair in fields.items() for part in pair]
    return b"\n".join(value for value in out if value is not None).decode("utf-8", "replace")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 60) -> int:
    """Signal a process started in its own session (its whole group), SIGKILL it if it outlives
    `wait`; its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def start_registry(config: Path, log: Path, **popen: Any) -> subprocess.Popen:
    """`docker-registry serve CONFIG`, its output (the access log too, whatever its log level)
    to the file `log`: never to a pipe nobody reads, where a full buffer stops the registry
    mid-request (a long module's requests did)."""
    with log.open("ab") as out:
        return subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT, **popen)


def wait_for_registry(host: str, proc: subprocess.Popen, timeout: float = 20, log: Path | None = None) -> None:
    """Wait until the `docker-registry serve` process `proc` answers on `host` (a 401 from
    /v2/: it asks for a login); fail with what it said (its `log`) if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://{host}/v2/", timeout=1).status_code == 401:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            said = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"registry {host} did not come up (exit code {proc.poll()}): {said!r}")
        time.sleep(0.05)
