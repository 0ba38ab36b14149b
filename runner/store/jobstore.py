"""The jobs in Redis: records and their indexes, log streams, contexts, id reservations, cancel
flags, leases, secret values, workers' heartbeats, git pushes seen and requeue counts.

Every key of a job is named here and nowhere else. Some are read elsewhere on clients of their
own (asyncio): the dashboard (runner/entry/dashboard: watch, fleet, routes) and the API's log
hub (runner/store/logfollow.py), always by the names this module gives (job_key, log_key,
index_key, running_key, workers_key). The other keys of the runner's: the delivery outbox's
(NS:delivery:*, NS:dgroup:*, NS:outbox, NS:deliveries:gave_up), named by runner/store/outbox.py;
the delivery hosts' circuits (NS:circuit:*, NS:circuits), named by runner/store/circuits.py; the
queues are Celery's (below).

A job's record changes by the moves of runner/store/jobstate.py, each applied in one
transaction: `move`, `end` (a move that ends the job, with everything its end writes and owes),
`submit` (the queued moment), `end_new` (a refused raw message).

Keys (NS = settings.worker.namespace):
  NS:job:ID        JSON JobRecord (expires retention.finished_seconds after the job ends)
  NS:jobs          ZSET of every job id by creation time
  NS:status:S      ZSET of the ids in status S by creation time (queued, running, ...)
  NS:running:E     LIST of the ids running on executor E (its length is an autoscaler's signal:
                   KEDA's redis trigger reads LLEN, so scale-in never goes below the running builds)
  NS:log:ID        Redis Stream; field `l` holds one or more lines joined by "\\n", `end` the final status
  NS:ctx:ID        LIST of context tar chunks
  NS:reserve:ID    who is submitting job ID (an id is reserved before its context is uploaded)
  NS:uploads:WHO   ZSET of WHO's uploaded, not yet submitted contexts (by expiry time)
  NS:cancel:ID     cancel flag                      NS:lease:ID   worker holding the job (TTL)
  NS:secrets:ID    HASH of secret build-arg values; never in a queue message; gone when the job ends
  NS:workers:E     ZSET of the workers serving executor E, each scored by when its heartbeat
                   lapses (Redis's clock): live workers are the members scored in the future
  NS:push:KEY      the job a git push (KEY: a hash of host, repository, ref, before and after) made,
                   for webhooks.replay_window: the same push in another delivery is a replay
  NS:built:KEY     JSON: the job that pushed an image from the inputs whose key is KEY (a sha256 of
                   its BuildInputs), its images and when (runner.worker.reuse); lives as long as a
                   finished job's record (retention.finished_seconds)
  NS:building:KEY  the job building from the inputs KEY now (others with that key wait for it)
  NS:requeued      HASH "executor/reason" -> times a job of that executor went back to its queue
                   for that reason (counted here, not by the worker that dies with it)
Queues (Celery's, not ours): the LIST `NS.E` holds the messages waiting for executor E (named by
Settings.queue_for), `NS.deliveries` the deliveries' (outbox.deliveries_queue); `NS.E.invalid`
(invalid_queue, here) keeps the messages the transport set aside.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from runner.config.client_plain import PlainRetention
from runner.config.redis_target import RedisTarget
from runner.core.jobview import JobView
from runner.core.status import Status
from runner.store.buildqueue import build_message
from runner.store.redis_clients import probe_client, sync_client

if TYPE_CHECKING:
    from runner.config.client import RetentionConfig
    from runner.core.jobs import JobRecord
    from runner.core.status import RequeueReason
    from runner.store.jobstate import Change
    from runner.store.outbox import Outbox


class _HasStatus(Protocol):
    @property
    def status(self) -> Status: ...


R = TypeVar("R", bound=_HasStatus)
T = TypeVar("T")


def _record(raw: str | bytes) -> JobRecord:
    """The model of a stored record; imported here, when first needed: the CLI's read commands
    read records as JobViews and never load the models."""
    from runner.core.jobs import JobRecord

    return JobRecord.model_validate_json(raw)


def _view(raw: str | bytes) -> JobView:
    return JobView(json.loads(raw))

CHUNK_BYTES = 1024 * 1024
RETRIES = 40
CONTEXT_READ_ATTEMPTS = 3  # in a row without progress; each connect already retries for ~1 min
END_FIELD = "end"
LINES_FIELD = "l"  # a log entry's lines, joined by "\n"

_CREATE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX') then
  redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
  redis.call('zadd', KEYS[3], ARGV[2], ARGV[3])
  redis.call('del', KEYS[4])
  return 1
end
return 0
"""
_RESERVE = """
if redis.call('exists', KEYS[1]) == 1 then return 'exists' end
local holder = redis.call('get', KEYS[2])
if holder and holder ~= ARGV[1] then return 'busy' end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 'ok'
"""
_TRACK_UPLOAD = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
if not redis.call('zscore', KEYS[1], ARGV[3]) and redis.call('zcard', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[3])
redis.call('expireat', KEYS[1], math.ceil(ARGV[2]))
return 1
"""
_HEARTBEAT = """
local now = tonumber(redis.call('time')[1])
for _, key in ipairs(KEYS) do
  redis.call('zremrangebyscore', key, '-inf', now)
  redis.call('zadd', key, now + tonumber(ARGV[2]), ARGV[1])
  redis.call('expire', key, math.ceil(tonumber(ARGV[2])))
