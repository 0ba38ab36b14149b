"""The API's log hub (runner/store/logfollow.py) in-process against the real Redis: every follower gets
every line once and in order however it joins, a slow follower is dropped and catches up
alone, multi-line entries are split, the shared tailer ends with its last follower or the job.

The same store calls a worker makes (append_log, end, update) write the logs here; the
whole path through `runner serve` and a real worker is in test_api_load.py."""

from __future__ import annotations

import asyncio
import random

import pytest

from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.store.jobstore import END_FIELD, LINES_FIELD, JobStore
from runner.store.logfollow import (
    COMMAND_SLOTS,
    PAGE,
    QUEUE_BATCHES,
    REPLAY_SLOTS,
    Batch,
    LogHub,
    TooManyFollowers,
    entry_order,
)


@pytest.fixture
def store(new_store):
    return new_store()


def new_job(store: JobStore) -> str:
    request = BuildRequest(tags=["127.0.0.1:5000/follow/app:1"])
    store.create(JobRecord(id=request.id, request=request, executor="socket", queue="runner.socket",
                           status=Status.running))
    return request.id


def finish(store: JobStore, job_id: str, end_marker: bool = True) -> None:
    """The job ends: as a worker ends it (JobStore.end, with the end marker), or without the marker."""
    def succeeded(record: JobRecord) -> JobRecord:
        return record.model_copy(update={"status": Status.succeeded})

    if end_marker:
        store.end(job_id, succeeded)
    else:
        store.update(job_id, succeeded)


async def with_hub(store: JobStore, body, **options):
    hub = LogHub(store, **options)
    await hub.open()
    try:
        return await body(hub)
    finally:
        await hub.close()


async def collect(hub: LogHub, job_id: str) -> list[str]:
    return b"".join([chunk async for chunk in hub.follow(job_id)]).decode().splitlines()


