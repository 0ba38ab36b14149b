"""How fast the HTTP API answers, on a real `runner serve` (uvicorn) on loopback with the real
Redis: a signed GitHub push that queues a job, a push that builds nothing (branch filter),
a redelivery, a forged signature, POST /v1/jobs for a git job, GET /v1/jobs/{id}, healthz.
No worker takes the jobs (its own namespace, removed at the end), so only the answer is timed.
Target: webhooks answer within milliseconds and never wait for a build.

Run:  .venv/bin/python bench/bench_api.py [--n 300]
Needs Redis (scripts/services.sh). Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
SECRET, TOKEN = "bench-" + uuid.uuid4().hex, "bench-" + uuid.uuid4().hex
PUSH = json.loads((ROOT / "tests" / "fixtures" / "webhooks" / "github-push.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def github(client: httpx.Client, payload: dict, delivery: str, secret: str = SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post("/v1/webhooks/github", content=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature})


def timed(n: int, call) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    n = parser.parse_args().n
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    config = {
        "redis_url": "redis://127.0.0.1:6379/0", "default_executor": "socket",
        "registries": [{"host": "127.0.0.1:5000"}], "executors": {"socket": {"enabled": True}},
        "worker": {"namespace": namespace, "workspace": str(tmp / "work")},
        "api": {"tokens": [{"name": "bench", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]},
        "git": {"allowed_schemes": ["https"]},
        "webhooks": {"github": {"secret": SECRET}, "repositories": {"acme/hello-app": {
            "images": ["127.0.0.1:5000/bench/{repo}:{short_sha}"], "executor": "socket"}}},
    }
    (tmp / "runner.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([RUNNER, "serve", "--port", str(port)], env={**os.environ, "RUNNER_CONFIG": str(tmp / "runner.yml")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"})
        for _ in range(100):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        queued = []

        def push(i):
            payload = {**PUSH, "after": hashlib.sha1(f"{namespace}{i}".encode()).hexdigest()}
            response = github(client, payload, f"d-{i}")
            assert response.status_code == 202, response.text
            queued.append(response.json()["job"])

        def ignored(i):
            assert github(client, {**PUSH, "ref": "refs/heads/experiment"}, f"x-{i}").json()["result"] == "ignored"

        def redelivery(i):
            assert github(client, {**PUSH, "after": hashlib.sha1(f"{namespace}{i}".encode()).hexdigest()}, f"d-{i}").status_code == 200

        def forged(i):
            assert github(client, PUSH, f"f-{i}", secret="wrong").status_code == 401

        def post_job(i):
            job = {"tags": ["127.0.0.1:5000/bench/app:1"], "context": {"type": "git", "url": "https://git.example.com/a.git", "ref": "main"}}
            assert client.post("/v1/jobs", json=job).status_code == 202

        def get_job(i):
            assert client.get(f"/v1/jobs/{queued[i % len(queued)]}").status_code == 200

        def health(i):
            assert client.get("/healthz").status_code == 200

        for name, call in [("webhook push -> 202 queued", push), ("webhook push, branch filtered -> 200", ignored),
                           ("webhook redelivery -> 200 duplicate", redelivery), ("webhook forged signature -> 401", forged),
                           ("POST /v1/jobs (git) -> 202", post_job), ("GET /v1/jobs/{id}", get_job), ("GET /healthz", health)]:
            samples = timed(n, call)
            q = statistics.quantiles(samples, n=100)
            rows.append((name, statistics.median(samples), q[94], q[98], max(samples)))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        import redis

        drop_namespace(redis.Redis.from_url("redis://127.0.0.1:6379/0"), namespace)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(f"\nHTTP API latency on loopback, {n} sequential requests each (ms)\n")
    print(f"{'request':<40} {'median':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for name, median, p95, p99, top in rows:
        print(f"{name:<40} {median:>8.2f} {p95:>8.2f} {p99:>8.2f} {top:>8.2f}")


if __name__ == "__main__":
    main()
