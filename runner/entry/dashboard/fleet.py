"""The fleet at a glance: per executor the queue length (LLEN of its Celery queue) and the jobs
running on it (the store's per-executor running lists, which the autoscaler reads too); the
workers seen running jobs, with what each runs; and the recent failure rate.

Workers are the live ones of the store's heartbeat sets (the same numbers `runner serve`'s
/metrics exports as runner_workers), idle ones included, with the jobs each runs. Reads a
fixed number of keys per executor, never the history; a snapshot is shared by every page
for SNAPSHOT_SECONDS."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from runner.config.settings import Settings
from runner.core.jobs import JobRecord, Status
from runner.store.jobstore import JobStore

SNAPSHOT_SECONDS = 2.0
RECENT_JOBS = 200  # the failure rate per executor is over the newest finished jobs among these
WINDOWS = ((3600, "last hour"), (86400, "last 24 h"))
FAILED = (Status.failed, Status.timed_out)


@dataclass
class ExecutorLoad:
    name: str
    queued: int
    running: list[JobRecord]
    finished: int = 0
    failed: int = 0

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


@dataclass
class Rate:
    label: str
    finished: int
    failed: int

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


@dataclass
class Fleet:
    executors: list[ExecutorLoad]
    workers: dict[str, list[JobRecord]]
    rates: list[Rate]
    recent: int
    taken_at: float = field(default_factory=time.time)


def readable(raw: str | None) -> JobRecord | None:
    """The record, or None for a key that is gone or holds nothing we can read."""
    try:
        return JobRecord.model_validate_json(raw) if raw else None
    except ValueError:
        return None


class FleetReader:
    def __init__(self, settings: Settings, store: JobStore, client):
        self.settings, self.store = settings, store
        self._client = client  # () -> redis.asyncio.Redis
        self._snapshot: tuple[float, Fleet] | None = None

    async def snapshot(self) -> Fleet:
        if self._snapshot is not None and time.monotonic() - self._snapshot[0] < SNAPSHOT_SECONDS:
            return self._snapshot[1]
        fleet = await self._read()
        self._snapshot = (time.monotonic(), fleet)
        return fleet

    async def _read(self) -> Fleet:
        client = self._client()
        names = self.settings.enabled_executors()
        async with client.pipeline(transaction=False) as pipe:
            now = time.time()
            for name in names:
                pipe.llen(self.settings.queue_for(name))
                pipe.lrange(self.store.running_key(name), 0, -1)
            for name in names:
                pipe.zrangebyscore(self.store.workers_key(name), now, "+inf")
            for window, _ in WINDOWS:
                for status in (Status.succeeded, *FAILED):
                    pipe.zcount(self.store.index_key(status), now - window, "+inf")
            pipe.zrevrange(self.store.index_key(), 0, RECENT_JOBS - 1)
            replies = await pipe.execute()
        loads = [ExecutorLoad(name, replies[2 * n], []) for n, name in enumerate(names)]
        running_ids = [(load, job_id) for n, load in enumerate(loads) for job_id in replies[2 * n + 1]]
        live = {worker for members in replies[2 * len(names):3 * len(names)] for worker in members}
        counts = replies[3 * len(names):-1]
        rates = []
        for w, (_, label) in enumerate(WINDOWS):
            succeeded, *failed = counts[3 * w:3 * w + 3]
            rates.append(Rate(label, succeeded + sum(failed), sum(failed)))
        recent_ids = replies[-1]
        ids = [job_id for _, job_id in running_ids] + recent_ids
        raws = await client.mget([self.store.job_key(i) for i in ids]) if ids else []
        records = {job_id: record for job_id, raw in zip(ids, raws, strict=True) if (record := readable(raw)) is not None}
        workers: dict[str, list[JobRecord]] = {worker: [] for worker in live}
        for load, job_id in running_ids:
            record = records.get(job_id)
            if record is not None and record.status is Status.running:
                load.running.append(record)
                workers.setdefault(record.worker or "(unknown)", []).append(record)
        by_name = {load.name: load for load in loads}
        finished = Counter[str]()
        failed = Counter[str]()
        for job_id in recent_ids:
            record = records.get(job_id)
            if record is not None and record.status in (Status.succeeded, *FAILED):
                finished[record.executor] += 1
                failed[record.executor] += record.status in FAILED
        for name, count in finished.items():
            if name in by_name:
                by_name[name].finished, by_name[name].failed = count, failed[name]
        return Fleet(loads, dict(sorted(workers.items())), rates, len(recent_ids))
