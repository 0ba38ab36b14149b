"""What the metrics cost: the API's request middleware per request, and a worker's /metrics page
now that every series it can have is there from start-up.

1. The same `runner serve` app (real Redis) answers GET /v1/jobs/{id} and GET /healthz in
   process (httpx's ASGI transport, no sockets), with the request-metrics middleware and with it
   taken out (the baseline), interleaved in rounds so load on the machine hits both alike.
2. A worker's exposition (WorkerMetrics) for 1 and 6 executors: bytes, series, time to render;
   the baseline is the process's own series alone (process_registry).

Run:  .venv/bin/python bench/bench_metrics.py [--n 2000]
Needs Redis (scripts/services.sh). Prints tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.exposition import generate_latest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace, load_line  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.jobs import BuildRequest, JobRecord  # noqa: E402
from runner.entry.api import create_app  # noqa: E402
from runner.entry.request_metrics import RequestMetricsMiddleware  # noqa: E402
from runner.worker.process_metrics import process_registry  # noqa: E402
from runner.worker.worker_metrics import WorkerMetrics  # noqa: E402
from tests.plugins import use_fake  # noqa: E402

use_fake()  # the fake executor is a plugin of the tests, not of the runner

TOKEN = "bench-" + uuid.uuid4().hex


def settings(namespace: str) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:6379/0", worker={"namespace": namespace}, default_executor="fake",
                    executors={"fake": {"enabled": True}},
                    api={"tokens": [{"name": "bench", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]})


def app(config: Settings, with_metrics: bool):
    made = create_app(config)
    if not with_metrics:
        made.user_middleware = [m for m in made.user_middleware if m.cls is not RequestMetricsMiddleware]
    return made


async def requests(n: int, rounds: int, config: Settings, job_id: str) -> dict[tuple[str, str], list[float]]:
    apps = {"with middleware": app(config, True), "without (baseline)": app(config, False)}
    times: dict[tuple[str, str], list[float]] = {}
    contexts = [made.router.lifespan_context(made) for made in apps.values()]
    for context in contexts:
        await context.__aenter__()
    try:
        clients = {name: httpx.AsyncClient(transport=httpx.ASGITransport(app=made), base_url="http://bench",
                                           headers={"Authorization": f"Bearer {TOKEN}"}) for name, made in apps.items()}
        for _ in range(rounds):
            for name, client in clients.items():
                for path in (f"/v1/jobs/{job_id}", "/healthz"):
                    for _ in range(n // rounds):
                        start = time.perf_counter()
                        response = await client.get(path)
                        times.setdefault((path.replace(job_id, "{job_id}"), name), []).append((time.perf_counter() - start) * 1e6)
                        assert response.status_code == 200, response.text
        for client in clients.values():
            await client.aclose()
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    return times


def exposition_rows(repeat: int = 200) -> list[tuple[str, int, int, float]]:
    rows = []
    for label, render in (("process series only (baseline)", lambda: generate_latest(process_registry())),
                          ("worker, 1 executor", WorkerMetrics(["buildah"], build_slots=2).exposition),
                          ("worker, 6 executors", WorkerMetrics(["buildah", "img", "socket", "dind", "sysbox", "fake"], 2).exposition)):
        text = render()
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        took = []
        for _ in range(repeat):
            start = time.perf_counter()
            render()
            took.append((time.perf_counter() - start) * 1000)
        rows.append((label, len(text), series, statistics.median(took)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="requests per path and app")
    args = parser.parse_args()
    namespace = f"bench-metrics-{uuid.uuid4().hex[:6]}"
    config = settings(namespace)
    from runner.store.jobstore import JobStore

    store = JobStore.from_settings(config)
    record = JobRecord(id=uuid.uuid4().hex, request=BuildRequest(tags=["127.0.0.1:5000/bench/m:1"]), executor="fake",
                       queue=config.queue_for("fake"))
    store.create(record)
    try:
        times = asyncio.run(requests(args.n, 10, config, record.id))
    finally:
        drop_namespace(store.r, namespace)
    print(load_line())
    print(f"\nAPI requests in process ({args.n} per row, 10 interleaved rounds), microseconds")
    print("| route | app | p50 | p95 | mean |")
    print("|---|---|---|---|---|")
    for (path, name), values in sorted(times.items()):
        values.sort()
        print(f"| {path} | {name} | {statistics.median(values):.0f} | {values[int(len(values) * 0.95)]:.0f} | {statistics.mean(values):.0f} |")
    print("\nA worker's /metrics page (median of 200 renders)")
    print("| exposition | bytes | series | render ms |")
    print("|---|---|---|---|")
    for label, size, series, took in exposition_rows():
        print(f"| {label} | {size:,} | {series} | {took:.2f} |")


if __name__ == "__main__":
    main()
