"""The delivery outbox: commit statuses and completion callbacks waiting to be delivered, kept
in Redis so that no process's death loses one.

A delivery is one HTTP request the runner owes someone (the "pending" status of job J, J's
completion callback). `add` records it and writes a `runner.deliver` task message straight to
the `<namespace>.deliveries` queue (no Celery needed, like runner.store.buildqueue), in one
atomic step. A worker's task then runs one attempt (runner/worker/notify/deliveries.py); a failed
attempt is put back here with the time of its next try, and every worker's scheduler sends the
task message again when that time comes. So no worker ever holds a delivery for long: a
message is in the queue (safe in Redis) or being attempted under a lock with a lifetime. A
delivery whose attempt's lock lapsed (its worker was killed) is overdue, and sent again.

Each message carries the delivery's current *ticket*; an attempt changes it, so an old copy of
a message (sent twice, or restored by kombu after its visibility timeout) finds itself stale
and does nothing. Deliveries are idempotent per job and moment: their id is the key
(`JOB:status:queued`), `add` makes one at most, and a delivered one is never attempted again.

A delivery whose host is down (its circuit open: runner/store/circuits.py) is *parked*: it
leaves the schedule (but for its give-up time) and waits in the circuit's parked set until the
host answers again; an interim state parked behind a newer state of its job is superseded.

Order: the deliveries of one job and kind form a group, numbered in the order they were
added. An attempt waits while an older delivery of its group has never been tried (up to
`wait_bound` seconds after that one was made), holds the group's lock while it posts, and a
delivery older than one already delivered is dropped (`superseded`): a late "pending" never
overwrites "success". An older one that failed and waits for its retry does not hold newer
ones back: if they get there first, it is superseded.

Keys (NS = the namespace; G = JOB:KIND, a delivery's group; they expire with the job's records):
  NS:delivery:ID     HASH: job, kind, moment, group, seq, created, attempts, ticket, state
                     (open, delivered, failed, skipped, superseded), inflight, resends, postponed, webhook_id, note, last
  NS:dgroup:G:seq    counter              NS:dgroup:G:done   highest delivered seq
  NS:dgroup:G:open   ZSET open ids by seq  NS:dgroup:G:fresh  ZSET never-tried ids by creation time
  NS:dgroup:G:lock   "HOLDER ID TICKET" of the attempt running now (expires)
  NS:outbox          ZSET open ids by the time the scheduler (re)sends their message
  NS:circuit:H:*     a host's circuit and the deliveries parked on it (runner/store/circuits.py)
  NS:deliveries:gave_up  HASH label (status.github, callback, ...) -> deliveries that gave up
Queue: the LIST `NS.deliveries` (Celery's, like the build queues).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from runner.store.buildqueue import task_message

DELIVER_TASK = "runner.deliver"
Kind = Literal["status", "callback"]
Begin = Literal["go", "wait", "busy", "stale", "done", "superseded", "gone"]

_ADD = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local seq = redis.call('incr', KEYS[2])
redis.call('hset', KEYS[1], 'job', ARGV[2], 'kind', ARGV[3], 'moment', ARGV[4], 'group', ARGV[5], 'seq', seq,
  'created', ARGV[6], 'attempts', 0, 'ticket', ARGV[7], 'state', 'open', 'inflight', 0, 'resends', 0,
  'webhook_id', ARGV[8], 'note', ARGV[9])
redis.call('zadd', KEYS[3], seq, ARGV[1])
redis.call('zadd', KEYS[4], ARGV[6], ARGV[1])
for i = 1, 4 do redis.call('expire', KEYS[i], ARGV[10]) end
redis.call('zadd', KEYS[5], tonumber(ARGV[6]) + tonumber(ARGV[11]), ARGV[1])
redis.call('lpush', KEYS[6], ARGV[12])
return seq
"""
# KEYS: delivery, open, fresh, done, lock, outbox
# ARGV: id, ticket, holder, lock_ms, now, wait_bound, postpone_until
_BEGIN = """
local function postpone(outcome)  -- looked at again when the group's lock is released (or at postpone_until)
  redis.call('hset', KEYS[1], 'postponed', 1)
  redis.call('zadd', KEYS[6], ARGV[7], ARGV[1])
  return {outcome}
end
local h = redis.call('hmget', KEYS[1], 'state', 'ticket', 'seq', 'inflight')
if not h[1] then return {'gone'} end
if h[1] ~= 'open' then return {'done'} end
if h[2] ~= ARGV[2] then return {'stale'} end
local seq = tonumber(h[3])
local done = tonumber(redis.call('get', KEYS[4]) or '0')
if done >= seq then
  redis.call('hset', KEYS[1], 'state', 'superseded', 'inflight', 0)
  redis.call('zrem', KEYS[2], ARGV[1])
  redis.call('zrem', KEYS[3], ARGV[1])
  redis.call('zrem', KEYS[6], ARGV[1])
  return {'superseded'}
end
local lock = redis.call('get', KEYS[5])
if lock then
  if lock == ARGV[3] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] or string.find(lock, ' ' .. ARGV[1] .. ' ', 1, true) then
    return {'stale'}  -- this very delivery is being attempted: a copy of its message
  end
  return postpone('busy')
end
local now = tonumber(ARGV[5])
for _, other in ipairs(redis.call('zrangebyscore', KEYS[2], '-inf', '(' .. seq)) do
  local created = redis.call('zscore', KEYS[3], other)
  if created and now - tonumber(created) < tonumber(ARGV[6]) then return postpone('wait') end
end
redis.call('set', KEYS[5], ARGV[3] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[4])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zadd', KEYS[6], now + tonumber(ARGV[4]) / 1000 + 1, ARGV[1])  -- looked at again once the lock lapsed
local attempts = redis.call('hincrby', KEYS[1], 'attempts', 1)
redis.call('hset', KEYS[1], 'inflight', 1, 'resends', 0)
return {'go', tostring(attempts), h[4]}
"""
#: the group's postponed deliveries are due now: the lock they waited for is free
_WAKE_POSTPONED = """
local function wake_postponed(open, outbox, prefix, now)
  for _, other in ipairs(redis.call('zrange', open, 0, -1)) do
    local key = prefix .. ':delivery:' .. other
    if redis.call('hget', key, 'postponed') == '1' then
      redis.call('hset', key, 'postponed', 0)
      redis.call('zadd', outbox, now, other)
    end
  end
end
"""
# KEYS: delivery, open, fresh, done, lock, outbox, gave_up
# ARGV: id, lock value, state, now, reason, label, ttl, namespace
_FINISH = _WAKE_POSTPONED + """
local seq = tonumber(redis.call('hget', KEYS[1], 'seq') or '0')
redis.call('hset', KEYS[1], 'state', ARGV[3], 'inflight', 0, 'done_at', ARGV[4], 'last', ARGV[5])
if ARGV[3] == 'delivered' and seq > tonumber(redis.call('get', KEYS[4]) or '0') then
  redis.call('set', KEYS[4], seq, 'EX', ARGV[7])
end
if ARGV[3] == 'failed' then redis.call('hincrby', KEYS[7], ARGV[6], 1) end
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zrem', KEYS[6], ARGV[1])
if redis.call('get', KEYS[5]) == ARGV[2] then redis.call('del', KEYS[5]) end
wake_postponed(KEYS[2], KEYS[6], ARGV[8], tonumber(ARGV[4]))
return 1
"""
# KEYS: delivery, lock, outbox, open    ARGV: id, lock value, new ticket, due, reason, now, namespace
_RETRY = _WAKE_POSTPONED + """
redis.call('hset', KEYS[1], 'ticket', ARGV[3], 'inflight', 0, 'last', ARGV[5])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[1])
if redis.call('get', KEYS[2]) == ARGV[2] then redis.call('del', KEYS[2]) end
wake_postponed(KEYS[4], KEYS[3], ARGV[7], tonumber(ARGV[6]))
return 1
"""
# KEYS: delivery, lock, outbox, open, fresh, circuit, parked, circuits index
# ARGV: id, lock value, new ticket, now, reason, give-up time, namespace, host, interim (1/0), a request was made (1/0)
_PARK = _WAKE_POSTPONED + """
local now = tonumber(ARGV[4])
local outcome = 'parked'
local seq = tonumber(redis.call('hget', KEYS[1], 'seq') or '0')
if ARGV[9] == '1' and #redis.call('zrangebyscore', KEYS[4], '(' .. seq, '+inf', 'LIMIT', 0, 1) > 0 then
  -- an interim state with a newer one of its job behind it: the newer one is what the host is told
  outcome = 'superseded'
  redis.call('hset', KEYS[1], 'state', 'superseded', 'inflight', 0, 'done_at', now,
    'last', 'replaced by a newer state while its host was down')
  redis.call('zrem', KEYS[4], ARGV[1])
  redis.call('zrem', KEYS[5], ARGV[1])
  redis.call('zrem', KEYS[3], ARGV[1])
else
  if ARGV[10] == '0' then redis.call('hincrby', KEYS[1], 'attempts', -1) end  -- no request made: not an attempt
  redis.call('hset', KEYS[1], 'ticket', ARGV[3], 'inflight', 0, 'last', ARGV[5])
  local circuit = redis.call('hmget', KEYS[6], 'state', 'next_probe')
  if circuit[1] == 'open' then
    redis.call('zadd', KEYS[7], now, ARGV[1])
    redis.call('zadd', KEYS[3], ARGV[6], ARGV[1])  -- looked at again at its give-up time, unless woken before
    local probe_at = tonumber(circuit[2] or ARGV[4])
    local at = redis.call('zscore', KEYS[8], ARGV[8])
    if not at or tonumber(at) > probe_at then redis.call('zadd', KEYS[8], probe_at, ARGV[8]) end
  else
    outcome = 'due'  -- the circuit closed meanwhile
    redis.call('zadd', KEYS[3], now, ARGV[1])
  end
end
if redis.call('get', KEYS[2]) == ARGV[2] then redis.call('del', KEYS[2]) end
wake_postponed(KEYS[4], KEYS[3], ARGV[7], now)
return outcome
"""
# KEYS: outbox    ARGV: now, recover_after, limit, namespace
_CLAIM_DUE = """
local now, after = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('zrangebyscore', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[3])) do
  local key = ARGV[4] .. ':delivery:' .. id
  local h = redis.call('hmget', key, 'state', 'group', 'ticket', 'resends')
  if h[1] ~= 'open' then
    redis.call('zrem', KEYS[1], id)
  else
    local lock = redis.call('get', ARGV[4] .. ':dgroup:' .. h[2] .. ':lock')
    if lock and string.find(lock, ' ' .. id .. ' ', 1, true) then
      redis.call('zadd', KEYS[1], now + after, id)  -- being attempted now; looked at again later
    else
      local resends = tonumber(h[4] or '0')
      redis.call('hset', key, 'resends', resends + 1)
      -- a message stuck behind a long queue is not sent over and over: each resend waits twice as long
      redis.call('zadd', KEYS[1], now + after * math.pow(2, math.min(resends, 6)), id)
      table.insert(out, id)
      table.insert(out, h[3])
    end
  end
end
return out
"""


