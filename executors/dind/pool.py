"""Warm pool of idle, ready sidecars for dind and sysbox.

The executor owns its pool for the life of the worker process (start() / shutdown()). Each
pooled sidecar serves exactly one job and is destroyed after it; a background thread refills
one at a time, and idle + starting never exceeds the size. Pool sidecars carry an owner label
(host, pid, process start time) instead of a job id until a job takes them, so a sweep can
tell whether their pool still exists.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from executors.dind.sidecar import Sidecar

log = logging.getLogger(__name__)

LABEL_POOL = "io.runner.dind.pool"
MAX_BACKOFF = 60.0


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def process_owner() -> str:
    """This process as a pool owner: host, pid and start time (a reused pid is another owner).
    Asked when a pool is made, not at import, so a forked process never claims its parent's."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_alive(owner: str) -> bool | None:
    """True/False when `owner` is a process on this host; None when it is another host's."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _start_time(int(pid)) == started


class WarmPool:
    def __init__(self, size: int, factory: Callable[[], Sidecar], destroy: Callable[[Sidecar], None],
                 alive: Callable[[Sidecar], bool], name: str = "pool"):
        self.size = size
        self._factory, self._destroy, self._alive = factory, destroy, alive
        self._idle: deque[Sidecar] = deque()
        self._starting = 0
        self._waiting = 0  # callers of take() waiting for a starting sidecar
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._fill, name=f"{name}-warm-pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def take(self, wait: float = 0.0, cancelled: Callable[[], bool] = lambda: False) -> Sidecar | None:
        """An idle ready sidecar (removed from the pool for good), or None if none is ready.

        With `wait`, a caller that finds the pool empty while a sidecar of it is starting (one per
        waiting caller) waits up to `wait` seconds for it: the rest of a start already under way
        is never slower than a start of its own."""
        deadline = time.monotonic() + wait
        while True:
            with self._cond:
                self._waiting += 1
                try:
                    while (not self._idle and not self._stopped and self._starting >= self._waiting
                           and not cancelled() and (left := deadline - time.monotonic()) > 0):
                        self._cond.wait(min(left, 0.5))
                finally:
                    self._waiting -= 1
                if not self._idle:
                    return None
                sidecar = self._idle.popleft()
                self._cond.notify_all()
            if self._alive(sidecar):
                return sidecar
            log.warning("warm sidecar %s died while idle; discarding it", sidecar.name)
            self._destroy(sidecar)

    def wait_full(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < self.size and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return len(self._idle) >= self.size

    def _fill(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._stopped and len(self._idle) + self._starting >= self.size:
                    self._cond.wait()
                if self._stopped:
                    return
                self._starting += 1
            sidecar = None
            try:
                sidecar = self._factory()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep trying with backoff; jobs start cold meanwhile
                failures += 1
                log.warning("warm pool: could not start a sidecar (attempt %d): %s", failures, exc)
            with self._cond:
                self._starting -= 1
                if sidecar is not None and not self._stopped:
                    self._idle.append(sidecar)
                    sidecar = None
                self._cond.notify_all()
            if sidecar is not None:  # stopped while it was starting
                self._destroy(sidecar)
            if failures:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopped, timeout=min(MAX_BACKOFF, 0.5 * 2 ** failures))

    def shutdown(self, timeout: float = 60.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            idle, self._idle = list(self._idle), deque()
        for sidecar in idle:
            self._destroy(sidecar)
