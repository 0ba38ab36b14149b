"""What the dashboard costs: the jobs page with 100,000 records, and a 1,000,000-line log in a
real browser (Debian's Chromium, headless, as in tests/test_dashboard.py).

1. Jobs page, server time (the `Server-Timing` header the rows fragment sends) and wall time
   on loopback, over `--reps` requests each: the page shell, the newest 50 rows, a status
   filter, a page deep in the history (`before`), and the worst filter there is (an executor
   no record has: the bounded scan reads its whole budget). Target: < 100 ms server time.
2. A finished job's 1,000,000-line log opened in the browser: time to the first and to the last
   line on screen (from navigation start), with the tab's responsiveness meanwhile: the gaps
   between ticks of a 16 ms timer (a gap is how long an input would have waited) and the
   long tasks (> 50 ms) Chromium reports; the DOM size after.
3. The same log written live (as fast as the store takes it) while the page follows: time from
   the first write to the first line on screen, and from the last write to the last line.

Run:  .venv/bin/python bench/bench_dashboard.py [--records 100000] [--lines 1000000] [--reps 30]
Needs Redis and chromium (scripts/services.sh). Prints a table. Not part of the test suite.
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
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_history import seed  # noqa: E402
from bench.common import drop_namespace  # noqa: E402
from runner.core.jobs import BuildRequest, JobRecord, Status, now  # noqa: E402
from runner.store.joblog import JobLog  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from tests.plugins import use_fake  # noqa: E402
from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, TOKEN_KEY  # noqa: E402

use_fake()  # the fake executor is a plugin of the tests, not of the runner

RUNNER = str(Path(sys.executable).with_name("runner"))
TOKEN = "bench-" + uuid.uuid4().hex
WRITE_LINES = 10_000  # lines per write of the live writer (a build's burst of output)
#: injected before the page's own scripts (CDP; the page's CSP does not apply to it): a 16 ms
#: timer's gaps and Chromium's long tasks, from navigation on
MONITOR = """
window.benchGaps = []; window.benchLongTasks = [];
let last = performance.now();
setInterval(() => { const t = performance.now(); window.benchGaps.push([t, t - last]); last = t; }, 16);
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.benchLongTasks.push([e.startTime, e.duration]); })
  .observe({entryTypes: ["longtask"]});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def page_times(client: httpx.Client, path: str, reps: int) -> tuple[list[float], list[float]]:
    """(server ms, wall ms) per request."""
    server, wall = [], []
    for _ in range(reps):
        start = time.perf_counter()
        response = client.get(path)
        wall.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        timing = response.headers.get("server-timing", "")
        if "dur=" in timing:
            server.append(float(timing.split("dur=")[1]))
    return server, wall


def write_log(store: JobStore, job_id: str, lines: int, marks: list[float] | None = None) -> None:
    log = JobLog(store, job_id, max_lines=2 * lines, max_bytes=1024**3)
    for start in range(0, lines, WRITE_LINES):
        log.write("".join(f"step {n + 1:>7} \x1b[32mok\x1b[0m compiling module_{n % 977}.py\n"
                          for n in range(start, min(start + WRITE_LINES, lines))))
        if marks is not None:
            marks.append(time.time())
    log.close()


def new_job(store: JobStore, status: Status) -> str:
    job_id = f"bench-log-{uuid.uuid4().hex[:8]}"
    store.create(JobRecord(id=job_id, request=BuildRequest(id=job_id, tags=["127.0.0.1:5000/bench/log:1"]), executor="socket",
                           queue="q", status=status, started_at=now(), finished_at=now() if status.finished else None))
    return job_id


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": MONITOR})
    return driver


def open_log(driver, url: str, job_id: str) -> None:
    driver.get(url + "/fleet")
    driver.execute_script(f"sessionStorage.setItem('{TOKEN_KEY}', arguments[0])", TOKEN)
    driver.get(f"{url}/jobs/{job_id}")


