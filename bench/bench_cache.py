"""The build cache shared across hosts (`cache_repo`, executors/registry_cache.py): two workers
with separate storage, as on two hosts. Worker A builds a multi-step image and pushes it
with the registry cache; then, per round:
- A rebuilds it (warm: its own layer cache);
- B, with empty storage, rebuilds it with the registry cache (`cache_repo`);
- C, with empty storage and no registry cache, builds it cold.
Reported: each one's build + push time (from the engine or tool being reached to the last
tag confirmed, so a dind sidecar's start is not counted), medians of N rounds, and B against
A and C. Target: B <= 1.5x A on BuildKit and buildah.

Per executor:
- BuildKit (the engine executors' path; measured on dind, where a fresh sidecar is an
  empty engine, i.e. a new host): A keeps its sidecar (`reuse: per_cache_key`); B and C get
  a fresh one per job. The inline cache: the image carries its cache (BUILDKIT_INLINE_CACHE)
  and is tagged in the cache repository; B's build reads it with `cachefrom`.
- buildah: separate storage roots; B's and C's are emptied before each of their jobs.
  `--cache-from` / `--cache-to` on the cache repository.
- img: not installable here.

With --breakdown, also where A's and B's time goes, from their job logs (buildah's): the
start up to the first STEP, each STEP up to the next (STEP 1: the FROM image, checked or
pulled), the last STEP up to its push, the push; medians, B against A.

With --ahead (buildah), also D: a cold worker like B that first fetches the job's base image
and every per-step cache image (those A's log names), the last step's first (it carries every
layer, each fetched once), then the others at once, one `buildah pull` each; then runs the
job, which finds every step in its store. Reported: the fetch, the job, their sum against A,
and that sum less the job's --cache-to exports (buildah pushes a step it found in its store
back to the cache: the bound for a cold worker that fetched ahead and built without
--cache-to).

Run:  .venv/bin/python bench/bench_cache.py [--rounds 5] [--executors dind,buildah] [--breakdown] [--ahead]
Needs the services (scripts/services.sh) and the dind image (scripts/dind-image.sh). Removes
what it made (the registry keeps the pushed images). Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, load_line  # noqa: E402
from executors.daemonless.buildah import STEP_LINE  # noqa: E402 - buildah's step lines, as the executor reads them
from runner.config.settings import Settings  # noqa: E402
from runner.context.pack import write_tar  # noqa: E402
from runner.context.spool import spool_context  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from tests.support import dind as dind_support  # noqa: E402
from tests.support import executor_for  # noqa: E402

TARGET = 1.5
STORAGE = Path("/var/tmp/runner-bench-cache")
#: two multi-step images: steps that take time and make little (a compile: 3 s of work, ~100 KB
#: of output), and steps that take time and make much (16 MB, incompressible): a cold worker
#: with the registry cache skips the work but must fetch and unpack what the steps made
DOCKERFILES = {
    "work": """FROM {base}
RUN sleep 1 && for i in $(seq 1 2000); do echo dep-$i; done > /deps.txt
RUN sleep 1 && head -c 65536 /dev/urandom > /deps.bin
COPY app.txt /app.txt
RUN sleep 1 && wc -l /deps.txt /app.txt > /built
""",
    "data": """FROM {base}
RUN sleep 1 && dd if=/dev/urandom of=/deps.bin bs=1M count=8 2>/dev/null
RUN sleep 1 && for i in $(seq 1 30000); do echo dep-$i; done > /deps.txt
COPY app.txt /app.txt
RUN sleep 1 && dd if=/dev/urandom of=/build.bin bs=1M count=8 2>/dev/null && wc -l /deps.txt /app.txt > /built
""",
}


#: the first line a push prints (a FROM pull prints it too, but before the last STEP)
_PUSH_STARTS = "Getting image source signatures"
#: a step's export to the registry cache (--cache-to): buildah pushes a step it found in its store
_CACHE_EXPORT = "--> Pushing cache"
_CACHE_EXPORTED = re.compile(re.escape(_CACHE_EXPORT) + r" (\S+)$")
#: a step's cache image pulled by the build itself (--cache-from)
_CACHE_PULLED = "--> Cache pulled from remote"


def phases(started: float, ended: float, times: list[float], lines: list[str]) -> dict[str, float]:
    """Where one job's time went, from its timed log lines: the start up to the first STEP, each
    STEP up to the next (its export to the registry cache apart), the last STEP up to its
    push's first line, the push (seconds, in order). A log without STEP lines is one phase."""
    marks: list[tuple[str, float]] = [("start, up to STEP 1", started)]
    last_step = -1
    for index, (at, text) in enumerate(zip(times, lines, strict=True)):
        if match := STEP_LINE.match(text):
            marks.append((f"STEP {match[1]}: {match[2][:32]}", at))
            last_step = index
        elif text.startswith(_CACHE_EXPORT) and last_step >= 0:
            marks.append((f"{marks[-1][0].split(':')[0]}: --cache-to export", at))
    if last_step < 0:
        return {"the whole job (no STEP lines: not buildah's log)": ended - started}
    push = next((at for at, text in zip(times[last_step:], lines[last_step:], strict=True) if text == _PUSH_STARTS), None)
    if push is not None:
        marks.append(("push", push))
    marks.append(("end", ended))
    return {label: following[1] - at for (label, at), following in zip(marks, marks[1:], strict=False)}


