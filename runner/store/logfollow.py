"""Job logs for the API, read on asyncio: replay, and live tails shared per job. No threads.

One async Redis client per app (a bounded pool), made by `LogHub.open` at start-up. Each
followed job has ONE tailer task: a blocking XREAD on the job's stream whose batches go to
every follower of that job. A follower replays the log itself (paged), then joins the job's
tailer at the entry it reached; it ends at the job's end marker (or when the record says the
job finished), or when its client goes (the caller closes the generator). The tailer ends with
the job, or when its last follower leaves.

A follower too slow to take its batches is dropped by the tailer and catches up by reading on
its own, then joins again: a slow client never makes the tailer buffer without bound.
Followers are counted per token (`admit`), so one token cannot hold every connection.

Reading and parsing a page costs milliseconds of the event loop (the Redis parser is pure
Python), so replays share pages (`SharedPages`: one read per page for all followers replaying
the same log at once) and at most READ_SLOTS page reads run at a time. Sending a page costs
the loop too (HTTP framing, a write per follower): at most REPLAY_SLOTS replays hold a page at
once (`ReplaySlots`), so 500 followers connecting together are served in turns instead of all
in one turn of the loop (their requests' way up to the stream is gated the same way, by
runner.entry.start_gate). The job's existence and end are read once for all the followers
asking at the same moment (`InFlight`), and /healthz pings on a connection of its own: it never
waits behind the followers' commands for the pool.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from contextlib import aclosing
from typing import Any, cast

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from runner.core.jobs import JobRecord
from runner.store.jobstore import END_FIELD, LINES_FIELD, JobStore, StreamEntries
from runner.store.redis_clients import async_pool

log = logging.getLogger(__name__)

PAGE = 200  # stream entries per read
READ_SLOTS = 4  # page reads (replays, final drains) at once
REPLAY_SLOTS = 16  # replays holding a page (being sent it) at once
REPLAY_HOLD = 5.0  # seconds a replay may hold its slot: a stalled client then lets the others pass
RECENT_BYTES = 32 * 1024**2  # full pages kept for replays that come a little later ...
RECENT_SECONDS = 10.0  # ... for this long at most
BLOCK_MS = 2000  # a tailer's blocking read; on each timeout it checks whether the job finished
TAIL_INTERVAL = 0.1  # seconds at least between a tailer's reads: lines come in batches, not one wake-up per line
QUEUE_BATCHES = 64  # batches a follower may have pending before it is dropped to catch up alone ...
QUEUE_BYTES = 4 * 1024**2  # ... or bytes
TAIL_SLOTS = 128  # blocking reads at once (one per followed job); more followed jobs take turns
COMMAND_SLOTS = 32  # connections kept for everything else (replays, records, health), so tails never starve them
TAIL_FAILURES = 30  # consecutive Redis errors (about a minute with backoff) before a tailer gives up


class TooManyFollowers(Exception):
    def __init__(self, token: str, limit: int):
        super().__init__(f"token {token!r} already follows {limit} logs, the limit (api.max_followers_per_token); "
                         "close a follow stream or read without follow=true")


class LogUnavailable(Exception):
    """The tailer gave up: Redis stayed unreachable."""


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as something that compares in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Batch:
    """Consecutive log entries read at once: the bytes a follower is sent (built once, shared by
    every follower) and each entry's id and offset in them, so one that already has some of the
    entries gets the rest. Compact on purpose, a few objects whatever its size: pages kept for
    replays must not give the garbage collector long pauses."""

    __slots__ = ("ids", "offsets", "text", "last", "ended")

    def __init__(self, ids: list[str], offsets: list[int], text: bytes, last: str, ended: bool = False):
        self.ids, self.offsets, self.text, self.last, self.ended = ids, offsets, text, last, ended

    @classmethod
    def empty(cls, last: str, ended: bool = False) -> Batch:
        return cls([], [], b"", last, ended)

    @classmethod
    def from_stream(cls, raw: Sequence[tuple[str, dict[str, str]]], stop_at_end: bool) -> Batch:
        """`raw` as XREAD returns it; with stop_at_end, the end marker ends the batch (and the log).
        An entry's field holds one line or several joined by "\\n": each becomes a line."""
        ids: list[str] = []
        offsets: list[int] = []
        parts: list[bytes] = []
        size, last = 0, "0-0"
        for entry_id, fields in raw:
            last = entry_id
            if END_FIELD in fields:
                if stop_at_end:
                    return cls(ids, offsets, b"".join(parts), last, ended=True)
                continue
            chunk = f"{fields.get(LINES_FIELD, '')}\n".encode()
            ids.append(entry_id)
            offsets.append(size)
            parts.append(chunk)
            size += len(chunk)
        return cls(ids, offsets, b"".join(parts), last)

    def after(self, position: str) -> Batch:
        """This batch without the entries up to `position` (itself when it has none of them)."""
        after = entry_order(position)
        if not self.ids or entry_order(self.ids[0]) > after:
            return self
        first = bisect.bisect_right(self.ids, after, key=entry_order)
        if first >= len(self.ids):
            return Batch.empty(self.last, self.ended)
        base = self.offsets[first]
        return Batch(self.ids[first:], [offset - base for offset in self.offsets[first:]], self.text[base:], self.last, self.ended)


