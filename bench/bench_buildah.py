"""Our buildah executor end to end (the pipeline: spool the uploaded context, unpack, build,
push, confirm the digest at the registry, record) against raw `buildah build && buildah push`
of the same context with the same storage settings. Ours is timed from the job's record
created to its record finished (queue pickup excluded: bench_spine measures it; clean-up
comes after the record and is shown apart).

Two cases, median of N rounds, ours and raw alternating:
- uncached: a multi-step build with --no-cache (new layers every time, pushed every time);
- cached: the same context again (every step cached; the push finds every blob present).
Targets: ours <= 5 % over raw uncached; <= 50 ms fixed overhead cached. Where our time
goes is shown per phase (timers around our own methods; measurement only).

Run:  .venv/bin/python bench/bench_buildah.py [--rounds 5] [--cached-rounds 15]
Needs the services (scripts/services.sh). Uses its own storage root and Redis namespace and
removes both at the end. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BASE, PASSWORD, REGISTRY, USER, drop_namespace, load_line, run_job  # noqa: E402
from bench.phases import Phases  # noqa: E402
from executors.daemonless import buildah  # noqa: E402
from executors.daemonless.buildah import resolve_mode  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.context import build_context  # noqa: E402
from runner.core import process, registry_client  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.sources import upload  # noqa: E402
from runner.store import jobstore  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.pipeline import Pipeline  # noqa: E402
from runner.worker.worker import Worker  # noqa: E402

STORAGE = Path("/var/tmp/runner-bench-buildah")
DOCKERFILE = f"""FROM {BASE}
RUN dd if=/dev/urandom of=/blob.bin bs=1M count=8 2>/dev/null
RUN for i in $(seq 1 20000); do echo line-$i; done > /lines.txt
COPY app.txt /app.txt
RUN cat /app.txt /lines.txt | wc -l > /count
ENV APP=bench
RUN echo done > /done
"""


def settings(work: Path, namespace: str) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:6379/0",
        registries=[{"host": REGISTRY, "username": USER, "password": PASSWORD}],
        executors={"buildah": {"enabled": True, "storage_root": str(STORAGE / "root"), "run_root": str(STORAGE / "run")}},
        worker={"namespace": namespace, "workspace": str(work / "work")},
        default_executor="buildah",
    )


PHASES = [  # (owner, method, phase)
    (upload.UploadSource, "prepare", "context spooled from Redis"),
    (build_context.BuildContext, "unpack", "context unpacked"),
    (buildah.BuildahExecutor, "_prepare", "job files (incl. unpack)"),
    (process.Tool, "stream", "buildah processes (build + push, one start)"),
    (registry_client.Registries, "confirm_digest", "digest confirmed (HEAD)"),
    (jobstore.JobStore, "update", "record writes"),
    (jobstore.JobStore, "append_log", "log writes (all threads)"),
    (buildah.BuildahExecutor, "cleanup", "clean-up (after the record: not in the total)"),
]
INSIDE = "buildah processes (build + push, one start)"


def spawn_cost(rounds: int = 30) -> tuple[float, float]:
    """Median wall time of running `true` through our Tool (sh) and through subprocess."""
    tool, cancel = process.Tool("true"), CancelToken()
    via_sh, via_subprocess = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        tool.stream([], lambda line: None, cancel)
        via_sh.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(["true"], check=True)
        via_subprocess.append(time.perf_counter() - started)
    return statistics.median(via_sh), statistics.median(via_subprocess)


def ours(cfg: Settings, store: JobStore, pipeline: Pipeline, context: Path, no_cache: bool) -> float:
    job = BuildRequest(tags=[f"{REGISTRY}/bench/buildah-ours:{uuid.uuid4().hex[:8]}"], executor="buildah", no_cache=no_cache)
    return run_job(cfg, store, pipeline, context, job)


def raw(cfg: Settings, context: Path, private: Path, no_cache: bool, by_id: bool) -> float:
    """`buildah build -t NAME && buildah push NAME`, or (by_id) build with --iidfile and push
    the image by id as our executor does (no local name, so buildah commits nothing extra)."""
    mode = resolve_mode(cfg.executors["buildah"])
    buildah = " ".join(["buildah", *mode.global_args(cfg.executors["buildah"])])
    ref = f"{REGISTRY}/bench/buildah-raw:{uuid.uuid4().hex[:8]}"
    auth, iid = private / "auth.json", private / "iid"
    name = f"--iidfile {iid}" if by_id else "-t localhost/bench-raw:latest"  # the name moves from build to build
    source = f"$(cat {iid})" if by_id else "localhost/bench-raw:latest"
    command = (f"{buildah} build --layers --isolation {mode.isolation} --authfile {auth} {'--no-cache' if no_cache else ''} "
               f"{name} {context} && {buildah} push --authfile {auth} {source} docker://{ref}")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "CONTAINERS_REGISTRIES_CONF": str(private / "registries.conf")}
    started = time.perf_counter()
    subprocess.run(["bash", "-c", command], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the uncached case")
    parser.add_argument("--cached-rounds", type=int, default=15, help="rounds of the cached case (short, and noisier)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-buildah-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = settings(work, namespace)
    store = JobStore.from_settings(cfg)
    pipeline = Pipeline(Worker(cfg, worker_id="bench:1", store=store))
    context = work / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "app.txt").write_text("x" * 200_000)
    private = work / "private"
    private.mkdir(mode=0o700)
    (private / "auth.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    (private / "auth.json").chmod(0o600)
    (private / "registries.conf").write_text(f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
    try:
        mode = resolve_mode(cfg.executors["buildah"])
        print(f"{mode.describe()}; ours and raw alternating", file=sys.stderr)
        ours(cfg, store, pipeline, context, no_cache=False)  # warm up: base image, cache
        raw(cfg, context, private, no_cache=False, by_id=False)
        results, spent = {}, {}
        phases = Phases()
        for owner, method, phase in PHASES:
            phases.wrap(owner, method, phase)
        for case, no_cache, rounds in (("uncached multi-step", True, args.rounds), ("cached rebuild", False, args.cached_rounds)):
            times: dict[str, list[float]] = {"raw -t": [], "raw by id": [], "ours": []}
            spent[case] = []
            for _ in range(rounds):
                times["raw -t"].append(raw(cfg, context, private, no_cache, by_id=False))
                times["raw by id"].append(raw(cfg, context, private, no_cache, by_id=True))
                phases.take()
                times["ours"].append(ours(cfg, store, pipeline, context, no_cache))
                spent[case].append({**phases.take(), "total": times["ours"][-1]})
            results[case] = {k: statistics.median(v) for k, v in times.items()}
        via_sh, via_subprocess = spawn_cost()
        print(f"\n{'case':<21}{'raw -t NAME':>13}{'raw by id':>12}{'ours':>10}{'ours - raw -t':>17}{'ours - raw by id':>20}")
        for case, r in results.items():
            cells = [f"{r[k] * 1000:>{w}.0f} ms" for k, w in (("raw -t", 10), ("raw by id", 9), ("ours", 7))]
            diffs = [f"{(r['ours'] - r[k]) * 1000:>+{w}.0f} ms ({(r['ours'] - r[k]) / r[k] * 100:+.1f} %)"
                     for k, w in (("raw -t", 5), ("raw by id", 8))]
            print(f"{case:<21}{''.join(cells)}{diffs[0]:>17}{diffs[1]:>20}")
        print(f"\nmedians of {args.rounds} (uncached) and {args.cached_rounds} (cached) rounds; targets: <= 5 % uncached, <= 50 ms cached")
        print("\nour fixed overhead, measured without buildah's own run-to-run noise (median per job):")
        for case, values in spent.items():
            outside = statistics.median(v["total"] - v.get(INSIDE, 0.0) for v in values)
            print(f"  {case}: time outside the buildah processes (pipeline + executor): {outside * 1000:.0f} ms")
            for _, _, phase in PHASES:
                print(f"    {phase:<50} {statistics.median(v.get(phase, 0.0) for v in values) * 1000:7.1f} ms")
        print(f"  starting a process through sh: {via_sh * 1000:.1f} ms vs subprocess {via_subprocess * 1000:.1f} ms "
              "(one per job: build and push run from one start)")
        print(f"  {load_line()}")
    finally:
        drop_namespace(store.r, store.ns)
        subprocess.run(["buildah", "--root", str(STORAGE / "root"), "--runroot", str(STORAGE / "run"), "rmi", "--all", "--force"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
