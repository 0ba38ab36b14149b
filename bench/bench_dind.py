"""dind executor timings: job start -> first build step with a cold sidecar and with the warm
pool; and a cached rebuild of an unchanged context, the whole job (record created -> record
finished, through the pipeline; queue pickup excluded), on dind in each mode against the
socket executor's cached rebuild (build + push, the same Dockerfile):
- a fresh sidecar per job (no cache: every job builds from scratch);
- `repo_cache`: a fresh sidecar per job on the cache key's volume (daemon start on the cache);
- `reuse: per_cache_key`: the sidecar kept from the key's previous job.
Target: dind cached rebuild <= 1.5x socket (reuse). Sidecar removal and cleaning happen after
the record (clean-up), so they are not in the job's time; they are shown apart.

Run:  .venv/bin/python bench/bench_dind.py [--rounds 5]
Needs the services (scripts/services.sh) and the dind image (scripts/dind-image.sh, cached);
uses the capability profile of tests/support/dind.py. Removes everything it made.
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace, load_line, run_job  # noqa: E402
from executors.dind import cache as dind_cache  # noqa: E402
from executors.engine.client import EngineClient  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.pipeline import Pipeline  # noqa: E402
from runner.worker.worker import Worker  # noqa: E402
from tests.support import dind as support  # noqa: E402
from tests.support import executor_for  # noqa: E402

DOCKERFILE = "FROM {base}\nRUN echo compiled > /built.txt\nCOPY app.txt /app.txt\n"


class Clock:
    """A LogSink noting when the first build step appears (the first line from the builder)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.building_at: float | None = None
        self.first_step_at: float | None = None

    def line(self, text: str) -> None:
        now = time.perf_counter()
        if self.building_at is None and text.startswith("[runner] building with"):
            self.building_at = now
        elif self.building_at is not None and self.first_step_at is None and text.strip():
            self.first_step_at = now

    def write(self, chunk: str) -> None:
        for text in chunk.splitlines():
            self.line(text)


def context(tmp: Path, base: str):
    return support.build_context(tmp, DOCKERFILE.format(base=base), {"app.txt": "hello\n"})


def run(executor, ctx, tag: str, cache_key: str | None = None) -> Clock:
    job = BuildRequest(tags=[tag], cache_key=cache_key)
    clock = Clock()
    try:
        executor.run(job, ctx, clock, CancelToken())
    finally:
        executor.cleanup(job.id)
    return clock


def first_step(clock: Clock) -> float:
    return clock.first_step_at - clock.started


MODES = [("socket", "socket"), ("dind fresh", "dind, a fresh sidecar per job"),
         ("dind repo_cache", "dind, repo_cache volume"), ("dind reuse", "dind, reuse: per_cache_key")]


def whole_jobs(env: dict[str, str], sockdir: Path, tmp: Path, cache_key: str, rounds: int,
               results: dict[str, list[float]]) -> None:
    """Cached rebuilds through the pipeline, two modes taking turns each round (so machine load
    hits both alike): record created -> finished, and the clean-up that follows the record."""
    name_reg, loop_reg = env["RUNNER_DEV_REGISTRY_NAME"], env["RUNNER_DEV_REGISTRY"]
    login = {"username": env["RUNNER_DEV_REGISTRY_USER"], "password": env["RUNNER_DEV_REGISTRY_PASSWORD"]}
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    modes = {
        "socket": (Settings(executors={"socket": {"enabled": True}}, registries=[{"host": loop_reg, **login}]),
                   "socket", loop_reg, env["RUNNER_DEV_BASE_IMAGE"]),
        "dind fresh": (support.settings(env, sockdir), "dind", name_reg, support.base_image(env)),
        "dind repo_cache": (support.settings(env, sockdir, repo_cache=True), "dind", name_reg, support.base_image(env)),
        "dind reuse": (support.settings(env, sockdir, reuse="per_cache_key"), "dind", name_reg, support.base_image(env)),
    }
    runs = {}
    for mode, (cfg, executor_name, registry, base) in modes.items():
        cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"namespace": namespace, "workspace": tmp / "work"}),
                                     "default_executor": executor_name})
        src = tmp / f"src-{mode.replace(' ', '-')}"
        src.mkdir()
        (src / "Dockerfile").write_text(DOCKERFILE.format(base=base))
        (src / "app.txt").write_text("hello\n")
        runs[mode] = WholeJob(cfg, executor_name, f"{registry}/bench/dind-whole:{mode.replace(' ', '-')}", src, cache_key)
    try:
        # the pairs take turns; the modes that start and remove a sidecar per job keep the host
        # engine busy after each job, so they do not share rounds with socket
        for pair in (("socket", "dind reuse"), ("dind fresh", "dind repo_cache")):
            for n in range(rounds + 1):  # the first round fills the caches (and the kept sidecar)
                for mode in pair:
                    took, cleanup = runs[mode].once()
                    if n:
                        results.setdefault(f"job {mode}", []).append(took)
                        results.setdefault(f"cleanup {mode}", []).append(cleanup)
    finally:
        for run_ in runs.values():
            run_.close()