class Page:
    """One read's entries as batches for following and for replaying (they differ only when
    the page holds the end marker); the raw entries are not kept."""

    __slots__ = ("size", "nbytes", "_follow", "_replay")

    def __init__(self, raw: Sequence[tuple[str, dict[str, str]]]):
        self.size = len(raw)
        self._follow = Batch.from_stream(raw, stop_at_end=True)
        self._replay = Batch.from_stream(raw, stop_at_end=False) if self._follow.ended else self._follow
        self.nbytes = len(self._follow.text) + (len(self._replay.text) if self._replay is not self._follow else 0)

    def batch(self, stop_at_end: bool) -> Batch:
        return self._follow if stop_at_end else self._replay


class InFlight:
    """Calls joined while in flight: whoever asks for `ident` while a call for it runs gets that
    call's result (one Redis read for many followers arriving together). One caller leaving does
    not cancel the call for the others."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task] = {}

    async def get(self, ident: Any, start: Callable[[], Coroutine[Any, Any, Any]],
                  done: Callable[[asyncio.Task], None] | None = None) -> Any:
        task = self._tasks.get(ident)
        if task is None:
            task = self._tasks[ident] = asyncio.create_task(start())

            def finished(task: asyncio.Task) -> None:
                del self._tasks[ident]
                if not task.cancelled():
                    task.exception()  # retrieved here: every caller may have left before it failed
                if done is not None:
                    done(task)
            task.add_done_callback(finished)
        return await asyncio.shield(task)

    def cancel(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


class ReplaySlots:
    """At most `slots` replays hold a page at once. A slot is held while its page is sent and
    freed when the replay asks for the next one, or after `hold` seconds (a client that stopped
    reading must not hold up every other replay)."""

    def __init__(self, slots: int = REPLAY_SLOTS, hold: float = REPLAY_HOLD):
        self._slots, self._hold = asyncio.Semaphore(slots), hold
        self.held = 0

    async def take(self) -> Callable[[], None]:
        """Wait for a slot; returns its release (idempotent)."""
        await self._slots.acquire()
        self.held += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held -= 1
                self._slots.release()
                timer.cancel()
        timer = asyncio.get_running_loop().call_later(self._hold, release)
        return release


class SharedPages:
    """Page reads shared by every caller asking for the same page at about the same time: reads in
    flight are joined, and full pages (which no longer change) are kept for a few seconds."""

    def __init__(self, read, slots: int = READ_SLOTS):
        self._read = read  # async (key, after) -> raw entries
        self._slots = asyncio.Semaphore(slots)
        self._inflight = InFlight()
        self._recent: OrderedDict[tuple[str, str], tuple[float, Page]] = OrderedDict()
        self._recent_bytes = 0

    async def get(self, key: str, after: str, page: int, shared: bool = True) -> Page:
        """The page after `after`. shared=False reads now, for a caller that needs a read
        started after some event (e.g. after it saw the job finish)."""
        if not shared:
            return await self._fetch(key, after, page)
        ident = (key, after)
        recent = self._recent.get(ident)
        if recent is not None and time.monotonic() - recent[0] < RECENT_SECONDS:
            return recent[1]
        return await self._inflight.get(ident, lambda: self._fetch(key, after, page),
                                        lambda task: self._done(ident, task, page))

    async def _fetch(self, key: str, after: str, page: int) -> Page:
        async with self._slots:
            return Page(await self._read(key, after))

    def _done(self, ident: tuple[str, str], task: asyncio.Task, page: int) -> None:
        if task.cancelled() or task.exception() is not None or task.result().size < page or ident in self._recent:
            return
        now = time.monotonic()
        self._recent[ident] = (now, task.result())
        self._recent_bytes += task.result().nbytes
        while self._recent and (self._recent_bytes > RECENT_BYTES or next(iter(self._recent.values()))[0] < now - RECENT_SECONDS):
            self._recent_bytes -= self._recent.popitem(last=False)[1][1].nbytes

    def cancel(self) -> None:
        self._inflight.cancel()


class Follower:
    __slots__ = ("position", "queue", "queued_bytes", "dropped", "tailer")

    def __init__(self, position: str):
        self.position = position
        self.queue: asyncio.Queue[Batch | LogUnavailable] = asyncio.Queue(QUEUE_BATCHES)
        self.queued_bytes = 0
        self.dropped = False
        self.tailer: Tailer | None = None

    def offer(self, item: Batch | LogUnavailable) -> bool:
        """Queue `item`; False (and nothing queued) if the follower already has too much pending."""
        size = len(item.text) if isinstance(item, Batch) else 0
        if self.queued_bytes + size > QUEUE_BYTES and not self.queue.empty():
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        self.queued_bytes += size
        return True

    async def take(self) -> Batch | LogUnavailable:
        item = await self.queue.get()
        if isinstance(item, Batch):
            self.queued_bytes -= len(item.text)
        return item


class Tailer:
    """The one live reader of a job's stream: `cursor` is the last entry handed to `followers`."""

    def __init__(self, job_id: str, cursor: str):
        self.job_id, self.cursor = job_id, cursor
        self.followers: set[Follower] = set()
        self.task: asyncio.Task | None = None


