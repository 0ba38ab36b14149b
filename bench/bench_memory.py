"""Memory bounds (issue 16, item 6): peak RSS (VmHWM from /proc) of

- a `runner worker` building a job with a 1 GiB context and a 1,000,000-line log
  (socket executor, classic builder: BuildKit clips a step's log at 2 MiB);
- a fresh `runner worker` spooling a context posted straight to Redis as ONE list element of
  --raw-mib MiB (what `tar | redis-cli -x RPUSH` makes; Redis allows up to 512 MB);
- `runner serve` while --followers clients (curl) follow that log through the API;
- `runner submit` uploading the 1 GiB context;

and how fast the log reaches readers: `runner logs --follow` (Redis and --api) during the build
(lines, how long after the log's end it finished), and full replays after it (lines/s).
Target: worker and serve <= 150 MB.

Run:  .venv/bin/python bench/bench_memory.py [--context-mib 1024] [--lines 1000000] [--followers 20] [--raw-mib 400]
Needs the services (scripts/services.sh), ~3 GiB free in Redis and on disk. Prints a table.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
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

from bench.common import dev_env, drop_namespace  # noqa: E402
from runner.config.settings import load_settings  # noqa: E402
from runner.store.buildqueue import send_build  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/base/busybox:1"
TOKEN = "bench-" + uuid.uuid4().hex
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Stack:
    """A config in its own namespace, a worker and an API server started from it."""

    def __init__(self, workdir: Path, lines: int, context_mib: int, raw_mib: int):
        dev = dev_env()
        self.port = free_port()
        self.config = {
            "redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": "socket", "builder": "classic",
            "registries": [{"host": REGISTRY, "username": dev["RUNNER_DEV_REGISTRY_USER"],
                            "password": dev["RUNNER_DEV_REGISTRY_PASSWORD"]}],
            "executors": {"socket": {"enabled": True}},
            "limits": {"max_context_bytes": (max(context_mib, raw_mib) + 64) * MB, "max_log_lines": lines * 2 + 1000,
                       "max_log_bytes": 256 * MB},
            "worker": {"namespace": f"benchmem-{uuid.uuid4().hex[:6]}", "workspace": str(workdir / "work"),
                       "concurrency": 1, "metrics_port": 0},
            "api": {"port": self.port, "tokens": [{"name": "bench", "token": TOKEN, "rights": ["submit", "read", "cancel"]}],
                    "max_followers_per_token": 1000},
        }
        self.path = workdir / "bench.yml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.env = {**os.environ, "RUNNER_CONFIG": str(self.path)}
        os.environ["RUNNER_CONFIG"] = str(self.path)
        self.settings = load_settings()
        self.store = JobStore.from_settings(self.settings)
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, ready: str) -> subprocess.Popen:
        log = self.workdir / f"{args[0]}-{len(self.procs)}.log"
        proc = subprocess.Popen([RUNNER, *args], env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        for _ in range(600):
            if ready in log.read_text():
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"`runner {' '.join(args)}` did not start:\n{log.read_text()[-2000:]}")

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.stop(proc)
        ns = self.settings.worker.namespace
        drop_namespace(self.store.r, ns)

    def wait_status(self, job_id: str, done: set[str], timeout: float = 1800) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.store.get(job_id)
            if record is not None and record.status.value in done:
                return record.status.value
            time.sleep(0.05)
        raise SystemExit(f"job {job_id} not {done} after {timeout}s")


class Follower(threading.Thread):
    """One log reader (a command line) counting lines, with when it ended."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        super().__init__(daemon=True)
        self.argv, self.env = argv, env
        self.lines, self.ended, self.started = 0, 0.0, 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        for block in iter(lambda: proc.stdout.read(1 << 20), b""):
            self.lines += block.count(b"\n")
        proc.wait()
        self.ended = time.monotonic()


