"""One circuit per host that deliveries go to, kept in Redis so that every worker backs off
together (runner/worker/notify/deliveries.py uses it).

Closed, requests go as usual. After `threshold` failed requests in a row (no answer, 5xx,
429: what a failing host says) the circuit opens: from then on a delivery to that host is not
sent but *parked* (its attempt not counted, its group's lock released). One probe per backoff
step asks whether the host is back: when the step's time comes, the oldest parked delivery
is released (whichever worker's scheduler looks first; the others see the probe taken) and
sent. A failed probe doubles the wait, up to `max_backoff` (a Retry-After or rate-limit reset
is waited for, even if longer); any answer that is not a failure (2xx, and 4xx too: the host
is there) closes the circuit, and every parked delivery is due at once.

Keys (NS = the namespace; H = the host's key, scheme://host:port):
  NS:circuit:H          HASH state (open), failures (in a row), step, next_probe, opened_at, label
  NS:circuit:H:parked   ZSET delivery ids waiting for the host, by when they parked
  NS:circuit:H:probe    the delivery sent as this step's probe (expires like a delivery's lock)
  NS:circuits           ZSET H -> when a scheduler looks at it next (open, or with parked deliveries)
Parking itself is the outbox's (Outbox.park): it changes the delivery and its group too.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Literal, cast

import redis

Gate = Literal["closed", "probe", "open"]
#: failures in a row are forgotten after this long without another
FAILURES_TTL = 600

# KEYS: circuit, probe    ARGV: id, now, probe_ms
_GATE = """
local h = redis.call('hmget', KEYS[1], 'state', 'next_probe')
if h[1] ~= 'open' then return 'closed' end
local probe = redis.call('get', KEYS[2])
if probe == ARGV[1] then return 'probe' end
if not probe and tonumber(ARGV[2]) >= tonumber(h[2] or '0') then
  redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 'probe'
end
return 'open'
"""
# KEYS: circuit, probe, index
# ARGV: id, now, threshold, backoff, max_backoff, jitter (0..1), least wait, label, open ttl, host, failures ttl
_FAILED = """
local now = tonumber(ARGV[2])
local step
if redis.call('hget', KEYS[1], 'state') == 'open' then
  if redis.call('get', KEYS[2]) ~= ARGV[1] then return 'open' end  -- begun before it opened: the probe decides
  step = redis.call('hincrby', KEYS[1], 'step', 1)
else
  local failures = redis.call('hincrby', KEYS[1], 'failures', 1)
  redis.call('hset', KEYS[1], 'label', ARGV[8])
  redis.call('expire', KEYS[1], ARGV[11])
  if failures < tonumber(ARGV[3]) then return 'closed' end
  step = 1
  redis.call('hset', KEYS[1], 'state', 'open', 'step', 1, 'opened_at', now)
end
local delay = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (step - 1))
local wait = math.max(delay / 2 + tonumber(ARGV[6]) * delay / 2, tonumber(ARGV[7]))
redis.call('hset', KEYS[1], 'next_probe', now + wait)
redis.call('del', KEYS[2])
redis.call('zadd', KEYS[3], now + wait, ARGV[10])
redis.call('expire', KEYS[1], ARGV[9])
return 'open'
"""
# KEYS: circuit, probe, parked, index, outbox    ARGV: now, host
_SUCCEEDED = """
if redis.call('hget', KEYS[1], 'state') ~= 'open' then
  redis.call('del', KEYS[1])  -- failures in a row end here
  return 0
end
redis.call('del', KEYS[1], KEYS[2])
local ids = redis.call('zrange', KEYS[3], 0, -1)
for _, id in ipairs(ids) do redis.call('zadd', KEYS[5], ARGV[1], id) end
redis.call('del', KEYS[3])
redis.call('zrem', KEYS[4], ARGV[2])
return #ids
"""
# KEYS: index, outbox    ARGV: now, namespace, probe_ms, limit
_TICK = """
local now = tonumber(ARGV[1])
local sent = 0
for _, host in ipairs(redis.call('zrangebyscore', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[4])) do
  local circuit = ARGV[2] .. ':circuit:' .. host
  local parked = circuit .. ':parked'
  local h = redis.call('hmget', circuit, 'state', 'next_probe')
  if h[1] ~= 'open' then  -- closed (or expired): whoever waits goes now
    for _, id in ipairs(redis.call('zrange', parked, 0, -1)) do
      redis.call('zadd', KEYS[2], now, id)
      sent = sent + 1
    end
    redis.call('del', parked)
    redis.call('zrem', KEYS[1], host)
  elseif redis.call('exists', circuit .. ':probe') == 0 and now >= tonumber(h[2] or '0') then
    local first = redis.call('zrange', parked, 0, 0)[1]
    while first and redis.call('hget', ARGV[2] .. ':delivery:' .. first, 'state') ~= 'open' do
      redis.call('zrem', parked, first)  -- ended meanwhile (gave up at its deadline, expired)
      first = redis.call('zrange', parked, 0, 0)[1]
    end
    if first then  -- this step's probe
      redis.call('zrem', parked, first)
      redis.call('set', circuit .. ':probe', first, 'PX', ARGV[3])
      redis.call('zadd', KEYS[2], now, first)
      sent = sent + 1
    end
    redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]) / 1000, host)  -- looked at again if the probe is lost
  else
    redis.call('zadd', KEYS[1], math.max(tonumber(h[2] or '0'), now + 1), host)
  end