class FollowerSlot:
    """One admitted follow stream of a token; `release` is idempotent."""

    def __init__(self, hub: LogHub, token: str):
        self.hub, self.token, self.released = hub, token, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.hub._by_token[self.token] -= 1
            if self.hub._by_token[self.token] <= 0:
                del self.hub._by_token[self.token]


class LogHub:
    def __init__(self, store: JobStore, page: int = PAGE, block_ms: int = BLOCK_MS, tail_slots: int = TAIL_SLOTS,
                 tail_interval: float = TAIL_INTERVAL):
        self.store, self.page, self.block_ms, self.tail_slots = store, page, block_ms, tail_slots
        self.tail_interval = tail_interval
        self._client: redis.asyncio.Redis | None = None
        self._probe: redis.asyncio.Redis | None = None  # /healthz's own connection
        self._tail_slots = asyncio.Semaphore(tail_slots)
        self._pages = SharedPages(self._read_page)
        self._records = InFlight()  # exists / finished reads, joined per job
        self.replays = ReplaySlots()
        self._tailers: dict[str, Tailer] = {}
        self._by_token: Counter[str] = Counter()

    # -- life cycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        pool = async_pool(
            self.store.target, max_connections=self.tail_slots + COMMAND_SLOTS, timeout=10, decode_responses=True,
            socket_connect_timeout=2, socket_keepalive=True, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError])
        self._client = redis.asyncio.Redis.from_pool(pool)
        probe = async_pool(self.store.target, max_connections=1, timeout=10, socket_connect_timeout=2,
                           socket_keepalive=True, health_check_interval=10)
        self._probe = redis.asyncio.Redis.from_pool(probe)

    async def close(self) -> None:
        tasks = [t.task for t in self._tailers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        self._pages.cancel()
        self._records.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tailers.clear()
        for client in (self._client, self._probe):
            if client is not None:
                await client.aclose()
        self._client = self._probe = None

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("LogHub.open() was not called (the app's start-up)")
        return self._client

    async def ping(self, timeout: float) -> bool:
        """True if Redis answers within `timeout` seconds (on the probe's own connection: it never
        waits for one of the pool's, however many followers use them)."""
        if self._probe is None:
            raise RuntimeError("LogHub.open() was not called (the app's start-up)")
        try:
            async with asyncio.timeout(timeout):
                await self._probe.ping()
        except (redis.RedisError, OSError, TimeoutError):
            return False
        return True

    # -- counts ------------------------------------------------------------------------------
    def admit(self, token: str, limit: int) -> FollowerSlot:
        """A slot for one more follow stream of `token`; TooManyFollowers past `limit`."""
        if self._by_token[token] >= limit:
            raise TooManyFollowers(token, limit)
        self._by_token[token] += 1
        return FollowerSlot(self, token)

    def stats(self, token: str | None = None) -> dict[str, Any]:
        """Open follow streams (all, and the token's), followed jobs, and tailers reading now."""
        stats = {"followers": sum(self._by_token.values()), "followed_jobs": len(self._tailers),
                 "replaying": self.replays.held}
        if token is not None:
            stats["token_followers"] = self._by_token.get(token, 0)
        return stats

    # -- reading -----------------------------------------------------------------------------
    async def exists(self, job_id: str) -> bool:
        """Whether the job has a record (one read for every caller asking at the same moment)."""
        return await self._records.get(("exists", job_id), lambda: self._exists(job_id))

    async def finished(self, job_id: str) -> bool:
        """True once the job's record says it ended (or the record is gone): its log is complete.
        Callers asking together share one read, which may have started before a caller's last
        page: harmless, as a finished job stays finished (the caller then drains unshared) and a
        False only sends the caller to the tailer, which asks again."""
        return await self._records.get(("finished", job_id), lambda: self._finished(job_id))

    async def _exists(self, job_id: str) -> bool:
        return bool(await self.client.exists(self.store.job_key(job_id)))

    async def _finished(self, job_id: str) -> bool:
        raw = await self.client.get(self.store.job_key(job_id))
        return raw is None or JobRecord.model_validate_json(raw).finished

    async def _read_page(self, key: str, after: str) -> StreamEntries:
        reply = cast(list[tuple[str, StreamEntries]], await self.client.xread({key: after}, count=self.page))
        return reply[0][1] if reply else []

    async def pages(self, job_id: str, after: str = "0-0", stop_at_end: bool = True,
                    shared: bool = True) -> AsyncGenerator[Batch, None]:
        """The entries after `after`, a page at a time, until none are left (or the end marker)."""
        key = self.store.log_key(job_id)
        while True:
            page = await self._pages.get(key, after, self.page, shared)
            if not page.size:
                return
            batch = page.batch(stop_at_end)
            yield batch
            if batch.ended:
                return
            after = batch.last

    async def replay(self, job_id: str, after: str = "0-0", stop_at_end: bool = True) -> AsyncGenerator[Batch, None]:
        """`pages` for a client, in turns: each page is taken and sent holding a replay slot."""
        pages = self.pages(job_id, after, stop_at_end)
        try:
            while True:
                release = await self.replays.take()
                try:
                    try:
                        batch = await anext(pages)
                    except StopAsyncIteration:
                        return
                    yield batch
                finally:
                    release()
        finally:
            await pages.aclose()

    async def read(self, job_id: str) -> AsyncGenerator[bytes, None]:
        """The whole log as it is now, as chunks of whole lines (each ending in "\\n")."""
        async with aclosing(self.replay(job_id, stop_at_end=False)) as replay:
            async for batch in replay:
                if batch.text:
                    yield batch.text

    async def follow(self, job_id: str) -> AsyncGenerator[bytes, None]:
        """The log from the start, then live, until the job ends; chunks of whole lines."""
        async for batch in self.follow_batches(job_id):
            yield batch.text

    async def follow_batches(self, job_id: str, after: str = "0-0") -> AsyncGenerator[Batch, None]:
        """`follow` as batches of the entries after `after` (their ids carry the time each was
        written); each batch holds at least one entry and none a previous one held."""
        position = after
        while True:
            async with aclosing(self.replay(job_id, position)) as replay:  # its slot goes when we return
                async for batch in replay:
                    position = batch.last
                    if batch.ids:
                        yield batch
                    if batch.ended:
                        return
            if await self.finished(job_id):  # ended without an end marker: take what came meanwhile
                async for batch in self.pages(job_id, position, shared=False):
                    position = batch.last
                    if batch.ids:
                        yield batch
                return
            follower = Follower(position)
            if not self._join(job_id, follower):
                continue  # the tailer already handed out entries we have not read: catch up first
            try:
                while not (follower.dropped and follower.queue.empty()):
                    item = await follower.take()
                    if isinstance(item, LogUnavailable):
                        raise item
                    fresh = item.after(follower.position)
                    if entry_order(item.last) > entry_order(follower.position):
                        follower.position = item.last
                    if fresh.ids:
                        yield fresh
                    if item.ended:
                        return
                position = follower.position  # dropped for being slow: catch up on our own, then join again
            finally:
                self._leave(follower)

    # -- tailers -----------------------------------------------------------------------------
    def _join(self, job_id: str, follower: Follower) -> bool:
        """Add `follower` to the job's tailer (started at its position if there is none).
        False if the tailer is past the follower's position: entries in between would be missed."""
        tailer = self._tailers.get(job_id)
        if tailer is None:
            tailer = self._tailers[job_id] = Tailer(job_id, follower.position)
            tailer.task = asyncio.create_task(self._tail(tailer), name=f"tail {job_id}")
        elif entry_order(tailer.cursor) > entry_order(follower.position):
            return False
        tailer.followers.add(follower)
        follower.tailer = tailer
        return True

    def _leave(self, follower: Follower) -> None:
        tailer = follower.tailer
        if tailer is None:
            return
        tailer.followers.discard(follower)
        follower.tailer = None
        if not tailer.followers and self._tailers.get(tailer.job_id) is tailer:
            del self._tailers[tailer.job_id]
            if tailer.task is not None and tailer.task is not asyncio.current_task():
                tailer.task.cancel()

    def _hand_out(self, tailer: Tailer, item: Batch | LogUnavailable) -> None:
        """Give `item` to every follower (no await: joins see a consistent cursor)."""
        if isinstance(item, Batch):
            tailer.cursor = item.last
        for follower in list(tailer.followers):
            if not follower.offer(item):
                follower.dropped = True
                self._leave(follower)

    def _end(self, tailer: Tailer, item: Batch | LogUnavailable) -> None:
        if self._tailers.get(tailer.job_id) is tailer:
            del self._tailers[tailer.job_id]
        self._hand_out(tailer, item)

    async def _tail(self, tailer: Tailer) -> None:
        key, failures = self.store.log_key(tailer.job_id), 0
        while True:
            try:
                async with self._tail_slots:
                    reply = cast(list[tuple[str, StreamEntries]],
                                 await self.client.xread({key: tailer.cursor}, count=self.page, block=self.block_ms))
                if reply and reply[0][1]:
                    batch = Batch.from_stream(reply[0][1], stop_at_end=True)
                    if batch.ended:
                        return self._end(tailer, batch)
                    self._hand_out(tailer, batch)
                    if len(reply[0][1]) < self.page:
                        await asyncio.sleep(self.tail_interval)
                elif await self.finished(tailer.job_id):
                    async for batch in self.pages(tailer.job_id, tailer.cursor, shared=False):
                        if batch.ended:
                            return self._end(tailer, batch)
                        self._hand_out(tailer, batch)
                    return self._end(tailer, Batch.empty(tailer.cursor, ended=True))
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                if failures >= TAIL_FAILURES:
                    log.warning("following job %s: Redis stayed unreachable (%s); followers disconnected",
                                tailer.job_id, exc)
                    return self._end(tailer, LogUnavailable())
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            if not tailer.followers:
                return self._end(tailer, Batch.empty(tailer.cursor))