class Clock:
    """A LogSink noting when the engine or tool was reached and when the last tag was confirmed."""

    START = ("[runner] building with", "[runner] buildah ")

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.lines: list[str] = []
        self.times: list[float] = []

    def line(self, text: str) -> None:
        now = time.perf_counter()
        self.lines.append(text)
        self.times.append(now)
        if self.started is None and text.startswith(self.START):
            self.started = now
        if text.startswith(("[runner] pushed", "[runner] tagged")):
            self.ended = now

    def write(self, chunk: str) -> None:
        for text in chunk.splitlines():
            self.line(text)

    def add_secret(self, value: str) -> None:
        pass

    def took(self) -> float:
        if self.started is None or self.ended is None:
            raise SystemExit("the job log lacks its start or push lines:\n" + "\n".join(self.lines[-30:]))
        return self.ended - self.started

    def phases(self) -> dict[str, float]:
        self.took()
        assert self.started is not None and self.ended is not None
        return phases(self.started, self.ended, self.times, self.lines)


class Worker:
    """One 'host': an executor object with its own storage, building the bench's context."""

    def __init__(self, name: str, cfg: Settings, src: Path, tag: str, wipe=None):
        self.cfg, self.src, self.tag, self.wipe = cfg, src, tag, wipe
        self.executor = executor_for(cfg, name, f"bench-cache-{uuid.uuid4().hex[:4]}")

    def build(self, first: Callable[[], None] | None = None) -> tuple[float, Clock]:
        """Run the job (after emptying the storage, and `first`); its build + push time and log."""
        if self.wipe:
            self.wipe()
        if first:
            first()
        job = BuildRequest(tags=[self.tag], cache_key="bench")
        buffer = io.BytesIO()
        write_tar(self.src, buffer)
        context = spool_context([buffer.getvalue()], self.cfg.worker.workspace / job.id, "Dockerfile", 10**8)
        clock = Clock()
        try:
            self.executor.run(job, context, clock, CancelToken())
        finally:
            self.executor.cleanup(job.id)
            shutil.rmtree(self.cfg.worker.workspace / job.id, ignore_errors=True)
        return clock.took(), clock

    def close(self) -> None:
        self.executor.shutdown()


def exported_cache_images(lines: list[str]) -> list[str]:
    """The cache images (REPOSITORY:TAG) a buildah job's log says it pushed, in step order."""
    return [match[1] for line in lines if (match := _CACHE_EXPORTED.match(line))]


def fetch_ahead(root: Path, images: list[str], authfile: Path) -> float:
    """Pull `images` (the base, then each step's cache image in step order) into the buildah
    store at `root`: the last step's image first, which carries every layer, each once; then
    the others at once, one `buildah pull` each (their layers are there: a manifest, a config
    and a record each). The wall seconds until the last is stored."""
    started = time.perf_counter()
    pull_at_once(root, images[-1:], authfile)
    pull_at_once(root, images[:-1], authfile)
    return time.perf_counter() - started


