"""Completion callbacks against a real HTTP receiver on loopback, and end to end through a
real worker: signed record, retries with backoff, and a failing callback never changes the job."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.config.sections import CallbacksConfig
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.submission import submit
from runner.sources.pack import write_tar
from runner.worker.callbacks import SIGNATURE_HEADER, check_callback_url, deliver, drain, on_job_finished
from tests.conftest import registry_digest

SECRET = "callback-secret-" + uuid.uuid4().hex[:8]


@dataclass
class Receiver:
    """Answers with `statuses` in turn (the last one repeats); records every request."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    calls: list[tuple[float, dict, bytes]] = field(default_factory=list)
    url: str = ""
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= count, f"got {len(self.calls)} callbacks, expected {count}"


@pytest.fixture
def receiver():
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(rec.delay)
            rec.calls.append((time.monotonic(), dict(self.headers), body))
            status = rec.statuses[min(len(rec.calls) - 1, len(rec.statuses) - 1)]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield rec
    server.shutdown()
    server.server_close()


def record_for(url: str, status: Status = Status.succeeded) -> tuple[JobRecord, BuildRequest]:
    request = BuildRequest(tags=["127.0.0.1:5000/cb/app:1"], callback_url=url)
    return JobRecord(id=request.id, request=request, executor="socket", queue="q", status=status), request


def verify(headers: dict, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers[SIGNATURE_HEADER], expected)


def test_returns_at_once_and_delivers_a_signed_record(receiver, harness):
    receiver.delay = 1.0
    settings = harness.settings.model_copy(update={"callbacks": CallbacksConfig(secret=SECRET)})
    record, request = record_for(receiver.url)
    start = time.monotonic()
    on_job_finished(record, request, settings)
    assert time.monotonic() - start < 0.1
    receiver.wait(1)
    _, headers, body = receiver.calls[0]
    assert verify(headers, body)
    assert JobRecord.model_validate_json(body) == record
    assert headers["X-Runner-Event"] == "job.finished" and headers["Content-Type"] == "application/json"


def test_retries_with_backoff_then_succeeds(receiver):
    receiver.statuses = [500, 503, 200]
    cfg = CallbacksConfig(secret=SECRET, backoff=0.2, attempts=5)
    assert deliver(receiver.url, b'{"id": "x"}', cfg, "x")
    times = [t for t, _, _ in receiver.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4, "the delay doubles"
    assert len({h["X-Runner-Delivery"] for _, h, _ in receiver.calls}) == 1, "one delivery id across retries"
    assert all(verify(h, b) for _, h, b in receiver.calls)


def test_client_error_is_final_and_unreachable_gives_up(receiver):
    receiver.statuses = [404]
    cfg = CallbacksConfig(secret=SECRET, backoff=0.01, attempts=4)
    assert not deliver(receiver.url, b"{}", cfg, "x")
    assert len(receiver.calls) == 1
    slept = []
    assert not deliver("http://127.0.0.1:9/closed", b"{}", cfg, "x", sleep=slept.append)
    assert slept == [0.01, 0.02, 0.04]


def test_allowed_hosts_and_url_checks(receiver):
    assert check_callback_url("ftp://127.0.0.1/x", CallbacksConfig()) is not None
    assert check_callback_url("http://[bad", CallbacksConfig()) is not None
    only = CallbacksConfig(allowed_hosts=["ci.example.com"])
    assert "not allowed" in check_callback_url(receiver.url, only)
    assert not deliver(receiver.url, b"{}", only, "x")
    assert receiver.calls == []
    assert check_callback_url(receiver.url, CallbacksConfig(allowed_hosts=["127.0.0.1"])) is None


@pytest.fixture(scope="module")
def callback_harness(services, tmp_path_factory):
    from tests.conftest import cleanup_namespace, new_harness

    h = new_harness(services, tmp_path_factory, callbacks={"secret": SECRET, "backoff": 0.2, "attempts": 3})
    h.worker_proc = h.start_worker()
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


def run_job(h, tmp_path, dockerfile: str, callback_url: str) -> JobRecord:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    request = BuildRequest(tags=[f"{h.registry()}/callbacks/app:{uuid.uuid4().hex[:8]}"], executor="socket",
                           callback_url=callback_url)
    settings, store = h.settings, h.store
    writer = store.context_writer(request.id, settings.limits.max_context_bytes)
    write_tar(tmp_path, writer)
    writer.close()
    submit(request, settings, store)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = store.get(request.id)
        if record.finished:
            return record
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_worker_calls_back_and_a_failing_callback_never_changes_the_result(callback_harness, receiver, tmp_path, services):
    receiver.statuses = [500]
    record = run_job(callback_harness, tmp_path, f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo hi > /x\n", receiver.url)
    assert record.status is Status.succeeded, record.error
    receiver.wait(3)
    time.sleep(1.0)
    assert len(receiver.calls) == 3, "attempts: 3, then it gives up"
    for _, headers, body in receiver.calls:
        assert verify(headers, body)
        sent = json.loads(body)
        assert sent["id"] == record.id and sent["status"] == "succeeded"
        assert sent["images"][0]["digest"] == registry_digest(services, record.request.tags[0])
    assert callback_harness.store.get(record.id).status is Status.succeeded


def test_failed_build_is_reported_too(callback_harness, receiver, tmp_path, services):
    record = run_job(callback_harness, tmp_path, f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN false\n", receiver.url)
    assert record.status is Status.failed
    receiver.wait(1)
    sent = json.loads(receiver.calls[0][2])
    assert sent["status"] == "failed" and sent["error"]["kind"] == "build"
    drain(1)