end
"""
_LIVE = """
local now = redis.call('time')[1]
local counts = {}
for i, key in ipairs(KEYS) do counts[i] = redis.call('zcount', key, '(' .. now, '+inf') end
return counts
"""
_CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('get', KEYS[1])
"""
_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('{op}', KEYS[1]{args}) else return 0 end"
_DELETE_IF_HELD = _IF_HOLDER.format(op="del", args="")


#: a log stream's entries as a decoding client reads them (XREAD, XRANGE): (entry id, fields)
StreamEntries = list[tuple[str, dict[str, str]]]

#: refused and unreadable queue messages are kept here, newest first, at most INVALID_KEEP
INVALID_KEEP = 1000


def invalid_queue(queue: str) -> str:
    return f"{queue}.invalid"


class StoreUnavailable(Exception):
    """Redis cannot be reached."""


class ContextTooLarge(Exception):
    pass


class JobStore:
    def __init__(self, target: RedisTarget | str, namespace: str = "runner",
                 retention: RetentionConfig | PlainRetention | None = None, recover_after: float = 30.0):
        """`recover_after`: deliveries.recover_after, for the deliveries a job's end owes (Outbox)."""
        #: how to reach Redis (a plain URL is a RedisTarget with just that URL)
        self.target = RedisTarget(url=target) if isinstance(target, str) else target
        self.ns = namespace
        self.retention = retention or PlainRetention()
        # Reconnect through a Redis restart (~1 min of retries) instead of failing the job.
        options = dict(health_check_interval=10, socket_keepalive=True, socket_connect_timeout=5,
                       retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), RETRIES),
                       retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError])
        # `r` decodes: its replies are str (redis-py annotates every reply `bytes | str`, whatever
        # the mode, so they are cast where they are read); `raw` is for bytes (contexts, messages)
        self.r = sync_client(self.target, decode_responses=True, **options)
        self.raw = sync_client(self.target, decode_responses=False, **options)
        self._create = self.r.register_script(_CREATE)
        self._reserve = self.r.register_script(_RESERVE)
        self._track_upload = self.r.register_script(_TRACK_UPLOAD)
        self._heartbeat = self.r.register_script(_HEARTBEAT)
        self._live = self.r.register_script(_LIVE)
        self._claim = self.r.register_script(_CLAIM)
        self._recover_after = recover_after

    @functools.cached_property
    def outbox(self) -> Outbox:
        """The deliveries (commit statuses, callbacks) owed, beside the jobs: a job's end adds its
        own. Made at first use: `runner submit` of a job without a source never needs it."""
        from runner.store.outbox import Outbox

        return Outbox.for_store(self, self._recover_after)

    @classmethod
    def from_settings(cls, settings) -> JobStore:
        return cls(settings.redis_target(), settings.worker.namespace, settings.retention,
                   settings.deliveries.recover_after)

    def clients(self) -> list[redis.Redis]:
        """This store's Redis clients (a FailoverWatch closes their connections on a failover)."""
        return [self.r, self.raw]

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.ns}:{kind}:{job_id}"

    def job_key(self, job_id: str) -> str:
        """The record's key, for readers with their own (async) client; the value is a JobRecord's JSON."""
        return self._key("job", job_id)

    def log_key(self, job_id: str) -> str:
        """The log stream's key (entries: LINES_FIELD, or END_FIELD at the job's end)."""
        return self._key("log", job_id)

    def running_key(self, executor: str) -> str:
        return f"{self.ns}:running:{executor}"

    def _status_key(self, status: Status) -> str:
        return f"{self.ns}:status:{status.value}"

    def index_key(self, status: Status | None = None) -> str:
        """The ZSET of job ids by creation time (all jobs, or those in `status`), for readers with their own client."""
        return self._status_key(status) if status else f"{self.ns}:jobs"

    def ping(self) -> None:
        try:
            probe_client(self.target, 3).ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {self.target.describe()} is unreachable: {exc}") from None
        except OSError as exc:  # the password file
            raise StoreUnavailable(f"Redis at {self.target.describe()}: {exc}") from None

    # -- records ---------------------------------------------------------------------------
    def create(self, record: JobRecord) -> bool:
        """Store a new record (and drop the id's reservation); False if a job with that id
        already exists (nothing changed)."""
        keys = [self._key("job", record.id), f"{self.ns}:jobs", self._status_key(record.status), self._key("reserve", record.id)]
        created = self._create(keys=keys, args=[record.model_dump_json(), record.created_at.timestamp(), record.id])
        if created and record.finished:
            self.r.expire(keys[0], self.retention.finished_seconds)
        return bool(created)

    def _unindex(self, job_ids: builtins.list[str]) -> None:
        if job_ids:
            with self.r.pipeline(transaction=False) as pipe:
                for key in (f"{self.ns}:jobs", *(self._status_key(s) for s in Status)):
                    pipe.zrem(key, *job_ids)
                pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.get(self._key("job", job_id))
        return _record(raw) if raw else None

    def view(self, job_id: str) -> JobView | None:
        """The record as stored, without the models (the CLI's read commands)."""
        raw = self.r.get(self._key("job", job_id))
        return _view(raw) if raw else None

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        """Apply `change` atomically (optimistic WATCH); it returns the new record or None to keep.
        Keeps the status indexes in step, and starts the retention clock when the job ends.
        Returns the record as it is now (None: there is none). A job's moves go through `move`
        and `end` (runner/store/jobstate.py)."""
        return self._move(job_id, change, ends=None)[0]

    def move(self, job_id: str, change: Change) -> tuple[JobRecord | None, bool]:
        """`update` by a move of runner/store/jobstate.py that does not end the job (claim,
        requeue, lost back to the queue, request_cancel): (the record, whether it moved)."""
        return self._move(job_id, change, ends=False)

    def end(self, job_id: str, change: Change, closing: str | None = None) -> tuple[JobRecord | None, bool]:
        """End the job by `change` (a move of runner/store/jobstate.py to a final status), in one
        transaction with everything an end writes: the final record, the log's closing line
        (`closing`, masked by the caller: JobLog.closing) and its end marker, the deliveries the
        end owes (its final commit status and callback, jobstate.owes, each with its task
        message), the retention clock; its context and secret values go. A worker killed at
        any moment leaves all of it or none of it. Returns (the record, whether this call ended
        the job): (the record as it is, False) when `change`'s guard said no, (None, False)
        when there is no record."""
        return self._move(job_id, change, closing, ends=True)

    def submit(self, record: JobRecord, secret_values: dict[str, str]) -> tuple[JobRecord, bool]:
        """The queued moment, in one transaction: a new job's record (queued: jobstate.admitted),
        its secret build-arg values, the "queued" commit status it owes (when `record.statuses`)
        and its task message on its queue (runner.store.buildqueue). A process killed at any
        moment leaves all of it or none of it. A job that has the id already is left alone:
        (that record, False)."""
        if record.status is not Status.queued:
            raise ValueError(f"submit needs a queued record, not a {record.status.value} one")
        stored = self._create_with(record.id, record.created_at.timestamp(), lambda pipe: self._write(pipe, None, record),
                                   lambda pipe: self._queued(pipe, record.id, secret_values, record.statuses, record.queue,
                                                             record.request.model_dump(mode="json")))
        return (record, True) if stored is None else (_record(stored), False)

    def submit_plain(self, record: dict[str, Any], secret_values: dict[str, str]) -> tuple[JobView, bool]:
        """`submit` of a record written without the models (runner.core.plain_request.queued_record,
        the CLI's light path): the same keys in the same one transaction."""
        if record["status"] != Status.queued.value:
            raise ValueError(f"submit needs a queued record, not a {record['status']} one")
        from runner.core.plain_request import record_text

        job_id, created = record["id"], datetime.fromisoformat(record["created_at"]).timestamp()
        text = record_text(record)
        stored = self._create_with(
            job_id, created, lambda pipe: self._put(pipe, job_id, text, created, Status.queued, record["executor"]),
            lambda pipe: self._queued(pipe, job_id, secret_values, record["statuses"], record["queue"], record["request"]))
        return (JobView(record), True) if stored is None else (_view(stored), False)

    def _queued(self, pipe: redis.client.Pipeline, job_id: str, secret_values: dict[str, str], statuses: bool,
                queue: str, request: dict[str, Any]) -> None:
        """What a submit writes beside the record: its secret values, its "queued" status, its message."""
        self._put_secrets(pipe, job_id, secret_values)
        if statuses:  # before the message: "queued" goes first (runner/store/outbox.py)
            self.outbox.add(job_id, "status", "queued", "queued", client=pipe)
        pipe.lpush(queue, build_message(request, queue))

    def end_new(self, record: JobRecord, closing: str | None = None) -> tuple[JobRecord, bool]:
        """Store a job born ended (a refused raw message: jobstate.refuse) with its closing line
        and end marker, its context and secret values gone, owing nothing (it was never
        admitted). A job that has the id already is left alone: (that record, False)."""
        if not record.finished:
            raise ValueError(f"end_new needs a finished record, not a {record.status.value} one")
        stored = self._create_with(record.id, record.created_at.timestamp(), lambda pipe: self._write(pipe, None, record),
                                   lambda pipe: self._ending(pipe, record, closing))
        return (record, True) if stored is None else (_record(stored), False)

    def _create_with(self, job_id: str, created: float, write: Callable[[redis.client.Pipeline], None],
                     also: Callable[[redis.client.Pipeline], None]) -> str | bytes | None:
        """Store a new record by `write` (and drop its id's reservation) with what `also` queues
        on the transaction: None; or the raw record there if a job has the id already (nothing written)."""
        key = self._key("job", job_id)

        def create(pipe: redis.client.Pipeline) -> str | bytes | None:
            raw = pipe.get(key)
            if raw is not None:
                pipe.unwatch()
                return raw
            pipe.multi()
            pipe.zadd(f"{self.ns}:jobs", {job_id: created})
            pipe.delete(self._key("reserve", job_id))
            write(pipe)
            also(pipe)
            return None

        return self._transaction(key, create)

    def _move(self, job_id: str, change: Change, closing: str | None = None,
              ends: bool | None = True) -> tuple[JobRecord | None, bool]:
        """`ends`: the move must end the job (end), must not (move), or either (update)."""
        from runner.store import jobstate  # the models: not on the CLI's read path

        key = self._key("job", job_id)

        def move(pipe: redis.client.Pipeline) -> tuple[JobRecord | None, bool]:
            raw = pipe.get(key)
            if raw is None:
                pipe.unwatch()
                return None, False
            current = _record(raw)
            new = change(current)
            if new is None:
                pipe.unwatch()
                return current, False
            if ends is not None and (current.finished or new.finished is not ends):
                pipe.unwatch()
                raise ValueError(f"job {job_id}: a move from {current.status.value} to {new.status.value} "
                                 + ("is no end" if ends else "needs JobStore.end"))
            pipe.multi()
            self._write(pipe, current, new)
            if ends:
                self._ending(pipe, new, closing)
                status, callback = jobstate.owes(new)
                self.outbox.add_finished(new.id, status, callback, client=pipe)
            return new, True

        return self._transaction(key, move)

    def _delete_if_held(self, key: str, holder: str) -> None:
        """Delete `key` if it still holds `holder` (a claim, lease or entry not taken over since)."""
        self.r.eval(_DELETE_IF_HELD, 1, key, holder)

    def _transaction(self, key: str, body: Callable[[redis.client.Pipeline], T]) -> T:
        """`body` on a pipeline watching `key`, run again whenever the key changed before its
        MULTI ran (redis-py's own retry loop); what `body` returned."""
        return cast(T, self.r.transaction(body, key, value_from_callable=True))  # type: ignore[arg-type]

    def _write(self, pipe: redis.client.Pipeline, current: JobRecord | None, new: JobRecord) -> None:
        """Queue the record's write on `pipe` (in MULTI): the record, its status index and its
        executor's running list moved with it, the retention clock once it is finished."""
        self._put(pipe, new.id, new.model_dump_json(), new.created_at.timestamp(), new.status, new.executor,
                  current.status if current else None, current.executor if current else None)

    def _put(self, pipe: redis.client.Pipeline, job_id: str, text: str, created: float, status: Status, executor: str,
             was: Status | None = None, was_executor: str | None = None) -> None:
        """`_write` of a record as its JSON `text` (`was`: its status before, None for a new one)."""
        key = self._key("job", job_id)
        pipe.set(key, text)
        if was is None or status is not was:
            if was is not None:
                pipe.zrem(self._status_key(was), job_id)
            pipe.zadd(self._status_key(status), {job_id: created})
            if was is Status.running:
                pipe.lrem(self.running_key(was_executor or ""), 0, job_id)
            if status is Status.running:
                pipe.lpush(self.running_key(executor), job_id)
        if status.finished:
            pipe.expire(key, self.retention.finished_seconds)

    def _ending(self, pipe: redis.client.Pipeline, record: JobRecord, closing: str | None) -> None:
        """Queue on `pipe` (in MULTI) what every end writes to the job's other keys: the log's
        closing line and end marker, the log's retention clock; its context and secret values go."""
        key = self._key("log", record.id)
        if closing is not None:
            pipe.xadd(key, {LINES_FIELD: closing})
        pipe.xadd(key, {END_FIELD: record.status.value})
        pipe.expire(key, self.retention.finished_seconds)
        pipe.delete(self._key("ctx", record.id), self._key("secrets", record.id))

    def list(self, status: Status | None = None, limit: int = 50, before: float | None = None) -> builtins.list[JobRecord]:
        """Newest first, from the status index (so cost follows `limit`, not history). `before`:
        only jobs created before this timestamp (paging). Ids whose record expired are dropped
        from the indexes on the way."""
        return self._list(_record, status, limit, before)

    def views(self, status: Status | None = None, limit: int = 50) -> builtins.list[JobView]:
        """`list` without the models (the CLI's `runner list`)."""
        return self._list(_view, status, limit, None)

    def _list(self, parse: Callable[[Any], R], status: Status | None, limit: int, before: float | None) -> builtins.list[R]:
        index = self.index_key(status)
        top = f"({before}" if before is not None else "+inf"
        records: builtins.list[R] = []
        while len(records) < limit:
            ids = cast(builtins.list[tuple[str, float]],
                       self.r.zrevrangebyscore(index, top, "-inf", start=0, num=max(limit - len(records), 20), withscores=True))
            if not ids:
                break
            raws = self.r.mget([self._key("job", i) for i, _ in ids])
            self._unindex([i for (i, _), raw in zip(ids, raws, strict=True) if raw is None])
            for raw in raws:
                if raw and len(records) < limit:
                    record = parse(raw)
                    if status is None or record.status is status:
                        records.append(record)
            top = f"({ids[-1][1]}"
        return records

    def count(self, status: Status | None = None) -> int:
        return self.r.zcard(self.index_key(status))

    def ids(self, status: Status) -> builtins.list[str]:
        """Every id in `status` (for recovery: the running ones, never the whole history)."""
        return cast(builtins.list[str], self.r.zrange(self._status_key(status), 0, -1))

    def reconcile_running(self, executors: builtins.list[str]) -> None:
        """Rebuild the per-executor running lists from the running index (after a crash
        between the two writes, or a Redis restore), so autoscaling reads the truth."""
        running: dict[str, list[str]] = {name: [] for name in executors}
        for record in self.list(Status.running, limit=1_000_000):
            running.setdefault(record.executor, []).append(record.id)
        for executor, ids in running.items():
            key = self.running_key(executor)
            if sorted(self.r.lrange(key, 0, -1)) != sorted(ids):
                with self.r.pipeline() as pipe:
                    pipe.delete(key)
                    if ids:
                        pipe.rpush(key, *ids)
                    pipe.execute()

    def prune(self, batch: int = 1000) -> int:
        """Drop index entries whose record has expired; returns how many went. Called by the
        worker's maintenance so the indexes shrink with retention."""
        cutoff = time.time() - self.retention.finished_seconds
        ids = cast(builtins.list[str], self.r.zrangebyscore(f"{self.ns}:jobs", "-inf", cutoff, start=0, num=batch))
        if not ids:
            return 0
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(self._key("job", job_id))
            gone = [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True) if not exists]
        self._unindex(gone)
        return len(gone)

    def set_aside(self, queue: str, message: str | bytes, reason: str) -> None:
        """Keep a refused queue message in `<queue>.invalid` for the operator to read."""
        with self.raw.pipeline(transaction=False) as pipe:
            pipe.lpush(invalid_queue(queue), message)
            pipe.ltrim(invalid_queue(queue), 0, INVALID_KEEP - 1)
            pipe.execute()

    # -- workers and queues (what a fleet's dashboards and autoscaler read) ---------------------
    def workers_key(self, executor: str) -> str:
        return f"{self.ns}:workers:{executor}"

    def heartbeat(self, worker_id: str, executors: builtins.list[str], ttl: float) -> None:
        """Say that `worker_id` serves `executors` for the next `ttl` seconds."""
        if executors:
            self._heartbeat(keys=[self.workers_key(e) for e in executors], args=[worker_id, ttl])

    def retire(self, worker_id: str, executors: builtins.list[str]) -> None:
        """The worker stops: it counts no longer, without waiting for its heartbeat to lapse."""
        with self.r.pipeline(transaction=False) as pipe:
            for executor in executors:
                pipe.zrem(self.workers_key(executor), worker_id)
            pipe.execute()

    def live_workers(self, executors: builtins.list[str]) -> dict[str, int]:
        """How many workers serve each executor now (their heartbeat has not lapsed)."""
        if not executors:
            return {}
        counts = self._live(keys=[self.workers_key(e) for e in executors])
        return dict(zip(executors, map(int, counts), strict=True))

    def queue_lengths(self, queues: builtins.list[str]) -> dict[str, int]:
        """Messages waiting in each queue: LLEN of Celery's list (what KEDA's redis trigger reads)."""
        with self.r.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            return dict(zip(queues, map(int, pipe.execute()), strict=True))

    def count_requeue(self, executor: str, reason: RequeueReason) -> None:
        """A job of `executor` went back to its queue (runner serve exports the counts)."""
        self.r.hincrby(f"{self.ns}:requeued", f"{executor}/{reason}", 1)

    def requeues(self) -> dict[tuple[str, str], int]:
        """(executor, reason) -> jobs put back in their queue, since Redis's data began."""
        counts = {}
        for field, count in cast(dict[str, str], self.r.hgetall(f"{self.ns}:requeued")).items():
            executor, _, reason = field.rpartition("/")
            counts[(executor, reason)] = int(count)
        return counts

    # -- id reservations and pending uploads -------------------------------------------------
    def reserve(self, job_id: str, owner: str) -> str:
        """Claim `job_id` before uploading its context: 'ok' (ours, also when we held it
        already), 'exists' (a job has the id), or 'busy' (another client is submitting it)."""
        keys = [self._key("job", job_id), self._key("reserve", job_id)]
        return self._reserve(keys=keys, args=[owner, self.retention.upload_seconds])

    def reservation(self, job_id: str) -> str | None:
        return cast("str | None", self.r.get(self._key("reserve", job_id)))

    def release(self, job_id: str, owner: str) -> None:
        self._delete_if_held(self._key("reserve", job_id), owner)

    def track_upload(self, owner: str, job_id: str, max_pending: int) -> bool:
        """Count an uploaded, unsubmitted context against `owner`; False past `max_pending`."""
        now = time.time()
        return bool(self._track_upload(keys=[f"{self.ns}:uploads:{owner}"],
                                       args=[now, now + self.retention.upload_seconds, job_id, max_pending]))

    def untrack_upload(self, owner: str, job_id: str) -> None:
        self.r.zrem(f"{self.ns}:uploads:{owner}", job_id)

    # -- git pushes (webhook replays) ---------------------------------------------------------
    def claim_push(self, key: str, job_id: str, ttl: int) -> str | None:
        """Claim the push `key` for `job_id` for `ttl` seconds: None if claimed now, else the job
        that holds it."""
        return self._claim(keys=[self._key("push", key)], args=[job_id, ttl])

    @contextmanager
    def turn(self, name: str, ttl: float = 60, wait: float = 60) -> Iterator[bool]:
        """Take turns with the fleet for `name` (e.g. writing one digest's signature tags): held
        for at most `ttl` seconds, waited for at most `wait`. Yields whether it was taken (past
        `wait`, or with Redis away, the caller goes on without it)."""
        lock = self.r.lock(self._key("turn", hashlib.sha256(name.encode()).hexdigest()), timeout=ttl, blocking_timeout=wait)
        try:
            taken = bool(lock.acquire())
        except redis.RedisError:
            taken = False
        try:
            yield taken
        finally:
            if taken:
                try:
                    lock.release()
                except redis.RedisError:  # expired (past ttl) or Redis away: it lapses by itself
                    pass

    def release_push(self, key: str, job_id: str) -> None:
        self._delete_if_held(self._key("push", key), job_id)

    # -- images built, by their inputs' key (runner.worker.reuse) -----------------------------
    def remember_build(self, key: str, entry: str) -> None:
        self.r.set(self._key("built", key), entry, ex=self.retention.finished_seconds)

    def remembered_build(self, key: str) -> str | None:
        return cast(str | None, self.r.get(self._key("built", key)))

    def forget_build(self, key: str, entry: str) -> None:
        """Forget the build `entry` of `key` (not one remembered since)."""
        self._delete_if_held(self._key("built", key), entry)

    def start_building(self, key: str, job_id: str, ttl: float) -> str | None:
        """Claim building the inputs `key` for `job_id` (for at most `ttl` seconds): None if it is
        ours now, else the job that holds it."""
        return self._claim(keys=[self._key("building", key)], args=[job_id, max(1, int(ttl))])

    def stop_building(self, key: str, job_id: str) -> None:
        self._delete_if_held(self._key("building", key), job_id)

    # -- secret build-arg values: by reference, never in the queue message ---------------------
    def save_secrets(self, job_id: str, values: dict[str, str]) -> None:
        if values:
            with self.r.pipeline() as pipe:
                self._put_secrets(pipe, job_id, values)
                pipe.execute()

    def _put_secrets(self, pipe: redis.client.Pipeline, job_id: str, values: dict[str, str]) -> None:
        if values:
            key = self._key("secrets", job_id)
            fields: dict[FieldT, EncodableT] = {name: value for name, value in values.items()}  # hset takes no dict[str, str]
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.retention.queued_seconds)

    def load_secrets(self, job_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(self._key("secrets", job_id)))

    def delete_secrets(self, job_id: str) -> None:
        self.r.delete(self._key("secrets", job_id))

    # -- logs -------------------------------------------------------------------------------
    def append_log(self, job_id: str, entries: builtins.list[str]) -> builtins.list[str]:
        """Append entries (each one or more lines joined by "\\n"); returns their stream ids."""
        if not entries:
            return []
        key = self._key("log", job_id)
        with self.r.pipeline(transaction=False) as pipe:
            for text in entries:
                pipe.xadd(key, {LINES_FIELD: text})
            return pipe.execute()

    def delete_log_entries(self, job_id: str, entry_ids: builtins.list[str]) -> None:
        if entry_ids:
            self.r.xdel(self._key("log", job_id), *entry_ids)

    def log_of(self, job_id: str, follow: bool = False) -> Iterator[str] | None:
        """read_log, or None when there is no such job (the CLI's `runner logs`)."""
        return self.read_log(job_id, follow) if self.r.exists(self._key("job", job_id)) else None

    def read_log(self, job_id: str, follow: bool = False, block_ms: int = 1000,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Replay the log from the start, line by line; with follow, tail until the job's end marker."""
        key, last = self._key("log", job_id), "0-0"
        while True:
            batch = cast(builtins.list[tuple[str, StreamEntries]],
                         self.r.xread({key: last}, count=500, block=block_ms if follow else None))
            if not batch:
                if not follow:
                    return
                record = self.view(job_id)
                if record is None or (record.finished and not self.r.exists(key)):
                    return
                if should_stop and should_stop():
                    return
                continue
            for entry_id, fields in batch[0][1]:
                last = entry_id
                if END_FIELD in fields:
                    if follow:
                        return
                    continue
                yield from fields.get(LINES_FIELD, "").split("\n")

    # -- contexts ---------------------------------------------------------------------------
    def context_writer(self, job_id: str, max_bytes: int) -> ContextWriter:
        """Write job_id's context; the caller must hold the id's reservation (see reserve)."""
        return ContextWriter(self, self._key("ctx", job_id), max_bytes, self.retention.upload_seconds)

    def context_chunks(self, job_id: str) -> Iterator[bytes]:
        """Yield the stored context in pieces of at most CHUNK_BYTES, never more in memory:
        a list element can be far bigger than the chunks we write (a client posting straight
        to Redis may RPUSH a whole tar as one, up to Redis's 512 MB), so each element is
        streamed off its own connection instead of being read whole by the client library.
        A lost connection is made again (connecting waits out a Redis restart, as every call
        here does) and the read resumes where it stopped."""
        key = self._key("ctx", job_id)
        count = self.raw.llen(key)
        index = offset = failures = 0
        pool = self.raw.connection_pool
        while index < count:
            connection = pool.connection_class(**pool.connection_kwargs)  # never back to the pool: read raw
            try:
                connection.connect()
                stream = _bulk_stream(connection)
                while index < count:
                    connection.send_command("LINDEX", key, index)
                    size = _bulk_size(stream)
                    if size < 0:  # the list shrank (the job ended meanwhile)
                        return
                    for piece in _bulk_pieces(stream, size, CHUNK_BYTES, skip=offset):
                        offset += len(piece)
                        failures = 0
                        yield piece
                    index, offset = index + 1, 0
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                failures += 1
                if failures > CONTEXT_READ_ATTEMPTS:
                    raise
            finally:
                connection.disconnect()

    def has_context(self, job_id: str) -> bool:
        return bool(self.raw.exists(self._key("ctx", job_id)))

    def keep_context(self, job_id: str) -> None:
        """The job is queued: its context lives as long as a job may wait (retention.queued_seconds)."""
        self.r.expire(self._key("ctx", job_id), self.retention.queued_seconds)  # a reply to decode: `r` (see ContextWriter)

    def delete_context(self, job_id: str) -> None:
        self.raw.delete(self._key("ctx", job_id))

    # -- cancel, leases ---------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> None:
        self.r.set(self._key("cancel", job_id), "1", ex=self.retention.queued_seconds)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self._key("cancel", job_id)))

    def acquire_lease(self, job_id: str, worker: str, ttl: float) -> bool:
        return bool(self.r.set(self._key("lease", job_id), worker, nx=True, px=int(ttl * 1000)))

    def renew_lease(self, job_id: str, worker: str, ttl: float) -> bool:
        """Extend the lease only if we still hold it."""
        return bool(self.r.eval(_IF_HOLDER.format(op="pexpire", args=", ARGV[2]"), 1, self._key("lease", job_id),
                                worker, int(ttl * 1000)))

    def release_lease(self, job_id: str, worker: str) -> None:
        self._delete_if_held(self._key("lease", job_id), worker)

    def lease_holder(self, job_id: str) -> str | None:
        return cast("str | None", self.r.get(self._key("lease", job_id)))


