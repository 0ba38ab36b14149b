"""Hostile contexts: what each bomb costs a real `runner worker` before it is refused, and
what the canonical rewrite costs a normal context.

Bombs (each posted through the raw queue to a fresh `runner worker` with the default caps,
buildah queue): a 10 GiB tar member as ~10 MB of multi-member gzip; 2,000,000 empty
members; a 1 GiB PAX header. For each: the refusal time (the job record's started_at to
finished_at), the worker's peak RSS (VmHWM of /proc/PID/status; the worker runs jobs in
threads, so this is the process that spools), and the peak disk use of the job's workspace
(sampled every 10 ms).

Normal context: a 200 MB context (200 x 1 MiB + 2,000 x 4 KiB files) spooled from 1 MiB
chunks and unpacked, median of N rounds, against the previous code path (write the chunks,
scan with tarfile, tarfile's `data` filter extraction) and GNU tar.

Deliveries (bench/hostile_deliveries.py): 4 slow-loris callbacks against an unrelated job's
pickup; a git host down 30 min (scaled) with 300 jobs.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_hostile.py [--rounds 3] [--skip-bombs]
      [--deliveries-only | --skip-deliveries] [--jobs 300 --minutes 30 --scale 0.0167] [--baseline-rev REV]
      [--delivery-rows slow,down,off]
Needs Redis (scripts/services.sh) and buildah. Uses its own namespace and temp folders and
removes them. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace  # noqa: E402
from runner.config.settings import LimitsConfig, load_settings  # noqa: E402
from runner.sources.pack import write_tar  # noqa: E402
from runner.sources.upload import spool_context  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from tests.hostile.context_support import post_raw, wait_finished  # noqa: E402
from tests.hostile.context_tars import empty_members, gzip_member_bomb, pax_header_bomb  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
REDIS = "redis://127.0.0.1:6379/0"
MiB = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Worker:
    """A real `runner worker` on a config of its own (default limits), taking the buildah queue."""

    def __init__(self, tmp: Path):
        self.namespace = f"bench-hostile-{uuid.uuid4().hex[:8]}"
        self.workspace = tmp / "work"
        config = {"redis_url": REDIS, "default_executor": "buildah",
                  "registries": [{"host": "127.0.0.1:5000", "username": "ci", "password": "ci-password"}],
                  "executors": {"buildah": {"enabled": True, "storage_root": str(tmp / "buildah-root"),
                                            "run_root": str(tmp / "buildah-run")}},
                  "worker": {"namespace": self.namespace, "workspace": str(self.workspace), "concurrency": 1}}
        self.config = tmp / "runner.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "RUNNER_CONFIG": str(self.config), "PYTHONPATH": str(ROOT)}
        os.environ["RUNNER_CONFIG"] = str(self.config)
        self.settings = load_settings()
        self.store = JobStore.from_settings(self.settings)
        self.log = (tmp / "worker.log").open("w")
        self.proc = subprocess.Popen([RUNNER, "worker", "--queues", f"{self.namespace}.buildah"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while " ready." not in Path(self.log.name).read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(Path(self.log.name).read_text()[-2000:])
            time.sleep(0.1)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        drop_namespace(self.store.r, self.namespace)


def run_bomb(name: str, chunks) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-", dir="/var/tmp"))
    worker = Worker(tmp)
    try:
        baseline = status_kib(worker.proc.pid, "VmHWM")
        job = {"id": f"bomb-{uuid.uuid4().hex[:12]}", "executor": "buildah", "tags": ["127.0.0.1:5000/bench/bomb:1"]}
        made = time.perf_counter()
        chunks = list(chunks)
        compressed = sum(len(c) for c in chunks)
        made = time.perf_counter() - made
        peak_disk, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak_disk
            while not done.is_set():
                peak_disk = max(peak_disk, disk_bytes(worker.workspace / job["id"]))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        post_raw(worker.store, job, f"{worker.namespace}.buildah", chunks)
        record = wait_finished(worker.store, job["id"], timeout=1800)
        done.set()
        sampler.join()
        started = record["started_at"].replace("Z", "+00:00")
        finished = record["finished_at"].replace("Z", "+00:00")
        from datetime import datetime

        seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
        return {"name": name, "compressed": compressed, "seconds": seconds, "status": record["status"],
                "kind": (record["error"] or {}).get("kind"), "message": (record["error"] or {}).get("message", ""),
                "rss_base": baseline, "rss_peak": status_kib(worker.proc.pid, "VmHWM"), "disk": peak_disk,
                "make_seconds": made}
    finally:
        worker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- a normal context ---------------------------------------------------------------------------
def make_context(root: Path) -> bytes:
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    for i in range(200):
        folder = root / f"big{i // 20}"
        folder.mkdir(exist_ok=True)
        (folder / f"blob{i}.bin").write_bytes(os.urandom(MiB))
    for i in range(2000):
        folder = root / "small" / f"d{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(os.urandom(4096))
    buffer = io.BytesIO()
    write_tar(root, buffer)
    return buffer.getvalue()


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args):
    """((wall seconds, CPU seconds), result) of fn(*args); dirty pages of the step before
    are synced first, so one step's writeback does not throttle the next."""
    os.sync()
    started, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return (time.perf_counter() - started, cpu_seconds() - cpu), result


