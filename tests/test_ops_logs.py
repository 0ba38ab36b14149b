"""What an operator reads: one worker log line per job end at a level an alert can key on, with
the job's fields (JSON mode); `log.level`; `runner serve`'s access lines as fields; who
submitted each job, in the record, `runner status` and the log; and `runner submit --api
--wait` following the job's stream instead of polling. Real worker and `runner serve`
processes; jobs on the fake executor (tests/plugins/fake), which is steered by build args."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess

import httpx

from tests.conftest import RUNNER
from tests.support.fleet import API, TOKEN, ApiClient, sample, scrape, start_serve, status, wait_for
from tests.test_metrics import context, fake_harness, finished, start, submit


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def end_line(lines: list[dict], job_id: str) -> dict:
    [line] = [line for line in lines if line.get("job_id") == job_id and line.get("status")
              and line["logger"] == "runner.worker.outcome_log"]
    return line


def test_each_job_end_is_one_line_at_the_level_of_whose_fault_it_is(make_harness, tmp_path):
    h = fake_harness(make_harness, log={"format": "json"})
    worker = start(h)
    ok = submit(h, tmp_path, mode="--wait")
    build = submit(h, tmp_path, "--build-arg", "FAKE_EXIT=2", mode="--wait")
    invalid = submit(h, tmp_path, "--build-arg", "FAKE_ERROR=invalid", mode="--wait")
    infra = submit(h, tmp_path, "--build-arg", "FAKE_ERROR=infrastructure", mode="--wait")
    auth = submit(h, tmp_path, "--build-arg", "FAKE_ERROR=auth", mode="--wait")
    timed_out = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=30", "--timeout", "1", mode="--wait")
    cancelled = submit(h, tmp_path, "--build-arg", "FAKE_SLEEP=30")
    wait_for(lambda: h.store.get(cancelled).status.value == "running", 30, "the job to run")
    assert h.cli("cancel", cancelled).returncode == 0
    finished(h, cancelled)
    h.stop_worker(worker)
    lines = json_lines(worker.log_path.read_text())
    expected = {ok: ("INFO", "succeeded", None), cancelled: ("INFO", "cancelled", "cancelled"),
                build: ("WARNING", "failed", "build"), invalid: ("WARNING", "failed", "invalid"),
                infra: ("ERROR", "failed", "infrastructure"), auth: ("ERROR", "failed", "auth"),
                timed_out: ("ERROR", "timed_out", "timeout")}
    submitter = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    for job_id, (level, ended, kind) in expected.items():
        line = end_line(lines, job_id)
        record = h.store.get(job_id)
        assert (line["level"], line["status"], line.get("error_kind")) == (level, ended, kind), line
        assert line["executor"] == "fake" and line["worker"] == record.worker and line["attempts"] == 1
        assert line["submitted_by"] == submitter == record.submitted_by
        assert line["duration_seconds"] >= 0 and line["message"].startswith(f"job {job_id} {ended}")
    assert "(build: build failed at step 1/1 (RUN fake): exit code 2)" in end_line(lines, build)["message"]
    assert end_line(lines, timed_out)["duration_seconds"] >= 1


def test_log_level_hides_the_lines_below_it(make_harness, tmp_path):
    h = fake_harness(make_harness, log={"format": "json", "level": "WARNING"})
    log = h.workdir / "quiet-worker.log"
    worker = subprocess.Popen([RUNNER, "worker", "--queues", f"{h.config['worker']['namespace']}.fake"], env=h.env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker.log_path = log  # type: ignore[attr-defined]
    h.worker_proc = worker
    wait_for(lambda: status(f"{h.metrics_url}/readyz") == 200, 30, "the worker to be ready")  # Celery's INFO "ready." is hidden
    ok = submit(h, tmp_path, mode="--wait")
    failed = submit(h, tmp_path, "--build-arg", "FAKE_ERROR=infrastructure", mode="--wait")
    h.stop_worker(worker)
    lines = json_lines(worker.log_path.read_text())
    assert lines and all(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in lines)
    assert end_line(lines, failed)["level"] == "ERROR"
    assert not [line for line in lines if line.get("job_id") == ok]


def test_the_submitter_is_in_the_record_the_cli_and_the_log(make_harness, tmp_path):
    """A token's name through the API (never the token), the CLI's user@host through Redis."""
    h = fake_harness(make_harness, api=API, log={"format": "json"})
    start(h)
    serve = start_serve(h)
    client = ApiClient(serve.url)
    try:
        through_api = client.submit({"tags": [f"{h.registry()}/ops/submitter:1"], "executor": "fake"})
        finished(h, through_api)
        assert client.record(through_api)["submitted_by"] == "token:ci"
        healthz = httpx.get(f"{serve.url}/healthz", timeout=5)
        assert healthz.status_code == 200
    finally:
        client.close()
        serve.stop()
    through_cli = submit(h, tmp_path, mode="--wait")
    shown = h.cli("status", through_cli)
    assert f"submitted_by=cli:{getpass.getuser()}@{socket.gethostname()}" in shown.stdout
    serve_lines = json_lines(serve.log.read_text())
    [queued] = [line for line in serve_lines if line.get("job_id") == through_api and "queued" in line["message"]]
    assert queued["submitted_by"] == "token:ci" and TOKEN not in serve.log.read_text()
    access = [line for line in serve_lines if line["logger"] == "uvicorn.access"]
    assert {"client", "http_method", "http_path", "http_status", "http_version"} <= set(access[0])
    health = [line for line in access if line["http_path"] == "/healthz"][-1]  # start_serve asked it too
    assert (health["http_method"], health["http_status"]) == ("GET", 200) and health["client"].startswith("127.0.0.1:")


def test_api_wait_follows_the_stream_with_a_few_requests(make_harness, tmp_path):
    """`runner submit --api URL --wait` of a 5 s job: the requests `runner serve` counted
    (its own /metrics) are a handful, where polling every 50 ms made about a hundred."""
    h = fake_harness(make_harness, api=API)
    start(h)
    serve = start_serve(h)
    try:
        before = scrape(f"{serve.url}/metrics")
        result = subprocess.run([RUNNER, "submit", str(context(tmp_path)), "-t", f"{h.registry()}/ops/wait:1", "--executor",
                                 "fake", "--build-arg", "FAKE_SLEEP=5", "--wait", "--json", "--api", serve.url],
                                env={**h.env, "RUNNER_API_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "succeeded"
        after = scrape(f"{serve.url}/metrics")
    finally:
        serve.stop()

    def count(route: str, method: str = "GET") -> float:
        return sum((sample(after, "runner_http_requests_total", method=method, route=route, status=s) or 0)
                   - (sample(before, "runner_http_requests_total", method=method, route=route, status=s) or 0)
                   for s in ("2xx", "4xx", "5xx"))

    assert count("/v1/jobs/{job_id}/logs") == 1
    assert count("/v1/jobs/{job_id}") == 2  # once queued, once the stream has ended (polling: 86 in 5 s)
    requests = sum(count(route, method) for route, method in (("/v1/jobs/{job_id}/context", "POST"), ("/v1/jobs", "POST"),
                                                              ("/v1/jobs/{job_id}", "GET"), ("/v1/jobs/{job_id}/logs", "GET")))
    assert requests == 5, requests
