"""Issue 13 §1 and §2 with real processes: a worker's /metrics, /healthz and /readyz, `runner
serve`'s /metrics (queue length, live workers) and /readyz, and the process logs (text or
JSON lines, job fields, secrets masked). Jobs run on the fake executor (tests/plugins/fake)
unless a test needs a real engine (build-cache steps, push retries)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from runner.config.logs import configure_logging, settings_secrets
from runner.config.settings import Settings
from runner.core.process_log import job_fields
from runner.worker.process_metrics import runner_version
from tests.conftest import RUNNER
from tests.support.fleet import (
    API,
    ApiClient,
    OwnRedis,
    free_port,
    metrics_config,
    sample,
    scrape,
    start_serve,
    status,
    wait_for,
)

SECRET = "s3cr3t-" + uuid.uuid4().hex


def fake_harness(make_harness, worker: dict | None = None, **overrides):
    """A harness whose worker serves only the fake executor, with its HTTP server on a spare port."""
    port = free_port()
    h = make_harness(default_executor="fake", executors={"fake": {"enabled": True}},
                     worker={**metrics_config(port), **(worker or {})}, **overrides)
    h.metrics_url = f"http://127.0.0.1:{port}"
    return h


def start(h, executor: str = "fake"):
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.{executor}")
    return h.worker_proc


def context(tmp_path: Path, dockerfile: str = "FROM scratch\n") -> Path:
    ctx = tmp_path / uuid.uuid4().hex[:6]
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def submit(h, tmp_path: Path, *args: str, env: dict | None = None, mode: str = "--detach") -> str:
    result = subprocess.run([RUNNER, "submit", str(context(tmp_path)), "-t", f"{h.registry()}/fleet/metrics:1", mode,
                             "--json", *args], env={**h.env, **(env or {})}, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1, 3), result.stderr  # 1: the build failed, 3: infrastructure
    return json.loads(result.stdout)["id"]


def finished(h, job_id: str, timeout: float = 60):
    return wait_for(lambda: (r := h.store.get(job_id)) and r.finished and r, timeout, f"job {job_id} to finish")


def status_text(url: str) -> str:
    return httpx.get(url, timeout=10).text


# -- the worker's /metrics --------------------------------------------------------------------------
def test_worker_metrics_count_jobs_by_status_with_histograms(make_harness, tmp_path):
    h = fake_harness(make_harness)
    start(h)
    url = f"{h.metrics_url}/metrics"
    before = scrape(url)
    assert sample(before, "runner_jobs_total", executor="fake", status="succeeded") == 0
    assert sample(before, "runner_jobs_running", executor="fake") == 0

    ok = submit(h, tmp_path, "--build-arg", "FAKE_LINES=2", mode="--wait")
    assert finished(h, ok).status.value == "succeeded"
    text = status_text(url)
    assert 'runner_jobs_total{executor="fake",status="succeeded"} 1.0' in text
    after = scrape(url)
    assert sample(after, "runner_job_duration_seconds_count", executor="fake", status="succeeded") == 1
    assert sample(after, "runner_job_duration_seconds_bucket", executor="fake", status="succeeded", le="+Inf") == 1
    assert sample(after, "runner_job_duration_seconds_bucket", executor="fake", status="succeeded", le="7200.0") == 1
    assert sample(after, "runner_job_queue_wait_seconds_count", executor="fake") == 1
    assert sample(after, "runner_job_queue_wait_seconds_bucket", executor="fake", le="0.01") is not None  # 10 ms .. 2 h
    assert not any(job_label in text for job_label in (ok, "fleet/metrics"))  # no job id or image ref as a label

    failed = submit(h, tmp_path, "--build-arg", "FAKE_EXIT=3", mode="--wait")
    assert finished(h, failed).error.kind == "build"
    running = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=60")
    wait_for(lambda: h.store.get(running).status.value == "running", 30, "the long job to run")
    during = scrape(url)
    assert sample(during, "runner_jobs_running", executor="fake") == 1
    assert h.cli("cancel", running).returncode == 0
    assert finished(h, running).status.value == "cancelled"
    last = scrape(url)
    assert sample(last, "runner_jobs_running", executor="fake") == 0
    assert sample(last, "runner_jobs_total", executor="fake", status="failed") == 1
    assert sample(last, "runner_jobs_total", executor="fake", status="cancelled") == 1
    assert sample(last, "runner_job_failures_total", executor="fake", kind="build") == 1
    assert sample(last, "runner_job_failures_total", executor="fake", kind="cancelled") is None  # a cancel is no failure
    assert sample(last, "process_resident_memory_bytes") > 0


def test_build_cache_steps_and_push_retries_are_counted_on_a_real_engine(make_harness, services, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # a registry that never answers: every push attempt fails to connect
    creds = {"username": services["RUNNER_DEV_REGISTRY_USER"], "password": services["RUNNER_DEV_REGISTRY_PASSWORD"]}
    port = free_port()
    # retries at 1, 3 and 7 s after the first failure; the next (15 s) would start past 10 s: 4 attempts
    h = make_harness(registries=[{"host": services["RUNNER_DEV_REGISTRY"], **creds}, {"host": dead, **creds, "push_retry_seconds": 10}],
                     worker=metrics_config(port))
    if not h.config["executors"].get("socket", {}).get("enabled"):
        pytest.skip("the socket executor cannot run here")
    start(h, "socket")
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} > /a\nRUN echo two > /b\n"
    url = f"http://127.0.0.1:{port}/metrics"
    jobs = []
    for ref in (f"{h.registry()}/fleet/steps:1", f"{h.registry()}/fleet/steps:2", f"{dead}/fleet/steps:3"):
        # --no-reuse: the second job is a cached build of the same inputs, not the first one's image
        result = h.cli("submit", str(context(tmp_path, dockerfile)), "-t", ref, "--executor", "socket", "--no-reuse", "--json")
        jobs.append(json.loads(result.stdout))
        if len(jobs) == 1:
            first = scrape(url)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "failed"], [j["error"] for j in jobs]
    assert jobs[2]["error"]["kind"] == "infrastructure" and "after 4 attempt(s)" in jobs[2]["error"]["message"]
    # the first build ran both RUN steps; the second took them (and the FROM) from the cache
    assert sample(first, "runner_build_steps_total", executor="socket", cache="miss") >= 2
    last = scrape(url)
    hits = sample(last, "runner_build_steps_total", executor="socket", cache="hit") - (
        sample(first, "runner_build_steps_total", executor="socket", cache="hit") or 0)
    assert hits >= 2
    assert sample(last, "runner_push_retries_total", executor="socket") == 3
    assert sample(last, "runner_job_failures_total", executor="socket", kind="infrastructure") == 1


def test_dind_reports_its_warm_pool_and_sidecar_start_times(make_harness, services, tmp_path):
    from tests.support import dind

    if dind.skip_reason():
        pytest.skip(dind.skip_reason())
    port = free_port()
    h = make_harness(executors={"dind": dind.config(services, warm_pool=1)}, worker=metrics_config(port))
    start(h, "dind")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: sample(scrape(url), "runner_warm_pool_sidecars", executor="dind") == 1, 90, "the warm pool to fill")
    filled = sample(scrape(url), "runner_sidecar_start_seconds_count", executor="dind")
    assert filled >= 1 and sample(scrape(url), "runner_sidecar_start_seconds_sum", executor="dind") > 0
    dockerfile = f"FROM {dind.base_image(services)}\nRUN echo {uuid.uuid4().hex} > /w\n"
    ref = f"{dind.registry_name(services)}/fleet/dind:{uuid.uuid4().hex[:8]}"
    result = h.cli("submit", str(context(tmp_path, dockerfile)), "--executor", "dind", "-t", ref, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "warm sidecar" in h.cli("logs", json.loads(result.stdout)["id"]).stdout
    # the job took the pooled sidecar; the pool starts another one, and its start is observed
    wait_for(lambda: (m := scrape(url)) and sample(m, "runner_sidecar_start_seconds_count", executor="dind") > filled
             and sample(m, "runner_warm_pool_sidecars", executor="dind") == 1, 90, "the pool to refill")
    assert sample(scrape(url), "runner_build_steps_total", executor="dind", cache="miss") >= 1


FAILURE_KINDS = ["invalid", "build", "auth", "infrastructure", "timeout", "worker_lost"]
PHASES = ["context", "clone", "build", "push", "tags"]


def test_every_known_series_is_there_at_zero_from_start_up(make_harness):
    """So increase() and rate() see a first failure as 0 -> 1, not as a series born at 1."""
    h = fake_harness(make_harness, worker={"concurrency": 3})
    start(h)
    m = scrape(f"{h.metrics_url}/metrics")
    for kind in FAILURE_KINDS:
        assert sample(m, "runner_job_failures_total", executor="fake", kind=kind) == 0, kind
    for final in ("succeeded", "failed", "cancelled", "timed_out"):
        assert sample(m, "runner_jobs_total", executor="fake", status=final) == 0
        assert sample(m, "runner_job_duration_seconds_count", executor="fake", status=final) == 0
    for phase in PHASES:
        assert sample(m, "runner_job_phase_seconds_count", executor="fake", phase=phase) == 0, phase
    assert sample(m, "runner_push_retries_total", executor="fake") == 0
    assert sample(m, "runner_jobs_reused_total", executor="fake") == 0
    assert sample(m, "runner_build_steps_total", executor="fake", cache="hit") == 0
    assert sample(m, "runner_build_steps_total", executor="fake", cache="miss") == 0
    assert sample(m, "runner_worker_build_slots") == 3  # worker.concurrency: what utilisation divides by
    assert sample(m, "runner_build_info", version=runner_version()) == 1
    assert runner_version() == importlib.metadata.version("ci-build-runner") != "unknown"

    serve = start_serve(h)
    try:
        fleet = scrape(f"{serve.url}/metrics")
        for executor in h.settings.enabled_executors():
            for reason in ("shutdown", "engine_down", "worker_lost"):
                assert sample(fleet, "runner_jobs_requeued_total", executor=executor, reason=reason) == 0
        for kind in ("callback", "status.github", "status.gitlab", "status.gitea"):
            assert sample(fleet, "runner_deliveries_gave_up_total", kind=kind) == 0
        assert sample(fleet, "runner_build_info", version=runner_version()) == 1
        # the API's routes, by template, from the first request on (this scrape was one)
        for status_class in ("2xx", "3xx", "4xx", "5xx"):
            assert sample(fleet, "runner_http_requests_total", method="POST", route="/v1/jobs", status=status_class) == 0
        assert sample(fleet, "runner_http_requests_total", method="POST", route="/v1/webhooks/{provider}", status="5xx") == 0
    finally:
        serve.stop()


def test_phases_of_an_uploaded_and_a_git_context_are_timed(make_harness, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    h = fake_harness(make_harness, git={"allowed_schemes": ["file"]}, api=API)
    start(h)
    url = f"{h.metrics_url}/metrics"
    assert finished(h, submit(h, tmp_path, mode="--wait")).status.value == "succeeded"
    uploaded = scrape(url)
    assert sample(uploaded, "runner_job_phase_seconds_count", executor="fake", phase="context") == 1
    assert sample(uploaded, "runner_job_phase_seconds_sum", executor="fake", phase="context") > 0
    assert sample(uploaded, "runner_job_phase_seconds_count", executor="fake", phase="clone") == 0

    serve = start_serve(h)
    client = ApiClient(serve.url)
    try:
        response = client.client.post("/v1/jobs", json={"tags": [f"{h.registry()}/fleet/git:1"],
                                                        "context": {"type": "git", "url": f"file://{repo}", "ref": "main"}})
        assert response.status_code == 202, response.text
        assert finished(h, response.json()["id"]).status.value == "succeeded"
    finally:
        client.close()
        serve.stop()
    cloned = scrape(url)
    assert sample(cloned, "runner_job_phase_seconds_count", executor="fake", phase="clone") == 1
    assert sample(cloned, "runner_job_phase_seconds_count", executor="fake", phase="context") == 1


@pytest.mark.parametrize("executor", ["socket", "buildah"])
def test_build_push_and_tags_phases_are_timed_by_the_executor(make_harness, services, tmp_path, executor):
    port = free_port()
    h = make_harness(worker=metrics_config(port))
    if not h.config["executors"].get(executor, {}).get("enabled"):
        pytest.skip(f"the {executor} executor cannot run here")
    start(h, executor)
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} > /p\n"
    repository = f"{h.registry()}/fleet/phases-{executor}"
    result = h.cli("submit", str(context(tmp_path, dockerfile)), "--executor", executor, "-t", f"{repository}:1",
                   "-t", f"{repository}:2", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    m = scrape(f"http://127.0.0.1:{port}/metrics")
    for phase in ("context", "build", "push", "tags"):  # tag 2 is a manifest put: the tags phase
        assert sample(m, "runner_job_phase_seconds_count", executor=executor, phase=phase) == 1, phase
        assert sample(m, "runner_job_phase_seconds_sum", executor=executor, phase=phase) > 0, phase
    took = sample(m, "runner_job_duration_seconds_sum", executor=executor, status="succeeded")
    phases = sum(sample(m, "runner_job_phase_seconds_sum", executor=executor, phase=p) for p in PHASES)
    assert phases <= took  # the phases are parts of the job, never more than all of it


def test_a_requeue_survives_its_worker_and_the_next_attempt_waits_from_the_requeue(make_harness, tmp_path):
    """SIGTERM past the grace requeues the running job and the worker exits: the count is in
    Redis (runner serve's /metrics), and the next attempt's queue wait starts at the requeue."""
    h = fake_harness(make_harness, worker={"shutdown_grace": 1})
    worker = start(h)
    serve = start_serve(h)
    try:
        job_id = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=4")
        wait_for(lambda: h.store.get(job_id).status.value == "running", 30, "the job to run")
        time.sleep(2)  # the first attempt runs a while: its time must not count as waiting
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(30) == 0
        requeued = h.store.get(job_id)
        assert requeued.status.value == "queued" and requeued.queued_at is not None
        assert sample(scrape(f"{serve.url}/metrics"), "runner_jobs_requeued_total", executor="fake", reason="shutdown") == 1

        time.sleep(1)  # a wait in the queue the next attempt must count
        start(h)
        final = finished(h, job_id)
        assert final.status.value == "succeeded" and final.attempts == 1
        m = scrape(f"{h.metrics_url}/metrics")
        assert sample(m, "runner_job_queue_wait_seconds_count", executor="fake") == 1
        waited = sample(m, "runner_job_queue_wait_seconds_sum", executor="fake")
        assert waited == pytest.approx((final.started_at - final.queued_at).total_seconds(), abs=0.01)
        assert waited >= 1
        assert waited < (final.started_at - final.created_at).total_seconds() - 2.5  # not from submission
        assert sample(scrape(f"{serve.url}/metrics"), "runner_jobs_requeued_total", executor="fake", reason="shutdown") == 1
    finally:
        serve.stop()


def test_a_job_recovered_from_a_lost_worker_counts_as_requeued(make_harness, tmp_path):
    h = fake_harness(make_harness, worker={"lease_ttl": 3, "recover_interval": 0.5, "concurrency": 1})
    lost = start(h)
    job_id = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=30")
    wait_for(lambda: h.store.get(job_id).status.value == "running", 30, "the job to run")
    h.stop_worker(lost, signal.SIGKILL)
    start(h)
    wait_for(lambda: (r := h.store.get(job_id)) and r.attempts == 2 and r.status.value == "running", 60,
             "the job to run again on the second worker")
    assert h.store.requeues() == {("fake", "worker_lost"): 1}
    assert h.store.get(job_id).queued_at is not None
    assert h.cli("cancel", job_id).returncode == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (scripts/services.sh installs "
                    "Debian's prometheus package)")
def test_promtool_finds_nothing_to_lint_in_either_exposition(make_harness, tmp_path):
    """Prometheus's own linter (names, units, counter suffixes, help texts) over the worker's and
    runner serve's /metrics, with jobs counted and requests answered."""
    h = fake_harness(make_harness)
    start(h)
    submit(h, tmp_path, mode="--wait")
    submit(h, tmp_path, "--build-arg", "FAKE_EXIT=2", mode="--wait")
    serve = start_serve(h)
    try:
        httpx.get(f"{serve.url}/v1/jobs/nope", timeout=10)
        for url in (f"{h.metrics_url}/metrics", f"{serve.url}/metrics"):
            text = httpx.get(url, timeout=10).content
            assert b"runner_" in text
            result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
            assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), (url, result)
    finally:
        serve.stop()


