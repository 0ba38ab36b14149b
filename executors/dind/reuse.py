"""Sidecars kept between the jobs of one cache key (`reuse: per_cache_key`), for dind and sysbox.

After a job, its sidecar is made clean (`clean`: no containers, no networks but the daemon's
own, no volumes, the job's images untagged; the build cache and image layers kept) and kept
idle for the next job with the same `cache_key`, which then starts building at once on a warm
cache. Never across cache keys: a sidecar is filed under the key of the job that started it,
and a job of another key never sees it. Never across namespaces or workers: kept sidecars live
in the executor object of one worker process (one namespace). A kept sidecar goes when it has
been idle for `reuse_idle_seconds`, after `reuse_max_jobs` jobs, when it fails to come clean,
when its job was cancelled, and at worker shutdown; a sweep removes those of a dead worker
(they carry the pool owner label, executors/dind/pool.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import docker.errors
import requests

from executors.dind.cache import CacheLease
from executors.dind.sidecar import Sidecar

log = logging.getLogger(__name__)

LABEL_REUSE = "io.runner.dind.reuse"
#: networks every Docker daemon has; a job's own networks are removed
DAEMON_NETWORKS = frozenset({"bridge", "host", "none"})


@dataclass
class Kept:
    """A sidecar serving the jobs of one cache key, with the cache volume lease it holds."""

    key: str
    sidecar: Sidecar
    lease: CacheLease | None = None
    jobs: int = 0
    idle_since: float = field(default_factory=time.monotonic)


def reuse_job_label(executor: str, key: str) -> str:
    """The job label of a kept sidecar: no job's id, so one job's clean-up never removes it."""
    return f"reuse-{executor}-{key}"


def clean(inner: docker.APIClient) -> str | None:
    """Make the sidecar's daemon as a fresh one would be for the next job, but for its build
    cache and image layers: remove every container (and its anonymous volumes), every network
    the daemon did not make itself, every volume. None when clean, else what stayed."""
    try:
        for container in inner.containers(all=True):
            inner.remove_container(container["Id"], force=True, v=True)
        for network in inner.networks():
            if network.get("Name") not in DAEMON_NETWORKS:
                inner.remove_network(network["Id"])
        for volume in inner.volumes().get("Volumes") or []:
            inner.remove_volume(volume["Name"], force=True)
        left = (len(inner.containers(all=True)),
                len([n for n in inner.networks() if n.get("Name") not in DAEMON_NETWORKS]),
                len(inner.volumes().get("Volumes") or []))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return f"its daemon did not answer: {exc}"
    if any(left):
        return f"{left[0]} container(s), {left[1]} network(s), {left[2]} volume(s) would not go"
    return None


class KeptSidecars:
    """Idle sidecars by cache key, each taken by one job at a time; a thread removes the
    ones idle for too long."""

    def __init__(self, idle_seconds: float, max_jobs: int, destroy: Callable[[Kept], None], name: str = "dind"):
        self.idle_seconds, self.max_jobs = idle_seconds, max_jobs
        self._destroy = destroy
        self._idle: dict[str, list[Kept]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._name = name

    def take(self, key: str) -> Kept | None:
        """The most recently used idle sidecar of `key` (no longer idle), or None."""
        with self._cond:
            found = self._idle.get(key) or []
            kept = found.pop() if found else None
            if not found:
                self._idle.pop(key, None)
            return kept

    def give_back(self, kept: Kept) -> bool:
        """Keep a sidecar (already made clean) for the next job of its key; False when it has
        served its jobs or the pool is shut down (the caller then removes it)."""
        with self._cond:
            if self._stopped or kept.jobs >= self.max_jobs:
                return False
            kept.idle_since = time.monotonic()
            self._idle.setdefault(kept.key, []).append(kept)
            if self._thread is None:
                self._thread = threading.Thread(target=self._expire, name=f"{self._name}-kept-sidecars", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    @property
    def idle(self) -> int:
        with self._cond:
            return sum(len(items) for items in self._idle.values())

    def _expire(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                expired = [k for items in self._idle.values() for k in items if now - k.idle_since >= self.idle_seconds]
                for kept in expired:
                    self._idle[kept.key].remove(kept)
                    if not self._idle[kept.key]:
                        del self._idle[kept.key]
                if not expired:
                    soonest = min((k.idle_since for items in self._idle.values() for k in items), default=now)
                    self._cond.wait(max(0.05, soonest + self.idle_seconds - now) if self._idle else None)
            for kept in expired:
                log.info("%s: removing sidecar %s of cache key %r, idle for %.0fs", self._name, kept.sidecar.name,
                         kept.key, self.idle_seconds)
                self._quietly_destroy(kept)

    def _quietly_destroy(self, kept: Kept) -> None:
        try:
            self._destroy(kept)
        except Exception as exc:  # noqa: BLE001 - a sweep removes what this leaves
            log.warning("%s: removing kept sidecar %s: %s", self._name, kept.sidecar.name, exc)

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            idle = [k for items in self._idle.values() for k in items]
            self._idle.clear()
            self._cond.notify_all()
        for kept in idle:
            self._quietly_destroy(kept)
        if self._thread is not None:
            self._thread.join(10)
