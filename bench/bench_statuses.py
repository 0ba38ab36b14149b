"""Commit-status benchmark: how soon statuses reach the host, how many a worker delivers per
second, and how long a status waits after its worker is killed mid-request.

Run:  .venv/bin/python bench/bench_statuses.py [--jobs 100] [--burst 300] [--kill-trials 2]
Needs the services (scripts/services.sh). Starts its own worker (fake executor: builds
nothing) in its own namespace, and a fake GitHub status API on loopback (tests/test_statuses.py).
Latencies: "queued" from just before `submit` to the host receiving that pending status
(one process's clock); "final" from the record's finished_at (the worker's wall clock) to the
host receiving the success. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace  # noqa: E402
from runner.config.sections import ApiToken  # noqa: E402
from runner.config.settings import load_settings  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.entry.submission import submit  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.store.outbox import Outbox  # noqa: E402
from runner.worker.admission import Origin  # noqa: E402
from tests.plugins import use_fake  # noqa: E402
from tests.test_statuses import FakeHost, empty_context, new_sha, serve  # noqa: E402

use_fake()  # the fake executor is a plugin of the tests, not of the runner

TOKEN = "ghp_bench_" + uuid.uuid4().hex
#: jobs are submitted as the API does for a token with the status right (runner/worker/admission.py)
STATUS_TOKEN = Origin.api(ApiToken(name="bench", token="bench-" + uuid.uuid4().hex, rights=["submit", "status"]))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, workdir: Path, host: FakeHost, concurrency: int, **statuses):
        dev = dev_env()
        self.workdir, self.host = workdir, host
        config = {
            "redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": "fake",
            "registries": [{"host": "127.0.0.1:5000"}], "executors": {"fake": {"enabled": True}},
            "worker": {"namespace": f"bench-st-{uuid.uuid4().hex[:6]}", "workspace": str(workdir / "work"),
                       "concurrency": concurrency, "metrics_port": 0, "recover_interval": 1.0},
            "statuses": {"github": {"api_url": host.url, "token": TOKEN}, **statuses},
            "api": {"public_url": "http://ci.bench.test"},
        }
        path = workdir / f"bench-{uuid.uuid4().hex[:4]}.yml"
        path.write_text(yaml.safe_dump(config))
        os.environ["RUNNER_CONFIG"] = str(path)
        self.settings = load_settings()
        self.store = JobStore.from_settings(self.settings)
        self.worker = self.start_worker()

    def start_worker(self) -> subprocess.Popen:
        log_path = self.workdir / f"worker-{uuid.uuid4().hex[:4]}.log"
        proc = subprocess.Popen([str(Path(sys.executable).with_name("runner")), "worker"], stdout=log_path.open("w"),
                                stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
        for _ in range(300):
            if " ready." in log_path.read_text():
                return proc
            time.sleep(0.1)
        raise SystemExit(f"worker not ready: {log_path.read_text()[-2000:]}")

    def close(self) -> None:
        if self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            self.worker.wait(60)
        ns = self.store.ns
        drop_namespace(self.store.r, ns)

    def submit(self, sha: str) -> str:
        request = BuildRequest(tags=["127.0.0.1:5000/bench/statuses:1"], executor="fake",
                               source={"host": "github", "repository": "acme/app", "sha": sha})
        writer = self.store.context_writer(request.id, 10**6)
        writer.write(empty_context())
        writer.close()
        submit(request, self.settings, self.store, STATUS_TOKEN)
        return request.id

    def wait_states(self, sha: str, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.host.states(sha)) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.host.states(sha)} for {sha[:7]}")
            time.sleep(0.002)


def sequential(bench: Bench, jobs: int) -> dict[str, list[float]]:
    queued, final = [], []
    for _ in range(jobs):
        sha = new_sha()
        start = time.monotonic()
        job_id = bench.submit(sha)
        bench.wait_states(sha, 3)
        posts = {p.body["description"].split(" ")[0]: p for p in bench.host.posts if sha in p.path}
        record = bench.store.get(job_id)
        queued.append(posts["queued"].at - start)
        final.append(posts["built"].wall - record.finished_at.timestamp())
    return {"queued → host": queued, "finished → host": final}


def burst(bench: Bench, jobs: int) -> tuple[float, int, int]:
    shas = [new_sha() for _ in range(jobs)]
    start = time.monotonic()
    for sha in shas:
        bench.submit(sha)
    for sha in shas:
        bench.wait_states(sha, 3)
    took = time.monotonic() - start
    wrong = sum(1 for sha in shas if bench.host.states(sha) != ["pending", "pending", "success"])
    posted = sum(1 for p in bench.host.posts if any(sha in p.path for sha in shas[:50]))
    return took, wrong, posted


def killed(bench: Bench) -> float:
    """Seconds from kill -9 (mid-request on the success status) to the delivery's end."""
    bench.host.delay = 2.0
    sha = new_sha()
    job_id = bench.submit(sha)
    while "success" not in bench.host.states(sha):
        time.sleep(0.01)
    os.killpg(bench.worker.pid, signal.SIGKILL)
    bench.worker.wait(10)
    killed_at = time.monotonic()
    bench.host.delay = 0.0
    bench.worker = bench.start_worker()
    outbox = Outbox.for_store(bench.store)
    while outbox.get(f"{job_id}:status:finished").get("state") == "open":
        time.sleep(0.02)
    took = time.monotonic() - killed_at
    posts = [p.body["state"] for p in bench.host.posts if sha in p.path]
    if posts != ["pending", "pending", "success"]:
        raise SystemExit(f"after kill -9 the host got {posts}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--kill-trials", type=int, default=2)
    args = parser.parse_args()
    host = FakeHost("github", TOKEN, {"acme/app"})
    server = serve(host)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), host, concurrency=2)
        try:
            for name, values in sequential(bench, args.jobs).items():
                rows.append((f"{name} ({args.jobs} jobs one by one)",
                             f"p50 {pct(values, 0.5) * 1000:.1f} ms, p99 {pct(values, 0.99) * 1000:.1f} ms"))
            took, wrong, _ = burst(bench, args.burst)
            rows.append((f"{args.burst} jobs at once: {args.burst * 3} statuses delivered",
                         f"{took:.1f} s ({args.burst * 3 / took:.0f} statuses/s), {wrong} out of order or missing"))
        finally:
            bench.close()
        if args.kill_trials:
            bench = Bench(Path(tmp), host, concurrency=2)  # the defaults: timeout 10 s, so the lock lapses after 25 s
            try:
                times = [killed(bench) for _ in range(args.kill_trials)]
                rows.append((f"kill -9 mid-request → success delivered, defaults ({args.kill_trials} trials)",
                             f"{min(times):.1f}–{max(times):.1f} s, each state posted once"))
            finally:
                bench.close()
    server.shutdown()
    width = max(len(r[0]) for r in rows)
    print(f"{'what'.ljust(width)}  figure")
    for what, figure in rows:
        print(f"{what.ljust(width)}  {figure}")


if __name__ == "__main__":
    main()
