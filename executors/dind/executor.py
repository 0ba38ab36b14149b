"""dind executor: per job, a docker-in-docker sidecar on the host engine; the build and push
run inside the sidecar's own daemon (the host engine never holds the job's images). In the
job's cleanup, right after its record (so off its critical path), the sidecar, its volume, its
network and its host directory are removed — also after failure, cancel and timeout. Building
and pushing is executors/engine (Engine, choose_builder), exactly as for socket; only how the
engine is reached and brought up differs (executors/dind/sidecar.py).

Optional: a warm pool of ready sidecars (executors/dind/pool.py), a per-repository layer cache
volume (executors/dind/cache.py), and sidecars kept for the next job of the same cache key
(`reuse: per_cache_key`, executors/dind/reuse.py). A job with a cache volume gets a fresh sidecar
or one kept for its key (a running container cannot swap its /var/lib/docker), so warm
sidecars serve the other jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import docker
import docker.errors
import requests

from executors.base import CheckResult, Executor, ExecutorEnv, IsLive
from executors.dind import cache as dind_cache
from executors.dind import pool as dind_pool
from executors.dind import reuse as dind_reuse
from executors.dind.config import DindConfig
from executors.dind.sidecar import LABEL_DIR, Sidecar, bring_up, is_ours, remove_dir, remove_labelled
from executors.engine.builders import BuildKitSupport
from executors.engine.client import EngineClient
from executors.engine.engine import Engine, choose_builder, engine_platforms, reads_frontend, remove_job_leftovers
from executors.engine.push import PushLocks
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.host_platforms import HostPlatforms
from runner.core.jobs import BuildRequest, PushedImage
from runner.core.labels import LABEL_EXECUTOR, LABEL_JOB, LABEL_NAMESPACE
from runner.core.log_sink import LogSink

log = logging.getLogger(__name__)

RISK = ("each job runs in a sidecar with its own Docker daemon; privileged mode (the default) or the "
        "capability profile gives that sidecar near-root power over the host if a build escapes it")


class HostClient:
    """The host engine's client for one job, made only if the job needs it (a kept sidecar
    serves a job without the host engine)."""

    def __init__(self, connect: Callable[[], docker.APIClient]):
        self._connect = connect
        self._api: docker.APIClient | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


@dataclass
class Serving:
    """A job's sidecar until the job's cleanup: the cache volume lease it holds, and its Kept
    record when it may serve the next job of the cache key."""

    sidecar: Sidecar
    lease: dind_cache.CacheLease | None = None
    kept: dind_reuse.Kept | None = None
    reusable: bool = False  # the job ended without a cancel


class DindExecutor(Executor):
    name: ClassVar[str] = "dind"
    risk: ClassVar[str] = RISK
    Config = DindConfig
    config: DindConfig
    #: sysbox sets this: never privileged, whatever the config says
    force_unprivileged: ClassVar[bool] = False

    def __init__(self, config: DindConfig, env: ExecutorEnv):
        super().__init__(config, env)
        self.buildkit = BuildKitSupport()
        #: a sidecar kept for a cache key serves its jobs one at a time; these keep pushes of one tag apart anyway
        self.push_locks = PushLocks()
        #: the warm pool (start() makes it when warm_pool > 0; shutdown() empties it)
        self.pool: dind_pool.WarmPool | None = None
        self._pool_api: docker.APIClient | None = None
        #: job id -> the sidecar serving it, until the job's cleanup removes or keeps it
        self._serving: dict[str, Serving] = {}
        self._serving_lock = threading.Lock()
        self._evicting = threading.Lock()
        #: idle sidecars by cache key (reuse: per_cache_key)
        self.kept = (dind_reuse.KeptSidecars(config.reuse_idle_seconds, config.reuse_max_jobs, self._destroy_kept, self.name)
                     if config.reuse == "per_cache_key" else None)
        self._owner: str | None = None
        self._host_version: str | None = None

    def host(self, timeout: int | None = 120) -> docker.APIClient:
        """The host engine that runs the sidecars (public docker-py calls only); its API
        version is asked once, so a client made per job costs no round trip."""
        api = EngineClient.connect(self.config.docker_host, timeout=timeout, version=self._host_version).api
        self._host_version = api.api_version
        return api

    def engine_host(self) -> str:
        return self.config.docker_host

    def reads_frontend(self, builder: str) -> bool:
        return reads_frontend(builder)

    def platforms(self) -> HostPlatforms:
        """A sidecar's builds run on the host engine's kernel: what that host runs (its binfmt
        handlers with the F flag reach into the sidecar and its nested containers)."""
        return engine_platforms(self.config.docker_host, lambda: self.host(timeout=10))

    # -- check -------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        config = self.config
        try:
            api = self.host(timeout=10)
            try:
                version, info = api.version(), api.info()
                runtimes = sorted(info.get("Runtimes") or {})
                missing_runtime = config.runtime and config.runtime not in runtimes
                try:
                    api.inspect_image(config.image)
                    has_image = True
                except docker.errors.ImageNotFound:
                    has_image = False
            finally:
                api.close()
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as text
            return CheckResult(False, f"host Docker Engine at {config.docker_host} unreachable: {exc}")
        details = {"image": config.image, "runtimes": ",".join(runtimes), "connection": config.connection,
                   "privileged": str(config.privileged and not self.force_unprivileged)}
        if missing_runtime:
            return CheckResult(False, f"the Docker Engine at {config.docker_host} has no {config.runtime} runtime "
                               f"(it has: {', '.join(runtimes) or 'none'}); install {config.runtime} and register it "
                               "with dockerd, or use the dind executor", details)
        if not has_image:
            return CheckResult(False, f"the sidecar image {config.image!r} is not on the host engine: pull it, or build "
                               f"one with scripts/dind-image.sh and set executors.{self.name}.image", details)
        return CheckResult(True, f"{self.name} sidecars from {config.image} on Docker Engine {version.get('Version')} "
                           f"— {self.risk}", details)

    # -- run ---------------------------------------------------------------------------------
    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        self.refuse_unbuildable(job)
        host = HostClient(self.host)
        try:
            serving = self._serving_for(host, job, log, cancel)
            inner = serving.sidecar.client(timeout=None)
            try:
                builder = choose_builder(inner, job.builder or self.env.builder, self.buildkit, self.env.registries,
                                         self.job_secrets(job), engine_key=self.config.image)
                engine = Engine(inner, self.env.registries, self.name, self.env.metrics, self.push_locks)
                return engine.build_and_push(job, builder, context, log, cancel, cache_repo=self.config.cache_repo)
            finally:
                inner.close()
                serving.reusable = not cancel.is_set()
        finally:
            host.close()

    def _serving_for(self, host: HostClient, job: BuildRequest, log: LogSink, cancel: CancelToken) -> Serving:
        """The sidecar for this job: a kept one of its cache key, a warm one, or a new one
        (on the key's cache volume when repo_cache is on). Registered at once, so cleanup
        finds it whatever happens next."""
        key = job.cache_key if self.kept is not None else None
        kept = self._take_kept(key, log) if key else None
        if kept is not None:
            return self._serve(job.id, Serving(kept.sidecar, kept.lease, kept))
        lease = None
        if self.config.repo_cache and job.cache_key:
            lease = dind_cache.acquire(host.api, self.config, self.name, job.cache_key, cancel, log)
        try:
            sidecar = self._sidecar(host.api, job, lease, key, log, cancel)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        serving = Serving(sidecar, lease, dind_reuse.Kept(key, sidecar, lease, jobs=1) if key else None)
        return self._serve(job.id, serving)

    def _serve(self, job_id: str, serving: Serving) -> Serving:
        with self._serving_lock:
            self._serving[job_id] = serving
        return serving

    def _take_kept(self, key: str, log: LogSink) -> dind_reuse.Kept | None:
        assert self.kept is not None
        while (kept := self.kept.take(key)) is not None:
            if kept.sidecar.alive():
                kept.jobs += 1
                log.line(f"[runner] {self.name}: reusing sidecar {kept.sidecar.name} of cache key {key!r} "
                         f"(job {kept.jobs} of at most {self.config.reuse_max_jobs}; idle "
                         f"{time.monotonic() - kept.idle_since:.1f}s)")
                return kept
            log.line(f"[runner] {self.name}: kept sidecar {kept.sidecar.name} stopped answering; removing it")
            self._destroy_kept(kept)
        return None

    def _sidecar(self, api: docker.APIClient, job: BuildRequest, lease: dind_cache.CacheLease | None, key: str | None,
                 log: LogSink, cancel: CancelToken) -> Sidecar:
        if lease is None and self.pool is not None:
            sidecar = self.pool.take(wait=self.config.ready_timeout, cancelled=cancel.is_set)
            if sidecar is not None:
                log.line(f"[runner] {self.name}: warm sidecar {sidecar.name} (ready for {time.monotonic() - sidecar.ready_at:.1f}s)")
                return sidecar
            log.line(f"[runner] {self.name}: warm pool is empty; starting a sidecar")
        started = time.monotonic()
        log.line(f"[runner] {self.name}: starting a sidecar from {self.config.image}")
        sidecar = bring_up(api, self.config, self.env.registries, executor=self.name,
                           labels=self.reuse_labels(key) if key else self.labels(job.id), cancel=cancel, log_sink=log,
                           data_volume=lease.volume if lease else None, force_unprivileged=self.force_unprivileged)
        took = time.monotonic() - started
        log.line(f"[runner] {self.name}: sidecar {sidecar.name} ready in {took:.2f}s")
        self.env.metrics.sidecar_started(self.name, took)
        return sidecar

    def reuse_labels(self, key: str) -> dict[str, str]:
        """A kept sidecar belongs to no one job: judged by its worker process, as a pool's."""
        if self._owner is None:
            self._owner = dind_pool.process_owner()
        return {**self.labels(dind_reuse.reuse_job_label(self.name, key)), dind_pool.LABEL_POOL: self._owner,
                dind_reuse.LABEL_REUSE: key}

    # -- cleanup -----------------------------------------------------------------------------
    def cleanup(self, job_id: str) -> None:
        """After the job's record: its sidecar made clean and kept for the next job of its cache
        key (reuse), or removed with its volume, network and host directory. Then whatever is
        labelled with the job, in this namespace only: job ids may be chosen by the submitter,
        so another deployment on the engine can share one."""
        with self._serving_lock:
            serving = self._serving.pop(job_id, None)
        try:
            api = self.host(timeout=60)
        except Exception:  # noqa: BLE001 - cleanup never raises
            return
        try:
            if serving is not None:
                self._release(api, job_id, serving)
            remove_labelled(api, {LABEL_JOB: job_id, LABEL_EXECUTOR: self.name, LABEL_NAMESPACE: self.env.namespace})
        except Exception as exc:  # noqa: BLE001
            log.warning("%s cleanup of %s: %s", self.name, job_id, exc)
        finally:
            api.close()

    def _release(self, api: docker.APIClient, job_id: str, serving: Serving) -> None:
        kept = serving.kept
        if kept is not None and self.kept is not None:
            problem = self._clean(serving.sidecar, job_id) if serving.reusable else "its job was cancelled"
            if problem is None and self.kept.give_back(kept):
                return
            if problem is not None:
                log.info("%s: not keeping sidecar %s: %s", self.name, serving.sidecar.name, problem)
            self._destroy_kept(kept, api)
            return
        if serving.lease is not None:  # the daemon's state lives on in the cache volume: untag the job's images
            self._clean(serving.sidecar, job_id, whole=False)
        self._remove(api, serving.sidecar, serving.lease)

    def _clean(self, sidecar: Sidecar, job_id: str, whole: bool = True) -> str | None:
        """The job's images untagged in the sidecar's daemon and (whole) everything else a job
        may leave there removed; None when clean, else what stayed."""
        try:
            inner = sidecar.client(timeout=60)
        except InfrastructureError as exc:
            return exc.message
        try:
            problem = dind_reuse.clean(inner.api) if whole else None  # first: a container may use the job's image
            remove_job_leftovers(inner, job_id, other_tags=True)  # the sidecar's own engine: every tag is a job's
            return problem
        finally:
            inner.close()

    def _destroy_kept(self, kept: dind_reuse.Kept, api: docker.APIClient | None = None) -> None:
        if api is not None:
            self._remove(api, kept.sidecar, kept.lease)
            return
        host = self.host(timeout=60)
        try:
            self._remove(host, kept.sidecar, kept.lease)
        finally:
            host.close()

    def _remove(self, api: docker.APIClient, sidecar: Sidecar, lease: dind_cache.CacheLease | None) -> None:
        sidecar.remove(api)
        if lease is not None:
            lease.release()
            dind_cache.evict_in_background(lambda: self.host(timeout=300), self.config, self.name, self._evicting)

    def sweep(self, is_live: IsLive) -> list[str]:
        """Sidecars, volumes and networks of this executor (on its own engine, in this
        namespace) whose job is not live; warm-pool sidecars of pools that are gone."""
        try:
            api = self.host(timeout=30)
        except Exception as exc:  # noqa: BLE001 - no engine: nothing of ours to sweep there
            log.warning("%s sweep: %s", self.name, exc)
            return []
        try:
            return sweep_leftovers(api, is_live, self.name, self.env.namespace)
        finally:
            api.close()

    # -- warm pool, kept sidecars ---------------------------------------------------------------
    def start(self) -> None:
        if self.config.warm_pool > 0 and self.pool is None:
            self.pool = self._make_pool()
            self.pool.start()
            self.env.metrics.warm_pool(self.name, lambda: self.pool.idle if self.pool is not None else 0)

    def shutdown(self) -> None:
        pool, self.pool = self.pool, None
        api, self._pool_api = self._pool_api, None
        if pool is not None:
            pool.shutdown()
        if api is not None:
            api.close()
        if self.kept is not None:
            self.kept.shutdown()

    def _make_pool(self) -> dind_pool.WarmPool:
        self._pool_api = api = self.host()
        labels = {**self.labels(f"warm-pool-{self.name}"), dind_pool.LABEL_POOL: dind_pool.process_owner()}

        def factory() -> Sidecar:
            started = time.monotonic()
            sidecar = bring_up(api, self.config, self.env.registries, executor=self.name, labels=labels,
                               force_unprivileged=self.force_unprivileged)
            self.env.metrics.sidecar_started(self.name, time.monotonic() - started)
            return sidecar

        return dind_pool.WarmPool(self.config.warm_pool, factory, lambda s: s.remove(api), Sidecar.alive, self.name)


def sweep_leftovers(api: docker.APIClient, is_live: IsLive, executor: str, namespace: str) -> list[str]:
    """Remove `executor`'s labelled sidecars, volumes and networks in `namespace` whose job is
    not live. The namespace keeps another deployment's jobs on the same engine, which our
    is_live cannot know, untouched. Warm-pool sidecars are judged by their owner process when
    it is on this host. Cache volumes carry no job label and are left to eviction. Returns the
    ids of the jobs whose leftovers were removed (a dead pool's sidecars are no job's)."""
    verdicts: dict[str, bool] = {}

    def dead(labels: dict[str, str]) -> bool:
        owner = labels.get(dind_pool.LABEL_POOL)
        if owner and (alive := dind_pool.owner_alive(owner)) is not None:
            return not alive
        job = labels[LABEL_JOB]
        if job not in verdicts:
            verdicts[job] = is_live(job)
        return not verdicts[job]

    def containers():
        return api.containers(all=True, filters=filters)

    def volumes():
        return api.volumes(filters=filters).get("Volumes") or []

    def remove_container(item):
        api.remove_container(item["Id"], force=True, v=True)
        if item["Labels"].get(LABEL_DIR):
            remove_dir(Path(item["Labels"][LABEL_DIR]))

    filters = {"label": [f"{LABEL_EXECUTOR}={executor}", f"{LABEL_NAMESPACE}={namespace}"]}
    removed: set[str] = set()
    for listing, remove in ((containers, remove_container),
                            (volumes, lambda item: api.remove_volume(item["Name"], force=True)),
                            (lambda: api.networks(filters=filters), lambda item: api.remove_network(item["Id"]))):
        try:
            items = listing()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.warning("%s sweep: cannot list leftovers: %s", executor, exc)
            continue
        for item in items:
            labels = item.get("Labels") or {}
            if not (is_ours(labels, executor) and dead(labels)):
                continue
            try:
                remove(item)
                if dind_pool.LABEL_POOL not in labels:
                    removed.add(labels[LABEL_JOB])
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.warning("%s sweep: %s", executor, exc)
    return sorted(removed)
