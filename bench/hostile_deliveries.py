"""bench_hostile's delivery rows: what slow and absent hosts cost a real `runner worker`.

Slow-loris callbacks: four jobs whose callback receiver answers one byte a second, for ever
(tests/support/hosts.py), on a worker with the defaults (2 build slots, 2 delivery threads,
callbacks.timeout 10 s). Measured: an unrelated job's pickup (its record's created_at to
started_at) while the four hang, against the same worker's pickup with nothing hanging; over
the next 40 s, the longest a slow POST held its connection, the most POSTs of one callback
open at once, and the most connections open at once (delivery threads held).

Git host down: `jobs` jobs from GitHub commits while the status API answers 503 to everything
(the fake GitHub of tests/test_statuses.py), for `minutes` of outage; then it answers again.
Measured: requests that reached the host while it was down, the time from its return until
every commit shows its final state, and final states lost (given up). The whole schedule is
scaled by `scale` (outage, backoffs, probe steps and deadlines alike; 1 = real time; the
default 1/60 runs the 30 min outage in 30 s): the time after the return is wall time, with
the probe step scaled too, so at scale 1 add up to circuit_max_backoff (30 s) of detection.
Baseline in the same run: circuits off (deliveries.circuit_failures 0). `--baseline-rev REV`
also runs the previous code (`git archive REV`, the worker only) through both rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import dev_env, drop_namespace, load_line
from runner.config.settings import load_settings
from runner.core.jobs import BuildRequest
from runner.entry.submission import submit
from runner.store.jobstore import JobStore
from runner.store.outbox import Outbox
from tests.support.hosts import SlowHost
from tests.test_statuses import FakeHost, empty_context, new_sha, serve

ROOT = Path(__file__).resolve().parent.parent
RUNNER = str(Path(sys.executable).with_name("runner"))
TOKEN = "ghp_bench_" + uuid.uuid4().hex


class BenchWorker:
    """A real `runner worker` (fake executor) on its own namespace and config; `tree`: run the
    worker from another copy of the code (a baseline revision; the config then names only keys
    it knows). This process submits with today's code, reading the same config."""

    def __init__(self, tmp: Path, tree: Path | None = None, **sections):
        dev = dev_env()
        self.namespace = f"bench-dl-{uuid.uuid4().hex[:6]}"
        config = {"redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": "fake",
                  "registries": [{"host": "127.0.0.1:5000"}], "executors": {"fake": {"enabled": True}},
                  "worker": {"namespace": self.namespace, "workspace": str(tmp / f"work-{self.namespace}"),
                             "metrics_port": 0, "recover_interval": 1.0}, **sections}
        path = tmp / f"{self.namespace}.yml"
        path.write_text(yaml.safe_dump(config))
        os.environ["RUNNER_CONFIG"] = str(path)
        self.settings = load_settings()
        self.store = JobStore.from_settings(self.settings)
        env = {**os.environ, "PYTHONPATH": str(tree or ROOT)}
        self.log_path = tmp / f"{self.namespace}.log"
        self.proc = subprocess.Popen([RUNNER, "worker"], env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while " ready." not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker not ready: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def submit(self, callback_url: str | None = None, sha: str | None = None) -> str:
        request = BuildRequest(tags=["127.0.0.1:5000/bench/deliveries:1"], executor="fake", callback_url=callback_url,
                               source={"host": "github", "repository": "acme/app", "sha": sha} if sha else None)
        writer = self.store.context_writer(request.id, 10**6)
        writer.write(empty_context())
        writer.close()
        submit(request, self.settings, self.store)
        return request.id

    def pickup(self, job_id: str, timeout: float) -> float | None:
        """created_at -> started_at of the job, or None if it did not start within `timeout`."""
        deadline = time.monotonic() + timeout
        while (record := self.store.get(job_id)) is None or record.started_at is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return (record.started_at - record.created_at).total_seconds()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # slow deliveries would hold a graceful stop
            self.proc.wait(30)
        drop_namespace(self.store.r, self.namespace)


# -- 4 slow-loris callbacks --------------------------------------------------------------------------------
def slow_callbacks(tmp: Path, tree: Path | None = None, window: float = 40.0) -> dict:
    host = SlowHost("headers", interval=1.0).start()
    callbacks = {"allowed_hosts": ["127.0.0.1"]}
    worker = BenchWorker(tmp, tree, callbacks=callbacks)
    try:
        calm = [worker.pickup(worker.submit(), 30) for _ in range(5)]
        slow = [worker.submit(host.url) for _ in range(4)]
        host.wait(lambda: all((r := worker.store.get(job)) and r.finished for job in slow) and host.open_now() >= 2, 60,
                  "the four jobs done and two slow callbacks connected")
        time.sleep(3)  # every callback taken that a worker would take
        pickup = worker.pickup(worker.submit(), 120)
        began = time.monotonic()
        while time.monotonic() - began < window:
            time.sleep(0.2)
        now = time.monotonic()
        held = max(((c.closed or now) - c.opened) for c in host.connections)
        by_callback: dict[bytes, list] = {}
        for c in host.connections:
            key = next((line for line in c.request.split(b"\r\n") if line.lower().startswith(b"webhook-id")), b"")
            by_callback.setdefault(key, []).append(c)
        overlap = max(max(sum(1 for d in group if d.opened <= c.opened < (d.closed or now)) for c in group)
                      for group in by_callback.values())
        return {"calm": sorted(p for p in calm if p is not None)[len(calm) // 2], "pickup": pickup, "held": held,
                "still_open": sum(1 for c in host.connections if c.closed is None), "overlap": overlap,
                "max_open": host.max_open, "posts": len(host.connections)}
    finally:
        host.close()
        worker.stop()


# -- the git host down -------------------------------------------------------------------------------------
def host_down(tmp: Path, jobs: int, minutes: float, scale: float, circuits: bool, tree: Path | None = None,
              cap: float = 600.0) -> dict:
    host = FakeHost("github", TOKEN, {"acme/app"})
    server = serve(host)
    statuses = {"github": {"api_url": host.url, "token": TOKEN}, "backoff": 1.0 * scale, "max_backoff": 300.0 * scale,
                "deadline": 3600.0 * scale}
    deliveries = {"recover_after": 30.0 * max(scale, 1 / 30)}
    if tree is None:
        statuses["final_deadline"] = 86400.0 * scale
        deliveries.update({"circuit_backoff": 1.0 * scale, "circuit_max_backoff": 30.0 * scale} if circuits else
                          {"circuit_failures": 0})
    host.down = True
    worker = BenchWorker(tmp, tree, statuses=statuses, deliveries=deliveries)
    try:
        down_since = time.monotonic()
        shas = [new_sha() for _ in range(jobs)]
        for sha in shas:
            worker.submit(sha=sha)
        outage = minutes * 60 * scale
        while time.monotonic() - down_since < outage:
            time.sleep(0.1)
        refused = host.refused
        host.down = False
        back = time.monotonic()
        missing = set(shas)
        took = None
        while missing and time.monotonic() - back < cap:
            missing = {sha for sha in missing if "success" not in host.states(sha)}
            if not missing:
                took = time.monotonic() - back
            time.sleep(0.05)
        outbox = Outbox(worker.store.r, worker.namespace, 3600)
        wrong = sum(1 for sha in shas if host.states(sha)[-1:] != ["success"]
                    or [p.body["state"] for p in host.posts if sha in p.path].count("success") != 1)
        return {"refused": refused, "took": took, "missing": len(missing), "wrong": wrong,
                "gave_up": sum(outbox.gave_up().values()), "after": len(host.posts) + len(host.gets)}
    finally:
        worker.stop()
        server.shutdown()
        server.server_close()


def old_tree(rev: str, into: Path) -> Path:
    """`rev`'s runner and executors packages (the worker's code), unpacked under `into`."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "runner", "executors"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def print_rows(jobs: int = 300, minutes: float = 30.0, scale: float = 1 / 60, baseline_rev: str | None = None,
               which: str = "slow,down,off") -> None:
    """`which`: the rows to run: slow (slow-loris callbacks), down (git host down, circuits on),
    off (the same with circuits off); a baseline revision runs slow and down."""
    with tempfile.TemporaryDirectory(prefix="bench-deliveries-") as tmp_name:
        tmp = Path(tmp_name)
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if baseline_rev:
            trees.append((baseline_rev, old_tree(baseline_rev, tmp / "old")))
        rows = []
        for name, tree in trees if "slow" in which else []:
            r = slow_callbacks(tmp, tree)
            pickup = f"{r['pickup']:.2f} s" if r["pickup"] is not None else "not picked up within 120 s"
            rows.append((f"4 slow-loris callbacks (1 byte/s), {name}",
                         f"unrelated job's pickup {pickup} (nothing hanging: {r['calm']:.2f} s); over 40 s: longest POST "
                         f"{r['held']:.1f} s ({r['still_open']} still open), {r['posts']} POSTs, most of one callback at "
                         f"once {r['overlap']}, most connections at once {r['max_open']}"))
        variants = [("this tree, circuits", None, True)] if "down" in which else []
        variants += [("this tree, circuits off", None, False)] if "off" in which else []
        variants += [(f"{baseline_rev}", tree, False) for name, tree in trees if tree is not None and "down" in which]
        for name, tree, circuits in variants:
            r = host_down(tmp, jobs, minutes, scale, circuits, tree)
            back = f"{r['took']:.1f} s" if r["took"] is not None else "never (within 600 s)"
            rows.append((f"git host down {minutes:g} min x{scale:.4g}, {jobs} jobs, {name}",
                         f"{r['refused']:,} requests while down; all final states {back} after its return; "
                         f"{r['missing']} commits without one, {r['gave_up']} deliveries gave up, {r['wrong']} wrong or twice"))
    width = max(len(what) for what, _ in rows)
    print(f"{'deliveries (real worker, fake builds)'.ljust(width)}  figure")
    for what, figure in rows:
        print(f"{what.ljust(width)}  {figure}")
    print(load_line())