def normal_context(rounds: int) -> list[tuple[str, float, float, int]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-ctx-", dir="/var/tmp"))
    try:
        data = make_context(tmp / "src")
        chunks = [data[i:i + MiB] for i in range(0, len(data), MiB)]
        results: dict[str, list[tuple[float, float]]] = {}

        def fresh(name: str) -> Path:
            path = tmp / "ws" / name
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            return path

        def old_spool(old: Path) -> None:
            with (old / "context.tar").open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            with tarfile.open(old / "context.tar", "r|*") as tar:
                for _member in tar:
                    pass

        def old_extract(old: Path) -> None:
            with tarfile.open(old / "context.tar", "r:*") as tar:
                tar.extractall(old / "out", filter="data")

        def add(name: str, seconds: tuple[float, float]) -> None:
            results.setdefault(name, []).append(seconds)

        for _ in range(rounds):
            ws = fresh("new")
            seconds, ctx = timed(spool_context, chunks, ws, "Dockerfile", LimitsConfig())
            add("spool: stream, check, write canonical tar (new)", seconds)
            add("extract: O_NOFOLLOW walk (new)", timed(ctx.extract_to, ws / "out")[0])
            old = fresh("old")
            old.mkdir()
            add("spool: write chunks + tarfile scan (previous)", timed(old_spool, old)[0])
            add("extract: tarfile data filter (previous)", timed(old_extract, old)[0])
            gnu = fresh("gnu")
            gnu.mkdir()
            add("extract: GNU tar -xf (reference)",
                timed(subprocess.run, ["tar", "-C", str(gnu), "-xf", str(old / "context.tar")])[0])
        return [(name, statistics.median(t[0] for t in times), statistics.median(t[1] for t in times), len(data))
                for name, times in results.items()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bombs", action="store_true")
    parser.add_argument("--deliveries-only", action="store_true", help="only the delivery rows (bench/hostile_deliveries.py)")
    parser.add_argument("--skip-deliveries", action="store_true")
    parser.add_argument("--jobs", type=int, default=300, help="jobs while the git host is down")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the git host is down")
    parser.add_argument("--scale", type=float, default=1 / 60, help="time scale of the git host outage (1: real time)")
    parser.add_argument("--baseline-rev", help="also run the delivery rows' worker from this git revision")
    parser.add_argument("--delivery-rows", default="slow,down,off", help="slow, down (circuits on), off (circuits off)")
    args = parser.parse_args()
    if not args.skip_deliveries:
        from bench.hostile_deliveries import print_rows

        print_rows(args.jobs, args.minutes, args.scale, args.baseline_rev, args.delivery_rows)
        print()
        if args.deliveries_only:
            return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; default limits: "
          f"{LimitsConfig().max_context_bytes:,} bytes, {LimitsConfig().max_context_files:,} files, "
          f"{LimitsConfig().max_context_header_bytes:,} header bytes\n")
    if not args.skip_bombs:
        bombs = [("10 GiB gzip member", lambda: [gzip_member_bomb(10 * 1024**3)]),
                 ("2,000,000 empty members", lambda: empty_members(2_000_000)),
                 ("1 GiB PAX header", lambda: [pax_header_bomb(1024**3)])]
        rows = [run_bomb(name, make()) for name, make in bombs]
        print(f"{'bomb (raw queue, real worker)':<28} {'sent':>9} {'refused after':>14} {'worker peak RSS':>22} "
              f"{'peak disk':>10}  result")
        for r in rows:
            rss = f"{r['rss_base'] / 1024:.0f} -> {r['rss_peak'] / 1024:.0f} MiB"
            result = f"{r['status']} ({r['kind']}): {r['message'][:90]}"
            print(f"{r['name']:<28} {r['compressed'] / MiB:>7.1f}MB {r['seconds']:>13.2f}s {rss:>22} "
                  f"{r['disk'] / MiB:>8.1f}MB  {result}")
        print()
    print(f"{'normal context (' + str(args.rounds) + ' rounds, medians)':<50} {'wall s':>7} {'MB/s':>6} {'CPU s':>6}")
    for name, seconds, cpu, size in normal_context(args.rounds):
        print(f"{name:<50} {seconds:>7.2f} {size / MiB / seconds:>6.0f} {cpu:>6.2f}")


if __name__ == "__main__":
    main()
