"""Log followers against a real `runner serve`: does /healthz stay fast while hundreds of
`GET /v1/jobs/ID/logs?follow=true` streams are open, and how many lines/s reach them?

Scenarios: no followers (baseline); 500 followers on one job; 100 followers on 100 different
jobs. Each job is a running record whose log already holds REPLAY lines (each follower
replays them) and grows at --rate lines/s, written with the store's own append_log (what a
worker's JobLog calls) by a producer thread, so the figures are the API's, not a build's.
The followers live in a separate process on raw asyncio sockets (cheap clients), one token.
While they are connected: /healthz p50/p99/max over --n sequential requests (also while the
followers connect and replay), GET /v1/jobs/ID, and lines/s delivered to all followers.
After the clients close, the server's follower count (GET /v1/followers) must return to 0.
Target: /healthz under 50 ms throughout.

With --baseline-rev REV (e.g. main) the same scenarios run first against `runner serve` of
that revision (its runner/ package from `git archive`, first on the server's PYTHONPATH),
then against this tree: the table shows both, measured in the same run.

Run:  .venv/bin/python bench/bench_followers.py [--n 200] [--rate 20] [--baseline-rev main]
Needs Redis (scripts/services.sh). Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drop_namespace  # noqa: E402
from runner.core.jobs import BuildRequest, JobRecord, Status  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
TOKEN = "bench-" + uuid.uuid4().hex
REDIS_URL = "redis://127.0.0.1:6379/0"
MARK = b"bench-line "
REPLAY = 1000  # lines each job's log holds before the followers connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the followers' process: raw HTTP/1.1 on asyncio, counting delivered lines ------------------
async def follow(port: int, job_id: str, counts: list[int], index: int, opened: asyncio.Event, total: int,
                 connected: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/jobs/{job_id}/logs?follow=true HTTP/1.1\r\nHost: bench\r\n"
                 f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    connected[0] += 1
    if connected[0] == total:
        opened.set()
    tail = b""
    try:
        while chunk := await reader.read(65536):
            data = tail + chunk
            counts[index] += data.count(MARK)
            tail = data[-(len(MARK) - 1):]
    finally:
        writer.close()


def followers_process(port: int, jobs: list[str], total: int, conn) -> None:
    async def main():
        counts, connected, opened = [0] * total, [0], asyncio.Event()
        tasks = [asyncio.create_task(follow(port, jobs[i % len(jobs)], counts, i, opened, total, connected))
                 for i in range(total)]
        await opened.wait()
        conn.send("connected")
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "count":
                conn.send(sum(counts))
            else:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                conn.send("closed")
                return

    asyncio.run(main())


# -- the bench ----------------------------------------------------------------------------------
def quantiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), q[98], max(samples)


def timed(client: httpx.Client, path: str, n: int, pause: float = 0.02) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
        time.sleep(pause)
    return out


def producer_process(namespace: str, jobs: list[str], rate: float, written, stop) -> None:
    """Appends `rate` lines/s to every job's log, in batches every 50 ms, as a worker's JobLog
    does (its own process, so it takes no time from the bench's timing client)."""
    store = JobStore(REDIS_URL, namespace)
    per_tick, carry, n = rate / 20, 0.0, 0
    while not stop.wait(0.05):
        carry += per_tick
        batch, carry = int(carry), carry - int(carry)
        for job_id in jobs if batch else ():
            store.append_log(job_id, [f"bench-line {n + k} " + "x" * 60 for k in range(batch)])
            written.value += batch
        n += batch


def make_jobs(store: JobStore, count: int) -> list[str]:
    jobs = []
    for _ in range(count):
        request = BuildRequest(tags=["127.0.0.1:5000/bench/follow:1"])
        store.create(JobRecord(id=request.id, request=request, executor="socket", queue="bench", status=Status.running))
        store.append_log(request.id, [f"replayed {k} " + "y" * 60 for k in range(REPLAY)])
        jobs.append(request.id)
    return jobs


def scenario(name: str, client: httpx.Client, store: JobStore, port: int, n_jobs: int, n_followers: int,
             rate: float, n: int) -> list[tuple]:
    jobs = make_jobs(store, n_jobs)
    rows = []
    if not n_followers:
        health = timed(client, "/healthz", n)
        get_job = timed(client, f"/v1/jobs/{jobs[0]}", n // 2)
        return [(name, 0, n_jobs, "-", "-", *quantiles(health), *quantiles(get_job)[:2], "-")]
    parent, child = mp.Pipe()
    proc = mp.Process(target=followers_process, args=(port, jobs, n_followers, child), daemon=True)
    start = time.perf_counter()
    proc.start()
    during_connect: list[float] = []
    while not parent.poll():
        t = time.perf_counter()
        r = client.get("/healthz")
        assert r.status_code == 200, (r.text, time.perf_counter() - t)
        during_connect.append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)
    assert parent.recv() == "connected"
    connect_s = time.perf_counter() - start
    written, stop = mp.Value("q", 0), mp.Event()
    producer = mp.Process(target=producer_process, args=(store.ns, jobs, rate, written, stop), daemon=True)
    producer.start()
    time.sleep(1)
    parent.send("count")
    before, written_before, t0 = parent.recv(), written.value, time.perf_counter()
    health = timed(client, "/healthz", n)
    get_job = timed(client, f"/v1/jobs/{jobs[0]}", n // 2)
    parent.send("count")
    delivered, elapsed = parent.recv() - before, time.perf_counter() - t0
    produced = (written.value - written_before) * n_followers / n_jobs  # lines the followers should get
    stop.set()
    producer.join(10)
    stats = client.get("/v1/followers").json()
    assert stats["followers"] == n_followers, stats
    parent.send("close")
    assert parent.recv() == "closed"
    proc.join(10)
    closed_at, left = time.perf_counter(), None
    while time.perf_counter() - closed_at < 30:
        left = client.get("/v1/followers").json()
        if left["followers"] == 0 and left["followed_jobs"] == 0:
            break
        time.sleep(0.05)
    gone_s = time.perf_counter() - closed_at
    label = f"{name}: connect+replay {REPLAY} lines"
    connecting = quantiles(during_connect) if len(during_connect) >= 2 else (during_connect[0],) * 3
    rows.append((label, n_followers, n_jobs, f"{connect_s:.1f} s", "-", *connecting, "-", "-", "-"))
    rows.append((f"{name}: live, {rate:g} lines/s per job", n_followers, n_jobs, f"{produced / elapsed:,.0f}",
                 f"{delivered / elapsed:,.0f}",
                 *quantiles(health), *quantiles(get_job)[:2],
                 f"{left['followers']} in {gone_s:.2f} s" if left else "?"))
    return rows


def checkout(rev: str) -> Path:
    """The runner package of `rev`, in a temporary folder to put first on a server's PYTHONPATH."""
    folder = Path(tempfile.mkdtemp(prefix="bench-followers-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "runner"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def measure(args: argparse.Namespace, code: Path | None) -> list[tuple]:
    """Every scenario against one `runner serve`: this tree's, or the one in `code`."""
    env = {**os.environ}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-followers-"))
    config = {"redis_url": REDIS_URL, "worker": {"namespace": namespace, "workspace": str(tmp / "work")},
              "api": {"tokens": [{"name": "bench", "token": TOKEN, "rights": ["read"]}],
                      "max_followers_per_token": max(args.followers, args.jobs) + 10}}
    (tmp / "runner.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([RUNNER, "serve", "--port", str(port)], env={**env, "RUNNER_CONFIG": str(tmp / "runner.yml")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = JobStore(REDIS_URL, namespace)
    rows: list[tuple] = []
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        for _ in range(100):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows += scenario("no followers", client, store, port, 1, 0, args.rate, args.n)
        rows += scenario(f"{args.followers} on 1 job", client, store, port, 1, args.followers, args.rate, args.n)
        rows += scenario(f"{args.jobs} on {args.jobs} jobs", client, store, port, args.jobs, args.jobs, args.rate, args.n)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        drop_namespace(store.r, namespace)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="/healthz requests per measurement")
    parser.add_argument("--rate", type=float, default=20, help="lines/s appended to each job's log")
    parser.add_argument("--followers", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--baseline-rev", help="also measure `runner serve` of this git revision first (e.g. main)")
    args = parser.parse_args()
    load = os.getloadavg()
    runs: list[tuple[str, list[tuple]]] = []
    if args.baseline_rev:
        base = checkout(args.baseline_rev)
        try:
            runs.append((args.baseline_rev, measure(args, base)))
        finally:
            subprocess.run(["rm", "-rf", str(base)], check=False)
    runs.append(("this tree", measure(args, None)))
    print(f"\nLog followers on one `runner serve` (one read token, loopback, {os.cpu_count()} cores; load average "
          f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after); /healthz {args.n} sequential requests per row, "
          "times in ms\n")
    header = (f"{'scenario':<44} {'flw':>4} {'jobs':>4} {'expect/s':>9} {'got/s':>9} {'hz p50':>7} {'hz p99':>7} "
              f"{'hz max':>7} {'job p50':>7} {'job p99':>7}  {'left after close'}")
    print(f"{'code':<10} {header}")
    for code, rows in runs:
        for name, flw, jobs, expect, got, p50, p99, top, j50, j99, left in rows:
            def ms(v):
                return f"{v:7.2f}" if isinstance(v, float) else f"{v:>7}"
            print(f"{code:<10} {name:<44} {flw:>4} {jobs:>4} {expect:>9} {got:>9} {ms(p50)} {ms(p99)} {ms(top)} {ms(j50)} "
                  f"{ms(j99)}  {left}")
    print("\nexpect/s: lines/s written to the logs x followers per job (what the followers should receive); "
          "got/s: what they received, all together, in the same window.")
    print("connect+replay rows: /healthz while the followers connect and each replays the log so far; "
          "expect/s there is the time until all were connected.")


if __name__ == "__main__":
    main()
