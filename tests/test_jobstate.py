"""A job's state machine (runner/store/jobstate.py): each move's guard, from every status; and
JobStore.end against the real Redis: the final record, the closing line, the end marker and
the deliveries owed, written together once, whoever races it."""

from __future__ import annotations

import json
from functools import partial

import pytest

from runner.core.jobs import BuildRequest, JobError, JobRecord, PushedImage, Status
from runner.entry.control import cancel_job
from runner.store import jobstate
from runner.store.joblog import JobLog
from runner.store.jobstore import END_FIELD, LINES_FIELD, JobStore
from runner.store.outbox import Outbox

REF = "127.0.0.1:5000/jobstate/app:1"
SOURCE = {"host": "github", "repository": "acme/app", "sha": "a" * 40}
ME, OTHER = "worker-1", "worker-2"
IMAGE = PushedImage(ref=REF, digest="sha256:" + "b" * 64)
FAILED = JobError(kind="build", message="step 1/1 failed")
FINAL = [s for s in Status if s.finished]


def record(status: Status = Status.queued, worker: str | None = None, attempts: int = 0, **request) -> JobRecord:
    req = BuildRequest(tags=[REF], **request)
    return JobRecord(id=req.id, request=req, executor="fake", queue="q", status=status, worker=worker, attempts=attempts)


#: every state a record can be in, as a move sees it
STATES = {"queued": record(), "running here": record(Status.running, ME, 1),
          "running elsewhere": record(Status.running, OTHER, 1),
          **{s.value: record(s, ME, 1) for s in FINAL}}
#: move -> the states it applies to, and the status it leaves (the diagram in docs/architecture.md)
MOVES = {
    "claim": (partial(jobstate.claim, worker=ME), {"queued": "running", "running here": "running",
                                                  "running elsewhere": "running"}),
    "requeue": (partial(jobstate.requeue, worker=ME, shutdown=False), {"running here": "queued"}),
    "lost": (partial(jobstate.lost, max_attempts=2), {"running here": "queued", "running elsewhere": "queued"}),
    "give_up": (partial(jobstate.give_up, max_attempts=1), {"running here": "failed", "running elsewhere": "failed"}),
    "cancel": (jobstate.cancel, {"queued": "cancelled"}),
    "request_cancel": (jobstate.request_cancel, {"queued": "queued", "running here": "running",
                                                 "running elsewhere": "running"}),
    "refuse": (partial(jobstate.refuse, reason="tags: no"), {"queued": "failed"}),
    "finish": (partial(jobstate.finish, worker=ME, status=Status.succeeded, images=[IMAGE], error=None),
               {"running here": "succeeded"}),
    "finish_unstarted": (partial(jobstate.finish_unstarted, status=Status.failed, error=FAILED), {"queued": "failed"}),
}


@pytest.mark.parametrize("move", MOVES)
@pytest.mark.parametrize("state", STATES)
def test_each_move_applies_only_where_its_guard_allows(move, state):
    change, allowed = MOVES[move]
    before = STATES[state]
    after = change(before)
    if state not in allowed:
        assert after is None, f"{move} moved a {state} job"
        return
    assert after is not None and after.status.value == allowed[state]
    assert after.finished == (after.finished_at is not None)
    assert before.status.value == (state.split()[0] if " " in state else state), "a move never changes its argument"


