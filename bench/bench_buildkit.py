"""Two tables for the socket executor's BuildKit path.

1. Fixed cost (`--fixed-rounds`): a cached 1 MB build + push through the whole pipeline
   (context spooled from Redis, build, push, digest confirmed, records and log written),
   record created -> finished, against the raw BuildKit CLI: `DOCKER_BUILDKIT=1
   /usr/bin/docker build && /usr/bin/docker push` (Debian's docker.io CLI). Target: <= 50 ms
   over raw. Where our time goes, per phase (timers around our methods; measurement only).
   Queue pickup is not included (the pipeline is called directly): bench_spine measures it.
2. BuildKit vs classic (`--rounds`): a multi-stage build whose two stages do not depend on
   each other (BuildKit runs them at once; classic one after the other). Uncached
   (--no-cache) and cached (same context again); builds only (push off).

Run:  .venv/bin/python bench/bench_buildkit.py [--fixed-rounds 15] [--rounds 3] [--work 2] [--only fixed|builders]
Needs the services (scripts/services.sh). Removes what it built. Prints tables. Not part of
the test suite.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BASE, REGISTRY, dev_env, drop_namespace, load_line, run_job  # noqa: E402
from bench.phases import Phases  # noqa: E402
from executors.engine import buildkit, buildkit_session, client, push  # noqa: E402
from executors.engine.socket import SocketExecutor  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.context.build_context import BuildContext  # noqa: E402
from runner.context.pack import write_tar  # noqa: E402
from runner.core import registry_client  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.sources import upload  # noqa: E402
from runner.store import jobstore  # noqa: E402
from runner.worker.pipeline import Pipeline  # noqa: E402
from runner.worker.worker import Worker  # noqa: E402
from tests.support import executor_for  # noqa: E402

DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI: BuildKit with DOCKER_BUILDKIT=1
FIXED_TARGET_MS = 50


def dockerfile(work: int) -> str:
    stage = ("RUN sleep {w} && dd if=/dev/urandom of=/{n}.bin bs=1M count=16 2>/dev/null "
             "&& for i in $(seq 1 30000); do echo $i; done > /{n}.txt")
    return (f"FROM {BASE} AS left\n{stage.format(w=work, n='left')}\n"
            f"FROM {BASE} AS right\n{stage.format(w=work, n='right')}\n"
            f"FROM {BASE}\nCOPY --from=left /left.bin /left.txt /out/\nCOPY --from=right /right.bin /right.txt /out/\n"
            "COPY app.txt /app.txt\n")


class Quiet:
    def line(self, text: str) -> None:
        pass

    def write(self, chunk: str) -> None:
        pass


def build_once(executor: SocketExecutor, context: BuildContext, builder: str, no_cache: bool) -> float:
    job = BuildRequest(tags=[f"127.0.0.1:5000/bench/buildkit:{uuid.uuid4().hex[:8]}"], builder=builder,
                       no_cache=no_cache, push=False)
    started = time.perf_counter()
    try:
        executor.run(job, context, Quiet(), CancelToken())
        return time.perf_counter() - started
    finally:
        executor.cleanup(job.id)


# -- 1. fixed cost against the raw BuildKit CLI ------------------------------------------------
PHASES = [  # (owner, method, phase): nested phases are shown indented under the one they are in
    (upload.UploadSource, "prepare", "context spooled from Redis"),
    (buildkit.BuildKitBuilder, "build", "build (POST /build, until the image id)"),
    (buildkit_session.BuildSession, "start", "  session set-up"),
    (client.EngineClient, "post_build", "  context streamed, until the engine answers"),
    (buildkit._Follower, "feed", "  progress decoded + log written"),
    (push.Pusher, "_push_once", "push (engine)"),
    (push.Pusher, "check_pushed", "  pushed image checked (GET manifest)"),
    (push.Pusher, "untag", "  local tag removed"),
    (registry_client.Registries, "confirm_digest", "digest confirmed (HEAD)"),
    (jobstore.JobStore, "update", "record writes"),
    (jobstore.JobStore, "append_log", "log writes (all threads)"),
    (SocketExecutor, "cleanup", "clean-up (after the record: not in the total)"),
]


def raw_buildkit(context: Path, tag: str) -> float:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    started = time.perf_counter()
    subprocess.run([DOCKER, "build", "-q", "-t", tag, str(context)], check=True, capture_output=True, env=env)
    subprocess.run([DOCKER, "push", "-q", tag], check=True, capture_output=True)
    took = time.perf_counter() - started
    subprocess.run([DOCKER, "rmi", "--no-prune", tag], capture_output=True)
    return took


def fixed_cost(rounds: int) -> None:
    dev = dev_env()
    with tempfile.TemporaryDirectory(prefix="bench-fixed-") as tmp:
        work = Path(tmp)
        cfg = Settings(redis_url=dev["RUNNER_DEV_REDIS_URL"], default_executor="socket",
                       registries=[{"host": REGISTRY, "username": dev["RUNNER_DEV_REGISTRY_USER"],
                                    "password": dev["RUNNER_DEV_REGISTRY_PASSWORD"]}],
                       executors={"socket": {"enabled": True}},
                       worker={"namespace": f"bench-{uuid.uuid4().hex[:6]}", "workspace": str(work / "work")})
        store = jobstore.JobStore.from_settings(cfg)
        pipeline = Pipeline(Worker(cfg, worker_id="bench:1", store=store))
        context = work / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data.bin /data.bin\nRUN wc -c /data.bin\n")
        (context / "data.bin").write_bytes(os.urandom(1024 * 1024))

        def ours() -> float:
            job = BuildRequest(tags=[f"{REGISTRY}/bench/fixed-ours:{uuid.uuid4().hex[:8]}"], executor="socket")
            return run_job(cfg, store, pipeline, context, job)

        phases = Phases()
        try:
            ours(), raw_buildkit(context, f"{REGISTRY}/bench/fixed-raw:warm")  # warm: cache, blobs, connections
            for owner, method, phase in PHASES:
                phases.wrap(owner, method, phase)
            phases.take()
            times: dict[str, list[float]] = {"raw": [], "ours": []}
            spent: list[dict[str, float]] = []
            for _ in range(rounds):
                times["raw"].append(raw_buildkit(context, f"{REGISTRY}/bench/fixed-raw:x"))
                times["ours"].append(ours())
                spent.append(phases.take())
        finally:
            drop_namespace(store.r, store.ns)
    raw, ours_ = statistics.median(times["raw"]), statistics.median(times["ours"])
    over = (ours_ - raw) * 1000
    print(f"\nsocket executor (BuildKit), cached 1 MB build + push: record created -> finished vs raw "
          f"`DOCKER_BUILDKIT=1 {DOCKER} build && docker push`; median of {rounds}")
    print(f"| raw BuildKit CLI | runner | over raw | target |\n|---|---|---|---|\n"
          f"| {raw * 1000:.0f} ms | {ours_ * 1000:.0f} ms | {over:+.0f} ms | <= {FIXED_TARGET_MS} ms "
          f"{'ok' if over <= FIXED_TARGET_MS else 'MISSED'} |")
    print("\nwhere the runner's time goes (median per job; timers around our own methods):")
    for _, _, phase in PHASES:
        print(f"  {phase:<52} {statistics.median(s.get(phase, 0.0) for s in spent) * 1000:6.1f} ms")


# -- 2. BuildKit vs classic ----------------------------------------------------------------------
def builders(rounds: int, work_seconds: int) -> None:
    settings = Settings(executors={"socket": {"enabled": True}})
    executor = executor_for(settings, "socket")
    with tempfile.TemporaryDirectory(prefix="bench-buildkit-") as tmp:
        root = Path(tmp) / "ctx"
        root.mkdir()
        (root / "Dockerfile").write_text(dockerfile(work_seconds))
        (root / "app.txt").write_text("hello\n")
        tar_path = Path(tmp) / "context.tar"
        with tar_path.open("wb") as sink:
            write_tar(root, sink)
        context = BuildContext(tar_path=tar_path, workspace=Path(tmp))
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for builder in ("buildkit", "classic"):
                results.setdefault((builder, "uncached"), []).append(build_once(executor, context, builder, True))
                results.setdefault((builder, "cached"), []).append(build_once(executor, context, builder, False))
    med = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nmulti-stage build, two independent stages of ~{work_seconds}s each; median of {rounds} rounds (seconds)")
    print(f"{'builder':<10} {'uncached':>10} {'cached':>10}")
    for builder in ("buildkit", "classic"):
        print(f"{builder:<10} {med[(builder, 'uncached')]:>10.2f} {med[(builder, 'cached')]:>10.2f}")
    for mode in ("uncached", "cached"):
        ratio = med[("classic", mode)] / med[("buildkit", mode)]
        print(f"classic / buildkit, {mode}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixed-rounds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=int, default=2, help="seconds each stage sleeps")
    parser.add_argument("--only", choices=["fixed", "builders"])
    args = parser.parse_args()
    if args.only != "builders":
        fixed_cost(args.fixed_rounds)
    if args.only != "fixed":
        builders(args.rounds, args.work)
    print(f"\n{load_line()}")


if __name__ == "__main__":
    main()
