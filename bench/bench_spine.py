"""Spine benchmark: pickup latency, and per-job overhead against raw `docker build && docker push`.

Run:  .venv/bin/python bench/bench_spine.py [--pickup-jobs 200] [--rounds 5] [--pickup-only] [--pickup-executor fake]
Needs the services (scripts/services.sh). Starts its own worker in its own namespace.
Pickup is measured from the record's creation (the submitter's clock, before the message
is sent) to its `started_at` (the worker's clock, when the record says running): same host.
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace  # noqa: E402
from runner.config.settings import load_settings  # noqa: E402
from runner.context.pack import write_tar  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.entry.submission import submit  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.admission import QUEUE  # noqa: E402
from tests.plugins import use_fake  # noqa: E402

use_fake()  # the fake executor is a plugin of the tests, not of the runner

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/base/busybox:1"
MULTI_STEP = f"""FROM {BASE}
ARG SALT=0
RUN echo $SALT > /salt && dd if=/dev/urandom of=/blob1 bs=1M count=8 2>/dev/null
RUN sleep 1 && dd if=/dev/urandom of=/blob2 bs=1M count=8 2>/dev/null
RUN for i in $(seq 1 20000); do echo $i; done > /numbers
COPY . /src
RUN sha1sum /blob1 /blob2 > /sums 2>/dev/null || true
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, workdir: Path, builder: str, executors: set[str]):
        self.workdir = workdir
        env_file = Path("/var/tmp/runner-dev/env")
        dev = dict(line.split("=", 1) for line in env_file.read_text().split())
        self.config = {
            "redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": "socket", "builder": builder,
            "registries": [{"host": REGISTRY, "username": dev["RUNNER_DEV_REGISTRY_USER"],
                            "password": dev["RUNNER_DEV_REGISTRY_PASSWORD"]}],
            "executors": {name: {"enabled": True} for name in executors},
            "worker": {"namespace": f"bench-{uuid.uuid4().hex[:6]}", "workspace": str(workdir / "work"), "concurrency": 1},
        }
        path = workdir / "bench.yml"
        path.write_text(yaml.safe_dump(self.config))
        os.environ["RUNNER_CONFIG"] = str(path)
        self.settings = load_settings()
        self.store = JobStore.from_settings(self.settings)
        self.log = (workdir / "worker.log").open("w")
        self.worker = subprocess.Popen([str(Path(sys.executable).with_name("runner")), "worker", "--concurrency", "1"],
                                       stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())
        for _ in range(300):
            if " ready." in (workdir / "worker.log").read_text():
                break
            time.sleep(0.1)

    def close(self) -> None:
        self.worker.terminate()
        self.worker.wait(30)
        ns = self.store.ns
        drop_namespace(self.store.r, ns)

    def run_job(self, context: Path, tag: str, **fields) -> tuple[float, float]:
        """Submit like the CLI does (upload + record + message); return (pickup, total) seconds."""
        request = BuildRequest(tags=[tag], **fields)
        t0 = time.perf_counter()
        writer = self.store.context_writer(request.id, self.settings.limits.max_context_bytes)
        write_tar(context, writer)
        writer.close()
        record, _ = submit(request, self.settings, self.store, QUEUE)
        while True:
            record = self.store.get(request.id)
            if record.finished:
                break
            time.sleep(0.002)
        total = time.perf_counter() - t0
        if record.status.value != "succeeded":
            raise SystemExit(f"bench job failed: {record.error}")
        # the result is recorded before clean-up (image deletion); the worker is idle again
        # only when it drops the job's lease, and pickup is measured against an idle worker
        while self.store.lease_holder(request.id) is not None:
            time.sleep(0.002)
        return (record.started_at - record.created_at).total_seconds(), total


BARE_TASKS = """
import os, time
import redis
from celery import Celery

app = Celery("bare", broker=os.environ["BARE_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
clock = redis.Redis.from_url(os.environ["BARE_BROKER"])


@app.task(name="bare.started")
def started(key):
    clock.set(key, repr(time.time()), ex=600)
"""


