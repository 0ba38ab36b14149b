"""Process helpers for the real-process hostile-context tests and bench/bench_hostile.py: a
raw queue message as any CI posts it, a `runner serve` on loopback, waiting for a job."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from tests.conftest import RUNNER, RunnerHarness
from tests.support import stop


def post_raw(store, job: dict, queue: str, context_chunks: Iterable[bytes]) -> None:
    """What examples/queue-post.sh does with redis-cli: RPUSH the context chunks, LPUSH a
    Celery protocol-2 message whose body is [[job], {}, {...}]."""
    job_id = job["id"]
    key = f"{store.ns}:ctx:{job_id}"
    for chunk in context_chunks:
        store.raw.rpush(key, chunk)
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "runner.build", "id": job_id, "root_id": job_id, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
        "properties": {"correlation_id": job_id, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": job_id},
    }
    store.raw.lpush(queue, json.dumps(message))


def wait_finished(store, job_id: str, timeout: float = 300) -> dict:
    """The job's final record as JSON data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.finished:
            return json.loads(record.model_dump_json())
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def wait_status(store, job_id: str, status: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.status.value == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {status}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(harness: RunnerHarness) -> tuple[subprocess.Popen, str]:
    """`runner serve` on a free loopback port with the harness's config; (process, base URL)."""
    port = free_port()
    log = (harness.workdir / f"serve-{port}.log").open("w")
    proc = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)], env=harness.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"runner serve did not come up: {Path(log.name).read_text()[-2000:]}")


