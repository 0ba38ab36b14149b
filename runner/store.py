"""The only module that knows Redis keys: job records, log streams, contexts, cancel, leases.

Keys (NS = settings.worker.namespace):
  NS:job:ID      JSON JobRecord               NS:jobs       ZSET of ids by creation time
  NS:log:ID      Redis Stream of log lines    NS:ctx:ID     LIST of context tar chunks
  NS:cancel:ID   cancel flag                  NS:lease:ID   worker id holding the job (TTL)
  NS:request:ID  the full request incl. secret build args, kept only until the job ends
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from runner.jobs import BuildRequest, JobRecord, Status

CHUNK_BYTES = 1024 * 1024
CONTEXT_TTL = 7 * 24 * 3600
RETRIES = 40
END_FIELD = "end"
LINES_FIELD = "l"  # a log entry's lines, joined by "\n"


class StoreUnavailable(Exception):
    """Redis cannot be reached."""


class ContextTooLarge(Exception):
    pass


class JobStore:
    def __init__(self, url: str, namespace: str = "runner"):
        self.url = url
        self.ns = namespace
        # Reconnect through a Redis restart (~1 min of retries) instead of failing the job.
        options = dict(health_check_interval=10, socket_keepalive=True, socket_connect_timeout=5,
                       retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), RETRIES),
                       retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError])
        self.r = redis.Redis.from_url(url, decode_responses=True, **options)
        self.raw = redis.Redis.from_url(url, decode_responses=False, **options)

    @classmethod
    def from_settings(cls, settings) -> JobStore:
        return cls(settings.redis_url.get_secret_value(), settings.worker.namespace)

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.ns}:{kind}:{job_id}"

    def job_key(self, job_id: str) -> str:
        """The record's key, for readers with their own (async) client; the value is a JobRecord's JSON."""
        return self._key("job", job_id)

    def log_key(self, job_id: str) -> str:
        """The log stream's key (entries: LINES_FIELD, or END_FIELD at the job's end)."""
        return self._key("log", job_id)

    def ping(self) -> None:
        try:
            redis.Redis.from_url(self.url, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis at {_safe_url(self.url)} is unreachable: {exc}") from None

    # -- records ---------------------------------------------------------------------------
    def create(self, record: JobRecord) -> bool:
        """Store a new record; False if a job with that id already exists (nothing changed)."""
        created = self.r.set(self._key("job", record.id), record.model_dump_json(), nx=True)
        if created:
            self.r.zadd(f"{self.ns}:jobs", {record.id: record.created_at.timestamp()})
        return bool(created)

    def forget(self, job_id: str) -> None:
        """Delete a job that was never queued (its message could not be sent)."""
        self.r.delete(self._key("job", job_id), self._key("request", job_id))
        self.r.zrem(f"{self.ns}:jobs", job_id)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.get(self._key("job", job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply `change` atomically (optimistic WATCH); it returns the new record or None to keep."""
        key = self._key("job", job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    current = JobRecord.model_validate_json(raw)
                    new = change(current)
                    if new is None:
                        pipe.unwatch()
                        return current
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def list(self, status: Status | None = None, limit: int = 50) -> list[JobRecord]:
        ids = self.r.zrevrange(f"{self.ns}:jobs", 0, -1 if status else limit - 1)
        records: list[JobRecord] = []
        for chunk_start in range(0, len(ids), 200):
            chunk = ids[chunk_start : chunk_start + 200]
            for raw in self.r.mget([self._key("job", i) for i in chunk]):
                if raw:
                    record = JobRecord.model_validate_json(raw)
                    if status is None or record.status == status:
                        records.append(record)
                        if len(records) >= limit:
                            return records
        return records

    # -- the full request (with secret build args) for requeues; never shown, deleted at the end
    def save_request(self, request: BuildRequest) -> None:
        self.r.set(self._key("request", request.id), request.model_dump_json(), ex=CONTEXT_TTL)

    def load_request(self, job_id: str) -> BuildRequest | None:
        raw = self.r.get(self._key("request", job_id))
        return BuildRequest.model_validate_json(raw) if raw else None

    def delete_request(self, job_id: str) -> None:
        self.r.delete(self._key("request", job_id))

    # -- logs -------------------------------------------------------------------------------
    def append_log(self, job_id: str, lines: list[str], max_lines: int) -> None:
        key = self._key("log", job_id)
        with self.r.pipeline(transaction=False) as pipe:
            for text in lines:
                pipe.xadd(key, {"l": text}, maxlen=max_lines, approximate=True)
            pipe.execute()

    def end_log(self, job_id: str, status: Status) -> None:
        self.r.xadd(self._key("log", job_id), {END_FIELD: status.value})

    def read_log(self, job_id: str, follow: bool = False, block_ms: int = 1000,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Replay the log from the start; with follow, tail until the job's end marker."""
        key, last = self._key("log", job_id), "0-0"
        while True:
            batch = self.r.xread({key: last}, count=500, block=block_ms if follow else None)
            if not batch:
                if not follow:
                    return
                record = self.get(job_id)
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
                yield fields.get("l", "")

    # -- contexts ---------------------------------------------------------------------------
    def context_writer(self, job_id: str, max_bytes: int) -> ContextWriter:
        return ContextWriter(self, self._key("ctx", job_id), max_bytes)

    def context_chunks(self, job_id: str) -> Iterator[bytes]:
        """Yield the stored context one chunk at a time (never all in memory)."""
        key = self._key("ctx", job_id)
        count = self.raw.llen(key)
        for index in range(count):
            chunk = self.raw.lindex(key, index)
            if chunk is None:
                return
            yield chunk

    def has_context(self, job_id: str) -> bool:
        return bool(self.raw.exists(self._key("ctx", job_id)))

    def delete_context(self, job_id: str) -> None:
        self.raw.delete(self._key("ctx", job_id))

    # -- cancel, leases, idempotency ----------------------------------------------------------
    def request_cancel(self, job_id: str) -> None:
        self.r.set(self._key("cancel", job_id), "1", ex=CONTEXT_TTL)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self._key("cancel", job_id)))

    def acquire_lease(self, job_id: str, worker: str, ttl: float) -> bool:
        return bool(self.r.set(self._key("lease", job_id), worker, nx=True, px=int(ttl * 1000)))

    def renew_lease(self, job_id: str, worker: str, ttl: float) -> bool:
        """Extend the lease only if we still hold it."""
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
        return bool(self.r.eval(script, 1, self._key("lease", job_id), worker, int(ttl * 1000)))

    def release_lease(self, job_id: str, worker: str) -> None:
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, self._key("lease", job_id), worker)

    def lease_holder(self, job_id: str) -> str | None:
        return self.r.get(self._key("lease", job_id))


class ContextWriter:
    """File-like sink that stores a tar in Redis in 1 MiB chunks, enforcing a size cap."""

    def __init__(self, store: JobStore, key: str, max_bytes: int):
        self.store, self.key, self.max_bytes = store, key, max_bytes
        self.size = 0
        self._buffer = bytearray()
        self.store.raw.delete(key)

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
            self.store.raw.rpush(self.key, bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def copy_from(self, source: BinaryIO) -> None:
        while chunk := source.read(CHUNK_BYTES):
            self.write(chunk)

    def close(self) -> None:
        if self._buffer:
            self.store.raw.rpush(self.key, bytes(self._buffer))
            self._buffer.clear()
        self.store.raw.expire(self.key, CONTEXT_TTL)

    def abort(self) -> None:
        self._buffer.clear()
        self.store.raw.delete(self.key)

    def flush(self) -> None:  # tarfile calls it
        pass


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for error messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
