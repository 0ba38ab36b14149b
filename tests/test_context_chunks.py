"""Reading a stored context: however big one list element is (a client posting straight to
Redis may RPUSH a whole tar as one), the worker gets it in pieces of at most CHUNK_BYTES,
byte for byte, and a connection lost mid-element is made again and the read resumes."""

from __future__ import annotations

import os

import pytest

from runner.store.jobstore import CHUNK_BYTES, JobStore


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A redis-server of this module's own: CLIENT LIST then shows only this test's connections
    (the shared one's would include other tests' readers when the suite runs side by side)."""
    from tests.support.fleet import OwnRedis

    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(own_redis):
    return JobStore(own_redis.url, "chunks")


def post(store: JobStore, job_id: str, elements: list[bytes]) -> bytes:
    for element in elements:
        store.raw.rpush(f"{store.ns}:ctx:{job_id}", element)
    return b"".join(elements)


def test_a_huge_element_comes_in_bounded_pieces(store):
    posted = post(store, "big", [os.urandom(5 * CHUNK_BYTES + 123), b"", os.urandom(10), os.urandom(CHUNK_BYTES)])
    pieces = list(store.context_chunks("big"))
    assert b"".join(pieces) == posted
    assert max(len(p) for p in pieces) <= CHUNK_BYTES and len(pieces) >= 7


def test_no_context_yields_nothing(store):
    assert list(store.context_chunks("nothing-here")) == []


def readers(store: JobStore) -> set[str]:
    """Ids of the connections whose last command was LINDEX (a context being read)."""
    return {client["id"] for client in store.r.client_list() if client.get("cmd") == "lindex"}


def test_a_connection_lost_mid_element_resumes_where_it_stopped(store):
    # bigger than any socket buffer, so the kill cuts the reply short
    posted = post(store, "cut", [os.urandom(48 * CHUNK_BYTES + 7), os.urandom(2 * CHUNK_BYTES)])
    chunks = store.context_chunks("cut")
    received = [next(chunks), next(chunks)]
    killed = readers(store)
    assert killed, "the reader's connection is not in CLIENT LIST"
    for client_id in killed:
        store.r.client_kill_filter(_id=client_id)
    resumed_on = set()
    for piece in chunks:
        received.append(piece)
        resumed_on |= readers(store) - killed
    assert b"".join(received) == posted
    assert resumed_on, "the read did not go on over a new connection"


def test_a_writer_replaces_what_the_key_held(store):
    """An abandoned upload's chunks never end up in front of the new context: the writer deletes
    them with its first push (one round trip with it), or at close when nothing was written."""
    post(store, "again", [b"stale-1", b"stale-2"])
    writer = store.context_writer("again", 10**6)
    writer.write(b"new context")
    writer.close()
    assert b"".join(store.context_chunks("again")) == b"new context"
    post(store, "empty", [b"stale"])
    store.context_writer("empty", 10**6).close()
    assert list(store.context_chunks("empty")) == [] and not store.raw.exists(f"{store.ns}:ctx:empty")
    big = os.urandom(2 * CHUNK_BYTES + 5)
    post(store, "big", [b"stale"])
    writer = store.context_writer("big", 10**7)
    writer.write(big)
    writer.close()
    assert b"".join(store.context_chunks("big")) == big
