"""Per-repository layer cache for dind and sysbox: one named volume per cache key
(`job.cache_key`), mounted as the sidecar's /var/lib/docker, never shared across keys.

One sidecar per volume at a time, enforced by a host file lock (flock): the lock dies with its
process, so a crashed worker never leaves a cache locked. A job that cannot take the lock
within `repo_cache_wait` seconds builds without the cache, and its log says so. When the cache
volumes together exceed `repo_cache_max_bytes`, the least recently used ones are removed
(never one in use). "Last used" is the mtime of the key's lock file, touched on release.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
import requests

from executors.dind.config import DindConfig
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.labels import LABEL_EXECUTOR
from runner.core.log_sink import LogSink

log = logging.getLogger(__name__)

LABEL_CACHE = "io.runner.dind.cache"
WAIT_STEP = 0.2


def volume_name(executor: str, key: str) -> str:
    return f"runner-{executor}-cache-{key}"


def lock_path(config: DindConfig, executor: str, key: str) -> Path:
    return config.socket_dir / "cache-locks" / f"{executor}-{key}.lock"


def _try_lock(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class CacheLease:
    """The right to mount one cache volume until release()."""

    key: str
    volume: str
    path: Path
    fd: int | None
    fresh: bool = False

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.utime(self.path)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def acquire(api: docker.APIClient, config: DindConfig, executor: str, key: str,
            cancel: CancelToken, joblog: LogSink) -> CacheLease | None:
    """Lock the key's volume (creating it if new); None when it stays busy past repo_cache_wait."""
    path = lock_path(config, executor, key)
    deadline = time.monotonic() + config.repo_cache_wait
    started, said = time.monotonic(), False
    while (fd := _try_lock(path)) is None:
        if time.monotonic() >= deadline:
            joblog.line(f"[runner] repository cache {key!r} is in use by another job "
                        f"(waited {time.monotonic() - started:.1f}s, repo_cache_wait={config.repo_cache_wait:g}s): "
                        "building WITHOUT the repository cache")
            return None
        if not said:
            joblog.line(f"[runner] repository cache {key!r} is in use by another job; waiting up to {config.repo_cache_wait:g}s")
            said = True
        cancel.wait(min(WAIT_STEP, max(deadline - time.monotonic(), 0.01)))
        cancel.raise_if_set()
    lease = CacheLease(key=key, volume=volume_name(executor, key), path=path, fd=fd)
    try:
        try:
            api.inspect_volume(lease.volume)
        except docker.errors.NotFound:
            api.create_volume(lease.volume, labels={LABEL_EXECUTOR: executor, LABEL_CACHE: key})
            lease.fresh = True
    except (docker.errors.DockerException, requests.RequestException) as exc:
        lease.release()
        raise InfrastructureError(f"cannot prepare the repository cache volume {lease.volume}: {exc}") from None
    joblog.line(f"[runner] repository cache {key!r}: {'new' if lease.fresh else 'reusing'} volume {lease.volume}")
    return lease


def cache_volumes(api: docker.APIClient, executor: str) -> list[dict]:
    """This executor's cache volumes with their sizes (from the engine's disk usage report)."""
    volumes = api.df().get("Volumes") or []
    return [v for v in volumes
            if (v.get("Labels") or {}).get(LABEL_EXECUTOR) == executor and LABEL_CACHE in (v.get("Labels") or {})]


def _last_used(config: DindConfig, executor: str, volume: dict) -> float:
    try:
        return lock_path(config, executor, volume["Labels"][LABEL_CACHE]).stat().st_mtime
    except OSError:
        try:
            return datetime.fromisoformat(volume.get("CreatedAt", "")).timestamp()
        except ValueError:
            return 0.0


def evict(api: docker.APIClient, config: DindConfig, executor: str) -> list[str]:
    """Remove least recently used cache volumes until the total fits repo_cache_max_bytes.
    A volume in use (its lock is held) is skipped. Returns the names removed."""
    volumes = cache_volumes(api, executor)
    total = sum(max(v.get("UsageData", {}).get("Size", 0), 0) for v in volumes)
    removed = []
    for volume in sorted(volumes, key=lambda v: _last_used(config, executor, v)):
        if total <= config.repo_cache_max_bytes:
            break
        path = lock_path(config, executor, volume["Labels"][LABEL_CACHE])
        fd = _try_lock(path)
        if fd is None:
            continue
        try:
            api.remove_volume(volume["Name"])
            total -= max(volume.get("UsageData", {}).get("Size", 0), 0)
            removed.append(volume["Name"])
            log.info("repository cache: evicted %s (over %d bytes)", volume["Name"], config.repo_cache_max_bytes)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.warning("repository cache: cannot evict %s: %s", volume["Name"], exc)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return removed


def evict_in_background(api_factory, config: DindConfig, executor: str, running: threading.Lock) -> None:
    """Run evict() on a daemon thread; skipped when one is already running (`running` is held:
    disk usage is slow)."""
    def work() -> None:
        if not running.acquire(blocking=False):
            return
        try:
            api = api_factory()
            try:
                evict(api, config, executor)
            finally:
                api.close()
        except Exception as exc:  # noqa: BLE001 - eviction never fails a job
            log.warning("repository cache eviction failed: %s", exc)
        finally:
            running.release()

    threading.Thread(target=work, name=f"{executor}-cache-evict", daemon=True).start()