def test_what_each_move_writes_besides_the_status():
    claimed = jobstate.claim(STATES["queued"], worker=ME)
    assert claimed.worker == ME and claimed.attempts == 1 and claimed.started_at is not None and claimed.error is None
    running = STATES["running here"]
    assert jobstate.requeue(running, worker=ME, shutdown=True).attempts == 0, "a shutdown uses up no attempt"
    assert jobstate.requeue(running, worker=ME, shutdown=False).attempts == 1
    back = jobstate.lost(running, max_attempts=2)
    assert back.worker is None and back.started_at is None and back.queued_at is not None
    gave_up = jobstate.give_up(running, max_attempts=1)
    assert gave_up.error.kind == "worker_lost" and "gave up after 1 attempts" in gave_up.error.message
    assert jobstate.lost(running, max_attempts=1) is None, "no attempts left: give_up, not lost"
    cancelled = jobstate.cancel(STATES["queued"])
    assert cancelled.cancel_requested and cancelled.error.message == jobstate.CANCELLED_BEFORE_START
    assert jobstate.request_cancel(STATES["running here"]).cancel_requested
    assert jobstate.request_cancel(jobstate.request_cancel(STATES["running here"])) is None, "flagged once"
    refused = jobstate.refuse(record(source=SOURCE), reason="source: not bound")
    assert refused.error.kind == "invalid" and refused.error.message == "refused: source: not bound"
    assert refused.statuses is False, "a refused job was never admitted: it owes no status"
    assert jobstate.refuse(STATES["queued"].model_copy(update={"attempts": 1}), reason="x") is None
    done = jobstate.finish(running, worker=ME, status=Status.failed, images=[], error=FAILED)
    assert done.error == FAILED and done.images == []
    with pytest.raises(ValueError, match="final status"):
        jobstate.finish(running, worker=ME, status=Status.queued, images=[], error=None)
    with pytest.raises(ValueError, match="final status"):
        jobstate.finish_unstarted(STATES["queued"], status=Status.running, error=FAILED)


def test_admission_keeps_its_statuses_answer_and_records_from_before_the_field_still_read():
    request = BuildRequest(tags=[REF], source=SOURCE)
    assert jobstate.admitted(request, "fake", "q", statuses=False).statuses is False, "the answer, not the source"
    stored = json.loads(jobstate.admitted(request, "fake", "q", statuses=False).model_dump_json())
    assert JobRecord.model_validate(stored).statuses is False
    del stored["statuses"]  # a record written before the field: the old rule, "it names a source"
    assert JobRecord.model_validate(stored).statuses is True
    stored["request"].pop("source")
    assert JobRecord.model_validate_json(json.dumps(stored)).statuses is False
    assert jobstate.owes(jobstate.admitted(request.model_copy(update={"callback_url": "https://ci.example/cb"}),
                                           "fake", "q", statuses=True)) == (True, True)


# -- JobStore.end against Redis --------------------------------------------------------------------------
@pytest.fixture
def store(new_store):
    made = new_store()
    yield made
    made.r.delete(made.outbox.queue)  # `NS.deliveries`: outside the namespace's keys that new_store empties


def running_job(store: JobStore, statuses: bool = True, callback: bool = True, secret: str = "") -> JobRecord:
    request = BuildRequest(tags=[REF], source=SOURCE, callback_url="https://ci.example/cb" if callback else None)
    new = jobstate.admitted(request, "fake", "q", statuses=statuses)
    assert store.create(new)
    store.save_secrets(new.id, {"TOKEN": "s3cret-value"})
    writer = store.context_writer(new.id, 10**6)
    writer.write(b"context")
    writer.close()
    claimed, moved = store.move(new.id, partial(jobstate.claim, worker=ME))
    assert moved and claimed.status is Status.running
    return claimed


def log_entries(store: JobStore, job_id: str) -> list[dict]:
    return [fields for _, fields in store.r.xrange(store.log_key(job_id))]


def finish(status: Status = Status.succeeded):
    return partial(jobstate.finish, worker=ME, status=status, images=[IMAGE] if status is Status.succeeded else [],
                   error=None if status is Status.succeeded else FAILED)


