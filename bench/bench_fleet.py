"""Many workers, one queue, with real builds (issue 13 §5): one `runner serve`, one or two
`runner worker` processes with separate storage (workspace and buildah storage root each: two
"hosts" on one machine), N unique small builds pushed to the dev registry through the API.

Scenarios: one worker; two workers; two workers with one SIGTERMed once a quarter of the jobs
are done (it drains: finishes what it runs, takes nothing new). Per scenario: wall time,
throughput, the split between workers, queue wait and job time (p50/p95, from the records),
jobs built more than once or lost, and the sum of runner_jobs_total over the workers'
/metrics (read before any worker stops, plus the stopped worker's records). Prints a table.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_fleet.py [--jobs 40] [--executor buildah] [--concurrency 2]
Needs scripts/services.sh (Redis, registry, buildah or Docker Engine). Starts and stops its own
processes; its namespace's keys, storage roots and workspaces are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace  # noqa: E402
from tests.support.fleet import API, ApiClient, free_port, sample, scrape, status, wait_for  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
DEV = dev_env()
STORAGE = Path("/var/tmp/runner-bench-fleet")


def config(ns: str, workdir: Path, host: str, executor: str, concurrency: int, metrics_port: int) -> dict:
    executors: dict = {executor: {"enabled": True}}
    if executor == "buildah":
        executors["buildah"].update(storage_root=str(STORAGE / ns / host / "root"), run_root=str(STORAGE / ns / host / "run"))
    return {
        "redis_url": DEV["RUNNER_DEV_REDIS_URL"], "default_executor": executor,
        "registries": [{"host": DEV["RUNNER_DEV_REGISTRY"], "username": DEV["RUNNER_DEV_REGISTRY_USER"],
                        "password": DEV["RUNNER_DEV_REGISTRY_PASSWORD"]}],
        "executors": executors, "api": API,
        "worker": {"namespace": ns, "workspace": str(workdir / host / "work"), "concurrency": concurrency,
                   "shutdown_grace": 120, "metrics_port": metrics_port, "metrics_host": "127.0.0.1"},
    }


def start(args: list[str], cfg: Path, log: Path, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen([RUNNER, *args], env={**os.environ, "RUNNER_CONFIG": str(cfg)}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: ready in log.read_text() or proc.poll() is not None, 60, f"{args[0]} to start")
    if proc.poll() is not None:
        raise SystemExit(f"{args[0]} exited: {log.read_text()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(180)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def scenario(name: str, workers: int, jobs: int, executor: str, concurrency: int, sigterm: bool) -> dict:
    ns = f"bench-fleet-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    procs: list[subprocess.Popen] = []
    try:
        ports, hosts = [], []
        for index in range(workers):
            port = free_port()
            cfg = workdir / f"host{index}.yml"
            cfg.write_text(yaml.safe_dump(config(ns, workdir, f"host{index}", executor, concurrency, port)))
            proc = start(["worker"], cfg, workdir / f"host{index}.log", " ready.")
            procs.append(proc)
            ports.append(port)
            hosts.append(f"{socket.gethostname()}:{proc.pid}")
        api_port = free_port()
        serve = start(["serve", "--host", "127.0.0.1", "--port", str(api_port)], workdir / "host0.yml", workdir / "serve.log",
                      "Uvicorn running")
        procs.append(serve)
        api = ApiClient(f"http://127.0.0.1:{api_port}")
        wait_for(lambda: sample(scrape(f"{api.url}/metrics"), "runner_workers", executor=executor) == workers, 30, "workers live")

        began = time.monotonic()
        ids = []
        for _ in range(jobs):
            dockerfile = f"FROM {DEV['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} > /fleet\n"
            ids.append(api.submit({"tags": [f"{DEV['RUNNER_DEV_REGISTRY']}/bench/fleet:{uuid.uuid4().hex[:10]}"],
                                   "executor": executor}, {"Dockerfile": dockerfile}))
        if sigterm:
            wait_for(lambda: sum(api.record(j)["status"] == "succeeded" for j in ids) >= jobs // 4, 600, "a quarter done")
            os.killpg(procs[workers - 1].pid, signal.SIGTERM)
            assert wait_for(lambda: status(f"http://127.0.0.1:{ports[-1]}/readyz") in (503, None), 5, "503")
        records = wait_for(lambda: (rs := [api.record(j) for j in ids]) and all(r["status"] not in ("queued", "running")
                                                                                for r in rs) and rs, 1800, "all jobs", every=0.5)
        wall = time.monotonic() - began
        live = [p for i, p in enumerate(ports) if not (sigterm and i == workers - 1)]
        counted = sum(sample(scrape(f"http://127.0.0.1:{p}/metrics"), "runner_jobs_total", executor=executor,
                             status="succeeded") or 0 for p in live)
        stopped_records = sum(1 for r in records if sigterm and r["worker"] == hosts[-1])
        twice = sum(1 for j in ids if api.log(j).count(f"[runner] job {j} running on ") != 1)
        result = {
            "scenario": name, "workers": workers, "jobs": jobs, "wall": wall, "rate": jobs / wall,
            "split": "/".join(str(sum(1 for r in records if r["worker"] == h)) for h in hosts),
            "failed": sum(1 for r in records if r["status"] != "succeeded"),
            "twice": twice, "lost": sum(1 for r in records if not r["finished_at"]),
            "wait50": pct([ts(r["started_at"]) - ts(r["created_at"]) for r in records], 0.5),
            "job50": pct([ts(r["finished_at"]) - ts(r["started_at"]) for r in records], 0.5),
            "job95": pct([ts(r["finished_at"]) - ts(r["started_at"]) for r in records], 0.95),
            "metrics": counted + (stopped_records if sigterm else 0),
        }
        api.close()
        return result
    finally:
        for proc in reversed(procs):
            stop(proc)
        import redis

        drop_namespace(redis.Redis.from_url(DEV["RUNNER_DEV_REDIS_URL"]), ns)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(STORAGE / ns, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--executor", default="buildah", choices=["buildah", "socket"])
    parser.add_argument("--concurrency", type=int, default=2, help="worker.concurrency of each worker")
    args = parser.parse_args()
    rows = [scenario("one worker", 1, args.jobs, args.executor, args.concurrency, False),
            scenario("two workers", 2, args.jobs, args.executor, args.concurrency, False),
            scenario("two, one SIGTERMed at 25%", 2, args.jobs, args.executor, args.concurrency, True)]
    print(f"\n{args.jobs} unique builds (FROM busybox, one RUN, push), executor {args.executor}, "
          f"concurrency {args.concurrency} per worker, {os.cpu_count()} cores; one API, workers with separate storage\n")
    head = (f"{'scenario':<28} {'wall s':>7} {'jobs/s':>7} {'split':>7} {'queue wait p50':>15} {'job p50':>8} "
            f"{'job p95':>8} {'failed':>6} {'twice':>5} {'lost':>4} {'metrics sum':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['scenario']:<28} {r['wall']:>7.1f} {r['rate']:>7.2f} {r['split']:>7} {r['wait50']:>14.2f}s "
              f"{r['job50']:>7.2f}s {r['job95']:>7.2f}s {r['failed']:>6} {r['twice']:>5} {r['lost']:>4} {r['metrics']:>11.0f}")
    print("\nsplit: jobs per worker (the SIGTERMed one last); metrics sum: runner_jobs_total{status=\"succeeded\"} over "
          "the live workers' /metrics, plus the stopped worker's finished jobs (its endpoint goes with it). "
          "Both workers share the same 2 cores, so a second worker adds slots, not CPU.")


if __name__ == "__main__":
    main()