class ContextWriter:
    """File-like sink that stores a tar in Redis in 1 MiB chunks, enforcing a size cap. Written
    through the store's decoding client `r`: the chunks go as the bytes they are and the replies
    are counts, so an uploader (`runner submit`) needs no connection of `raw` (a handshake less)."""

    def __init__(self, store: JobStore, key: str, max_bytes: int, ttl: int):
        self.store, self.key, self.max_bytes, self.ttl = store, key, max_bytes, ttl
        self.size = 0
        self._buffer = bytearray()
        #: what the key held before (an abandoned upload's chunks) is deleted with the first push, in
        #: its pipeline: a round trip less, and no one reads the key before the job is submitted
        self._stale = True

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abort()
            raise ContextTooLarge(
                f"the build context is over the limit of {self.max_bytes:,} bytes "
                "(limits.max_context_bytes); add a .dockerignore or raise the limit"
            )
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            self._push(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def _push(self, chunk: bytes) -> None:
        with self.store.r.pipeline(transaction=False) as pipe:
            if self._stale:
                pipe.delete(self.key)
            pipe.rpush(self.key, chunk)
            pipe.expire(self.key, self.ttl)  # an abandoned upload never outlives the upload TTL
            pipe.execute()
        self._stale = False

    def copy_from(self, source: BinaryIO) -> None:
        while chunk := source.read(CHUNK_BYTES):
            self.write(chunk)

    def close(self) -> None:
        if self._buffer:
            self._push(bytes(self._buffer))
            self._buffer.clear()
        elif self._stale:  # nothing written: the key is empty all the same
            self.abort()

    def abort(self) -> None:
        self._buffer.clear()
        self.store.r.delete(self.key)
        self._stale = False

    def flush(self) -> None:  # tarfile calls it
        pass


def _bulk_stream(connection: redis.Connection) -> BinaryIO:
    """The connection's socket as a buffered binary file, for reading a reply in pieces (redis-py
    reads a bulk reply whole). Its handshake is done and nothing else is in flight on it."""
    sock = connection._sock  # redis-py has no API to stream a reply
    if sock is None:
        raise redis.ConnectionError("the context connection is closed")
    return sock.makefile("rb", buffering=64 * 1024)


def _bulk_size(stream: BinaryIO) -> int:
    """Read a bulk-string reply's header: its length, or -1 for nil."""
    header = stream.readline()
    if header.startswith(b"-"):
        raise redis.ResponseError(header[1:].strip().decode(errors="replace"))
    if not header.startswith(b"$") or not header.endswith(b"\r\n"):
        raise redis.ConnectionError("unexpected reply while reading a context")
    return int(header[1:-2])


def _bulk_pieces(stream: BinaryIO, size: int, piece: int, skip: int = 0) -> Iterator[bytes]:
    """The reply's `size` bytes in pieces of at most `piece`, the first `skip` bytes read and dropped."""
    remaining = size
    while remaining:
        data = stream.read(min(piece, remaining, skip or piece))
        if not data:
            raise redis.ConnectionError("Redis closed the connection while sending a context")
        remaining -= len(data)
        if skip:
            skip -= len(data)
            continue
        yield data
    if stream.read(2) != b"\r\n":
        raise redis.ConnectionError("unexpected reply while reading a context")