def make_context(directory: Path, mib: int, lines: int) -> None:
    directory.mkdir()
    (directory / "Dockerfile").write_text(f"FROM {BASE}\nRUN seq 1 {lines}\n")
    with (directory / "big.bin").open("wb") as out:
        for _ in range(mib // 16):
            out.write(os.urandom(16 * MB))


def raw_element_tar(mib: int) -> bytes:
    """A context tar as one blob: a Dockerfile and a file of `mib` MiB."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dockerfile = f"FROM {BASE}\nRUN echo raw\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        info = tarfile.TarInfo("big.bin")
        info.size = mib * MB
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--context-mib", type=int, default=1024)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--raw-mib", type=int, default=400, help="size of the one-element raw-queue context (0: skip)")
    args = parser.parse_args()
    rows, readers = [], []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, args.lines, args.context_mib, args.raw_mib)
        try:
            make_context(workdir / "ctx", args.context_mib, args.lines)
            worker = stack.start("worker", ready=" ready.")
            server = stack.start("serve", ready="Uvicorn running")
            idle_worker, idle_server = status_kib(worker.pid, "VmRSS"), status_kib(server.pid, "VmRSS")

            # 1. submit through the CLI (upload 1 GiB), detached
            job_id = f"mem-{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            submit = subprocess.Popen([RUNNER, "submit", str(workdir / "ctx"), "-t", f"{REGISTRY}/bench/mem:1", "--id", job_id,
                                       "--detach"], env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, wait_status, usage = os.wait4(submit.pid, 0)
            submit.returncode = os.waitstatus_to_exitcode(wait_status)
            if submit.returncode:
                raise SystemExit(f"submit failed: {submit.stderr.read().decode() if submit.stderr else ''}")
            upload_s = time.monotonic() - t0
            rows.append((f"runner submit, uploading {args.context_mib} MiB", usage.ru_maxrss, None, "(client)"))

            # 2. the followers: curl through the API, and `runner logs --follow` on Redis and on the API
            stack.wait_status(job_id, {"running", "succeeded", "failed"})
            api = [RUNNER, "logs", job_id, "--follow", "--api", stack.url]
            token_env = {**stack.env, "RUNNER_API_TOKEN": TOKEN}
            followers = [Follower(["curl", "-sSN", "-H", f"Authorization: Bearer {TOKEN}",
                                   f"{stack.url}/v1/jobs/{job_id}/logs?follow=true"]) for _ in range(args.followers)]
            cli_redis, cli_api = Follower([RUNNER, "logs", job_id, "--follow"], stack.env), Follower(api, token_env)
            for follower in (*followers, cli_redis, cli_api):
                follower.start()
            status = stack.wait_status(job_id, {"succeeded", "failed", "cancelled", "timed_out"})
            log_end = time.monotonic()
            for follower in (*followers, cli_redis, cli_api):
                follower.join(600)
            if status != "succeeded":
                raise SystemExit(f"the build {status}: {stack.store.get(job_id).error}")
            record = stack.store.get(job_id)
            build_s = (record.finished_at - record.started_at).total_seconds()
            rows.append((f"worker: {args.context_mib} MiB context, {args.lines:,}-line log (socket, classic)",
                         status_kib(worker.pid, "VmHWM"), idle_worker, "<= 150 MB"))
            rows.append((f"runner serve: {args.followers} API followers of that log", status_kib(server.pid, "VmHWM"),
                         idle_server, "<= 150 MB"))
            slowest = min(followers, key=lambda f: f.lines) if followers else None
            for label, follower in ((f"curl follow via API (fewest of {args.followers})", slowest),
                                    ("runner logs --follow (Redis)", cli_redis), ("runner logs --follow --api", cli_api)):
                if follower is not None:
                    readers.append((label, follower.lines, follower.ended - follower.started,
                                    f"+{max(0.0, follower.ended - log_end):.2f} s"))

            # 3. replays of the finished log
            for label, argv, env in (("runner logs (replay, Redis)", [RUNNER, "logs", job_id], stack.env),
                                     ("runner logs --api (replay)", [RUNNER, "logs", job_id, "--api", stack.url], token_env)):
                follower = Follower(argv, env)
                follower.run()
                readers.append((label, follower.lines, follower.ended - follower.started, ""))
            stack.stop(server)
            stack.stop(worker)

            # 4. a context posted straight to Redis as one element, on a fresh worker
            if args.raw_mib:
                worker = stack.start("worker", ready=" ready.")
                idle = status_kib(worker.pid, "VmRSS")
                raw_id = f"raw-{uuid.uuid4().hex[:8]}"
                blob = raw_element_tar(args.raw_mib)
                stack.store.raw.rpush(f"{stack.settings.worker.namespace}:ctx:{raw_id}", blob)
                del blob
                send_build(stack.store.r, {"id": raw_id, "tags": [f"{REGISTRY}/bench/raw:1"], "executor": "socket"},
                           stack.settings.queue_for("socket"))
                status = stack.wait_status(raw_id, {"succeeded", "failed", "cancelled", "timed_out"})
                if status != "succeeded":
                    raise SystemExit(f"the raw-queue job {status}: {stack.store.get(raw_id).error}")
                rows.append((f"worker: {args.raw_mib} MiB context as one raw-queue element ({status})",
                             status_kib(worker.pid, "VmHWM"), idle, "<= 150 MB"))
        finally:
            stack.close()

    print(f"\nPeak RSS (VmHWM from /proc), load average {os.getloadavg()[0]:.2f}; upload {upload_s:.1f} s, "
          f"build {build_s:.1f} s")
    print("| process | peak RSS | idle RSS before | target |\n|---|---|---|---|")
    for label, peak, idle, target in rows:
        print(f"| {label} | {peak / 1024:.0f} MB | {'' if idle is None else f'{idle / 1024:.0f} MB'} | {target} |")
    print(f"\nLog readers ({args.lines:,}-line build log)")
    print("| reader | lines | wall | lines/s | finished after the log ended |\n|---|---|---|---|---|")
    for label, lines, wall, after in readers:
        print(f"| {label} | {lines:,} | {wall:.2f} s | {lines / wall:,.0f} | {after} |")


if __name__ == "__main__":
    main()
