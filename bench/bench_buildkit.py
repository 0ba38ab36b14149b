"""BuildKit vs the classic builder through our socket executor, on a multi-stage build whose
two stages do not depend on each other (BuildKit runs them at once; classic one after the
other). Uncached (--no-cache) and cached (same context again), median of N rounds.

Run:  .venv/bin/python bench/bench_buildkit.py [--rounds 3] [--work 2]
Needs the services (scripts/services.sh). Builds only (push off); removes what it built.
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executors.engine.socket import SocketExecutor  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.build import BuildContext  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.sources.pack import write_tar  # noqa: E402
from tests.support import executor_for  # noqa: E402

BASE = "127.0.0.1:5000/base/busybox:1"


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=int, default=2, help="seconds each stage sleeps")
    args = parser.parse_args()
    settings = Settings(executors={"socket": {"enabled": True}})
    executor = executor_for(settings, "socket")
    with tempfile.TemporaryDirectory(prefix="bench-buildkit-") as tmp:
        root = Path(tmp) / "ctx"
        root.mkdir()
        (root / "Dockerfile").write_text(dockerfile(args.work))
        (root / "app.txt").write_text("hello\n")
        tar_path = Path(tmp) / "context.tar"
        with tar_path.open("wb") as sink:
            write_tar(root, sink)
        context = BuildContext(tar_path=tar_path, workspace=Path(tmp))
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for builder in ("buildkit", "classic"):
                results.setdefault((builder, "uncached"), []).append(build_once(executor, context, builder, True))
                results.setdefault((builder, "cached"), []).append(build_once(executor, context, builder, False))
    med = {key: statistics.median(values) for key, values in results.items()}
    print(f"multi-stage build, two independent stages of ~{args.work}s each; median of {args.rounds} rounds (seconds)")
    print(f"{'builder':<10} {'uncached':>10} {'cached':>10}")
    for builder in ("buildkit", "classic"):
        print(f"{builder:<10} {med[(builder, 'uncached')]:>10.2f} {med[(builder, 'cached')]:>10.2f}")
    for mode in ("uncached", "cached"):
        ratio = med[("classic", mode)] / med[("buildkit", mode)]
        print(f"classic / buildkit, {mode}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
