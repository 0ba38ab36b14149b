"""A job's end and its queued moment in Redis: one transaction each (JobStore.end,
JobStore.submit), against the separate calls they replaced (the baseline, made of the same
store's calls as the previous code made them), in the same run on the same Redis.

Run:  .venv/bin/python bench/bench_job_end.py [--jobs 2000]
Needs Redis (scripts/services.sh). Its own namespace, removed afterwards. Prints a table: time
per job (median, p99) and round trips to Redis per job (requests the client sent). Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace, load_line  # noqa: E402
from runner.core.jobs import BuildRequest, JobRecord, PushedImage, Status  # noqa: E402
from runner.store import jobstate  # noqa: E402
from runner.store.buildqueue import send_build  # noqa: E402
from runner.store.jobstore import END_FIELD, JobStore  # noqa: E402

WORKER = "bench-worker"
IMAGE = PushedImage(ref="127.0.0.1:5000/bench/end:1", digest="sha256:" + "0" * 64)
SOURCE = {"host": "github", "repository": "acme/app", "sha": "a" * 40}


class Trips:
    """Counts the requests redis-py sends (a pipeline's commands go as one)."""

    count = 0

    def __enter__(self) -> Trips:
        self.real = redis.connection.AbstractConnection.send_packed_command

        def counted(connection, command, check_health=True):
            Trips.count += 1
            return self.real(connection, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counted
        return self

    def __exit__(self, *exc) -> None:
        redis.connection.AbstractConnection.send_packed_command = self.real


def request() -> BuildRequest:
    return BuildRequest(tags=[IMAGE.ref], source=SOURCE, callback_url="https://ci.example/cb",
                        build_args={"TOKEN": "s3cret-value"}, secret_build_args=["TOKEN"])


def running(store: JobStore, queue: str) -> str:
    req = request()
    store.submit(jobstate.admitted(req.redacted(), "fake", queue, True), req.secret_arg_values())
    store.move(req.id, partial(jobstate.claim, worker=WORKER))
    return req.id


def end_now(store: JobStore, job_id: str) -> None:
    change = partial(jobstate.finish, worker=WORKER, status=Status.succeeded, images=[IMAGE], error=None)
    store.end(job_id, change, f"[runner] succeeded: {IMAGE.ref}@{IMAGE.digest}")


def end_before(store: JobStore, job_id: str) -> None:
    """The previous code's end: the record, the closing line, end_job's pipeline, then the
    listener's two outbox adds, each its own call."""
    change = partial(jobstate.finish, worker=WORKER, status=Status.succeeded, images=[IMAGE], error=None)
    store.update(job_id, change)
    store.append_log(job_id, [f"[runner] succeeded: {IMAGE.ref}@{IMAGE.digest}"])
    with store.r.pipeline(transaction=False) as pipe:
        pipe.xadd(store.log_key(job_id), {END_FIELD: "succeeded"})
        pipe.expire(store.log_key(job_id), store.retention.finished_seconds)
        pipe.delete(f"{store.ns}:ctx:{job_id}", f"{store.ns}:secrets:{job_id}")
        pipe.execute()
    store.outbox.add(job_id, "status", "finished", "finished")
    store.outbox.add(job_id, "callback", "finished", "finished")


def queued_now(store: JobStore, queue: str) -> None:
    req = request()
    store.submit(jobstate.admitted(req.redacted(), "fake", queue, True), req.secret_arg_values())


def queued_before(store: JobStore, queue: str) -> None:
    """The previous code's queued moment: create, save the secret values, owe "queued", send."""
    req = request()
    record = JobRecord(id=req.id, request=req.redacted(), executor="fake", queue=queue, statuses=True)
    store.create(record)
    store.save_secrets(req.id, req.secret_arg_values())
    store.outbox.add(req.id, "status", "queued", "queued")
    send_build(store.r, record.request.model_dump(mode="json"), queue)


def measure(jobs: int, prepare: Callable[[], object], step: Callable[[object], None]) -> tuple[float, float, float]:
    """(median ms, p99 ms, round trips) per job: `step` on what `prepare` made, one job at a time."""
    prepared = [prepare() for _ in range(jobs)]
    times = []
    with Trips():
        before = Trips.count
        for item in prepared:
            started = time.perf_counter()
            step(item)
            times.append((time.perf_counter() - started) * 1000)
        trips = (Trips.count - before) / jobs
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], trips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    namespace = f"bench-end-{uuid.uuid4().hex[:8]}"
    store = JobStore(dev_env()["RUNNER_DEV_REDIS_URL"], namespace)
    queue = f"{namespace}.fake"
    try:
        rows = [
            ("end: JobStore.end (one transaction)", measure(args.jobs, lambda: running(store, queue),
                                                             lambda job_id: end_now(store, job_id))),
            ("end: previous calls (baseline)", measure(args.jobs, lambda: running(store, queue),
                                                       lambda job_id: end_before(store, job_id))),
            ("queued: JobStore.submit (one transaction)", measure(args.jobs, lambda: None,
                                                                  lambda _: queued_now(store, queue))),
            ("queued: previous calls (baseline)", measure(args.jobs, lambda: None, lambda _: queued_before(store, queue))),
        ]
    finally:
        drop_namespace(store.r, namespace)
    print(f"{args.jobs} jobs each, one at a time, Redis at {store.target.url.rpartition('@')[2]}")
    print(f"{'what':<45} {'median ms':>10} {'p99 ms':>8} {'round trips':>12}")
    for name, (median, p99, trips) in rows:
        print(f"{name:<45} {median:>10.3f} {p99:>8.3f} {trips:>12.1f}")
    print(load_line())


if __name__ == "__main__":
    main()