def deliveries_queue(namespace: str) -> str:
    """The queue every worker takes deliveries from, beside its executors' queues."""
    return f"{namespace}.deliveries"


def deliver_message(delivery_id: str, ticket: str, queue: str) -> str:
    return task_message(DELIVER_TASK, [delivery_id, ticket], uuid.uuid4().hex, queue, f"[delivery {delivery_id}]")


@dataclass
class Delivery:
    """One delivery, as an attempt sees it."""

    id: str
    job_id: str
    kind: Kind
    moment: str
    seq: int
    created: float
    attempts: int
    ticket: str
    webhook_id: str
    note: dict[str, Any] = field(default_factory=dict)
    #: a previous attempt began and its outcome is unknown (its worker died mid-request)
    resumed: bool = False


class Outbox:
    def __init__(self, client: redis.Redis, namespace: str, ttl: int, recover_after: float = 30.0):
        """`client` decodes responses; `ttl`: how long a delivery's keys outlive it (seconds);
        `recover_after`: deliveries.recover_after (seconds a task message may go untaken before
        a scheduler sends it again)."""
        self.r, self.ns, self.ttl, self.recover_after = client, namespace, ttl, recover_after
        self.queue = deliveries_queue(namespace)
        self.outbox_key = f"{namespace}:outbox"
        self.gave_up_key = f"{namespace}:deliveries:gave_up"
        self._add = client.register_script(_ADD)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._retry = client.register_script(_RETRY)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._park = client.register_script(_PARK)

    @classmethod
    def for_store(cls, store: Any, recover_after: float = 30.0) -> Outbox:
        """The outbox beside a JobStore (same Redis, namespace and retention)."""
        return cls(store.r, store.ns, store.retention.finished_seconds, recover_after)

    def _key(self, delivery_id: str) -> str:
        return f"{self.ns}:delivery:{delivery_id}"

    def _group(self, group: str, part: str) -> str:
        return f"{self.ns}:dgroup:{group}:{part}"

    def _group_keys(self, delivery_id: str) -> list[str]:
        group = delivery_id.rpartition(":")[0]
        return [self._key(delivery_id), self._group(group, "open"), self._group(group, "fresh"), self._group(group, "done"),
                self._group(group, "lock"), self.outbox_key]

    # -- the side that owes a delivery (entry points, the worker's listener) ---------------------
    def add(self, job_id: str, kind: Kind, key: str, moment: str, note: dict[str, Any] | None = None,
            client: redis.Redis | redis.client.Pipeline | None = None) -> bool:
        """Record the delivery `JOB:KIND:KEY` and queue its first attempt; False if it exists already.
        `client`: a pipeline (in MULTI) to queue it on, in a transaction of the caller's
        (JobStore.end); its answer then comes with the pipeline's."""
        group = f"{job_id}:{kind}"
        delivery_id = f"{group}:{key}"
        ticket = uuid.uuid4().hex
        keys = [self._key(delivery_id), self._group(group, "seq"), self._group(group, "open"), self._group(group, "fresh"),
                self.outbox_key, self.queue]
        args: list[str | float] = [delivery_id, job_id, kind, moment, group, time.time(), ticket, f"msg_{uuid.uuid4().hex}",
                json.dumps(note or {}), self.ttl, self.recover_after, deliver_message(delivery_id, ticket, self.queue)]
        return bool(self._add(keys=keys, args=args, client=client or self.r))

    def add_finished(self, job_id: str, status: bool, callback: bool,
                     client: redis.Redis | redis.client.Pipeline | None = None) -> None:
        """What a job's end owes (runner/store/jobstate.py, owes): its final commit status
        (`status`) and its callback (`callback`). Only JobStore.end calls it, in the end's own
        transaction (`client`)."""
        if status:
            self.add(job_id, "status", "finished", "finished", client=client)
        if callback:
            self.add(job_id, "callback", "finished", "finished", client=client)

    # -- the worker side ----------------------------------------------------------------------------
    def begin(self, delivery_id: str, ticket: str, holder: str, lock_seconds: float, wait_bound: float,
              postpone: float) -> tuple[Begin, Delivery | None]:
        """Start an attempt: "go" with the delivery (its group's lock is ours until finish/retry_at),
        or why not: wait (an older delivery of the group goes first) and busy (the group's lock is
        held), both postponed until the group's lock is released or `postpone` seconds pass;
        stale (an old copy of the message), done, superseded, gone (expired)."""
        keys = self._group_keys(delivery_id)
        now = time.time()
        result = self._begin(keys=keys, args=[delivery_id, ticket, holder, int(lock_seconds * 1000), now, wait_bound,
                                              now + postpone])
        if result[0] != "go":
            return result[0], None
        data = cast(dict[str, str], self.r.hgetall(keys[0]))
        return "go", Delivery(id=delivery_id, job_id=data["job"], kind=cast(Kind, data["kind"]), moment=data["moment"],
                              seq=int(data["seq"]), created=float(data["created"]), attempts=int(result[1]),
                              ticket=ticket, webhook_id=data.get("webhook_id", ""),
                              note=json.loads(data.get("note") or "{}"), resumed=result[2] == "1")

    @staticmethod
    def lock_value(holder: str, delivery: Delivery) -> str:
        return f"{holder} {delivery.id} {delivery.ticket}"

    def finish(self, delivery: Delivery, holder: str, state: Literal["delivered", "failed", "skipped"], reason: str = "",
               label: str = "") -> None:
        """The delivery is over: delivered, failed for good (counted under `label`), or skipped
        (not owed after all: statuses not configured for its host)."""
        keys = [*self._group_keys(delivery.id), self.gave_up_key]
        self._finish(keys=keys, args=[delivery.id, self.lock_value(holder, delivery), state, time.time(), reason[:500],
                                      label, self.ttl, self.ns])

    def retry_at(self, delivery: Delivery, holder: str, due: float, reason: str) -> None:
        """The attempt failed and may be retried: the scheduler sends the next one at `due`."""
        keys = self._group_keys(delivery.id)
        self._retry(keys=[keys[0], keys[4], keys[5], keys[1]],
                    args=[delivery.id, self.lock_value(holder, delivery), uuid.uuid4().hex, due, reason[:500], time.time(),
                          self.ns])

    def park(self, delivery: Delivery, holder: str, circuit_keys: list[str], host: str, give_up_at: float, reason: str,
             interim: bool, attempted: bool) -> Literal["parked", "superseded", "due"]:
        """The delivery's host has an open circuit (runner/store/circuits.py): it waits in the
        circuit's parked set, its group's lock released, until the circuit closes or
        `give_up_at`; the attempt counts only if it made a request (`attempted`). An interim
        state (`interim`) with a newer state of its job behind it is superseded instead.
        "due": the circuit closed meanwhile, try now."""
        keys = self._group_keys(delivery.id)
        circuit, parked, index = circuit_keys[:3]
        return self._park(keys=[keys[0], keys[4], keys[5], keys[1], keys[2], circuit, parked, index],
                          args=[delivery.id, self.lock_value(holder, delivery), uuid.uuid4().hex, time.time(), reason[:500],
                                give_up_at, self.ns, host, int(interim), int(attempted)])

    def send_due(self, limit: int = 200) -> int:
        """Send the message of every delivery whose time has come: retries, postponed ones, and
        overdue ones whose message or worker was lost. Returns how many were sent."""
        claimed = self._claim_due(keys=[self.outbox_key], args=[time.time(), self.recover_after, limit, self.ns])
        pairs = list(zip(claimed[::2], claimed[1::2], strict=True))
        if pairs:
            with self.r.pipeline(transaction=False) as pipe:
                for delivery_id, ticket in pairs:
                    pipe.lpush(self.queue, deliver_message(delivery_id, ticket, self.queue))
                pipe.execute()
        return len(pairs)

    def next_due(self) -> float | None:
        """When the earliest delivery is due (epoch seconds), or None if there is none."""
        first = self.r.zrange(self.outbox_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    # -- reading ------------------------------------------------------------------------------------
    def get(self, delivery_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(self._key(delivery_id)))

    def of_job(self, job_id: str) -> dict[str, dict[str, str]]:
        """Every delivery of a job, by id (for tests and operators)."""
        found: dict[str, dict[str, str]] = {}
        for key in cast(Iterator[str], self.r.scan_iter(f"{self.ns}:delivery:{job_id}:*", count=1000)):
            found[key.removeprefix(f"{self.ns}:delivery:")] = cast(dict[str, str], self.r.hgetall(key))
        return found

    def gave_up(self) -> dict[str, int]:
        """Deliveries that gave up, by label (status.github, status.gitlab, status.gitea, callback)."""
        return {label: int(count) for label, count in cast(dict[str, str], self.r.hgetall(self.gave_up_key)).items()}
