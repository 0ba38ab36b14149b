"""Completion callbacks, signed the Standard Webhooks way and checked by a receiver that
verifies them with the `standardwebhooks` package itself; delivered by real `runner worker`
processes through retries, refusals and a kill -9, never changing the job's result."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from runner.config.sections import CallbacksConfig
from runner.context.pack import write_tar
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.submission import submit
from runner.store.outbox import Outbox
from runner.worker.admission import QUEUE
from runner.worker.notify.callbacks import callback_request, check_callback_url, sign
from runner.worker.notify.http import send
from tests.conftest import cleanup_namespace, new_harness, registry_digest

RAW_SECRET = "callback-secret-" + uuid.uuid4().hex
#: the receivers here listen on loopback, which callbacks may not reach unless allowed
LOOPBACK = {"allowed_networks": ["127.0.0.0/8"]}
STANDARD_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Receiver:
    """A callback receiver: verifies each request with the standardwebhooks package, answers with
    `statuses` in turn (the last one repeats), and keeps what it got."""

    secret: str | bytes
    statuses: list[int] = field(default_factory=lambda: [200])
    calls: list[tuple[float, dict, bytes, bool]] = field(default_factory=list)  # (when, headers, body, verified)
    url: str = ""

    def verify(self, headers: dict, body: bytes) -> bool:
        try:
            Webhook(self.secret).verify(body, headers)
            return True
        except WebhookVerificationError:
            return False

    def wait(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"got {len(self.calls)} callbacks, expected {count}"
            time.sleep(0.02)


@pytest.fixture
def receiver():
    servers = []

    def make(secret: str | bytes) -> Receiver:
        rec = Receiver(secret)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                rec.calls.append((time.monotonic(), headers, body, rec.verify(headers, body)))
                status = rec.statuses[min(len(rec.calls) - 1, len(rec.statuses) - 1)]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        return rec

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


# -- the signature, checked by the standardwebhooks package ----------------------------------------------
@pytest.mark.parametrize("secret, receiver_key", [(STANDARD_SECRET, STANDARD_SECRET), (RAW_SECRET, RAW_SECRET.encode())],
                         ids=["whsec", "raw"])
def test_the_standardwebhooks_package_verifies_our_signature(receiver, secret, receiver_key):
    rec = receiver(receiver_key)
    body = json.dumps({"id": "job-1", "status": "succeeded"}).encode()
    call = callback_request(rec.url, body, "msg_" + uuid.uuid4().hex, secret, int(time.time()))
    assert send(call, 5).ok
    _, headers, got, verified = rec.calls[0]
    assert verified and got == body
    assert Webhook(receiver_key).verify(got, headers) == {"id": "job-1", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_key).verify(got.replace(b"succeeded", b"failed!!!"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(base64.b64encode(b"another key of ours").decode()).verify(got, headers)


def test_credentials_in_the_callback_url_are_sent_as_basic_auth_never_shown(receiver):
    rec = receiver(STANDARD_SECRET)
    url = rec.url.replace("http://", "http://hook%40user:p%3Ass@")
    call = callback_request(url, b"{}", "msg_1", STANDARD_SECRET, int(time.time()))
    assert send(call, 5).ok
    assert rec.calls[0][1]["Authorization"] == "Basic " + base64.b64encode(b"hook@user:p:ss").decode()
    assert "p%3Ass" not in call.shown and "***@" in call.shown
    assert rec.calls[0][1]["Host"] == rec.url.split("/")[2]


def test_a_replayed_callback_is_rejected_by_its_timestamp(receiver):
    rec = receiver(STANDARD_SECRET)
    body = b'{"id": "job-1"}'
    stale = callback_request(rec.url, body, "msg_1", STANDARD_SECRET, int(time.time()) - 600)  # captured ten minutes ago
    assert send(stale, 5).ok
    assert rec.calls[0][3] is False
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(STANDARD_SECRET).verify(body, rec.calls[0][1])


def test_the_signature_is_hmac_sha256_of_id_timestamp_body():
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    expected = Webhook(STANDARD_SECRET).sign("msg_2KWP", __import__("datetime").datetime.fromtimestamp(1674087231), "{}")
    assert sign(key, "msg_2KWP", 1674087231, b"{}") == expected
    with pytest.raises(ValueError, match="base64"):
        CallbacksConfig(secret="whsec_not base64!")


def test_allowed_hosts_and_url_checks(receiver):
    rec = receiver(RAW_SECRET)
    assert check_callback_url("ftp://127.0.0.1/x", CallbacksConfig()) is not None
    assert check_callback_url("http://[bad", CallbacksConfig()) is not None
    only = CallbacksConfig(allowed_hosts=["ci.example.com"])
    assert "not allowed" in check_callback_url(rec.url, only)
    assert check_callback_url(rec.url, CallbacksConfig(allowed_hosts=["127.0.0.1"])) is None


# -- through a worker ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker_harness(services, tmp_path_factory):
    h = new_harness(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    callbacks={"secret": STANDARD_SECRET, "backoff": 0.4, "max_backoff": 2.0, "attempts": 3,
                               "final_deadline": 6, **LOOPBACK},
                    worker={"recover_interval": 1.0}, deliveries={"recover_after": 2.0})
    h.worker_proc = h.start_worker()
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


def queue(h, tmp_path, callback_url: str, executor: str = "fake", dockerfile: str = "FROM scratch\n", **build_args) -> str:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    request = BuildRequest(tags=[f"{h.registry()}/callbacks/app:{uuid.uuid4().hex[:8]}"], executor=executor,
                           callback_url=callback_url or None, build_args=build_args)
    settings, store = h.settings, h.store
    writer = store.context_writer(request.id, settings.limits.max_context_bytes)
    write_tar(tmp_path, writer)
    writer.close()
    submit(request, settings, store, QUEUE)  # as `runner submit` does
    return request.id


def finished(h, job_id: str, timeout: float = 120) -> JobRecord:
    deadline = time.monotonic() + timeout
    while not (record := h.store.get(job_id)).finished:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    return record


def delivery(h, job_id: str, timeout: float = 60) -> dict:
    outbox = Outbox.for_store(h.store)
    deadline = time.monotonic() + timeout
    while (found := outbox.get(f"{job_id}:callback:finished")).get("state", "open") == "open":
        assert time.monotonic() < deadline, f"the callback of {job_id} is still open: {found}"
        time.sleep(0.05)
    return found


def test_retried_with_one_webhook_id_and_a_fresh_timestamp_each_time(worker_harness, receiver, tmp_path):
    rec = receiver(STANDARD_SECRET)
    rec.statuses = [500, 503, 204]
    job_id = queue(worker_harness, tmp_path, rec.url)
    record = finished(worker_harness, job_id)
    assert delivery(worker_harness, job_id)["state"] == "delivered"
    assert len(rec.calls) == 3 and all(verified for *_, verified in rec.calls)
    assert len({headers["webhook-id"] for _, headers, _, _ in rec.calls}) == 1, "the receiver's idempotency key"
    assert [int(h["webhook-timestamp"]) for _, h, _, _ in rec.calls] == sorted(int(h["webhook-timestamp"]) for _, h, _, _ in rec.calls)
    gaps = [b[0] - a[0] for a, b in zip(rec.calls, rec.calls[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"backoff doubles, half of it jitter: {gaps}"
    sent = JobRecord.model_validate_json(rec.calls[-1][2])
    assert sent == record and sent.status is Status.succeeded
    assert rec.calls[0][1]["X-Runner-Event"] == "job.finished"


def test_a_failing_callback_is_kept_until_its_final_deadline_and_never_changes_the_result(worker_harness, receiver,
                                                                                          tmp_path):
    """A callback is a final state: `attempts` (3 here) does not bound it; it gives up at its
    final_deadline (6 s here), logged and counted."""
    rec = receiver(STANDARD_SECRET)
    rec.statuses = [500]
    before = Outbox.for_store(worker_harness.store).gave_up().get("callback", 0)
    job_id = queue(worker_harness, tmp_path, rec.url, FAKE_EXIT="3")
    assert finished(worker_harness, job_id).status is Status.failed
    found = delivery(worker_harness, job_id)
    assert found["state"] == "failed" and "deadline" in found["last"], found
    assert len(rec.calls) > 3, "tried past `attempts`"
    assert json.loads(rec.calls[0][2])["error"]["kind"] == "build"
    assert Outbox.for_store(worker_harness.store).gave_up()["callback"] == before + 1
    assert worker_harness.store.get(job_id).status is Status.failed
    assert "giving up delivery" in worker_harness.worker_proc.log_path.read_text()


def test_a_refusing_receiver_is_not_retried(worker_harness, receiver, tmp_path):
    rec = receiver(STANDARD_SECRET)
    rec.statuses = [404]
    job_id = queue(worker_harness, tmp_path, rec.url)
    assert finished(worker_harness, job_id).status is Status.succeeded
    assert "HTTP 404" in delivery(worker_harness, job_id)["last"]
    assert len(rec.calls) == 1


def test_a_queued_job_cancelled_calls_back_too(services, tmp_path_factory, receiver, tmp_path):
    """No worker runs: the cancel (an entry point) owes the callback, and a worker started
    later delivers it."""
    from runner.entry.control import cancel_job

    h = new_harness(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    callbacks={"secret": STANDARD_SECRET, **LOOPBACK})
    try:
        rec = receiver(STANDARD_SECRET)
        job_id = queue(h, tmp_path, rec.url)
        assert cancel_job(h.store, job_id).status is Status.cancelled
        h.worker_proc = h.start_worker()
        rec.wait(1)
        assert rec.calls[0][3] and json.loads(rec.calls[0][2])["status"] == "cancelled"
    finally:
        if h.worker_proc is not None:
            h.stop_worker(h.worker_proc)
        cleanup_namespace(h)


def test_kill_9_while_a_callback_waits_for_its_retry(services, tmp_path_factory, receiver, tmp_path):
    h = new_harness(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    callbacks={"secret": STANDARD_SECRET, "backoff": 4.0, "max_backoff": 4.0, **LOOPBACK},
                    worker={"recover_interval": 1.0}, deliveries={"recover_after": 1.0})
    try:
        rec = receiver(STANDARD_SECRET)
        rec.statuses = [503, 200]
        h.worker_proc = h.start_worker()
        job_id = queue(h, tmp_path, rec.url)
        rec.wait(1)
        h.stop_worker(h.worker_proc, signal.SIGKILL)
        os.sync()
        h.worker_proc = h.start_worker()
        assert delivery(h, job_id)["state"] == "delivered"
        time.sleep(1.0)
        assert [c[3] for c in rec.calls] == [True, True], "refused once, then delivered once"
        assert rec.calls[0][1]["webhook-id"] == rec.calls[1][1]["webhook-id"]
    finally:
        h.stop_worker(h.worker_proc)
        cleanup_namespace(h)


def test_a_real_build_calls_back_with_the_pushed_digest(services, tmp_path_factory, receiver, tmp_path):
    h = new_harness(services, tmp_path_factory, callbacks={"secret": RAW_SECRET, **LOOPBACK})
    try:
        h.worker_proc = h.start_worker()
        rec = receiver(RAW_SECRET.encode())
        job_id = queue(h, tmp_path, rec.url, executor="socket",
                       dockerfile=f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo hi > /x\n")
        record = finished(h, job_id)
        assert record.status is Status.succeeded, record.error
        rec.wait(1)
        _, headers, body, verified = rec.calls[0]
        assert verified
        sent = json.loads(body)
        assert sent["images"][0]["digest"] == registry_digest(services, record.request.tags[0])
    finally:
        h.stop_worker(h.worker_proc)
        cleanup_namespace(h)


def readme_section() -> str:
    from tests.conftest import ROOT

    return (ROOT / "README.md").read_text().split("## Commit statuses and callbacks")[1].split("\n## ")[0]


def test_the_readme_receiver_verifies_our_callbacks(capsys):
    import re

    from fastapi.testclient import TestClient

    code = re.findall(r"```python\n(.*?)```", readme_section(), re.S)[0]
    secret = re.search(r'Webhook\("(whsec_[^"]+)"\)', code)[1]
    namespace: dict = {}
    exec(compile(code, "README.md receiver", "exec"), namespace)  # noqa: S102 - the README's own example, run as documented
    client = TestClient(namespace["app"])
    request = BuildRequest(tags=["127.0.0.1:5000/readme/app:1"])
    body = JobRecord(id=request.id, request=request, executor="fake", queue="q", status=Status.succeeded).model_dump_json().encode()
    call = callback_request("http://receiver/runner", body, "msg_" + uuid.uuid4().hex, secret, int(time.time()))
    assert client.post("/runner", content=body, headers=call.headers).status_code == 200
    assert client.post("/runner", content=body, headers=call.headers).status_code == 200, "a retry is accepted, and dropped"
    assert capsys.readouterr().out.count(request.id) == 1
    assert client.post("/runner", content=body.replace(b"succeeded", b"cancelled"), headers=call.headers).status_code == 401
    replay = callback_request("http://receiver/runner", body, "msg_" + uuid.uuid4().hex, secret, int(time.time()) - 3600)
    assert client.post("/runner", content=body, headers=replay.headers).status_code == 401


# -- hostile receivers: slow, on loopback ----------------------------------------------------------------
@pytest.fixture
def slow_host():
    from tests.support.hosts import SlowHost

    made = []

    def make(mode: str = "headers") -> SlowHost:
        host = SlowHost(mode).start()
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


@pytest.fixture(scope="module")
def strict_harness(services, tmp_path_factory):
    """A worker whose callbacks may reach 127.0.0.1 (named exactly) and registry.runner.test only
    on public addresses (a wildcard entry filters names, it allows no address), with a 1 s timeout."""
    from tests.support.fleet import free_port, metrics_config

    port = free_port()
    h = new_harness(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    callbacks={"secret": STANDARD_SECRET, "timeout": 1.0, "backoff": 0.2, "max_backoff": 0.5,
                               "allowed_hosts": ["127.0.0.1", "registry.runner.test:*"]},
                    deliveries={"recover_after": 1.0, "circuit_failures": 2, "circuit_backoff": 0.5},
                    worker={"recover_interval": 1.0, **metrics_config(port)})
    h.metrics_url = f"http://127.0.0.1:{port}/metrics"
    h.worker_proc = h.start_worker()
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


def test_a_slow_loris_callback_is_cut_at_its_deadline_and_never_posted_twice_at_once(strict_harness, slow_host,
                                                                                      tmp_path):
    """The receiver sends its answer a byte every 0.2 s, for ever. Each POST is cut at the 1 s
    deadline (its socket closed by the worker), and the next one starts only after: the
    delivery's lock outlives the attempt's hard deadline. The receiver's circuit opens (after
    2 failures here), and the worker's /metrics says so."""
    from tests.support.fleet import sample, scrape, wait_for

    host = slow_host("headers")
    queue(strict_harness, tmp_path, host.url)
    # A connection is recorded when accepted, before its request is read: wait for the third's too.
    host.wait(lambda: len(host.connections) >= 3 and host.connections[1].closed is not None
              and all(c.request for c in host.connections[:3]), 90,
              "three POSTs read, the first two of them ended")
    assert host.max_open == 1, "a second POST while the first could still land"
    assert all(c.closed_by_client for c in host.connections[:2])
    assert all(b"webhook-id" in c.request for c in host.connections[:3])
    wait_for(lambda: sample(scrape(strict_harness.metrics_url), "runner_delivery_circuits_open", host="callbacks") == 1,
             30, "the receiver's circuit to show as open")


