"""runner.entry.submission.ContextUpload, the one upload-and-submit behind `runner submit`
(through Redis) and the API's upload endpoint, on the real Redis: what it refuses, what
`abandon` undoes, and that a failed hand-off leaves nothing behind."""

from __future__ import annotations

import uuid

import pytest

from runner.core.jobs import BuildRequest
from runner.entry.submission import ContextUpload, UploadRefused
from runner.store.jobstore import ContextTooLarge
from runner.worker.admission import QUEUE, Rejected
from tests.conftest import cleanup_namespace, new_harness

TAR = b"a context" * 100


@pytest.fixture(scope="module")
def h(services, tmp_path_factory):
    """A namespace with no worker: what is queued stays on the queue."""
    harness = new_harness(services, tmp_path_factory)
    yield harness
    cleanup_namespace(harness)


@pytest.fixture(scope="module")
def store(h):
    return h.store


def new_id() -> str:
    return f"up-{uuid.uuid4().hex[:10]}"


def request(h, job_id: str, **fields) -> BuildRequest:
    return BuildRequest(id=job_id, tags=[f"{h.registry()}/upload/{job_id}:1"], **fields)


def uploaded(store, job_id: str, owner: str, quota: int | None = None) -> ContextUpload:
    upload = ContextUpload.begin(store, job_id, owner, 1024**2, quota)
    upload.write(TAR)
    upload.finish()
    return upload


def refusal(store, job_id: str, owner: str, quota: int | None = None) -> str:
    with pytest.raises(UploadRefused) as info:
        ContextUpload.begin(store, job_id, owner, 1024**2, quota)
    return info.value.reason


def test_the_id_is_the_uploaders_from_the_first_byte(h, store):
    job_id = new_id()
    upload = uploaded(store, job_id, "token:a")
    assert b"".join(store.context_chunks(job_id)) == TAR and upload.size == len(TAR)
    assert refusal(store, job_id, "token:b") == "busy"
    assert b"".join(store.context_chunks(job_id)) == TAR, "another client's attempt replaced the context"
    upload.submit(request(h, job_id, context={"type": "upload"}), h.settings, QUEUE)
    assert refusal(store, job_id, "token:a") == "exists", "a used id got a new context"


def test_abandon_deletes_the_context_frees_the_id_and_the_quota(store):
    job_id = new_id()
    upload = uploaded(store, job_id, "token:q", quota=1)
    assert refusal(store, new_id(), "token:q", quota=1) == "quota"
    upload.abandon()
    assert not store.has_context(job_id) and store.reservation(job_id) is None
    uploaded(store, job_id, "token:other").abandon()  # the id is free for anyone
    uploaded(store, new_id(), "token:q", quota=1).abandon()  # and the owner's quota has room again


def test_a_refused_quota_keeps_no_reservation(store):
    uploaded(store, new_id(), "token:full", quota=1)
    job_id = new_id()
    assert refusal(store, job_id, "token:full", quota=1) == "quota"
    assert store.reservation(job_id) is None
    uploaded(store, job_id, "token:other").abandon()


def test_a_context_over_the_cap_is_refused_and_abandon_frees_its_id(store):
    job_id = new_id()
    upload = ContextUpload.begin(store, job_id, "cli:x", 10, quota=None)
    with pytest.raises(ContextTooLarge):
        upload.write(b"x" * 11)
    upload.abandon()
    assert not store.has_context(job_id) and store.reservation(job_id) is None


def test_a_failed_hand_off_abandons_the_upload(h, store):
    job_id = new_id()
    upload = uploaded(store, job_id, "token:fail", quota=1)
    with pytest.raises(Rejected):  # an executor this config does not enable: admission refuses it
        upload.submit(request(h, job_id, context={"type": "upload"}, executor="no-such-executor"), h.settings, QUEUE)
    assert store.get(job_id) is None and not store.has_context(job_id) and store.reservation(job_id) is None
    uploaded(store, new_id(), "token:fail", quota=1).abandon()  # its quota slot was given back


def test_a_submitted_upload_is_queued_with_its_context_and_leaves_the_quota(h, store):
    job_id = new_id()
    upload = uploaded(store, job_id, "token:ok", quota=1)
    record, created = upload.submit(request(h, job_id, context={"type": "upload"}), h.settings, QUEUE)
    assert created and record.id == job_id and store.get(job_id) is not None
    assert b"".join(store.context_chunks(job_id)) == TAR
    assert store.r.llen(record.queue) >= 1
    uploaded(store, new_id(), "token:ok", quota=1).abandon()  # submitted: no longer pending against the quota
