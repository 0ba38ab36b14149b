"""The pipeline's state machine, in-process, with the fake executor (tests/plugins/fake, which
builds nothing and is steered by build args) and the real Redis: no Docker, no Celery, a few
seconds in all. Each case drives `Pipeline.run` as the Celery task would."""

from __future__ import annotations

import io
import tarfile
import threading
import time
import uuid
from functools import partial

import pytest

from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.control import cancel_job
from runner.store import jobstate
from runner.worker.pipeline import Pipeline
from runner.worker.reaper import recover_lost_jobs
from runner.worker.worker import JobListener, Worker

REF = "127.0.0.1:5000/pipeline/app:1"


@pytest.fixture
def settings(redis_url, tmp_path) -> Settings:
    return Settings(redis_url=redis_url, registries=[{"host": "127.0.0.1:5000"}],
                    default_executor="fake", executors={"fake": {"enabled": True}},
                    limits={"max_attempts": 2, "default_timeout": 60},
                    worker={"namespace": f"pipeline-{uuid.uuid4().hex[:8]}", "workspace": str(tmp_path / "work"),
                            "lease_ttl": 2.0})


class Harness:
    """A Worker (its fake executor, its store) and a pipeline whose requeues are recorded."""

    def __init__(self, settings: Settings, worker_id: str = "worker-1"):
        self.worker = Worker(settings, worker_id=worker_id)
        self.store = self.worker.store
        self.requeued: list[tuple[str, float]] = []
        self.pipeline = Pipeline(self.worker, lambda request, delay: self.requeued.append((request.id, delay)))
        self.fake = self.worker.executors["fake"]

    def queue(self, **build_args: str) -> BuildRequest:
        """A job as an entry point leaves it: a queued record and an uploaded context."""
        request = BuildRequest(tags=[REF], build_args=build_args)
        self.store.create(JobRecord(id=request.id, request=request.redacted(), executor="fake", queue="q"))
        writer = self.store.context_writer(request.id, 10**6)
        writer.write(tar({"Dockerfile": b"FROM scratch\n"}))
        writer.close()
        return request

    def log(self, job_id: str) -> str:
        return "\n".join(self.store.read_log(job_id))

    def in_thread(self, request: BuildRequest) -> tuple[threading.Thread, list[JobRecord]]:
        result: list[JobRecord] = []
        thread = threading.Thread(target=lambda: result.append(self.pipeline.run(request)))
        thread.start()
        return thread, result

    def wait_log(self, job_id: str, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(job_id):
            assert time.monotonic() < deadline, f"{text!r} never appeared in the log of {job_id}"
            time.sleep(0.02)


def tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def h(settings):
    harness = Harness(settings)
    yield harness
    for key in harness.store.r.scan_iter(f"{harness.store.ns}:*"):
        harness.store.r.delete(key)
    harness.store.r.delete(harness.store.outbox.queue)  # `NS.deliveries`, beside the namespace's keys


def test_a_job_runs_once_and_everything_it_held_goes(h, settings):
    request = h.queue(FAKE_LINES="3")
    record = h.pipeline.run(request)
    assert record.status is Status.succeeded and record.attempts == 1 and record.worker == "worker-1"
    assert [image.ref for image in record.images] == [REF] and record.images[0].digest.startswith("sha256:")
    assert "fake line 3" in h.log(request.id)
    assert h.fake.cleaned == [request.id]
    assert not (settings.worker.workspace / request.id).exists() and not h.store.has_context(request.id)
    assert h.store.lease_holder(request.id) is None


def test_a_duplicate_delivery_runs_nothing(h):
    request = h.queue()
    h.pipeline.run(request)
    again = h.pipeline.run(request)
    assert again.status is Status.succeeded and again.attempts == 1
    assert h.log(request.id).count("running on") == 1


def test_a_delivery_while_another_worker_runs_the_job_leaves_it_alone(h, settings):
    request = h.queue(FAKE_SLEEP="2")
    thread, result = h.in_thread(request)
    h.wait_log(request.id, "working for")
    other = Harness(settings, worker_id="worker-2")
    seen = other.pipeline.run(request)
    assert seen.status is Status.running and seen.worker == "worker-1"
    thread.join(10)
    assert result[0].status is Status.succeeded and result[0].attempts == 1
    assert other.fake.cleaned == []


def test_cancel_before_start_never_runs_it(h):
    request = h.queue(FAKE_LINES="1")
    cancel_job(h.store, request.id)
    record = h.pipeline.run(request)
    assert record.status is Status.cancelled and record.attempts == 0
    assert "fake line" not in h.log(request.id) and h.fake.cleaned == []


def test_cancel_while_running_stops_it_and_cleans_up(h):
    request = h.queue(FAKE_SLEEP="30")
    thread, result = h.in_thread(request)
    h.wait_log(request.id, "working for")
    cancel_job(h.store, request.id)
    thread.join(5)
    assert not thread.is_alive()
    assert result[0].status is Status.cancelled and result[0].error.kind == "cancelled"
    assert h.fake.cleaned == [request.id]


def test_a_timeout_ends_the_job_timed_out(h):
    request = h.queue(FAKE_SLEEP="30")
    request = request.model_copy(update={"timeout": 1})
    started = time.monotonic()
    record = h.pipeline.run(request)
    assert record.status is Status.timed_out and "after 1s" in record.error.message
    assert time.monotonic() - started < 10


def test_an_attempt_whose_lease_was_taken_over_stops_without_recording(h):
    request = h.queue(FAKE_SLEEP="30")
    thread, result = h.in_thread(request)
    h.wait_log(request.id, "working for")
    h.store.r.delete(f"{h.store.ns}:lease:{request.id}")  # lapsed (say, Redis was away)...
    assert h.store.acquire_lease(request.id, "worker-2", 30)  # ...and another worker recovered the job
    thread.join(10)
    assert not thread.is_alive()
    record = h.store.get(request.id)
    assert not record.finished and record.worker == "worker-1"  # the record is the new owner's to write
    assert "another worker took the job over" in h.log(request.id)
    assert h.requeued == []


def test_shutdown_requeues_without_using_an_attempt(h):
    request = h.queue(FAKE_SLEEP="30")
    thread, _ = h.in_thread(request)
    h.wait_log(request.id, "working for")
    assert h.worker.cancel_all("shutdown") == [request.id]
    thread.join(5)
    record = h.store.get(request.id)
    assert record.status is Status.queued and record.attempts == 0 and record.worker is None
    assert h.requeued == [(request.id, 0)]
    assert "requeued: the worker is shutting down" in h.log(request.id)


def test_a_job_that_keeps_losing_its_worker_gives_up_after_max_attempts(h):
    request = h.queue()
    h.store.update(request.id, lambda r: r.model_copy(update={"attempts": 2}))  # two attempts died already
    record = h.pipeline.run(request)
    assert record.status is Status.failed and record.error.kind == "worker_lost"
    assert "gave up after 2 attempts" in record.error.message and record.images == []


def test_a_crashing_executor_fails_the_job_never_the_worker(h):
    request = h.queue(FAKE_CRASH="1")
    record = h.pipeline.run(request)
    assert record.status is Status.failed and record.error.kind == "infrastructure"
    assert "RuntimeError: the fake executor crashed on purpose" in record.error.message
    assert h.fake.cleaned == [request.id]
    assert h.pipeline.run(h.queue()).status is Status.succeeded  # and the next job runs


@pytest.mark.parametrize("kind", ["invalid", "auth", "infrastructure", "build"])
def test_typed_errors_keep_their_kind(h, kind):
    record = h.pipeline.run(h.queue(FAKE_ERROR=kind))
    assert record.status is Status.failed and record.error.kind == kind


def test_an_infrastructure_error_is_requeued_under_the_requeue_policy_until_max_attempts(settings):
    h = Harness(settings.model_copy(update={"worker": settings.worker.model_copy(update={"engine_down_policy": "requeue"})}))
    request = h.queue(FAKE_ERROR="infrastructure")
    first = h.pipeline.run(request)
    assert first.status is Status.queued and first.attempts == 1 and h.requeued == [(request.id, 2.0)]
    last = h.pipeline.run(request)
    assert last.status is Status.failed and last.attempts == 2 and len(h.requeued) == 1


class Recording(JobListener):
    def __init__(self):
        self.moments: list[tuple[str, Status]] = []

    def job_started(self, record, request):
        self.moments.append(("started", record.status))

    def job_finished(self, record, request):
        self.moments.append(("finished", record.status))

    def job_requeued(self, record, request):
        self.moments.append(("requeued", record.status))


class Broken(JobListener):
    def job_started(self, record, request):
        raise RuntimeError("listener bug")

    job_finished = job_requeued = job_started


def test_listeners_hear_each_moment_and_a_failing_one_changes_nothing(h):
    seen = Recording()
    h.worker.listeners[:] = [Broken(), seen]
    record = h.pipeline.run(h.queue())
    assert record.status is Status.succeeded
    assert seen.moments == [("started", Status.running), ("finished", Status.succeeded)]
    request = h.queue(FAKE_SLEEP="30")
    thread, _ = h.in_thread(request)
    h.wait_log(request.id, "working for")
    h.worker.cancel_all("shutdown")
    thread.join(5)
    assert seen.moments[-2:] == [("started", Status.running), ("requeued", Status.queued)]


def test_an_executor_whose_check_failed_fails_its_jobs_at_once_saying_why(h):
    h.worker.unusable["fake"] = "the fake engine is on fire"
    record = h.pipeline.run(h.queue())
    assert record.status is Status.failed and record.error.kind == "infrastructure"
    assert "the fake engine is on fire" in record.error.message


def test_a_job_for_an_executor_this_worker_does_not_serve_is_invalid(h):
    request = h.queue()
    h.store.update(request.id, lambda r: r.model_copy(update={"executor": "socket"}))
    record = h.pipeline.run(request)
    assert record.status is Status.failed and record.error.kind == "invalid"
    assert "not enabled on this worker" in record.error.message


# -- every end: one "finished", and what it owes written by the end itself --------------------------------
SOURCE = {"host": "github", "repository": "acme/app", "sha": "c" * 40}
CALLBACK = "https://ci.example/cb"


def owing_job(h: Harness, **build_args: str) -> BuildRequest:
    """A queued job that gets commit statuses (admission said so) and asks for a callback."""
    request = BuildRequest(tags=[REF], build_args=build_args, source=SOURCE, callback_url=CALLBACK)
    h.store.create(jobstate.admitted(request.redacted(), "fake", "q", statuses=True))
    writer = h.store.context_writer(request.id, 10**6)
    writer.write(tar({"Dockerfile": b"FROM scratch\n"}))
    writer.close()
    return request


def finals(h: Harness, job_id: str) -> list[str]:
    return sorted(h.store.outbox.of_job(job_id))


class ByJob(JobListener):
    """Every moment told, with its job."""

    def __init__(self):
        self.moments: list[tuple[str, str, Status]] = []

    def job_started(self, record, request):
        self.moments.append(("started", record.id, record.status))

    def job_finished(self, record, request):
        self.moments.append(("finished", record.id, record.status))

    def job_requeued(self, record, request):
        self.moments.append(("requeued", record.id, record.status))

    def of(self, job_id: str) -> list[tuple[str, Status]]:
        return [(moment, status) for moment, seen, status in self.moments if seen == job_id]


def test_every_way_a_job_ends_here_tells_finished_once_and_owes_its_final_deliveries_without_a_listener(h):
    """No listener but one that records: the final status and callback are owed by the end
    itself (JobStore.end), and listeners hear one "finished" per job whatever ended it."""
    seen = ByJob()
    h.worker.listeners[:] = [seen]
    ends: dict[str, tuple[str, list[tuple[str, Status]]]] = {}

    built = owing_job(h)
    h.pipeline.run(built)
    ends["succeeded"] = (built.id, [("started", Status.running), ("finished", Status.succeeded)])
    failed = owing_job(h, FAKE_EXIT="3")
    h.pipeline.run(failed)
    ends["failed"] = (failed.id, [("started", Status.running), ("finished", Status.failed)])
    unstarted = owing_job(h)
    h.store.update(unstarted.id, lambda r: r.model_copy(update={"cancel_requested": True}))  # its worker died
    h.pipeline.run(unstarted)
    ends["cancelled before it started"] = (unstarted.id, [("finished", Status.cancelled)])
    secretless = BuildRequest(tags=[REF], build_args={"TOKEN": "x" * 12}, secret_build_args=["TOKEN"], source=SOURCE,
                              callback_url=CALLBACK)
    h.store.create(jobstate.admitted(secretless.redacted(), "fake", "q", statuses=True))  # its values expired
    h.pipeline.run(secretless)
    ends["secret values gone"] = (secretless.id, [("finished", Status.failed)])
    exhausted = owing_job(h)
    h.store.update(exhausted.id, lambda r: r.model_copy(update={"attempts": 2}))
    h.pipeline.run(exhausted)
    ends["attempts used up"] = (exhausted.id, [("finished", Status.failed)])
    lost = owing_job(h)
    h.store.move(lost.id, partial(jobstate.claim, worker="dead-worker"))
    h.store.update(lost.id, lambda r: r.model_copy(update={"attempts": 2}))
    assert recover_lost_jobs(h.worker, lambda request, delay: None) == [lost.id]
    ends["given up by the reaper"] = (lost.id, [("finished", Status.failed)])

    for how, (job_id, moments) in ends.items():
        h.pipeline.run(h.store.get(job_id).request)  # a redelivery of its message changes nothing
        assert seen.of(job_id) == moments, how
        assert finals(h, job_id) == [f"{job_id}:callback:finished", f"{job_id}:status:finished"], how
        assert list(h.store.read_log(job_id))[-1].startswith("[runner] "), how

    raw = BuildRequest(tags=["elsewhere.example:5000/x:1"], source=SOURCE, callback_url=CALLBACK)
    refused = h.pipeline.run(raw)  # a raw message admission refuses: born failed, never admitted
    h.pipeline.run(raw)
    assert refused.status is Status.failed and refused.error.kind == "invalid"
    assert seen.of(raw.id) == [("finished", Status.failed)] and finals(h, raw.id) == []
    assert "registry 'elsewhere.example:5000' is not allowed" in h.log(raw.id)


def test_a_job_lost_with_attempts_left_is_requeued_not_finished(h):
    seen = ByJob()
    h.worker.listeners[:] = [seen]
    lost = owing_job(h)
    h.store.move(lost.id, partial(jobstate.claim, worker="dead-worker"))
    requeued = []
    assert recover_lost_jobs(h.worker, lambda request, delay: requeued.append((request.id, delay))) == [lost.id]
    record = h.store.get(lost.id)
    assert record.status is Status.queued and record.worker is None and requeued == [(lost.id, 0)]
    assert seen.moments == [] and finals(h, lost.id) == []
    assert "stopped (no heartbeat" in h.log(lost.id) and "requeued" in h.log(lost.id)


def test_a_requeued_job_whose_message_another_worker_takes_at_once_runs_there(h, settings):
    """The requeue's message is taken by another worker the moment it is sent: the job's lease
    is free by then (released before the send), so that worker runs it, instead of seeing the
    lease held, dropping the message as a duplicate and leaving the job queued for ever."""
    policy = settings.model_copy(update={"worker": settings.worker.model_copy(update={"engine_down_policy": "requeue"})})
    first, second = Harness(policy), Harness(policy, worker_id="worker-2")
    taken: list[JobRecord] = []
    first.pipeline.requeue = lambda request, delay: taken.append(second.pipeline.run(request))
    request = first.queue(FAKE_ERROR="infrastructure")
    assert first.pipeline.run(request).status is Status.queued
    assert [(r.status, r.worker, r.attempts) for r in taken] == [(Status.failed, "worker-2", 2)]
    assert h.store.get(request.id).status is Status.failed and h.store.lease_holder(request.id) is None