def test_an_end_writes_the_record_the_closing_line_the_marker_and_what_it_owes_together(store):
    job = running_job(store)
    ended, did = store.end(job.id, finish(), "[runner] succeeded: it")
    assert did and ended.status is Status.succeeded and store.get(job.id) == ended
    assert store.ids(Status.succeeded) == [job.id] and store.ids(Status.running) == []
    assert store.r.lrange(store.running_key("fake"), 0, -1) == []
    assert log_entries(store, job.id)[-2:] == [{LINES_FIELD: "[runner] succeeded: it"}, {END_FIELD: "succeeded"}]
    assert not store.has_context(job.id) and store.load_secrets(job.id) == {}
    assert 0 < store.r.ttl(store.job_key(job.id)) <= store.retention.finished_seconds
    assert 0 < store.r.ttl(store.log_key(job.id)) <= store.retention.finished_seconds
    deliveries = store.outbox.of_job(job.id)
    assert set(deliveries) == {f"{job.id}:status:finished", f"{job.id}:callback:finished"}
    assert {d["state"] for d in deliveries.values()} == {"open"}
    queued = [json.loads(m)["headers"]["argsrepr"] for m in store.r.lrange(store.outbox.queue, 0, -1)]
    assert sorted(queued) == sorted(f"[delivery {d}]" for d in deliveries), "each delivery with its task message"


def test_the_stored_answer_decides_the_status_never_the_source(store):
    job = running_job(store, statuses=False, callback=False)  # it names a source; admission said no status
    assert store.end(job.id, finish(Status.failed), None)[1]
    assert store.outbox.of_job(job.id) == {} and store.r.llen(store.outbox.queue) == 0


def test_a_second_end_and_a_refused_move_write_nothing(store):
    job = running_job(store)
    first, _ = store.end(job.id, finish(), "[runner] succeeded")
    entries = log_entries(store, job.id)
    again, did = store.end(job.id, partial(jobstate.finish_unstarted, status=Status.cancelled, error=FAILED), "[runner] no")
    assert not did and again == first
    assert log_entries(store, job.id) == entries and len(store.outbox.of_job(job.id)) == 2
    assert store.end("no-such-job", finish(), "x") == (None, False)


def test_a_move_that_ends_a_job_needs_end_and_end_needs_a_move_that_ends(store):
    job = running_job(store)
    with pytest.raises(ValueError, match="needs JobStore.end"):
        store.move(job.id, finish())
    with pytest.raises(ValueError, match="is no end"):
        store.end(job.id, partial(jobstate.requeue, worker=ME, shutdown=True), "x")
    assert store.get(job.id) == job and store.outbox.of_job(job.id) == {}


def test_an_end_racing_another_end_is_written_once(store):
    """A cancel ends the job while the worker's end reads the record: the worker's transaction
    fails (WATCH), its retry finds the job ended and writes nothing: one end marker, one set of
    deliveries, the cancel's."""
    job = store.create(jobstate.admitted(BuildRequest(tags=[REF], source=SOURCE), "fake", "q", statuses=True))
    job_id = store.ids(Status.queued)[0]
    other = JobStore(store.target, store.ns)
    calls = []

    def unstarted(current: JobRecord) -> JobRecord | None:
        calls.append(current.status)
        if len(calls) == 1:
            assert cancel_job(other, job_id).status is Status.cancelled  # lands between our read and our write
        return jobstate.finish_unstarted(current, status=Status.failed, error=FAILED)

    assert job
    record, did = store.end(job_id, unstarted, "[runner] failed")
    assert not did and record.status is Status.cancelled and calls == [Status.queued, Status.cancelled]
    ends = [e for e in log_entries(store, job_id) if END_FIELD in e]
    assert ends == [{END_FIELD: "cancelled"}]
    assert list(store.outbox.of_job(job_id)) == [f"{job_id}:status:finished"]


