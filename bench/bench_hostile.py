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

Hostile .dockerignore files (each posted through the raw queue to one worker with the
default caps, one build slot, its /healthz asked every 50 ms meanwhile): the issue's nested
`**` file with a 20-level path, a 39,000-pattern file (0.95 MiB) on 2,000 and 20,000 members,
50,000 patterns that all match on 5,000 members with a 10 s timeout, a 100,000-line file over
the cap. For each: the time to finish (or refuse, or stop), when the context was ready,
/healthz p50 / p99 / max, and the worker's peak RSS so far (VmHWM; the cases run in this
order). Baselines in the same run: a plain 1-line ignore file, the idle worker's /healthz, and
the previous code's matcher (a backtracking Python regexp) on the nested pattern, in a
subprocess killed after --old-cap seconds. Then `runner submit` packing a 1-line file
(baseline), a 40,000-line one and the over-the-cap one (time, peak RSS).

Deliveries (bench/hostile_deliveries.py): 4 slow-loris callbacks against an unrelated job's
pickup; a git host down 30 min (scaled) with 300 jobs.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_hostile.py [--rounds 3] [--skip-bombs] [--skip-ignore] [--only-ignore]
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
from runner.context.pack import write_tar  # noqa: E402
from runner.context.spool import spool_context  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from tests.hostile.context_support import post_raw, wait_finished  # noqa: E402
from tests.hostile.context_tars import empty_members, file, gzip_member_bomb, pax_header_bomb, tar_of  # noqa: E402
from tests.hostile.ignore_files import DEEP_PATH, NESTED_DOUBLESTAR, flip_flop, many_patterns, member_paths  # noqa: E402

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

    def __init__(self, tmp: Path, **worker: object):
        self.namespace = f"bench-hostile-{uuid.uuid4().hex[:8]}"
        self.workspace = tmp / "work"
        config = {"redis_url": REDIS, "default_executor": "buildah",
                  "registries": [{"host": "127.0.0.1:5000", "username": "ci", "password": "ci-password"}],
                  "executors": {"buildah": {"enabled": True, "storage_root": str(tmp / "buildah-root"),
                                            "run_root": str(tmp / "buildah-run")}},
                  "worker": {"namespace": self.namespace, "workspace": str(self.workspace), "concurrency": 1, **worker}}
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


# -- hostile .dockerignore files ---------------------------------------------------------------------
class HealthProbe(threading.Thread):
    """GET /healthz every 50 ms; each answer's latency (a timeout counts as PROBE_TIMEOUT)."""

    PROBE_TIMEOUT = 5.0

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped, self.latencies, self.failures = url, threading.Event(), [], 0

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.PROBE_TIMEOUT) as client:
            while not self.stopped.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
                self.stopped.wait(0.05)

    def stop(self) -> str:
        self.stopped.set()
        self.join()
        ms = sorted(x * 1000 for x in self.latencies)
        if not ms:
            return "no probes"
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        failed = f", {self.failures} failed" if self.failures else ""
        return f"{statistics.median(ms):.1f} / {p99:.1f} / {ms[-1]:.0f} ms ({len(ms)}{failed})"


def ignore_case(worker: Worker, healthz: str, ignore: bytes, paths: list[str], timeout: int) -> dict:
    """One job with this ignore file and these (1-byte) members: its time to finish, when the
    context was ready (the log's `[runner] context:` line, polled), /healthz meanwhile."""
    job = {"id": f"ignore-{uuid.uuid4().hex[:12]}", "executor": "buildah", "timeout": timeout,
           "tags": ["127.0.0.1:5000/bench/ignore:1"]}
    members = [file("Dockerfile", b"FROM scratch\nCOPY . /ctx\n"), file(".dockerignore", ignore)]
    data = tar_of(members + [file(path, b"x") for path in paths])
    probe = HealthProbe(healthz)
    probe.start()
    posted = time.perf_counter()
    post_raw(worker.store, job, f"{worker.namespace}.buildah", [data])
    ready = None
    while (record := worker.store.get(job["id"])) is None or not record.finished:
        if ready is None and any(line.startswith("[runner] context:") for line in worker.store.read_log(job["id"])):
            ready = time.perf_counter() - posted
        time.sleep(0.05)
    finished = time.perf_counter() - posted
    health = probe.stop()
    error = record.error.message[:70] if record.error else ""
    return {"seconds": finished, "ready": ready, "status": record.status.value, "error": error, "health": health,
            "ignore_bytes": len(ignore), "hwm": status_kib(worker.proc.pid, "VmHWM") / 1024}


