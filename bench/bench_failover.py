"""Writes lost in a Redis Sentinel failover, and how long a writer waits across it.

A writer RPUSHes a counter through the job store's Redis client (as every runner process writes)
every few milliseconds while SENTINEL FAILOVER moves the master; afterwards the new master's
list is compared with what the writer was told was written. Rows:

  stock redis-py      redis-py's own Sentinel connections, no FailoverWatch (the baseline)
  reconnect fix       our SentinelConnection (every reconnection asks the sentinels), no watch
  runner              our connections and the FailoverWatch (fence + switch), as the worker runs

Run:  .venv/bin/python bench/bench_failover.py [--trials 3] [--seconds 8]
Needs redis-server and redis-sentinel (scripts/services.sh installs them); starts a master, a
replica and three sentinels of its own on spare loopback ports and stops them by pid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.sentinel import SentinelManagedConnection  # noqa: E402

from runner.config.client import ClientSettings  # noqa: E402
from runner.store import redis_clients  # noqa: E402
from runner.store.jobstore import JobStore  # noqa: E402
from tests.support.redis_ha import SentinelSet  # noqa: E402


def trial(mode: str, seconds: float) -> tuple[int, int, float]:
    """(writes acknowledged, of them lost, longest wait of one write in seconds)."""
    with tempfile.TemporaryDirectory() as workdir:
        servers = SentinelSet(Path(workdir))
        original = redis_clients.SentinelConnection
        try:
            if mode == "stock redis-py":
                redis_clients.SentinelConnection = SentinelManagedConnection  # type: ignore[misc, assignment]
            settings = ClientSettings.model_validate(servers.config())
            store = JobStore.from_settings(settings)
            watch = redis_clients.FailoverWatch(settings.redis_target(), store.clients())
            if mode == "runner":
                watch.start()
            store.r.delete("seq")
            failover = threading.Timer(1.0, servers.failover)
            failover.start()
            written, longest, deadline = 0, 0.0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    store.r.rpush("seq", written)
                except Exception:  # noqa: BLE001 - a write that failed was not acknowledged: not counted
                    continue
                longest = max(longest, time.monotonic() - began)
                written += 1
                time.sleep(0.005)
            failover.join()
            watch.stop()
            time.sleep(12)  # the old master is demoted (and resynchronised) by now
            kept = {int(value) for value in store.r.lrange("seq", 0, -1)}
            return written, len(set(range(written)) - kept), longest
        finally:
            redis_clients.SentinelConnection = original  # type: ignore[misc]
            servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(f"{'mode':<16} {'writes':>7} {'lost (median, max)':>20} {'longest write, s':>17}")
    for mode in ("stock redis-py", "reconnect fix", "runner"):
        results = [trial(mode, args.seconds) for _ in range(args.trials)]
        lost = [r[1] for r in results]
        print(f"{mode:<16} {statistics.median(r[0] for r in results):>7.0f} {statistics.median(lost):>10.0f}, {max(lost):<8} "
              f"{max(r[2] for r in results):>17.2f}")


if __name__ == "__main__":
    main()