class WholeJob:
    """One mode's worker and pipeline; once() runs a job as the worker would."""

    def __init__(self, cfg: Settings, executor_name: str, tag: str, src: Path, cache_key: str):
        self.cfg, self.executor_name, self.tag, self.src, self.cache_key = cfg, executor_name, tag, src, cache_key
        self.store = JobStore.from_settings(cfg)
        self.worker = Worker(cfg, worker_id="bench:1", store=self.store)
        self.pipeline = Pipeline(self.worker)
        executor = self.worker.executors[executor_name]
        original, self.cleanup_took = executor.cleanup, 0.0

        def timed(job_id: str) -> None:
            started = time.perf_counter()
            original(job_id)
            self.cleanup_took = time.perf_counter() - started

        executor.cleanup = timed  # type: ignore[method-assign]

    def once(self) -> tuple[float, float]:
        job = BuildRequest(tags=[self.tag], executor=self.executor_name, cache_key=self.cache_key)
        return run_job(self.cfg, self.store, self.pipeline, self.src, job), self.cleanup_took

    def close(self) -> None:
        self.worker.shutdown()
        drop_namespace(self.store.r, self.store.ns)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = dev_env()
    name_reg = env["RUNNER_DEV_REGISTRY_NAME"]
    sockdir = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dind-"))
    cache_key = f"bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {}
    try:
        dind_ctx = context(tmp / "dind", support.base_image(env))

        cold = executor_for(support.settings(env, sockdir), "dind", "bench")
        for _ in range(args.rounds):
            results.setdefault("cold", []).append(first_step(run(cold, dind_ctx, f"{name_reg}/bench/dind:cold")))

        warm = executor_for(support.settings(env, sockdir, warm_pool=1), "dind", "bench")
        warm.start()
        pool = warm.pool
        assert pool is not None, "start() made no warm pool"
        try:
            for _ in range(args.rounds):
                assert pool.wait_full(60), "the warm pool did not fill"
                results.setdefault("warm", []).append(first_step(run(warm, dind_ctx, f"{name_reg}/bench/dind:warm")))
        finally:
            warm.shutdown()

        whole_jobs(env, sockdir, tmp, cache_key, args.rounds, results)
    finally:
        host = EngineClient.connect("unix:///var/run/docker.sock")
        try:
            host.api.remove_volume(dind_cache.volume_name("dind", cache_key), force=True)
        except Exception:  # noqa: BLE001 - not made if the bench failed early
            pass
        host.close()
        shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {key: statistics.median(values) for key, values in results.items()}
    worst = {key: max(values) for key, values in results.items()}
    print(f"dind executor, median and worst of {args.rounds} rounds")
    print(f"{'measure':<58} {'median':>9} {'worst':>9}  target")
    for label, key, target, ok in (("job start -> first build step, cold sidecar", "cold", "<= 2 s", med["cold"] <= 2),
                                   ("job start -> first build step, warm pool", "warm", "<= 0.2 s", med["warm"] <= 0.2)):
        print(f"{label:<58} {med[key]:>7.3f} s {worst[key]:>7.3f} s  {target}{'  ok' if ok else '  MISSED'}")
    socket_job = med["job socket"]
    for mode, label in MODES:
        key = f"job {mode}"
        ratio = med[key] / socket_job
        target = "" if mode == "socket" else f"{ratio:.2f}x socket" + (" (<= 1.5x)" if mode == "dind reuse" else "")
        mark = ("  ok" if ratio <= 1.5 else "  MISSED") if mode == "dind reuse" else ""
        print(f"{'cached rebuild, whole job: ' + label:<58} {med[key]:>7.3f} s {worst[key]:>7.3f} s  {target}{mark}")
    for mode, label in MODES:
        print(f"{'  its clean-up, after the record: ' + label:<58} {med[f'cleanup {mode}']:>7.3f} s")
    print(f"{load_line()}")


if __name__ == "__main__":
    main()