def test_a_job_born_ended_owes_nothing_and_leaves_an_existing_job_alone(store):
    draft = jobstate.admitted(BuildRequest(tags=[REF], source=SOURCE, callback_url="https://ci.example/cb"), "fake", "q",
                              statuses=True)
    refused = jobstate.refuse(draft, reason="tags: no")
    stored, did = store.end_new(refused, "[runner] refused: tags: no")
    assert did and store.get(draft.id) == refused and store.ids(Status.failed) == [draft.id]
    assert log_entries(store, draft.id) == [{LINES_FIELD: "[runner] refused: tags: no"}, {END_FIELD: "failed"}]
    assert store.outbox.of_job(draft.id) == {}
    queued = running_job(store)
    assert store.end_new(jobstate.refuse(jobstate.admitted(queued.request, "fake", "q", False), reason="x"), "x") == \
        (queued, False)
    assert store.has_context(queued.id), "another job's context stays"


def test_the_closing_line_is_masked_and_closes_the_log(store):
    log = JobLog(store, "masked", ["s3cret-value"])
    log.line("building with s3cret-value")
    closing = log.closing("[runner] failed: it printed s3cret-value\n")
    assert closing == "[runner] failed: it printed ***" and log._closed
    assert list(store.read_log("masked")) == ["building with ***"]


def test_a_cancel_ends_a_queued_job_with_what_it_owes_and_only_flags_a_running_one(store):
    queued = jobstate.admitted(BuildRequest(tags=[REF], source=SOURCE, callback_url="https://ci.example/cb"),
                               "fake", "q", statuses=False)
    store.create(queued)
    cancelled = cancel_job(store, queued.id)
    assert cancelled.status is Status.cancelled and cancelled.error.message == jobstate.CANCELLED_BEFORE_START
    assert list(store.outbox.of_job(queued.id)) == [f"{queued.id}:callback:finished"], "statuses=False: no status"
    assert log_entries(store, queued.id) == [{LINES_FIELD: "[runner] cancelled before it started"},
                                             {END_FIELD: "cancelled"}]
    running = running_job(store)
    flagged = cancel_job(store, running.id)
    assert flagged.status is Status.running and flagged.cancel_requested and store.cancel_requested(running.id)
    assert store.outbox.of_job(running.id) == {} and log_entries(store, running.id) == []
    assert cancel_job(store, "no-such-job") is None
    assert cancel_job(store, queued.id).status is Status.cancelled, "cancelling twice changes nothing"
    assert len(Outbox.for_store(store).of_job(queued.id)) == 1


def test_the_queued_moment_is_written_whole_or_not_at_all(store, monkeypatch):
    """JobStore.submit: the record, its secret values, the "queued" status it owes and its task
    message go in one transaction: a failure before it commits leaves none of them (so a retry
    with the same id sends the job), and a repeat id writes nothing."""
    import redis

    request = BuildRequest(tags=[REF], source=SOURCE, build_args={"TOKEN": "s3cret-value"}, secret_build_args=["TOKEN"])
    new = jobstate.admitted(request.redacted(), "fake", f"{store.ns}:queue", statuses=True)  # emptied with the namespace
    real = redis.client.Pipeline.execute

    def lost_connection(self, raise_on_error=True):
        if self.explicit_transaction:
            raise redis.ConnectionError("Redis went away")
        return real(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", lost_connection)
    with pytest.raises(redis.ConnectionError):
        store.submit(new, request.secret_arg_values())
    assert store.get(new.id) is None and store.load_secrets(new.id) == {} and store.outbox.of_job(new.id) == {}
    assert store.r.llen(new.queue) == 0 and store.ids(Status.queued) == []
    monkeypatch.setattr(redis.client.Pipeline, "execute", real)

    assert store.submit(new, request.secret_arg_values()) == (new, True)
    assert store.get(new.id) == new and store.ids(Status.queued) == [new.id]
    assert store.load_secrets(new.id) == {"TOKEN": "s3cret-value"}
    assert list(store.outbox.of_job(new.id)) == [f"{new.id}:status:queued"]
    (message,) = store.r.lrange(new.queue, 0, -1)
    assert json.loads(message)["headers"]["id"] == new.id and "s3cret-value" not in message
    assert store.submit(new, request.secret_arg_values()) == (new, False)
    assert store.r.llen(new.queue) == 1, "a repeat id sends nothing"