def idle_health(healthz: str, seconds: float = 3.0) -> str:
    probe = HealthProbe(healthz)
    probe.start()
    time.sleep(seconds)
    return probe.stop()


def ignore_rows() -> list[tuple[str, dict | str]]:
    from tests.hostile.context_support import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-ignore-", dir="/var/tmp"))
    port = free_port()
    worker = Worker(tmp, metrics_port=port, metrics_host="127.0.0.1")
    healthz = f"http://127.0.0.1:{port}/healthz"
    try:
        rows: list[tuple[str, dict | str]] = [
            ("idle worker (baseline)", f"{idle_health(healthz)}  peak RSS {status_kib(worker.proc.pid, 'VmHWM') / 1024:.0f} MiB")]
        cases = [
            ("1-line ignore file, 2,000 members (baseline)", b"*.tmp\n", member_paths(2000), 600),
            ("nested ** (17 x **/), one 20-level path", NESTED_DOUBLESTAR, [DEEP_PATH, "a/z", "a/keep"], 600),
            ("39,000 patterns, 2,000 members", many_patterns(39_000), member_paths(2000), 600),
            ("39,000 patterns, 20,000 members", many_patterns(39_000), member_paths(20_000), 600),
            ("50,000 x **, !** in turn, 5,000 members, 10 s timeout", flip_flop(50_000), member_paths(5000), 10),
            ("100,000 patterns (over the 50,000 cap)", b"".join(b"d%d/*\n" % n for n in range(100_000)), ["f"], 600),
        ]
        for name, ignore, paths, timeout in cases:
            rows.append((name, ignore_case(worker, healthz, ignore, paths, timeout)))
        return rows
    finally:
        worker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


_OLD_MATCH = """
import sys, time
sys.path.insert(0, sys.argv[1])
from old_gocompat import compile_go_regexp
pattern = compile_go_regexp(sys.argv[2])
started = time.perf_counter()
pattern.search(sys.argv[3])
print(time.perf_counter() - started)
"""