def pull_at_once(root: Path, images: list[str], authfile: Path) -> None:
    pulls = [subprocess.Popen(["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"), "--storage-driver",
                               "overlay", "pull", "--quiet", "--tls-verify=false", "--authfile", str(authfile), f"docker://{image}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for image in images]
    failed = [f"{image}: {pull.communicate()[1].strip()}" for image, pull in zip(images, pulls, strict=True)
              if pull.wait() != 0]
    if failed:
        raise SystemExit("fetching ahead failed:\n" + "\n".join(failed))


def write_authfile(env: dict[str, str], path: Path) -> Path:
    """A containers-auth.json for the dev registry (0600), so no password is in a pull's argv."""
    auth = base64.b64encode(f"{env['RUNNER_DEV_REGISTRY_USER']}:{env['RUNNER_DEV_REGISTRY_PASSWORD']}".encode()).decode()
    path.touch(mode=0o600)
    path.write_text(json.dumps({"auths": {env["RUNNER_DEV_REGISTRY"]: {"auth": auth}}}))
    return path


def buildah_workers(env: dict[str, str], work: Path, src: Path, cache_repo: str, ahead: bool) -> tuple[Worker, ...]:
    user, password = env["RUNNER_DEV_REGISTRY_USER"], env["RUNNER_DEV_REGISTRY_PASSWORD"]
    registry = env["RUNNER_DEV_REGISTRY"]

    def settings(host: str, cache: str | None) -> Settings:
        root = STORAGE / host
        return Settings(registries=[{"host": registry, "username": user, "password": password}],
                        executors={"buildah": {"enabled": True, "storage_root": str(root / "root"), "run_root": str(root / "run"),
                                               "cache_repo": cache}},
                        worker={"namespace": f"bench-{uuid.uuid4().hex[:6]}", "workspace": str(work / host)})

    def wipe(host: str):
        def empty() -> None:
            root = STORAGE / host
            subprocess.run(["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"), "rmi", "--all", "--force"],
                           capture_output=True)
            subprocess.run(["rm", "-rf", str(root)], check=True)
        return empty

    tag = f"{registry}/bench/cache-buildah:{uuid.uuid4().hex[:8]}"
    workers = (Worker("buildah", settings("a", cache_repo), src, tag),
               Worker("buildah", settings("b", cache_repo), src, tag, wipe("b")),
               Worker("buildah", settings("c", None), src, tag, wipe("c")))
    return (*workers, Worker("buildah", settings("d", cache_repo), src, tag, wipe("d"))) if ahead else workers


def dind_workers(env: dict[str, str], work: Path, src: Path, cache_repo: str, ahead: bool = False) -> tuple[Worker, ...]:
    sockdir = work / "sock"
    sockdir.mkdir(exist_ok=True)

    def settings(host: str, **overrides) -> Settings:
        cfg = dind_support.settings(env, sockdir, **overrides)
        return cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"workspace": work / host})})

    tag = f"{env['RUNNER_DEV_REGISTRY_NAME']}/bench/cache-dind:{uuid.uuid4().hex[:8]}"
    return (Worker("dind", settings("a", cache_repo=cache_repo, reuse="per_cache_key"), src, tag),
            Worker("dind", settings("b", cache_repo=cache_repo), src, tag),
            Worker("dind", settings("c"), src, tag))


def bench(name: str, image: str, env: dict[str, str], rounds: int,
          breakdown: dict[str, list[dict[str, float]]] | None = None, ahead: bool = False) -> dict[str, float]:
    """The medians of A, B and C (and D's, `ahead` on buildah); with `breakdown`, A's and B's
    phases per round appended to it."""
    work = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))
    src = work / "src"
    src.mkdir()
    base = dind_support.base_image(env) if name == "dind" else env["RUNNER_DEV_BASE_IMAGE"]
    (src / "Dockerfile").write_text(DOCKERFILES[image].format(base=base))
    (src / "app.txt").write_text(f"{uuid.uuid4().hex}\n")  # a context no cache has seen: A's first build fills it
    registry = env["RUNNER_DEV_REGISTRY_NAME"] if name == "dind" else env["RUNNER_DEV_REGISTRY"]
    cache_repo = f"{registry}/bench-cache/{{repo}}"  # a template: the first tag's repository, under bench-cache/
    make = dind_workers if name == "dind" else buildah_workers
    a, b, c, *more = make(env, work, src, cache_repo, ahead)  # D: buildah's, with --ahead
    d = more[0] if more else None
    times: dict[str, list[float]] = {"A warm": [], "B cold + registry cache": [], "C cold": []}
    authfile = write_authfile(env, work / "auth.json")  # D's pulls read it
    try:
        first, _ = a.build()  # A's first build: cold, fills A's cache and the registry cache
        for _ in range(rounds):
            warm, warm_clock = a.build()
            times["A warm"].append(warm)
            took, clock = b.build()
            if not any("CACHED" in line or "Using cache" in line for line in clock.lines):
                raise SystemExit("B's build used no cache:\n" + "\n".join(clock.lines[-40:]))
            times["B cold + registry cache"].append(took)
            if breakdown is not None:
                breakdown.setdefault("A", []).append(warm_clock.phases())
                breakdown.setdefault("B", []).append(clock.phases())
            if os.environ.get("BENCH_CACHE_SHOW"):
                print("\n".join(f"{(t - clock.times[0]) * 1000:7.0f} {line}" for t, line in zip(clock.times, clock.lines,
                                                                                         strict=True)), file=sys.stderr)
            times["C cold"].append(c.build()[0])
            if d is not None:
                for label, took in fetched_ahead(d, [base, *exported_cache_images(warm_clock.lines)], authfile).items():
                    times.setdefault(label, []).append(took)
    finally:
        for worker in (a, b, c, *more):
            worker.close()
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"A first (cold, fills the cache)": first, **{k: statistics.median(v) for k, v in times.items()}}