async def until(condition, what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


def test_followers_joining_at_any_time_get_every_line_once_in_order(store):
    job_id = new_job(store)
    expected = [f"line {n}" for n in range(6000)]

    async def body(hub: LogHub):
        async def writer():
            for start in range(0, len(expected), 60):
                store.append_log(job_id, expected[start:start + 60])
                await asyncio.sleep(random.uniform(0, 0.02))
            finish(store, job_id)

        async def late_follower(delay: float):
            await asyncio.sleep(delay)
            return await collect(hub, job_id)

        followers = [asyncio.create_task(late_follower(random.uniform(0, 1.2))) for _ in range(40)]
        await writer()
        results = await asyncio.gather(*followers)
        assert hub.stats()["followed_jobs"] == 0, "the tailer ends with the job"
        return results

    for lines in asyncio.run(with_hub(store, body)):
        assert lines == expected


def test_a_slow_follower_is_dropped_and_catches_up_alone(store):
    """One follower stops reading while a burst larger than its queue arrives: the tailer drops it
    (its queue stays bounded) and it later reads on its own, missing and repeating nothing."""
    job_id = new_job(store)
    store.append_log(job_id, ["first"])

    async def body(hub: LogHub):
        slow = hub.follow(job_id)
        got = [await anext(slow)]  # replayed "first"
        waiting = asyncio.create_task(anext(slow))  # joins the tailer, then is not read for a while
        await until(lambda: job_id in hub._tailers and hub._tailers[job_id].followers, "the slow follower joins")
        tailer = hub._tailers[job_id]
        (follower,) = tailer.followers
        fast = asyncio.create_task(collect(hub, job_id))
        await until(lambda: len(tailer.followers) == 2, "a fast follower joins")
        for n in range(QUEUE_BATCHES * 3):  # one batch per append: the tailer reads as they come
            store.append_log(job_id, [f"burst {n}"])
            await asyncio.sleep(0.002)
        await until(lambda: follower.dropped, "the slow follower is dropped")
        assert follower.queue.qsize() <= QUEUE_BATCHES and follower not in tailer.followers
        finish(store, job_id)
        got.append(await waiting)
        got.extend([chunk async for chunk in slow])
        return b"".join(got).decode().splitlines(), await fast

    slow_lines, fast_lines = asyncio.run(with_hub(store, body, block_ms=200, tail_interval=0))
    expected = ["first", *(f"burst {n}" for n in range(QUEUE_BATCHES * 3))]
    assert fast_lines == expected
    assert slow_lines == expected


def test_entries_holding_several_lines_are_split(store):
    job_id = new_job(store)
    store.append_log(job_id, ["one"])
    store.r.xadd(store.log_key(job_id), {LINES_FIELD: "two\nthree\n\nfive"})
    finish(store, job_id)

    async def body(hub: LogHub):
        replay = b"".join([chunk async for chunk in hub.read(job_id)]).decode().splitlines()
        return replay, await collect(hub, job_id)

    replay, followed = asyncio.run(with_hub(store, body))
    assert replay == followed == ["one", "two", "three", "", "five"]


def test_a_finished_job_without_end_marker_ends_its_followers(store):
    """A job that finished while its followers waited, with no end marker (e.g. written by an
    older worker): the tailer notices the record on its next timeout."""
    job_id = new_job(store)
    store.append_log(job_id, ["only line"])

    async def body(hub: LogHub):
        followers = [asyncio.create_task(collect(hub, job_id)) for _ in range(5)]
        await until(lambda: hub.stats()["followed_jobs"] == 1, "followers join the tailer")
        finish(store, job_id, end_marker=False)
        results = await asyncio.gather(*followers)
        late = await collect(hub, job_id)  # after the end: replay, then stop at once
        return results, late

    results, late = asyncio.run(with_hub(store, body, block_ms=200))
    assert results == [["only line"]] * 5 and late == ["only line"]


def test_the_tailer_stops_when_its_last_follower_leaves(store):
    job_id = new_job(store)

    async def body(hub: LogHub):
        tasks = [asyncio.create_task(collect(hub, job_id)) for _ in range(10)]
        await until(lambda: hub.stats()["followed_jobs"] == 1 and len(hub._tailers[job_id].followers) == 10,
                    "ten followers share one tailer")
        tailer_task = hub._tailers[job_id].task
        for task in tasks[:9]:
            task.cancel()
        await asyncio.gather(*tasks[:9], return_exceptions=True)
        assert hub.stats()["followed_jobs"] == 1 and not tailer_task.done()
        tasks[9].cancel()
        await asyncio.gather(tasks[9], return_exceptions=True)
        await until(tailer_task.done, "the tailer ends")
        assert hub.stats()["followed_jobs"] == 0 and tailer_task.cancelled()

    asyncio.run(with_hub(store, body))


def test_follower_slots_are_counted_per_token(store):
    async def body(hub: LogHub):
        slots = [hub.admit("dashboard", 3) for _ in range(3)]
        with pytest.raises(TooManyFollowers, match=r"'dashboard'.*3.*api\.max_followers_per_token"):
            hub.admit("dashboard", 3)
        other = hub.admit("ci", 3)
        assert hub.stats("dashboard") == {"followers": 4, "followed_jobs": 0, "replaying": 0, "token_followers": 3}
        slots[0].release()
        slots[0].release()  # idempotent
        slots.append(hub.admit("dashboard", 3))
        for slot in [*slots, other]:
            slot.release()
        assert hub.stats("dashboard") == {"followers": 0, "followed_jobs": 0, "replaying": 0, "token_followers": 0}

    asyncio.run(with_hub(store, body))


def test_a_batch_shared_by_followers_skips_what_one_already_has():
    raw = [("5-0", {LINES_FIELD: "a"}), ("5-1", {LINES_FIELD: "b\nc"}), ("6-0", {LINES_FIELD: "d"}),
           ("6-1", {END_FIELD: "succeeded"}), ("7-0", {LINES_FIELD: "after the end"})]
    batch = Batch.from_stream(raw, stop_at_end=True)
    assert (batch.text, batch.last, batch.ended) == (b"a\nb\nc\nd\n", "6-1", True)
    assert batch.after("4-9") is batch
    assert batch.after("5-0").text == b"b\nc\nd\n"
    assert batch.after("5-1").text == b"d\n"
    assert batch.after("6-0").text == b""
    replay = Batch.from_stream(raw, stop_at_end=False)
    assert (replay.text, replay.last, replay.ended) == (b"a\nb\nc\nd\nafter the end\n", "7-0", False)
    assert entry_order("10-0") > entry_order("9-99")


def test_followers_replaying_one_log_together_share_its_pages(store):
    """500 dashboards opening the same log must not read and parse it 500 times."""
    job_id = new_job(store)
    expected = [f"line {n}" for n in range(2000)]
    store.append_log(job_id, expected)
    finish(store, job_id)

    async def body(hub: LogHub):
        reads, read = [], hub._pages._read

        async def counting(key: str, after: str):
            reads.append(after)
            return await read(key, after)

        hub._pages._read = counting
        return await asyncio.gather(*(collect(hub, job_id) for _ in range(50))), reads

    results, reads = asyncio.run(with_hub(store, body))
    assert results == [expected] * 50
    pages = len(expected) // PAGE + 1  # the last one holds the end marker
    assert len(reads) <= 2 * pages, f"{len(reads)} page reads for 50 replays of {pages} pages"


def test_replays_send_their_pages_in_turns(store):
    """500 followers arriving together must not all be sent their replay at once (one turn of the
    event loop writing to every one of them keeps /healthz waiting): at most REPLAY_SLOTS
    replays hold a page (are being sent it) at a time. Counted from the consumers' side: a
    consumer holds its chunk for a while before asking for the next."""
    job_id = new_job(store)
    expected = [f"line {n}" for n in range(5 * PAGE)]
    store.append_log(job_id, expected)
    finish(store, job_id)
    holding, most = 0, 0

    async def consume(hub: LogHub) -> list[str]:
        nonlocal holding, most
        chunks = []
        async for chunk in hub.follow(job_id):
            holding += 1
            most = max(most, holding)
            chunks.append(chunk)
            await asyncio.sleep(0.002)  # sending it to a client
            holding -= 1
        return b"".join(chunks).decode().splitlines()

    async def body(hub: LogHub):
        results = await asyncio.gather(*(consume(hub) for _ in range(3 * REPLAY_SLOTS)))
        return results, hub.stats()

    results, stats = asyncio.run(with_hub(store, body))
    assert results == [expected] * (3 * REPLAY_SLOTS), "every line once, in order, to every follower"
    assert 1 < most <= REPLAY_SLOTS, f"{most} replays were sent a page at once (slots: {REPLAY_SLOTS})"
    assert stats["replaying"] == 0, "every slot is given back"


def test_followers_arriving_together_read_the_job_record_once(store):
    job_id = new_job(store)

    async def body(hub: LogHub):
        reads, exists = [], hub._exists

        async def counting(job: str) -> bool:
            reads.append(job)
            return await exists(job)

        hub._exists = counting
        answers = await asyncio.gather(*(hub.exists(job_id) for _ in range(50)), hub.exists("no-such-job"))
        return answers, reads

    answers, reads = asyncio.run(with_hub(store, body))
    assert answers == [True] * 50 + [False]
    assert sorted(reads) == sorted([job_id, "no-such-job"]), reads


def test_health_pings_do_not_wait_behind_the_followers_connections(store):
    """Every pooled connection busy (blocking reads, as tailers and replays hold them): the
    liveness ping still answers, on its own connection."""
    async def body(hub: LogHub):
        busy = [asyncio.create_task(hub.client.xread({f"{store.ns}:idle:{n}": "$"}, block=8000))
                for n in range(hub.tail_slots + COMMAND_SLOTS)]
        await until(lambda: len(hub.client.connection_pool._in_use_connections) == len(busy), "the pool is busy")
        answered = await hub.ping(timeout=3)
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        return answered

    assert asyncio.run(with_hub(store, body, tail_slots=4)) is True