# -- runner serve's /metrics ------------------------------------------------------------------------
def test_serve_exports_the_queue_length_redis_holds_and_the_live_workers(make_harness, services, tmp_path):
    h = fake_harness(make_harness)
    queue = f"{h.config['worker']['namespace']}.fake"
    ids = [submit(h, tmp_path) for _ in range(3)]  # no worker runs: they wait
    serve = start_serve(h)
    try:
        metrics = scrape(f"{serve.url}/metrics")
        llen = subprocess.run(["redis-cli", "-u", services["RUNNER_DEV_REDIS_URL"], "LLEN", queue],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert sample(metrics, "runner_queue_length", queue=queue, executor="fake") == 3 == int(llen)
        assert sample(metrics, "runner_workers", executor="fake") == 0
        assert "runner_jobs_total" not in status_text(f"{serve.url}/metrics")  # job counters are the workers'

        worker = start(h)
        for job_id in ids:
            assert finished(h, job_id).status.value == "succeeded"
        wait_for(lambda: sample(scrape(f"{serve.url}/metrics"), "runner_workers", executor="fake") == 1, 15,
                 "the worker's heartbeat to count")
        assert sample(scrape(f"{serve.url}/metrics"), "runner_queue_length", queue=queue, executor="fake") == 0
        h.stop_worker(worker)
        # a worker that stops leaves the live list at once, not after its heartbeat lapses
        assert sample(scrape(f"{serve.url}/metrics"), "runner_workers", executor="fake") == 0
    finally:
        serve.stop()


def test_serve_counts_api_requests_by_route_template_never_by_job_id(make_harness):
    h = fake_harness(make_harness, api=API)
    start(h)
    serve = start_serve(h)
    client = ApiClient(serve.url)
    try:
        job_id = client.submit({"tags": [f"{h.registry()}/fleet/api:1"], "executor": "fake"})
        finished(h, job_id)
        assert client.client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.client.get("/v1/jobs/no-such-job").status_code == 404
        assert client.client.get(f"/v1/jobs/{job_id}/logs").status_code == 200
        assert httpx.get(f"{serve.url}/no/such/route", timeout=10).status_code == 404
        assert httpx.request("BREW", f"{serve.url}/v1/jobs", timeout=10).status_code == 405
        text = status_text(f"{serve.url}/metrics")
        m = scrape(f"{serve.url}/metrics")
    finally:
        client.close()
        serve.stop()
    one = "/v1/jobs/{job_id}"
    assert sample(m, "runner_http_requests_total", method="GET", route=one, status="2xx") == 1
    assert sample(m, "runner_http_requests_total", method="GET", route=one, status="4xx") == 1
    assert sample(m, "runner_http_request_duration_seconds_count", method="GET", route=one) == 2
    assert sample(m, "runner_http_requests_total", method="POST", route="/v1/jobs/{job_id}/context", status="2xx") == 1
    assert sample(m, "runner_http_requests_total", method="POST", route="/v1/jobs", status="2xx") == 1
    assert sample(m, "runner_http_requests_total", method="GET", route="/v1/jobs/{job_id}/logs", status="2xx") == 1
    assert sample(m, "runner_http_requests_total", method="GET", route="unmatched", status="4xx") == 1
    assert sample(m, "runner_http_requests_total", method="other", route="/v1/jobs", status="4xx") == 1  # no BREW label
    assert job_id not in text and "no-such-job" not in text and "/no/such" not in text


# -- probes -----------------------------------------------------------------------------------------
def test_readyz_is_503_while_redis_is_down_and_200_when_it_is_back(make_harness, tmp_path):
    redis = OwnRedis(tmp_path)
    redis.start()
    h = fake_harness(make_harness, redis_url=redis.url)
    serve = None
    try:
        worker = start(h)
        serve = start_serve(h)
        worker_ready, serve_ready = f"{h.metrics_url}/readyz", f"{serve.url}/readyz"
        assert status(worker_ready) == 200 and status(serve_ready) == 200
        assert sample(scrape(f"{h.metrics_url}/metrics"), "runner_worker_ready") == 1

        redis.stop()
        wait_for(lambda: status(worker_ready) == 503, 10, "the worker's /readyz to turn 503")
        assert sample(scrape(f"{h.metrics_url}/metrics"), "runner_worker_ready") == 0  # what an alert reads
        wait_for(lambda: status(serve_ready) == 503, 10, "serve's /readyz to turn 503")
        assert status(f"{h.metrics_url}/healthz") == 200  # alive: a Redis outage is no reason to restart it
        assert worker.poll() is None

        redis.start()  # the same port
        wait_for(lambda: status(worker_ready) == 200, 30, "the worker's /readyz to return to 200")
        wait_for(lambda: status(serve_ready) == 200, 30, "serve's /readyz to return to 200")
        job_id = submit(h, tmp_path, mode="--wait")
        assert finished(h, job_id).status.value == "succeeded"
    finally:
        if serve is not None:
            serve.stop()
        if h.worker_proc is not None:
            h.stop_worker(h.worker_proc)
        redis.stop()


def test_sigterm_makes_readyz_503_at_once_while_healthz_answers_until_exit(make_harness, tmp_path):
    h = fake_harness(make_harness, worker={"shutdown_grace": 60})
    worker = start(h)
    job_id = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=4")
    wait_for(lambda: h.store.get(job_id).status.value == "running", 30, "the job to run")
    assert status(f"{h.metrics_url}/readyz") == 200

    os.killpg(worker.pid, signal.SIGTERM)
    wait_for(lambda: status(f"{h.metrics_url}/readyz") == 503, 2, "/readyz to turn 503 on SIGTERM", every=0.02)
    answers = []
    while worker.poll() is None:  # draining: the running job finishes, then the process exits
        code = status(f"{h.metrics_url}/healthz")
        if code != 200:  # only once the process is on its way out (interpreter finalizing)
            worker.wait(5)
            break
        answers.append(code)
        assert status(f"{h.metrics_url}/readyz") in (503, None)
    assert answers.count(200) >= 5
    assert worker.wait(30) == 0
    assert status(f"{h.metrics_url}/healthz") is None  # gone with the process
    final = finished(h, job_id)
    assert final.status.value == "succeeded" and final.attempts == 1


# -- process logs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_worker_log_lines_carry_the_job_and_never_a_secret(make_harness, tmp_path, log_format):
    h = fake_harness(make_harness, log={"format": log_format})
    worker = start(h)
    # FAKE_LEAK: the executor writes the secret build arg's value to the worker's log and
    # crashes with it in the exception, as a careless plugin might
    leaky = submit(h, tmp_path, "--build-arg", "FAKE_LEAK=TOKEN", "--secret-build-arg", "TOKEN=env:FLEET_SECRET",
                   env={"FLEET_SECRET": SECRET}, mode="--wait")
    ok = submit(h, tmp_path, "--build-arg", "FAKE_LINES=3", mode="--wait")
    record = finished(h, leaky)
    assert record.status.value == "failed" and record.error.kind == "infrastructure"
    assert finished(h, ok).status.value == "succeeded"
    h.stop_worker(worker)
    log_text = worker.log_path.read_text()

    for where in (log_text, h.cli("status", leaky, "--json").stdout, h.cli("logs", leaky).stdout):
        assert SECRET not in where
    assert "***" in h.cli("logs", leaky).stdout
    if log_format == "text":
        assert f"[job {leaky}]: build arg TOKEN is ***" in log_text
        return
    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    leaked = [line for line in lines if line.get("job_id") == leaky]
    assert {"build arg TOKEN is ***", f"job {leaky} crashed"} <= {line["message"] for line in leaked}
    crash = next(line for line in leaked if line["message"] == f"job {leaky} crashed")
    assert crash["executor"] == "fake" and crash["worker"] == record.worker and "TOKEN=***" in crash["exception"]
    assert any(line.get("job_id") == ok and "received" in line["message"] for line in lines)  # Celery's lines too
    assert any("shutting down" in line["message"] for line in lines)  # the drain is logged as JSON too


def test_secrets_from_the_settings_are_masked_in_any_line(tmp_path):
    password_file = tmp_path / "registry-password"
    password_file.write_text("from-a-file-" + uuid.uuid4().hex + "\n")
    settings = Settings(redis_url=f"redis://:redis-pw-{SECRET}@127.0.0.1:6379/0",
                        registries=[{"host": "r.example:5000", "username": "u", "password_file": str(password_file)},
                                    {"host": "s.example:5000", "username": "u", "password": "inline-" + SECRET}],
                        build_secrets={"npm": "npm-" + SECRET}, api={"tokens": [{"name": "ci", "token": "tok-" + SECRET}]},
                        log={"format": "json"})
    secrets = settings_secrets(settings)
    file_value = password_file.read_text().strip()
    assert {f"redis-pw-{SECRET}", file_value, "inline-" + SECRET, "npm-" + SECRET, "tok-" + SECRET} <= set(secrets)

    stream = io.StringIO()
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        out, err, real_out, real_err, hook, thread_hook = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__,
                                                           sys.excepthook, threading.excepthook)
        configure_logging(settings, "INFO", stream=stream)
        log = logging.getLogger("test.fleet")
        log.warning("pushing with %s and %s", file_value, "npm-" + SECRET)
        try:
            raise RuntimeError(f"login failed for tok-{SECRET}")
        except RuntimeError:
            log.exception("boom")
        with job_fields("job1", "fake", "w1", ["per-job-" + SECRET]):
            log.info("arg is %s", "per-job-" + SECRET)
        print("a stray print with inline-" + SECRET)  # JSON mode: stdout is a log stream too
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, sys.excepthook = out, err, real_out, real_err, hook
        threading.excepthook = thread_hook
        root = logging.getLogger()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert SECRET not in stream.getvalue() and file_value not in stream.getvalue()
    assert lines[0]["message"] == "pushing with *** and ***"
    assert "login failed for ***" in lines[1]["exception"]
    assert lines[2] | {"time": None} == {"time": None, "level": "INFO", "logger": "test.fleet", "message": "arg is ***",
                                         "job_id": "job1", "executor": "fake", "worker": "w1"}
    assert lines[3]["message"] == "a stray print with ***" and lines[3]["logger"] == "runner.stdio"


def test_the_requeue_reasons_counted_are_the_ones_the_checker_knows():
    """REQUEUE_REASONS (the series a fleet starts at 0) is a plain tuple on the light path, and
    RequeueReason a checker-only Literal: mypy catches a reason in the tuple the Literal lacks,
    this catches one the tuple lacks."""
    import ast

    import runner.core.status as status

    tree = ast.parse(Path(status.__file__).read_text())
    literal = next(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["RequeueReason"])
    assert isinstance(literal, ast.Subscript) and ast.unparse(literal.value) == "Literal"
    assert set(ast.literal_eval(literal.slice)) == set(status.REQUEUE_REASONS)
    assert len(status.REQUEUE_REASONS) == len(set(status.REQUEUE_REASONS)) == 3
