"""Two-platform images (linux/amd64 + linux/arm64, the arm64 build emulated by qemu-user-static)
built and pushed by our executors, against the raw tools doing the same:

- buildah: our job (the in-process pipeline: spool, unpack, `buildah build --platform a,b
  --manifest` and `buildah manifest push --all` from one process start, the index's platforms
  read back) against raw `buildah build --platform a,b --manifest L` + `buildah manifest push
  --all L`. Target: ours <= 1.1x raw.
- socket (the Engine API's BuildKit; dind and sysbox take the same path inside their sidecar):
  our job (both platforms built at once, each image pushed, the OCI index put by the runner)
  against two raw single-platform `DOCKER_BUILDKIT=1 docker build --platform P` + `docker push`
  runs done one after the other (the way a script without buildx does it). Target: ours <= 0.8x.

The same small Dockerfile each time: FROM the two-platform busybox base, one RUN step that does
a little CPU work (uncached: a new NONCE build arg every round). Ours is timed from the job's
record created to its record finished. The raw docker runs also give the cost of emulation: the
same RUN step built natively (amd64) and emulated (arm64).

Run:  .venv/bin/python bench/bench_multiarch.py [--rounds 3] [--work 300000]
Needs the services (scripts/services.sh) and emulation (its binfmt handlers). Uses its own
buildah storage and Redis namespace and removes both at the end. Prints a table. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
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

from bench.common import PASSWORD, REGISTRY, USER, drop_namespace, load_line, remove_buildah_storage, run_job  # noqa: E402
from executors.daemonless.buildah import resolve_mode  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.host_platforms import host_platforms  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.core.platforms import parse_platform  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.pipeline import Pipeline  # noqa: E402
from runner.worker.worker import Worker  # noqa: E402

STORAGE = Path("/var/tmp/runner-bench-multiarch")
MULTI_BASE = f"{REGISTRY}/base/busybox-multi:1"
PLATFORMS = ["linux/amd64", "linux/arm64"]
#: Debian's docker CLI: it builds with BuildKit when DOCKER_BUILDKIT=1 (ENVIRONMENT.md)
DOCKER = "/usr/bin/docker"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def dockerfile(work: int) -> str:
    return (f"FROM {MULTI_BASE}\nARG TARGETARCH\nARG NONCE\n"
            f"RUN echo $NONCE $TARGETARCH > /nonce && busybox seq 1 {work} | busybox md5sum > /sum\n")


def settings(work: Path, namespace: str) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:6379/0",
        registries=[{"host": REGISTRY, "username": USER, "password": PASSWORD}],
        executors={"buildah": {"enabled": True, "storage_root": str(STORAGE / "root"), "run_root": str(STORAGE / "run")},
                   "socket": {"enabled": True}},
        worker={"namespace": namespace, "workspace": str(work / "work")},
        default_executor="buildah",
    )


def ours(cfg: Settings, store: JobStore, pipeline: Pipeline, context: Path, executor: str) -> float:
    job = BuildRequest(tags=[f"{REGISTRY}/bench/multiarch-{executor}:{uuid.uuid4().hex[:8]}"], executor=executor,
                       platforms=PLATFORMS, build_args={"NONCE": uuid.uuid4().hex})
    return run_job(cfg, store, pipeline, context, job)


def run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def raw_buildah(cfg: Settings, context: Path, private: Path) -> float:
    """`buildah build --platform a,b --manifest L` + `buildah manifest push --all L`."""
    mode = resolve_mode(cfg.executors["buildah"])
    buildah = ["buildah", *mode.global_args(cfg.executors["buildah"])]
    ref, manifest = f"{REGISTRY}/bench/multiarch-raw:{uuid.uuid4().hex[:8]}", f"localhost/bench-multiarch:{uuid.uuid4().hex[:8]}"
    env = {**ENV, "CONTAINERS_REGISTRIES_CONF": str(private / "registries.conf")}
    auth = str(private / "auth.json")
    took = run([*buildah, "build", "--layers", "--authfile", auth, "--platform", ",".join(PLATFORMS), "--manifest", manifest,
                "--build-arg", f"NONCE={uuid.uuid4().hex}", str(context)], env)
    took += run([*buildah, "manifest", "push", "--all", "--tls-verify=false", "--authfile", auth, manifest, f"docker://{ref}"], env)
    subprocess.run([*buildah, "manifest", "rm", manifest], env=env, capture_output=True)
    return took


def raw_docker(context: Path) -> dict[str, float]:
    """Two single-platform `DOCKER_BUILDKIT=1 docker build --platform P` + `docker push`, one
    after the other; each platform's build apart, and its RUN step alone as BuildKit timed it
    (native and emulated)."""
    nonce, times = uuid.uuid4().hex, {}
    for platform in PLATFORMS:
        ref = f"{REGISTRY}/bench/multiarch-docker:{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        built = subprocess.run([DOCKER, "build", "--progress", "plain", "--platform", platform, "--build-arg", f"NONCE={nonce}",
                                "-t", ref, str(context)], env={**ENV, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True,
                               check=True)
        times[f"build {platform}"] = time.perf_counter() - started
        step = re.search(r"^#(\d+) \[2/2\] RUN", built.stderr, re.M)
        done = step and re.search(rf"^#{step[1]} DONE ([\d.]+)s$", built.stderr, re.M)
        times[f"RUN {platform}"] = float(done[1]) if done else float("nan")
        times[f"push {platform}"] = run([DOCKER, "push", ref], ENV)
        subprocess.run([DOCKER, "rmi", ref], capture_output=True)
    times["total"] = sum(v for k, v in times.items() if not k.startswith("RUN"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each case (ours and raw alternating)")
    parser.add_argument("--work", type=int, default=50_000, help="numbers the RUN step counts and hashes (more: the "
                        "emulated step dominates, and two cores bound what building at once can save)")
    args = parser.parse_args()
    if why := host_platforms().why_not(parse_platform("linux/arm64")):
        raise SystemExit(f"this host cannot build linux/arm64: {why}")
    work = Path(tempfile.mkdtemp(prefix="bench-multiarch-"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = settings(work, namespace)
    store = JobStore.from_settings(cfg)
    pipeline = Pipeline(Worker(cfg, worker_id="bench:1", store=store))
    context = work / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile(args.work))
    private = work / "private"
    private.mkdir(mode=0o700)
    (private / "auth.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    (private / "registries.conf").write_text(f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
    try:
        for executor in ("buildah", "socket"):  # warm up: base image pulled, emulator loaded
            ours(cfg, store, pipeline, context, executor)
        raw_buildah(cfg, context, private)
        raw_docker(context)
        buildah = {"ours": [], "raw": []}
        socket: dict[str, list[float]] = {"ours": [], "raw": []}
        parts: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            buildah["raw"].append(raw_buildah(cfg, context, private))
            buildah["ours"].append(ours(cfg, store, pipeline, context, "buildah"))
            docker = raw_docker(context)
            socket["raw"].append(docker["total"])
            for key, value in docker.items():
                parts.setdefault(key, []).append(value)
            socket["ours"].append(ours(cfg, store, pipeline, context, "socket"))
        med = {name: {k: statistics.median(v) for k, v in case.items()} for name, case in (("buildah", buildah), ("socket", socket))}
        print(f"\ntwo-platform build + push ({', '.join(PLATFORMS)}; one RUN, emulated for arm64), "
              f"median of {args.rounds} rounds")
        print(f"{'executor':<9}{'baseline':<72}{'baseline':>9}{'ours':>8}{'ratio':>7}  target")
        rows = [("buildah", "buildah build --platform a,b --manifest + manifest push --all", 1.1),
                ("socket", "2 x (DOCKER_BUILDKIT=1 docker build --platform P + docker push), in turn", 0.8)]
        for name, baseline, target in rows:
            m = med[name]
            ratio = m["ours"] / m["raw"]
            print(f"{name:<9}{baseline:<72}{m['raw']:>8.2f}s{m['ours']:>7.2f}s{ratio:>6.2f}x  <= {target}x"
                  f"{'' if ratio <= target else ' (missed)'}")
        med_parts = {k: statistics.median(v) for k, v in parts.items()}
        print(f"\nthe cost of emulation (raw docker build --platform, BuildKit, medians): the RUN step alone "
              f"{med_parts['RUN linux/amd64']:.2f}s native (amd64), {med_parts['RUN linux/arm64']:.2f}s emulated (arm64) "
              f"({med_parts['RUN linux/arm64'] / med_parts['RUN linux/amd64']:.1f}x); the whole build "
              f"{med_parts['build linux/amd64']:.2f}s vs {med_parts['build linux/arm64']:.2f}s; pushes "
              f"{med_parts['push linux/amd64']:.2f}s and {med_parts['push linux/arm64']:.2f}s")
        print(f"{load_line()}")
    finally:
        drop_namespace(store.r, store.ns)
        remove_buildah_storage(STORAGE)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