def wait_ended(driver, lines: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("const l = document.getElementById('log'); return l && [l.dataset.state, l.dataset.lines]")
        if state and state[0] == "ended" and state[1] == str(lines):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the log did not end in the browser within {timeout}s: {state}")


def responsiveness(driver) -> dict:
    return driver.execute_script("""
        const m = (n) => performance.getEntriesByName(n)[0];
        return {origin: performance.timeOrigin, first: m('log:first-line')?.startTime, last: m('log:last-line')?.startTime,
                gaps: window.benchGaps, longTasks: window.benchLongTasks,
                dom: document.querySelectorAll('#log .line').length, nodes: document.getElementsByTagName('*').length};""")


def gap_summary(stats: dict, since: float | None = None) -> str:
    """Timer gaps and long tasks while the log streamed in (from `since`, or its first line, to its last)."""
    start = stats["first"] if since is None else since
    gaps = [gap for at, gap in stats["gaps"] if start <= at <= stats["last"]]
    longs = [duration for at, duration in stats["longTasks"] if start <= at <= stats["last"]]
    return (f"timer gap p50 {statistics.median(gaps):.0f} ms, p99 {percentile(gaps, 0.99):.0f} ms, max {max(gaps):.0f} ms; "
            f"{len(longs)} long tasks (max {max(longs, default=0):.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    namespace = f"bench-dash-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    config = {"redis_url": "redis://127.0.0.1:6379/0", "default_executor": "socket",
              "registries": [{"host": "127.0.0.1:5000"}], "executors": {"socket": {"enabled": True}, "fake": {"enabled": True}},
              "worker": {"namespace": namespace, "workspace": str(tmp / "work")},
              "api": {"tokens": [{"name": "bench", "token": TOKEN, "rights": ["read"]}]}}
    (tmp / "runner.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RUNNER_CONFIG": str(tmp / "runner.yml")}
    store = JobStore("redis://127.0.0.1:6379/0", namespace)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([RUNNER, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    rows: list[tuple[str, str]] = []
    driver = None
    try:
        started = time.perf_counter()
        seed(store, args.records)
        print(f"seeded {args.records:,} records in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        middle = store.r.zrange(store.index_key(), args.records // 2, args.records // 2, withscores=True)[0][1]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            for _ in range(100):
                try:
                    c.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            c.get("/ui/jobs/rows")  # warm: templates compiled
            for label, path in (("page shell  GET /", "/"),
                                ("newest 50 rows", "/ui/jobs/rows?limit=50"),
                                ("status=running", "/ui/jobs/rows?status=running&limit=50"),
                                ("status=succeeded", "/ui/jobs/rows?status=succeeded&limit=50"),
                                ("deep page (before=the middle)", f"/ui/jobs/rows?limit=50&before={middle!r}"),
                                ("executor no record has (full scan budget)", "/ui/jobs/rows?executor=fake&limit=50"),
                                ("repository no record has (full scan budget)", "/ui/jobs/rows?repo=nothing/here&limit=50")):
                server, wall = page_times(c, path, args.reps)
                shown = (f"server p50 {statistics.median(server):.1f} ms, p99 {percentile(server, 0.99):.1f} ms; "
                         if server else "")
                rows.append((f"{label}", f"{shown}wall p50 {statistics.median(wall):.1f} ms, p99 {percentile(wall, 0.99):.1f} ms"))

        driver = browser()
        job_id = new_job(store, Status.succeeded)
        started = time.perf_counter()
        write_log(store, job_id, args.lines)
        store.end_log(job_id, Status.succeeded)
        print(f"wrote a {args.lines:,}-line log in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        open_log(driver, url, job_id)
        wait_ended(driver, args.lines)
        stats = responsiveness(driver)
        rows.append((f"{args.lines:,}-line log, finished: first line / last line on screen",
                     f"{stats['first'] / 1000:.2f} s / {stats['last'] / 1000:.2f} s after navigation"))
        rows.append(("  tab while the lines streamed in", gap_summary(stats)))
        rows.append(("  DOM after", f"{stats['dom']} log rows, {stats['nodes']} elements in the page"))

        job_id = new_job(store, Status.running)
        open_log(driver, url, job_id)
        time.sleep(2)  # the page is following, its log empty
        marks: list[float] = []
        writer = threading.Thread(target=write_log, args=(store, job_id, args.lines, marks))
        first_write = time.time()
        writer.start()
        writer.join()
        store.update(job_id, lambda r: r.model_copy(update={"status": Status.succeeded, "finished_at": now()}))
        store.end_log(job_id, Status.succeeded)
        wait_ended(driver, args.lines)
        stats = responsiveness(driver)
        first_seen = (stats["origin"] + stats["first"]) / 1000
        last_seen = (stats["origin"] + stats["last"]) / 1000
        rows.append((f"{args.lines:,}-line log, written live ({WRITE_LINES:,} lines a write)",
                     f"writer took {marks[-1] - first_write:.2f} s; first line on screen {1000 * (first_seen - first_write):.0f} ms "
                     f"after the first write, last line {1000 * (last_seen - marks[-1]):.0f} ms after the last"))
        rows.append(("  tab while the lines streamed in", gap_summary(stats, 1000 * first_write - stats["origin"])))
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
        drop_namespace(store.r, namespace)
    print(f"\ndashboard: {args.records:,} records; {args.lines:,}-line logs; {args.reps} requests per row\n")
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure':<{width}} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
