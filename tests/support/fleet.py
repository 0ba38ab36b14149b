"""Helpers for the fleet tests (tests/test_metrics.py, tests/test_fleet.py): `runner serve` and
workers with their HTTP servers on spare loopback ports, Prometheus text read back, jobs sent
through the API, and a redis-server of the test's own."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import stop

if TYPE_CHECKING:
    from tests.conftest import RunnerHarness

RUNNER = str(Path(sys.executable).with_name("runner"))
TOKEN = "fleet-" + uuid.uuid4().hex
API = {"tokens": [{"name": "ci", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(every)


def metrics_config(port: int) -> dict:
    """A worker section serving /metrics, /healthz, /readyz on loopback `port`."""
    return {"metrics_port": port, "metrics_host": "127.0.0.1"}


def status(url: str) -> int | None:
    """HTTP status of GET url, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Serve:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop(self.proc)


def start_serve(harness: RunnerHarness) -> Serve:
    port = free_port()
    log = harness.workdir / f"serve-{port}.log"
    proc = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)], env=harness.env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: status(f"{url}/healthz") == 200 or proc.poll() is not None, 30, "runner serve up")
    except AssertionError:
        stop(proc)
        raise
    assert proc.poll() is None, log.read_text()[-2000:]
    return Serve(url, proc, log)


def context_tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class ApiClient:
    """Jobs sent through `runner serve`, as a CI system would."""

    url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def submit(self, job: dict, files: dict[str, str] | None = None) -> str:
        job_id = job.setdefault("id", uuid.uuid4().hex)
        response = self.client.post(f"/v1/jobs/{job_id}/context", content=context_tar(files or {"Dockerfile": "FROM scratch\n"}))
        assert response.status_code == 201, response.text
        response = self.client.post("/v1/jobs", json=job)
        assert response.status_code == 202, response.text
        return job_id

    def record(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def log(self, job_id: str) -> str:
        return self.client.get(f"/v1/jobs/{job_id}/logs").text

    def close(self) -> None:
        self.client.close()


class OwnRedis:
    """A redis-server of the test's own on a spare loopback port, which it may stop and start."""

    def __init__(self, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", 10, "own redis-server up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
