"""What reusing an image saves (runner.worker.reuse), per executor: a job whose inputs equal a
pushed job's, from submission to its tag pushed, against the same job asked to build
(`reuse: false`: a full build, every step from the layer cache), in the same run, rounds
alternating.

Each job goes through the in-process pipeline (bench.common.run_job: the context uploaded,
the record created, Pipeline.run) and is timed from its record: submitted -> finished (the
tag pushed and confirmed) and running -> finished. Medians (p50) of N rounds; every reused job
is checked to have been reused (`reused_from`), every build to have built.
Issue target: a reused tag in <= 150 ms, <= 200 ms from running to finished.

Run:  .venv/bin/python bench/bench_reuse.py [--rounds 20] [--executors socket,buildah]
Needs the services (scripts/services.sh). Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_tags import STORAGE, settings  # noqa: E402
from bench.common import dev_env, drop_namespace, load_line, run_job  # noqa: E402
from runner.core.jobs import BuildRequest, seconds_between  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.pipeline import Pipeline  # noqa: E402
from runner.worker.worker import Worker  # noqa: E402

TARGET_MS = 150.0


def one(cfg, store, pipeline, context: Path, executor: str, registry: str, reuse: bool) -> tuple[float, float, str | None]:
    job = BuildRequest(executor=executor, tags=[f"{registry}/bench-reuse/{executor}:{uuid.uuid4().hex[:10]}"], reuse=reuse)
    total = run_job(cfg, store, pipeline, context, job)
    record = store.get(job.id)
    assert record is not None
    running = seconds_between(record.started_at, record.finished_at) or 0.0
    return total, running, record.reused_from


def bench(name: str, rounds: int, env: dict[str, str], work: Path) -> dict[str, float]:
    cfg, registry, base = settings(env, name, work)
    worker = Worker(cfg, names=[name], worker_id=f"bench-reuse-{name}")
    pipeline, store = Pipeline(worker), JobStore.from_settings(cfg)
    context = work / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY app.txt /app.txt\nRUN echo {uuid.uuid4().hex} > /step\n")
    (context / "app.txt").write_text(uuid.uuid4().hex)
    try:
        one(cfg, store, pipeline, context, name, registry, reuse=False)  # the first build (and the layer cache)
        reused, built, reused_running, built_running = [], [], [], []
        for _ in range(rounds):
            total, running, origin = one(cfg, store, pipeline, context, name, registry, reuse=True)
            if origin is None:
                raise SystemExit(f"{name}: a job with the same inputs was not reused")
            reused.append(total)
            reused_running.append(running)
            total, running, origin = one(cfg, store, pipeline, context, name, registry, reuse=False)
            if origin is not None:
                raise SystemExit(f"{name}: a job with reuse: false was reused")
            built.append(total)
            built_running.append(running)
        return {"reused": statistics.median(reused), "built": statistics.median(built),
                "reused_running": statistics.median(reused_running), "built_running": statistics.median(built_running)}
    finally:
        drop_namespace(store.r, cfg.worker.namespace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--executors", default="socket,buildah")
    args = parser.parse_args()
    env = dev_env()
    rows = []
    for name in args.executors.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-reuse-{name}-") as tmp:
            try:
                rows.append((name, bench(name, args.rounds, env, Path(tmp))))
            finally:
                if name == "buildah":  # the storage bench_tags' settings give buildah: its images too
                    subprocess.run(["buildah", "--root", str(STORAGE / "root"), "--runroot", str(STORAGE / "run"), "rmi",
                                    "--all", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    shutil.rmtree(STORAGE, ignore_errors=True)
    print(f"\nsubmitted -> tag pushed, p50 of {args.rounds} (target for a reused job: <= {TARGET_MS:.0f} ms)\n")
    print(f"{'executor':<10} {'reused':>10} {'cached build':>13} {'saved':>8}   {'running->finished: reused':>26} {'build':>8}")
    for name, r in rows:
        print(f"{name:<10} {r['reused'] * 1000:>8.0f}ms {r['built'] * 1000:>11.0f}ms {r['built'] / r['reused']:>7.1f}x"
              f"   {r['reused_running'] * 1000:>24.0f}ms {r['built_running'] * 1000:>6.0f}ms")
    print("\n" + load_line())


if __name__ == "__main__":
    main()
