"""What a long history costs: 100,000 job records in Redis (a few running, the rest finished).

Measures, as a user would: an idle `runner worker`'s CPU over 30 s (utime+stime from
/proc/PID/stat; recovery and the reaper run meanwhile), `GET /v1/jobs` latency on a real
`runner serve` (newest 50; `status=running`; `status=succeeded`), and the wall time of
`runner list --status running`. Before the status indexes (issue 10): 9 CPU-s per 30 s idle,
4.7 s for `GET /v1/jobs?status=running`.

Run:  .venv/bin/python bench/bench_history.py [--records 100000] [--idle 30]
Needs Redis (scripts/services.sh). Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.store.jobstore import _CREATE as CREATE_SCRIPT
from runner.store.jobstore import JobStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
TOKEN = "bench-" + uuid.uuid4().hex
RUNNING = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(store: JobStore, records: int) -> None:
    """Finished records plus RUNNING running ones, whose leases a live-looking holder keeps."""
    request = BuildRequest(tags=["127.0.0.1:5000/bench/history:1"])
    script = store.r.register_script(CREATE_SCRIPT)
    pipe = store.r.pipeline(transaction=False)
    for n in range(records):
        status = Status.running if n < RUNNING else Status.succeeded
        record = JobRecord(id=f"h-{n}", request=request, executor="socket", queue=f"{store.ns}.socket", status=status)
        keys = [f"{store.ns}:job:{record.id}", f"{store.ns}:jobs", f"{store.ns}:status:{status.value}", f"{store.ns}:reserve:{record.id}"]
        script(keys=keys, args=[record.model_dump_json(), record.created_at.timestamp(), record.id], client=pipe)
        if status is Status.running:
            pipe.set(f"{store.ns}:lease:{record.id}", "bench-holder", px=3_600_000)
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(client: httpx.Client, path: str, n: int = 30) -> tuple[float, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    config = {"redis_url": "redis://127.0.0.1:6379/0", "default_executor": "socket",
              "registries": [{"host": "127.0.0.1:5000"}], "executors": {"socket": {"enabled": True}},
              "worker": {"namespace": namespace, "workspace": str(tmp / "work"), "reap_interval": 10},
              "api": {"tokens": [{"name": "bench", "token": TOKEN, "rights": ["read"]}]}}
    (tmp / "runner.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RUNNER_CONFIG": str(tmp / "runner.yml")}
    store = JobStore("redis://127.0.0.1:6379/0", namespace)
    procs: list[subprocess.Popen] = []
    rows = []
    try:
        started = time.perf_counter()
        seed(store, args.records)
        print(f"seeded {args.records:,} records in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        log = (tmp / "worker.log").open("w")
        worker = subprocess.Popen([RUNNER, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)
        while " ready." not in (tmp / "worker.log").read_text():
            time.sleep(0.1)
        time.sleep(2)
        before = cpu_seconds(worker.pid)
        time.sleep(args.idle)
        used = cpu_seconds(worker.pid) - before
        rows.append((f"idle worker CPU over {args.idle:.0f} s", f"{used:.2f} CPU-s", "9 CPU-s before"))
        port = free_port()
        procs.append(subprocess.Popen([RUNNER, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            for _ in range(100):
                try:
                    c.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for path, before_text in (("/v1/jobs?limit=50", ""), ("/v1/jobs?status=running", "4.7 s before"),
                                      ("/v1/jobs?status=succeeded&limit=50", "")):
                p50, p99 = latency(c, path)
                rows.append((f"GET {path}", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", before_text))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([RUNNER, "list", "--status", "running"], env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        rows.append(("`runner list --status running` wall", f"median {statistics.median(times) * 1000:.0f} ms", ""))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        drop_namespace(store.r, namespace)
    print(f"\nhistory: {args.records:,} records ({RUNNING} running)\n")
    print(f"| {'measure':<44} | {'result':<28} | {'reference':<14} |")
    print(f"|{'-' * 46}|{'-' * 30}|{'-' * 16}|")
    for name, value, ref in rows:
        print(f"| {name:<44} | {value:<28} | {ref:<14} |")


if __name__ == "__main__":
    main()
