"""`runner doctor`: one check per line — Redis, Docker Engine, registries, executors."""

from __future__ import annotations

from dataclasses import dataclass

from executors.base import Executor
from executors.registry import ExecutorRegistry
from runner.config.settings import Settings
from runner.core.registries import RegistryClient
from runner.store.jobstore import JobStore, StoreUnavailable
from runner.worker.worker import executor_env, make_executors


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    required: bool = True
    #: a failure worth a FAIL mark even when it does not fail the doctor (registries)
    shown: bool = False


def check_redis(settings: Settings) -> Check:
    try:
        JobStore.from_settings(settings).ping()
        return Check("redis", True, "reachable")
    except StoreUnavailable as exc:
        return Check("redis", False, str(exc))


def check_engine(url: str, needed: bool) -> Check:
    """A Docker Engine an executor drives (required when that executor is enabled)."""
    from executors.engine.client import EngineClient

    try:
        client = EngineClient.connect(url, timeout=5)
        version, info = client.api.version(), client.api.info()
        client.close()
    except Exception as exc:  # noqa: BLE001
        return Check(f"docker engine {url}", False, f"{url}: {exc}", required=needed)
    runtimes = ",".join(sorted(info.get("Runtimes", {})))
    return Check(f"docker engine {url}", True, f"{version.get('Version')}, storage {info.get('Driver')}, runtimes {runtimes}",
                 required=needed)


def check_registry(registry) -> Check:
    try:
        RegistryClient(registry).ping()
        login = "login works" if registry.username else "anonymous"
        return Check(f"registry {registry.host}", True, f"reachable, {login}")
    except Exception as exc:  # noqa: BLE001
        return Check(f"registry {registry.host}", False, getattr(exc, "message", str(exc)), required=False, shown=True)


def check_executors(executors: dict[str, Executor]) -> list[Check]:
    checks = []
    for name, executor in executors.items():
        enabled = executor.config.enabled
        try:
            result = executor.check()
            summary, ok = result.summary, result.ok
        except Exception as exc:  # noqa: BLE001
            summary, ok = f"check crashed: {exc}", False
        checks.append(Check(f"executor {name} ({'enabled' if enabled else 'disabled'})", ok, summary, required=enabled))
    return checks


def check_engines(executors: dict[str, Executor]) -> list[Check]:
    """Each engine the executors drive, once; required when an enabled executor drives it."""
    hosts: dict[str, bool] = {}
    for executor in executors.values():
        if (host := executor.engine_host()) is not None:
            hosts[host] = hosts.get(host, False) or executor.config.enabled
    return [check_engine(host, needed) for host, needed in sorted(hosts.items())]


def check_build_secrets(settings: Settings) -> Check:
    return Check("build secrets", True, f"{len(settings.build_secrets)} configured; socket/dind/sysbox pass them to RUN --mount=type=secret "
                 "through a BuildKit session (BuildKit builder only: a classic-builder job naming secrets is refused)", required=False)


def run_checks(settings: Settings) -> list[Check]:
    registry = ExecutorRegistry()
    executors = make_executors(settings, registry.names(), executor_env(settings, "doctor"), registry)
    return [check_redis(settings), *check_engines(executors), *[check_registry(r) for r in settings.registries],
            *check_executors(executors), check_build_secrets(settings)]