end
return sent
"""


class Circuits:
    def __init__(self, client: redis.Redis, namespace: str, outbox_key: str, threshold: int, backoff: float,
                 max_backoff: float, open_ttl: int):
        """`threshold`: failed requests in a row that open a circuit (0: circuits off);
        `backoff`, `max_backoff`: the probes' schedule; `open_ttl`: how long an open circuit
        is kept without news (the longest a delivery may wait for it)."""
        self.r, self.ns, self.outbox_key = client, namespace, outbox_key
        self.threshold, self.backoff, self.max_backoff, self.open_ttl = threshold, backoff, max_backoff, open_ttl
        self.index_key = f"{namespace}:circuits"
        self._gate = client.register_script(_GATE)
        self._failed = client.register_script(_FAILED)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._tick = client.register_script(_TICK)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def keys(self, host: str) -> list[str]:
        """circuit, parked, index, probe: what Outbox.park needs."""
        circuit = f"{self.ns}:circuit:{host}"
        return [circuit, f"{circuit}:parked", self.index_key, f"{circuit}:probe"]

    def gate(self, host: str, delivery_id: str, probe_seconds: float) -> Gate:
        """May this delivery send to `host` now? closed (yes), probe (yes: it is this step's
        probe), open (no: it parks)."""
        circuit, _, _, probe = self.keys(host)
        return self._gate(keys=[circuit, probe], args=[delivery_id, time.time(), int(probe_seconds * 1000)])

    def failed(self, host: str, label: str, delivery_id: str, least_wait: float | None = None) -> bool:
        """A request to `host` failed; True if its circuit is open now."""
        circuit, _, index, probe = self.keys(host)
        outcome = self._failed(keys=[circuit, probe, index],
                               args=[delivery_id, time.time(), self.threshold, self.backoff, self.max_backoff, random.random(),
                                     least_wait or 0, label, self.open_ttl, host, FAILURES_TTL])
        return outcome == "open"

    def succeeded(self, host: str) -> int:
        """`host` answered: its circuit closes. Returns how many parked deliveries are due now."""
        circuit, parked, index, probe = self.keys(host)
        return int(self._succeeded(keys=[circuit, probe, parked, index, self.outbox_key], args=[time.time(), host]))

    def tick(self, probe_seconds: float, limit: int = 100) -> int:
        """Release each open circuit's probe when its step's time has come, and the parked
        deliveries of circuits that closed. Returns how many deliveries were made due."""
        return int(self._tick(keys=[self.index_key, self.outbox_key],
                              args=[time.time(), self.ns, int(probe_seconds * 1000), limit]))

    def next_look(self) -> float | None:
        """When a circuit is next due for a look (epoch seconds), or None."""
        first = self.r.zrange(self.index_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def reading_through(self, client: redis.Redis) -> Circuits:
        """The same circuits read through another client (a scrape's, which fails fast instead
        of riding out a Redis outage as the deliveries' client does)."""
        view = copy.copy(self)
        view.r = client
        return view

    def open_by_label(self) -> dict[str, int]:
        """Open circuits now, by label (a status host's name, or "callbacks")."""
        hosts = cast(list[str], self.r.zrange(self.index_key, 0, -1))
        counts: dict[str, int] = {}
        if not hosts:
            return counts
        with self.r.pipeline(transaction=False) as pipe:
            for host in hosts:
                pipe.hmget(self.keys(host)[0], "state", "label")
            for state, label in pipe.execute():
                if state == "open":
                    counts[label or "?"] = counts.get(label or "?", 0) + 1
        return counts

    def state(self, host: str) -> dict[str, str]:
        """The circuit's hash (for tests and operators)."""
        return cast(dict[str, str], self.r.hgetall(self.keys(host)[0]))

    def parked(self, host: str) -> list[str]:
        return cast(list[str], self.r.zrange(self.keys(host)[1], 0, -1))
