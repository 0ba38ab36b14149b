"""dind executor timings: job start -> first build step with a cold sidecar and with the warm
pool; and a cached rebuild of an unchanged context on dind with the per-repository cache vs
the socket executor's cached rebuild (build + push, the same Dockerfile).

Run:  .venv/bin/python bench/bench_dind.py [--rounds 5]
Needs the services (scripts/services.sh) and the dind image (scripts/dind-image.sh, cached);
uses the capability profile of tests/support/dind.py. Removes everything it made.
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executors.dind import cache as dind_cache  # noqa: E402
from executors.engine.client import EngineClient  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from tests.support import dind as support  # noqa: E402
from tests.support import executor_for  # noqa: E402

DOCKERFILE = "FROM {base}\nRUN echo compiled > /built.txt\nCOPY app.txt /app.txt\n"


class Clock:
    """A LogSink noting when the first build step appears (the first line from the builder)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.building_at: float | None = None
        self.first_step_at: float | None = None
        self.pushed_at: float | None = None

    def line(self, text: str) -> None:
        now = time.perf_counter()
        if self.building_at is None and text.startswith("[runner] building with"):
            self.building_at = now
        elif self.building_at is not None and self.first_step_at is None and text.strip():
            self.first_step_at = now
        if text.startswith("[runner] pushed"):
            self.pushed_at = now

    def write(self, chunk: str) -> None:
        for text in chunk.splitlines():
            self.line(text)


def services_env() -> dict[str, str]:
    state = Path(os.environ.get("RUNNER_DEV_STATE", "/var/tmp/runner-dev"))
    return dict(line.split("=", 1) for line in (state / "env").read_text().split())


def context(tmp: Path, base: str):
    return support.build_context(tmp, DOCKERFILE.format(base=base), {"app.txt": "hello\n"})


def run(executor, ctx, tag: str, cache_key: str | None = None) -> Clock:
    job = BuildRequest(tags=[tag], cache_key=cache_key)
    clock = Clock()
    try:
        executor.run(job, ctx, clock, CancelToken())
    finally:
        executor.cleanup(job.id)
    clock.done_at = time.perf_counter()  # type: ignore[attr-defined]
    return clock


def first_step(clock: Clock) -> float:
    return clock.first_step_at - clock.started


def total(clock: Clock) -> float:
    return clock.done_at - clock.started  # type: ignore[attr-defined]


def build_push(clock: Clock) -> float:
    """From the engine being reached to the push confirmed (no bring-up, no teardown)."""
    return clock.pushed_at - clock.building_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = services_env()
    name_reg, loop_reg = env["RUNNER_DEV_REGISTRY_NAME"], env["RUNNER_DEV_REGISTRY"]
    sockdir = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dind-"))
    cache_key = f"bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {}
    try:
        dind_ctx = context(tmp / "dind", support.base_image(env))
        socket_ctx = context(tmp / "socket", env["RUNNER_DEV_BASE_IMAGE"])

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

        cached = executor_for(support.settings(env, sockdir, repo_cache=True), "dind", "bench")
        run(cached, dind_ctx, f"{name_reg}/bench/dind:cached", cache_key)  # fills the cache
        for _ in range(args.rounds):
            clock = run(cached, dind_ctx, f"{name_reg}/bench/dind:cached", cache_key)
            results.setdefault("dind_cached_total", []).append(total(clock))
            results.setdefault("dind_cached_build", []).append(build_push(clock))

        socket_settings = Settings(executors={"socket": {"enabled": True}}, registries=[{
            "host": loop_reg, "username": env["RUNNER_DEV_REGISTRY_USER"], "password": env["RUNNER_DEV_REGISTRY_PASSWORD"]}])
        sock = executor_for(socket_settings, "socket", "bench")
        run(sock, socket_ctx, f"{loop_reg}/bench/socket:cached")  # fills the host cache
        for _ in range(args.rounds):
            clock = run(sock, socket_ctx, f"{loop_reg}/bench/socket:cached")
            results.setdefault("socket_cached_total", []).append(total(clock))
            results.setdefault("socket_cached_build", []).append(build_push(clock))
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
    ratio_total = med["dind_cached_total"] / med["socket_cached_total"]
    ratio_build = med["dind_cached_build"] / med["socket_cached_build"]
    rows = [
        ("job start -> first build step, cold sidecar", f"{med['cold']:.2f} s", f"{worst['cold']:.2f} s", "<= 2 s",
         med["cold"] <= 2),
        ("job start -> first build step, warm pool", f"{med['warm']:.3f} s", f"{worst['warm']:.3f} s", "<= 0.2 s",
         med["warm"] <= 0.2),
        ("cached rebuild, socket: job total", f"{med['socket_cached_total']:.3f} s", f"{worst['socket_cached_total']:.3f} s", "", None),
        ("cached rebuild, socket: build+push", f"{med['socket_cached_build']:.3f} s", f"{worst['socket_cached_build']:.3f} s", "", None),
        ("cached rebuild, dind + repo cache: job total", f"{med['dind_cached_total']:.3f} s",
         f"{worst['dind_cached_total']:.3f} s", f"{ratio_total:.1f}x socket", None),
        ("cached rebuild, dind + repo cache: build+push", f"{med['dind_cached_build']:.3f} s",
         f"{worst['dind_cached_build']:.3f} s", f"{ratio_build:.2f}x socket (<= 1.2x)", ratio_build <= 1.2),
    ]
    print(f"dind executor, median and worst of {args.rounds} rounds")
    print(f"{'measure':<48} {'median':>9} {'worst':>9}  target")
    for label, median, worst_, target, ok in rows:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"{label:<48} {median:>9} {worst_:>9}  {target}{mark}")


if __name__ == "__main__":
    main()
