"""Scale-in never kills a build by surprise (runner/worker/drain.py), with real workers:
SIGTERM in the middle of a real build (socket executor: Docker Engine) lets it finish and
requeues nothing; `runner drain` (the preStop hook) returns only once the builds are done;
a worker with a job budget (a pod per build) runs one build and exits, or exits idle; the
requeue after the grace is still the backstop (tests/test_reliability.py,
test_sigterm_requeues_what_outlives_the_grace, sets a short grace)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx

from runner.config.settings import DRAIN_MARGIN, Settings
from tests.conftest import RUNNER, registry_digest
from tests.support.fleet import free_port, metrics_config, status, wait_for
from tests.test_metrics import fake_harness, finished, start, submit
from tests.test_reliability import base, detach, dockerfile, log_of, tag, wait_log


def test_the_drain_waits_as_long_as_any_build_may_run_unless_told_otherwise():
    assert Settings().shutdown_grace() == Settings().limits.max_timeout + DRAIN_MARGIN
    assert Settings(limits={"max_timeout": 600}).shutdown_grace() == 600 + DRAIN_MARGIN
    assert Settings(worker={"shutdown_grace": 45}).shutdown_grace() == 45


def test_sigterm_in_the_middle_of_a_build_lets_it_finish_and_requeues_nothing(make_harness, services, tmp_path):
    port = free_port()
    h = make_harness(worker={**metrics_config(port), "concurrency": 1})  # the default drain grace
    worker = h.start_worker("--queues", f"{h.config['worker']['namespace']}.socket")
    ref = tag(h, "drain")
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo drain-started && sleep 4 && echo drain-done"),
                    "-t", ref, "--executor", "socket")
    wait_log(h, job_id, "drain-started")
    os.killpg(worker.pid, signal.SIGTERM)
    url = f"http://127.0.0.1:{port}"
    draining = wait_for(lambda: (r := httpx.get(f"{url}/readyz", timeout=3)).status_code == 503 and r.json(), 5, "/readyz 503")
    assert draining == {"status": "unready", "reason": "draining: takes no new builds; 1 running", "running": 1, "drained": False}
    assert "runner_worker_draining 1.0" in httpx.get(f"{url}/metrics", timeout=3).text
    later = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "after"), "--executor", "socket")
    assert worker.wait(120) == 0
    final = h.store.get(job_id)
    assert final.status.value == "succeeded" and final.attempts == 1
    assert final.images[0].digest == registry_digest(services, ref)
    assert "drain-done" in log_of(h, job_id) and "requeued" not in log_of(h, job_id)
    assert h.store.r.hgetall(f"{h.store.ns}:requeued") == {}  # runner_jobs_requeued_total stays 0
    assert h.store.get(later).status.value == "queued", "a draining worker takes no new build"


def test_runner_drain_returns_once_the_builds_are_done(make_harness, tmp_path):
    """The preStop hook: POST /drain on the worker's own port, then wait for "drained"."""
    h = fake_harness(make_harness)
    worker = start(h)
    job_id = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=3")
    wait_for(lambda: h.store.get(job_id).status.value == "running", 30, "the job to run")
    port = h.config["worker"]["metrics_port"]
    started = time.monotonic()
    hook = subprocess.run([RUNNER, "drain"], env=h.env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert hook.returncode == 0, hook.stderr
    record = h.store.get(job_id)
    assert record.status.value == "succeeded" and record.attempts == 1, "the hook returned before the build was done"
    assert "drained: no build running" in hook.stderr or "has exited" in hook.stderr
    assert took >= 1  # it waited for the build (3 s, begun before the hook)
    assert worker.wait(30) == 0
    again = subprocess.run([RUNNER, "drain", "--port", str(port)], env=h.env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and "nothing to drain" in again.stderr


def test_drain_requests_are_taken_from_this_host_only():
    from runner.worker.health import local_peer

    assert local_peer("127.0.0.1") and local_peer("::1") and local_peer("::ffff:127.0.0.1")
    assert not local_peer("10.0.0.5") and not local_peer("::ffff:10.0.0.5") and not local_peer("192.168.1.1")


def test_a_worker_with_max_jobs_1_runs_one_build_then_exits(make_harness, tmp_path):
    """A pod per build: two builds queued, the worker takes one and exits 0; the other waits
    for the next pod."""
    h = fake_harness(make_harness)
    first = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=1")
    second = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=1")
    worker = h.start_worker("--queues", f"{h.config['worker']['namespace']}.fake", "--max-jobs", "1")
    assert worker.wait(60) == 0
    ran = [job for job in (first, second) if h.store.get(job).status.value != "queued"]
    assert len(ran) == 1 and h.store.get(ran[0]).status.value == "succeeded"
    assert h.store.r.llen(f"{h.config['worker']['namespace']}.fake") == 1, "the other build is still in the queue"
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.fake", "--max-jobs", "1")
    assert h.worker_proc.wait(60) == 0
    assert all(finished(h, job).status.value == "succeeded" for job in (first, second))
    assert "worker.max_jobs" in worker.log_path.read_text()  # type: ignore[attr-defined]


def test_an_idle_worker_with_idle_exit_leaves(make_harness):
    h = fake_harness(make_harness)
    started = time.monotonic()
    worker = h.start_worker("--queues", f"{h.config['worker']['namespace']}.fake", "--idle-exit", "1")
    assert worker.wait(60) == 0
    assert time.monotonic() - started < 60
    assert "worker.idle_exit" in worker.log_path.read_text()  # type: ignore[attr-defined]


def test_a_worker_for_deliveries_only_builds_nothing(make_harness, tmp_path):
    """The pod-per-job overlay's maintenance worker: `--queues <ns>.deliveries` takes no build."""
    h = fake_harness(make_harness)
    namespace = h.config["worker"]["namespace"]
    worker = h.start_worker("--queues", f"{namespace}.deliveries")
    job_id = submit(h, tmp_path)
    time.sleep(2)
    assert h.store.get(job_id).status.value == "queued"
    assert status(f"{h.metrics_url}/readyz") == 200
    h.stop_worker(worker)
    assert worker.returncode == 0


def test_the_requeue_after_the_grace_is_the_backstop(make_harness, tmp_path):
    h = fake_harness(make_harness, worker={"shutdown_grace": 1})
    worker = start(h)
    job_id = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=30")
    wait_for(lambda: h.store.get(job_id).status.value == "running", 30, "the job to run")
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(30) == 0
    record = h.store.get(job_id)
    assert record.status.value == "queued" and record.attempts == 0
    assert "drain grace over: requeuing" in worker.log_path.read_text()  # type: ignore[attr-defined]