def fetched_ahead(d: Worker, images: list[str], authfile: Path) -> dict[str, float]:
    """D's round: `images` fetched ahead into its emptied store, then the job (seconds)."""
    fetch: list[float] = []
    job, clock = d.build(lambda: fetch.append(fetch_ahead(STORAGE / "d", images, authfile)))
    if any(line.startswith(_CACHE_PULLED) for line in clock.lines) or not any("Using cache" in line for line in clock.lines):
        raise SystemExit("D's build did not find every step in its store:\n" + "\n".join(clock.lines[-40:]))
    exports = sum(took for label, took in clock.phases().items() if label.endswith("--cache-to export"))
    return {"D fetch ahead": fetch[0], "D job": job, "D": fetch[0] + job, "D less exports": fetch[0] + job - exports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--executors", default="dind,buildah")
    parser.add_argument("--images", default="work,data")
    parser.add_argument("--breakdown", action="store_true", help="also print where A's and B's time goes (buildah's steps)")
    parser.add_argument("--ahead", action="store_true", help="also D: B fetching its images ahead, at once (buildah)")
    args = parser.parse_args()
    env = dev_env()
    breakdowns: dict[tuple[str, str], dict[str, list[dict[str, float]]]] = {}
    rows = {(name, image): bench(name, image, env, args.rounds, breakdowns.setdefault((name, image), {}) if args.breakdown else None,
                                 args.ahead)
            for name in args.executors.split(",") for image in args.images.split(",")}
    label = {"dind": "BuildKit (dind)", "buildah": "buildah"}
    what = {"work": "3 s of steps, ~100 KB made", "data": "3 s of steps, 16 MB made"}
    print(f"\nshared registry cache: build + push of a multi-step image (3 RUN steps), median of {args.rounds}")
    print("| executor | image | A warm rebuild | B cold + registry cache | C cold, no cache | B / A | B / C | target B/A <= 1.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, image), r in rows.items():
        warm, remote, cold = r["A warm"], r["B cold + registry cache"], r["C cold"]
        ok = remote / warm <= TARGET
        print(f"| {label.get(name, name)} | {what[image]} | {warm:.2f} s | {remote:.2f} s | {cold:.2f} s | "
              f"{remote / warm:.2f}x | {remote / cold:.2f}x | {'ok' if ok else 'MISSED'} |")
    print("| img | | not installable here (not packaged for Debian) | | | | | |")
    if args.ahead:
        print_ahead({key: r for key, r in rows.items() if "D" in r}, what, args.rounds)
    for (name, image), taken in breakdowns.items():
        print_breakdown(f"{label.get(name, name)}, {what[image]}", taken, args.rounds)
    print(f"{load_line()}")


def print_ahead(rows: dict[tuple[str, str], dict[str, float]], what: dict[str, str], rounds: int) -> None:
    print(f"\nD: cold, its base and per-step cache images fetched ahead at once, then the job; median of {rounds}")
    print("| image | A warm | B (buildah's own per-step pulls) | D fetch ahead | D job | D | D / A | "
          "D less its --cache-to exports | that / A |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (_, image), r in rows.items():
        warm = r["A warm"]
        print(f"| {what[image]} | {warm:.2f} s | {r['B cold + registry cache']:.2f} s | {r['D fetch ahead']:.2f} s | "
              f"{r['D job']:.2f} s | {r['D']:.2f} s | {r['D'] / warm:.2f}x | {r['D less exports']:.2f} s | "
              f"{r['D less exports'] / warm:.2f}x |")


def print_breakdown(title: str, taken: dict[str, list[dict[str, float]]], rounds: int) -> None:
    """Each phase's median over the rounds, A against B (a phase missing from a round counts 0)."""
    labels = list(dict.fromkeys(label for side in ("A", "B") for run in taken.get(side, []) for label in run))  # in A's order

    def median(side: str, label: str) -> float:
        return statistics.median(run.get(label, 0.0) for run in taken[side]) * 1000

    print(f"\nwhere the time goes: {title}, median of {rounds} (ms)")
    print("| phase | A warm | B cold + registry cache | B - A |")
    print("|---|---|---|---|")
    for label in labels:
        a, b = median("A", label), median("B", label)
        print(f"| {label} | {a:.0f} | {b:.0f} | {b - a:+.0f} |")


if __name__ == "__main__":
    main()