def test_a_callback_to_a_name_on_loopback_is_refused_when_the_worker_connects(strict_harness, receiver, services,
                                                                               tmp_path):
    """registry.runner.test is 127.0.0.1: the name passes submission and allowed_hosts' pattern,
    and the worker refuses the address it resolves to, before connecting: given up, counted, never POSTed."""
    rec = receiver(STANDARD_SECRET)
    name = services["RUNNER_DEV_REGISTRY_NAME"].partition(":")[0]
    url = rec.url.replace("127.0.0.1", name)
    before = Outbox.for_store(strict_harness.store).gave_up().get("callback", 0)
    job_id = queue(strict_harness, tmp_path, url)
    found = delivery(strict_harness, job_id)
    assert found["state"] == "failed" and "127.0.0.1 is loopback" in found["last"], found
    assert rec.calls == []
    assert Outbox.for_store(strict_harness.store).gave_up()["callback"] == before + 1
    assert finished(strict_harness, job_id).status is Status.succeeded


def test_an_unrelated_build_is_picked_up_while_four_slow_callbacks_hang(services, tmp_path_factory, slow_host, tmp_path):
    """Four callbacks to a receiver that never finishes answering (60 s timeout here) on a worker
    with 2 build slots and 2 delivery threads: two of them hang, the other two wait their turn,
    and a fifth job, with no callback, is built meanwhile."""
    h = new_harness(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    callbacks={"secret": STANDARD_SECRET, "timeout": 60.0, "allowed_hosts": ["127.0.0.1"]},
                    worker={"concurrency": 2}, deliveries={"concurrency": 2})
    host = slow_host("headers")
    try:
        h.worker_proc = h.start_worker()
        slow = [queue(h, tmp_path, host.url) for _ in range(4)]
        for job_id in slow:
            finished(h, job_id)
        host.wait(lambda: host.open_now() >= 2, 60, "two callbacks hanging")
        time.sleep(1.0)  # time for a worker to take the other two, if it would (it must not)
        unrelated = queue(h, tmp_path, "")
        record = finished(h, unrelated, timeout=60)
        assert record.status is Status.succeeded
        assert host.open_now() >= 2, "the slow callbacks were still hanging when it was built"
        assert host.max_open == 2, "deliveries took more than their 2 threads"
        assert not any(c.closed_by_client for c in host.connections)
    finally:
        host.release()
        if h.worker_proc is not None:
            h.stop_worker(h.worker_proc)
        cleanup_namespace(h)


def test_the_readme_callback_address_config_is_valid_and_does_what_it_says():
    import re
    from ipaddress import ip_address

    import yaml

    from runner.config.settings import Settings
    from runner.worker.notify.callbacks import address_rule

    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme_section(), re.S) if b.startswith("callbacks:"))
    cfg = Settings.model_validate(yaml.safe_load(block)).callbacks
    assert check_callback_url("http://hooks.internal/hook", cfg) is None
    assert check_callback_url("https://ci.example.com:8443/hook", cfg) is None
    assert check_callback_url("https://build.example.com/hook", cfg) is None
    assert check_callback_url("https://other.example.org/hook", cfg) is not None, "a name no entry allows"
    assert address_rule("http://hooks.internal/hook", cfg) is None, "named exactly: any address"
    rule = address_rule("https://build.example.com/hook", cfg)  # a pattern keeps the address rules
    assert rule.refusal(ip_address("10.20.3.4")) is None, "in allowed_networks"
    assert "private" in rule.refusal(ip_address("10.21.3.4"))
    assert rule.refusal(ip_address("fd12:3456::9")) is None and rule.refusal(ip_address("fd12:3457::9")) is not None
