"""Build-tool output at volume: `RUN seq 1 1000000` and one 400 KB line without a newline,
raw `buildah` against our buildah executor at three depths.

- read side alone: `sh -c CMD` through our Tool.stream (sh, pipe, line assembly, ToolOutput)
  into a list, against the same command with its output to /dev/null;
- build step: the exact `buildah build` argv our executor runs, through Tool.stream with
  BuildOutput into a list sink, against that argv with its output to /dev/null;
- executor: BuildahExecutor.run (build, push, digest check) with a list log sink, against
  raw `buildah build` + `buildah push` of the image by id;
- whole job: `runner submit --no-cache` to a real `runner worker` (log into Redis through
  JobLog, limits.max_log_lines raised so every line is kept), timed on the worker from the
  record (started_at to finished_at), against the same raw build + push.
Target: the 1M-line build within 1.2x raw buildah.

Run:  PYTHONPATH=$PWD .venv/bin/python bench/bench_tool_output.py [--rounds 3]
Needs the services (scripts/services.sh). Uses its own storage root and Redis namespace and
removes both at the end. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BASE, PASSWORD, REGISTRY, USER, drop_namespace, load_line  # noqa: E402
from executors.daemonless.buildah import BuildOutput, JobPaths, build_args, push_args, resolve_mode  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.context.build_context import BuildContext  # noqa: E402
from runner.context.pack import write_tar  # noqa: E402
from runner.context.spool import spool_context  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest, ImageRef  # noqa: E402
from runner.core.process import Tool, ToolOutput, tool_env  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from runner.worker.worker import executor_env, make_executors  # noqa: E402

STORAGE = Path("/var/tmp/runner-bench-tool-output")
RUNNER = str(Path(sys.executable).with_name("runner"))
CASES = {
    "1M lines": ("seq 1 1000000", 1_000_000),
    "400 KB line": ("yes 0123456789 | head -n 40000 | tr -d '\\n'", 1),
}


class ListSink:
    """A LogSink that keeps what it is given in memory: the executor without the store."""

    def __init__(self):
        self.chunks: list[str] = []

    def line(self, text: str) -> None:
        self.chunks.append(text + "\n")

    def write(self, chunk: str) -> None:
        self.chunks.append(chunk)

    def count(self) -> int:
        return sum(chunk.count("\n") for chunk in self.chunks)


def config(work: Path, namespace: str) -> dict:
    return {
        "redis_url": "redis://127.0.0.1:6379/0",
        "registries": [{"host": REGISTRY, "username": USER, "password": PASSWORD}],
        "executors": {"buildah": {"enabled": True, "storage_root": str(STORAGE / "root"), "run_root": str(STORAGE / "run")}},
        "worker": {"namespace": namespace, "workspace": str(work / "work"), "concurrency": 1},
        "limits": {"max_log_lines": 1_100_000},
        "default_executor": "buildah",
    }


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Bench:
    def __init__(self, work: Path, namespace: str):
        self.work = work
        self.config_path = work / "runner.yml"
        self.config_path.write_text(yaml.safe_dump(config(work, namespace)))
        self.settings = Settings(**config(work, namespace))
        self.namespace = namespace
        self.store = JobStore.from_settings(self.settings)
        self.buildah = self.settings.executors["buildah"]
        self.mode = resolve_mode(self.buildah)
        self.private = work / "private"
        self.private.mkdir(mode=0o700)
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (self.private / "auth.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": auth}}}))
        (self.private / "registries.conf").write_text(f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
        (self.private / "tmp").mkdir()
        (self.private / "ignore").write_text("")  # as the executor passes: the context is already what COPY sees
        self.env = tool_env({"CONTAINERS_REGISTRIES_CONF": str(self.private / "registries.conf"), "TMPDIR": str(self.private / "tmp")})
        self.tool = Tool(self.mode.binary, self.mode.global_args(self.buildah), self.env)
        #: made once, as a worker makes it (its mode probe is not part of any job)
        self.buildah_executor = make_executors(self.settings, ["buildah"], executor_env(self.settings, "bench"))["buildah"]
        self.buildah_executor.check()

    def context(self, case: str) -> Path:
        path = self.work / f"ctx-{case.replace(' ', '-')}"
        path.mkdir(exist_ok=True)
        (path / "Dockerfile").write_text(f"FROM {BASE}\nRUN {CASES[case][0]}\n")
        return path

    def argv(self, context: Path) -> tuple[list[str], JobPaths]:
        job = BuildRequest(tags=[f"{REGISTRY}/bench/tool-output:x"], no_cache=True)
        paths = JobPaths(context=context, dockerfile=context / "Dockerfile", authfile=self.private / "auth.json",
                         iidfile=self.private / "iid", ignorefile=self.private / "ignore")
        return build_args(self.buildah, self.mode, job, paths, self.namespace), paths

    # -- raw ---------------------------------------------------------------------------------
    def raw_build(self, context: Path) -> float:
        args, _ = self.argv(context)
        command = [self.mode.binary, *self.mode.global_args(self.buildah), *args]
        return timed(lambda: subprocess.run(command, env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def raw_build_and_push(self, context: Path) -> float:
        args, paths = self.argv(context)
        buildah = [self.mode.binary, *self.mode.global_args(self.buildah)]
        ref = ImageRef.parse(f"{REGISTRY}/bench/tool-output-raw:{uuid.uuid4().hex[:8]}")

        def run():
            quiet = {"env": self.env, "check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            subprocess.run([*buildah, *args], **quiet)
            image = paths.iidfile.read_text().strip().removeprefix("sha256:")
            subprocess.run([*buildah, *push_args(self.buildah, image, ref, paths, self.private / "digest")], **quiet)

        return timed(run)

    # -- ours --------------------------------------------------------------------------------
    def read_side(self, case: str) -> tuple[float, float, int]:
        script = CASES[case][0]
        raw = timed(lambda: subprocess.run(["sh", "-c", script], check=True, stdout=subprocess.DEVNULL))
        sink = ListSink()
        ours = timed(lambda: Tool("sh").stream(["-c", script], ToolOutput(sink), CancelToken()))
        return raw, ours, sink.count()

    def build_step(self, context: Path) -> tuple[float, int]:
        args, _ = self.argv(context)
        sink = ListSink()
        elapsed = timed(lambda: self.tool.stream(args, BuildOutput(sink), CancelToken()))
        return elapsed, sink.count()

    def executor(self, context: Path) -> tuple[float, int]:
        job = BuildRequest(tags=[f"{REGISTRY}/bench/tool-output-ours:{uuid.uuid4().hex[:8]}"], no_cache=True)
        buffer = self.work / f"{job.id}.tar"
        with buffer.open("wb") as sink:
            write_tar(context, sink)
        built: BuildContext = spool_context([buffer.read_bytes()], self.settings.worker.workspace / job.id, "Dockerfile", 10**8)
        log, executor = ListSink(), self.buildah_executor
        try:
            elapsed = timed(lambda: executor.run(job, built, log, CancelToken()))
        finally:
            executor.cleanup(job.id)
            shutil.rmtree(self.settings.worker.workspace / job.id, ignore_errors=True)
        return elapsed, log.count()

    def whole_job(self, context: Path) -> tuple[float, float, int]:
        """(time on the worker, wall time of `runner submit` until it returned, log entries)."""
        env = {**os.environ, "RUNNER_CONFIG": str(self.config_path), "PYTHONPATH": str(ROOT)}
        tag = f"{REGISTRY}/bench/tool-output-job:{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        result = subprocess.run([RUNNER, "submit", str(context), "--executor", "buildah", "-t", tag, "--no-cache", "--json"],
                                env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        record = json.loads(result.stdout)
        if record["status"] != "succeeded":
            raise SystemExit(f"job failed: {record.get('error')}")
        on_worker = (datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(record["started_at"])).total_seconds()
        entries = self.store.r.xlen(f"{self.store.ns}:log:{record['id']}")
        return on_worker, wall, entries

    def start_worker(self) -> subprocess.Popen:
        env = {**os.environ, "RUNNER_CONFIG": str(self.config_path), "PYTHONPATH": str(ROOT)}
        log = (self.work / "worker.log").open("w")
        proc = subprocess.Popen([RUNNER, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while " ready." not in (self.work / "worker.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start: {(self.work / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return proc


def row(name: str, raw: list[float], ours: list[float], note: str = "") -> str:
    r, o = statistics.median(raw), statistics.median(ours)
    return f"  {name:<50}{r:>9.2f} s{o:>9.2f} s{o / r:>8.2f}x  {note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-worker", action="store_true", help="skip the whole-job rows (real worker, Redis log)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tool-output-"))
    bench = Bench(work, f"bench-{uuid.uuid4().hex[:8]}")
    worker = None if args.no_worker else bench.start_worker()
    print(f"{bench.mode.describe()}; medians of {args.rounds} rounds, raw and ours alternating", file=sys.stderr)
    try:
        bench.raw_build(bench.context("400 KB line"))  # warm up: base image in storage
        table: list[str] = []
        for case, (_, lines) in CASES.items():
            context = bench.context(case)
            t: dict[str, list[float]] = {k: [] for k in ("read raw", "read ours", "build raw", "build ours", "exec raw", "exec ours",
                                                         "job ours", "job wall")}
            counts: dict[str, int] = {}
            for _ in range(args.rounds):
                raw, ours, counts["read"] = bench.read_side(case)
                t["read raw"].append(raw)
                t["read ours"].append(ours)
                t["build raw"].append(bench.raw_build(context))
                elapsed, counts["build"] = bench.build_step(context)
                t["build ours"].append(elapsed)
                t["exec raw"].append(bench.raw_build_and_push(context))
                elapsed, counts["exec"] = bench.executor(context)
                t["exec ours"].append(elapsed)
                if worker is not None:
                    on_worker, wall, counts["job"] = bench.whole_job(context)
                    t["job ours"].append(on_worker)
                    t["job wall"].append(wall)
            table.append(f"{case} (output: {lines:,} line{'s' if lines > 1 else ''})")
            table.append(row("read side: sh -c CMD, Tool.stream vs >/dev/null", t["read raw"], t["read ours"], f"{counts['read']:,} lines"))
            table.append(row("build step: buildah build, Tool.stream", t["build raw"], t["build ours"], f"{counts['build']:,} log lines"))
            table.append(row("executor.run (build+push), list log sink", t["exec raw"], t["exec ours"], f"{counts['exec']:,} log lines"))
            if worker is not None:
                table.append(row("whole job on a real worker (Redis log)", t["exec raw"], t["job ours"],
                                 f"{counts['job']:,} stream entries; submit wall {statistics.median(t['job wall']):.2f} s"))
        print(f"\n  {'':<50}{'raw':>11}{'ours':>11}{'ratio':>9}")
        print("\n".join(table))
        print("\n  raw: output to /dev/null; executor and whole-job rows compare with raw build + push by id."
              "\n  target: 1M-line build within 1.2x raw buildah")
        print(f"  {load_line()}")
    finally:
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait(60)
        drop_namespace(bench.store.r, bench.store.ns)
        subprocess.run(["buildah", "--root", str(STORAGE / "root"), "--runroot", str(STORAGE / "run"), "rmi", "--all", "--force"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
