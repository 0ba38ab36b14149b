"""The jobs channel: one poller per process tells every open dashboard which jobs changed.

Only new, queued and running jobs can change, so each round reads the ids created since the
last round (the all-jobs index), the queued and running indexes, and those records (MGET),
and compares each with what it saw last round. Its cost follows the jobs in flight, never the
history, and it is paid once per process whatever the number of open pages. The poller runs
while someone listens and stops with the last listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis

from runner.core.jobs import JobRecord, Status
from runner.store.jobstore import JobStore

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between rounds
NEW_PER_ROUND = 500  # new jobs reported per round at most (a burst is reported over several rounds)
ACTIVE_CAP = 2000  # queued or running jobs watched at most (the oldest beyond it are not watched live)
PENDING_ROUNDS = 64  # rounds a listener may have unread before it is told to reload


class Resync:
    """Sent to a listener that fell behind: what it shows may be stale, it should reload."""


class Change:
    """A record that changed in a round, with its HTML rendered once for every listener."""

    __slots__ = ("record", "_html")

    def __init__(self, record: JobRecord):
        self.record = record
        self._html: str | None = None

    def html(self, render: Callable[[JobRecord], str]) -> str:
        html = self._html
        if html is None:
            html = self._html = render(self.record)
        return html


class JobsWatch:
    def __init__(self, store: JobStore, client, interval: float = INTERVAL):
        self.store, self.interval = store, interval
        self._client = client  # () -> redis.asyncio.Redis
        self._listeners: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._starting = asyncio.Lock()
        self._seen: dict[str, str] = {}  # id -> raw JSON of every job that could still change
        self._newest = 0.0  # creation time of the newest job seen

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue]:
        """A queue of rounds (lists of Change, oldest job first) or Resync, while the context is open."""
        queue: asyncio.Queue = asyncio.Queue(PENDING_ROUNDS)
        async with self._starting:
            if self._task is None or self._task.done():
                await self._baseline()
                self._task = asyncio.create_task(self._run(), name="dashboard jobs watch")
            self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
            if not self._listeners and self._task is not None:
                self._task.cancel()
                self._task = None

    # -- rounds --------------------------------------------------------------------------------
    async def _baseline(self) -> None:
        client = self._client()
        newest = await client.zrevrange(self.store.index_key(), 0, 0, withscores=True)
        self._newest = newest[0][1] if newest else 0.0
        active = await self._active(client)
        raws = await client.mget([self.store.job_key(i) for i in active]) if active else []
        self._seen = {i: raw for i, raw in zip(active, raws, strict=True) if raw is not None}

    async def _active(self, client) -> list[str]:
        ids: list[str] = []
        for status in (Status.queued, Status.running):
            ids += await client.zrevrange(self.store.index_key(status), 0, ACTIVE_CAP - 1)
        return ids

    async def poll(self) -> list[JobRecord]:
        """One round: the records that changed (or appeared) since the last one, oldest first."""
        client = self._client()
        new = await client.zrangebyscore(self.store.index_key(), f"({self._newest!r}", "+inf",
                                         start=0, num=NEW_PER_ROUND, withscores=True)
        if new:
            self._newest = new[-1][1]
        watched = list(dict.fromkeys([*(i for i, _ in new), *await self._active(client), *self._seen]))
        raws = await client.mget([self.store.job_key(i) for i in watched]) if watched else []
        changed: list[JobRecord] = []
        seen: dict[str, str] = {}
        for job_id, raw in zip(watched, raws, strict=True):
            if raw is None:
                continue
            if self._seen.get(job_id) == raw:  # unchanged, so still in flight (only those are kept)
                seen[job_id] = raw
                continue
            try:
                record = JobRecord.model_validate_json(raw)
            except ValueError:  # not a record we can read: nothing to show, never a stopped channel
                continue
            changed.append(record)
            if not record.finished:
                seen[job_id] = raw
        self._seen = seen
        changed.sort(key=lambda r: r.created_at)
        return changed

    async def _run(self) -> None:
        failures = 0
        while self._listeners:
            started = time.monotonic()
            try:
                changed = await self.poll()
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                if failures in (1, 30):
                    log.warning("dashboard jobs watch: Redis error (%s); retrying", type(exc).__name__)
                changed = []
            if changed:
                changes = [Change(record) for record in changed]
                for queue in list(self._listeners):
                    try:
                        queue.put_nowait(changes)
                    except asyncio.QueueFull:  # a listener that stopped reading: tell it to reload once it does
                        queue.get_nowait()
                        queue.put_nowait(Resync())
            await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.05))