class BareCelery:
    """The floor: a do-nothing Celery task on a threads worker like ours (acks late, prefetch 1),
    timed from before send_task to the task's first line."""

    def __init__(self, workdir: Path, url: str, queue: str):
        (workdir / "bare_tasks.py").write_text(BARE_TASKS)
        self.queue, self.log_path = queue, workdir / "bare.log"
        env = {**os.environ, "BARE_BROKER": url, "PYTHONPATH": str(workdir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bare_tasks", "worker", "-P", "threads", "-c", "1",
                                      "-Q", queue, "--without-heartbeat", "--without-gossip", "--without-mingle"],
                                     cwd=workdir, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        for _ in range(300):
            if " ready." in self.log_path.read_text():
                break
            time.sleep(0.1)
        from celery import Celery

        self.app = Celery("bare-sender", broker=url)
        self.clock = redis.Redis.from_url(url)

    def pickup(self, n: int) -> float:
        key = f"{self.queue}:started:{n}"
        t0 = time.time()
        self.app.send_task("bare.started", args=[key], queue=self.queue)
        while (value := self.clock.get(key)) is None:
            time.sleep(0.002)
        time.sleep(0.01)  # an idle worker, as for ours
        return float(value) - t0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.clock.delete(self.queue, *self.clock.keys(f"{self.queue}:*"), *self.clock.keys(f"_kombu.binding*.{self.queue}"))


def raw_build_push(context: Path, tag: str, no_cache: bool) -> float:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    t0 = time.perf_counter()
    subprocess.run(["docker", "build", "-q", *(["--no-cache"] if no_cache else []), "-t", tag, str(context)],
                   check=True, capture_output=True, env=env)
    subprocess.run(["docker", "push", "-q", tag], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    subprocess.run(["docker", "rmi", "--no-prune", tag], capture_output=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pickup-jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--builder", default="classic", help="builder for our executor (raw docker uses classic)")
    parser.add_argument("--pickup-executor", default="socket", choices=["socket", "fake"],
                        help="executor of the pickup jobs (fake: no build, only the runner's own path)")
    parser.add_argument("--pickup-only", action="store_true", help="skip the per-job cost rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        small = workdir / "small"
        small.mkdir()
        (small / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data.bin /data.bin\nRUN wc -c /data.bin\n")
        (small / "data.bin").write_bytes(os.urandom(1024 * 1024))
        multi = workdir / "multi"
        multi.mkdir()
        (multi / "Dockerfile").write_text(MULTI_STEP)
        (multi / "data.bin").write_bytes(os.urandom(1024 * 1024))

        bench = Bench(workdir, args.builder, {"socket", args.pickup_executor})
        bare = BareCelery(workdir, bench.settings.redis_url.get_secret_value(), f"{bench.settings.worker.namespace}-bare")
        rows, pickups, floor = [], [], []
        try:
            for block in range(0, args.pickup_jobs, 20):  # alternate with the floor, so both see the same load
                for i in range(block, min(block + 20, args.pickup_jobs)):
                    pickups.append(bench.run_job(small, f"{REGISTRY}/bench/pickup:{i % 5}", executor=args.pickup_executor)[0])
                    floor.append(bare.pickup(i))
            for label, ctx, no_cache in () if args.pickup_only else (
                    ("cached 1 MB context", small, False), ("uncached multi-step", multi, True)):
                ours, raw = [], []
                raw_build_push(ctx, f"{REGISTRY}/bench/raw:warm", False)
                bench.run_job(ctx, f"{REGISTRY}/bench/ours:warm")
                for _ in range(args.rounds):
                    raw.append(raw_build_push(ctx, f"{REGISTRY}/bench/raw:x", no_cache))
                    ours.append(bench.run_job(ctx, f"{REGISTRY}/bench/ours:x", no_cache=no_cache)[1])
                rows.append((label, statistics.median(raw), statistics.median(ours)))
        finally:
            bench.close()
            bare.close()

    print(f"\nPickup latency (submit -> running, idle worker), {len(pickups)} {args.pickup_executor} jobs; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| what | p50 | p99 | max | target |\n|---|---|---|---|---|")
    print(f"| runner: record created -> record running | {pct(pickups, .5) * 1000:.1f} ms | {pct(pickups, .99) * 1000:.1f} ms "
          f"| {max(pickups) * 1000:.1f} ms | p50 <= 5 ms, p99 <= 15 ms |")
    print(f"| bare Celery task (same run, interleaved) | {pct(floor, .5) * 1000:.1f} ms | {pct(floor, .99) * 1000:.1f} ms "
          f"| {max(floor) * 1000:.1f} ms | the floor |")
    if not rows:
        return
    print(f"\nPer-job cost vs raw `docker build && docker push` (median of {args.rounds}; our builder: {args.builder})")
    print("| case | raw | runner | overhead | overhead % |\n|---|---|---|---|---|")
    for label, raw, ours in rows:
        print(f"| {label} | {raw * 1000:.0f} ms | {ours * 1000:.0f} ms | {(ours - raw) * 1000:+.0f} ms | {(ours / raw - 1) * 100:+.1f} % |")


if __name__ == "__main__":
    main()
