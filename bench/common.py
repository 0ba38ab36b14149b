"""What the benchmarks share: one job through the in-process pipeline timed from its record,
a namespace's keys removed afterwards, the load line under each table."""

from __future__ import annotations

import os
from pathlib import Path

from runner.config.settings import Settings
from runner.context.pack import write_tar
from runner.core.jobs import BuildRequest, JobRecord
from runner.store.jobstore import JobStore
from runner.worker.pipeline import Pipeline

#: the dev services (scripts/services.sh): the loopback registry, its htpasswd user, the base image
REGISTRY, USER, PASSWORD = "127.0.0.1:5000", "ci", "ci-password"
BASE = f"{REGISTRY}/base/busybox:1"


def run_job(cfg: Settings, store: JobStore, pipeline: Pipeline, context: Path, job: BuildRequest) -> float:
    """Upload `context` as `job`'s context, run the job in this process and return its record's
    created -> finished time (queue pickup excluded: bench_spine measures it). A failed job
    ends the benchmark with its error."""
    executor = job.executor or cfg.default_executor
    writer = store.context_writer(job.id, cfg.limits.max_context_bytes)
    write_tar(context, writer)
    writer.close()
    store.create(JobRecord(id=job.id, request=job.redacted(), executor=executor, queue=cfg.queue_for(executor)))
    record = pipeline.run(job)
    if record.status.value != "succeeded" or record.finished_at is None:
        raise SystemExit(f"{executor}: the job failed: {record.error}")
    return (record.finished_at - record.created_at).total_seconds()


def dev_env() -> dict[str, str]:
    """What scripts/services.sh wrote about the dev services (RUNNER_DEV_*)."""
    state = Path(os.environ.get("RUNNER_DEV_STATE", "/var/tmp/runner-dev"))
    return dict(line.split("=", 1) for line in (state / "env").read_text().split())


def drop_namespace(r, namespace: str) -> None:
    """Every key a benchmark's namespace left in Redis: records, logs, queues, kombu's bindings."""
    for pattern in (f"{namespace}:*", f"{namespace}.*", f"_kombu.binding.{namespace}.*", f"_kombu.binding_permanent.{namespace}.*"):
        for key in r.scan_iter(pattern, count=1000):
            r.delete(key)


def load_line() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average during the run: {' '.join(load)} on {len(os.sched_getaffinity(0))} CPUs"


def remove_buildah_storage(storage: Path) -> None:
    """A benchmark's own buildah storage (root and run under `storage`), images and all."""
    import shutil
    import subprocess

    subprocess.run(["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "rmi", "--all", "--force"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(storage, ignore_errors=True)
