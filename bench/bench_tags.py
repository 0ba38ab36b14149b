"""What each extra tag on a job costs, per executor: a cached build pushed under 1 tag, then
under 5 (the first pushed; two more in the same repository and two in another repository of
the same registry, which get the manifest without a push: executors/tags.py).

Two figures per executor, medians of N rounds (1 and 5 tags alternating):
- whole run: (run with 5 tags - run with 1 tag) / 4, the job's own time (executor.run);
- tagging: from the push confirmed to the last tag confirmed, / 4 (read from the job log's
  clock, so without the build's run-to-run noise).
Target: <= 20 ms per extra tag. img cannot be installed here (reported as such).

Run:  .venv/bin/python bench/bench_tags.py [--rounds 7] [--executors socket,buildah,dind]
Needs the services (scripts/services.sh); dind also the dind image (scripts/dind-image.sh).
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
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

from bench.common import dev_env, load_line  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.context.pack import write_tar  # noqa: E402
from runner.context.spool import spool_context  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from tests.support import dind as dind_support  # noqa: E402
from tests.support import executor_for  # noqa: E402

TARGET_MS = 20.0
STORAGE = Path("/var/tmp/runner-bench-tags")


class Clock:
    """A LogSink that notes when the first push and the last tag were confirmed."""

    def __init__(self) -> None:
        self.pushed_at: float | None = None
        self.tagged_at: float | None = None

    def line(self, text: str) -> None:
        if text.startswith("[runner] pushed") and self.pushed_at is None:
            self.pushed_at = time.perf_counter()
        elif text.startswith("[runner] tagged"):
            self.tagged_at = time.perf_counter()
        elif text.startswith("[runner] could not tag"):
            raise SystemExit(f"a tag needed a push: {text}")

    def write(self, chunk: str) -> None:
        for text in chunk.splitlines():
            self.line(text)

    def add_secret(self, value: str) -> None:
        pass


def settings(env: dict[str, str], name: str, work: Path) -> tuple[Settings, str, str]:
    """Settings for one executor, the registry its jobs push to and the base image it builds FROM."""
    user, password = env["RUNNER_DEV_REGISTRY_USER"], env["RUNNER_DEV_REGISTRY_PASSWORD"]
    worker = {"namespace": f"bench-{uuid.uuid4().hex[:6]}", "workspace": str(work / "work")}
    if name == "dind":
        base = dind_support.settings(env, work / "sock", reuse="per_cache_key")
        return base.model_copy(update={"worker": base.worker.model_copy(update={"workspace": work / "work"})}), \
            env["RUNNER_DEV_REGISTRY_NAME"], dind_support.base_image(env)
    section = {"enabled": True}
    if name == "buildah":
        section.update(storage_root=str(STORAGE / "root"), run_root=str(STORAGE / "run"))
    return Settings(registries=[{"host": env["RUNNER_DEV_REGISTRY"], "username": user, "password": password}],
                    executors={name: section}, worker=worker), env["RUNNER_DEV_REGISTRY"], env["RUNNER_DEV_BASE_IMAGE"]


def one_job(executor, cfg: Settings, src: Path, tags: list[str]) -> tuple[float, float | None]:
    job = BuildRequest(tags=tags, cache_key="bench-tags")
    buffer = io.BytesIO()
    write_tar(src, buffer)
    context = spool_context([buffer.getvalue()], cfg.worker.workspace / job.id, "Dockerfile", 10**8)
    clock = Clock()
    started = time.perf_counter()
    try:
        executor.run(job, context, clock, CancelToken())
        took = time.perf_counter() - started
    finally:
        executor.cleanup(job.id)
        shutil.rmtree(cfg.worker.workspace / job.id, ignore_errors=True)
    tagging = clock.tagged_at - clock.pushed_at if clock.tagged_at and clock.pushed_at else None
    return took, tagging


def bench(name: str, env: dict[str, str], rounds: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (work / "sock").mkdir()
    try:
        cfg, registry, base = settings(env, name, work)
        executor = executor_for(cfg, name, "bench-tags")
        src = work / "src"
        src.mkdir()
        (src / "Dockerfile").write_text(f"FROM {base}\nRUN echo tagged > /t\nCOPY data.bin /data.bin\n")
        (src / "data.bin").write_bytes(os.urandom(1024 * 1024))
        repo, other = f"{registry}/bench/tags-{name}", f"{registry}/bench/tags-{name}-other"

        def tags(count: int) -> list[str]:
            made = [f"{repo}:{uuid.uuid4().hex[:8]}", f"{repo}:{uuid.uuid4().hex[:8]}", f"{other}:{uuid.uuid4().hex[:8]}",
                    f"{repo}:{uuid.uuid4().hex[:8]}", f"{other}:{uuid.uuid4().hex[:8]}"]
            return made[:count]

        one_job(executor, cfg, src, tags(5))  # warm: layers cached, blobs in both repositories
        single, multi, tagging = [], [], []
        for _ in range(rounds):
            single.append(one_job(executor, cfg, src, tags(1))[0])
            took, tag_time = one_job(executor, cfg, src, tags(5))
            multi.append(took)
            if tag_time is not None:
                tagging.append(tag_time)
        executor.shutdown()
        return {"one": statistics.median(single), "five": statistics.median(multi),
                "per_tag_run": (statistics.median(multi) - statistics.median(single)) / 4,
                "per_tag_log": statistics.median(tagging) / 4}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(STORAGE, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--executors", default="socket,buildah,dind")
    args = parser.parse_args()
    env = dev_env()
    rows = {name: bench(name, env, args.rounds) for name in args.executors.split(",")}
    print(f"\nextra tags on a cached build (1 MB context), median of {args.rounds} rounds; target <= {TARGET_MS:.0f} ms per extra tag")
    print(f"{'executor':<9}{'1 tag':>10}{'5 tags':>10}{'per extra tag (run)':>22}{'per extra tag (tagging)':>26}  target")
    for name, r in rows.items():
        ok = r["per_tag_log"] * 1000 <= TARGET_MS
        print(f"{name:<9}{r['one'] * 1000:>7.0f} ms{r['five'] * 1000:>7.0f} ms{r['per_tag_run'] * 1000:>19.1f} ms"
              f"{r['per_tag_log'] * 1000:>23.1f} ms  {'ok' if ok else 'MISSED'}")
    print("img      not installable here (not packaged for Debian); it uses the same executors/tags.py path")
    print(f"{load_line()}")


if __name__ == "__main__":
    main()