def previous_matcher_rows(cap: float) -> list[tuple[str, str, str]]:
    """The nested pattern's Go regexp on paths 10 to 20 levels deep: the previous code's
    translation (a Python regexp, backtracking; git show d0128ff:runner/sources/gocompat.py)
    in a subprocess killed after `cap` seconds, against RE2 now."""
    from runner.context.gocompat import compile_go_regexp
    from runner.context.pattern_index import compile_pattern

    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-old-"))
    old = subprocess.run(["git", "-C", str(ROOT), "show", "d0128ff:runner/sources/gocompat.py"], capture_output=True, text=True)
    rows = []
    try:
        if old.returncode != 0:
            return [("previous matcher", "n/a (git history not here)", "")]
        (tmp / "old_gocompat.py").write_text(old.stdout)
        source = compile_pattern(NESTED_DOUBLESTAR.decode().splitlines()[0])[1]
        for levels in (10, 12, 14, 16, 20):
            path = "/".join(["a", *(f"d{n}" for n in range(levels - 2)), "file.txt"])
            try:
                out = subprocess.run([sys.executable, "-c", _OLD_MATCH, str(tmp), source, path], capture_output=True,
                                     text=True, timeout=cap, check=True)
                previous = f"{float(out.stdout):.3f} s"
            except subprocess.TimeoutExpired:
                previous = f"> {cap:.0f} s (killed)"
            program = compile_go_regexp(source)
            started = time.perf_counter()
            for _ in range(1000):
                program.matches(path)
            per_match_ms = (time.perf_counter() - started) / 1000 * 1000
            rows.append((f"nested ** pattern, {levels}-level path", previous, f"{per_match_ms:.3f} ms"))
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cli_rows(config: Path) -> list[tuple[str, float, float | None, int, str]]:
    """`runner submit --detach` packing a folder with a 1-line ignore file (baseline), one of
    40,000 lines and one over the cap: wall time, peak RSS of the CLI process (GNU time's, a
    small parent: a child forked from this process would report this one's RSS), exit code."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-cli-", dir="/var/tmp"))
    gnu_time = shutil.which("time", path="/usr/bin")
    rows = []
    try:
        for name, ignore in (("1-line ignore file (baseline)", b"*.tmp\n"),
                             ("40,000-line ignore file (within the caps)", b"".join(b"dir%d/*.log\n" % n for n in range(40_000))),
                             ("100,000-line ignore file (over the cap)", b"".join(b"d%d/*\n" % n for n in range(100_000)))):
            ctx = tmp / uuid.uuid4().hex[:6]
            ctx.mkdir()
            (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx\n")
            (ctx / ".dockerignore").write_bytes(ignore)
            for path in member_paths(2000):
                (ctx / path).parent.mkdir(parents=True, exist_ok=True)
                (ctx / path).write_bytes(b"x")
            rss_file = tmp / "rss"
            command = [RUNNER, "submit", str(ctx), "-t", "127.0.0.1:5000/bench/cli:1", "--detach"]
            started = time.perf_counter()
            done = subprocess.run([gnu_time, "-f", "%M", "-o", str(rss_file), *command] if gnu_time else command,
                                  env={**os.environ, "RUNNER_CONFIG": str(config)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - started
            rss = int(rss_file.read_text().split()[-1]) / 1024 if gnu_time else None
            rows.append((name, seconds, rss, done.returncode, done.stderr.strip()[:70]))
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_ignore(old_cap: float) -> None:
    rows = ignore_rows()
    print(f"{'ignore file (raw queue, real worker, 1 slot)':<56} {'finished':>9} {'context':>8}  {'/healthz p50 / p99 / max':<34} "
          f"{'peak RSS':>9}  result")
    for name, r in rows:
        if isinstance(r, str):
            print(f"{name:<56} {'':>9} {'':>8}  {r:<34}")
            continue
        ready = f"{r['ready']:.2f}s" if r["ready"] is not None else "-"
        print(f"{name:<56} {r['seconds']:>8.2f}s {ready:>8}  {r['health']:<34} {r['hwm']:>6.0f}MiB  {r['status']} {r['error']}")
    print()
    print(f"{'matching one path':<40} {'previous (Python re)':>22} {'now (RE2, compile too)':>23}")
    for name, previous, now in previous_matcher_rows(old_cap):
        print(f"{name:<40} {previous:>22} {now:>23}")
    print()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-cfg-", dir="/var/tmp"))
    try:
        namespace = f"bench-hostile-{uuid.uuid4().hex[:8]}"
        config = tmp / "runner.yml"
        config.write_text(yaml.safe_dump({"redis_url": REDIS, "default_executor": "buildah", "worker": {"namespace": namespace},
                                          "registries": [{"host": "127.0.0.1:5000", "username": "ci", "password": "ci-password"}],
                                          "executors": {"buildah": {"enabled": True}}}))
        print(f"{'runner submit, 2,000 files':<44} {'wall s':>7} {'peak RSS':>9} {'exit':>5}  message")
        for name, seconds, rss, code, message in cli_rows(config):
            shown = f"{rss:.0f}MB" if rss is not None else "n/a"
            print(f"{name:<44} {seconds:>7.2f} {shown:>9} {code:>5}  {message}")
        drop_namespace(JobStore(REDIS, namespace).r, namespace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bombs", action="store_true")
    parser.add_argument("--skip-ignore", action="store_true", help="leave out the hostile .dockerignore rows")
    parser.add_argument("--only-ignore", action="store_true", help="only the hostile .dockerignore rows")
    parser.add_argument("--old-cap", type=float, default=30.0, help="seconds the previous matcher gets per path")
    parser.add_argument("--deliveries-only", action="store_true", help="only the delivery rows (bench/hostile_deliveries.py)")
    parser.add_argument("--skip-deliveries", action="store_true")
    parser.add_argument("--jobs", type=int, default=300, help="jobs while the git host is down")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the git host is down")
    parser.add_argument("--scale", type=float, default=1 / 60, help="time scale of the git host outage (1: real time)")
    parser.add_argument("--baseline-rev", help="also run the delivery rows' worker from this git revision")
    parser.add_argument("--delivery-rows", default="slow,down,off", help="slow, down (circuits on), off (circuits off)")
    args = parser.parse_args()
    if not args.skip_deliveries and not args.only_ignore:
        from bench.hostile_deliveries import print_rows

        print_rows(args.jobs, args.minutes, args.scale, args.baseline_rev, args.delivery_rows)
        print()
        if args.deliveries_only:
            return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; default limits: "
          f"{LimitsConfig().max_context_bytes:,} bytes, {LimitsConfig().max_context_files:,} files, "
          f"{LimitsConfig().max_context_header_bytes:,} header bytes\n")
    if not args.skip_ignore:
        print_ignore(args.old_cap)
    if args.only_ignore:
        return
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
