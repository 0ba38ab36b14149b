"""`runner doctor`: one check per line — Redis, Docker Engine, registries, executors."""

from __future__ import annotations

from dataclasses import dataclass

import executors
from runner.registry import RegistryClient
from runner.settings import Settings
from runner.store import JobStore, StoreUnavailable


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


def check_engine(settings: Settings) -> Check:
    """The host engine is only required when an engine-backed executor is enabled."""
    from executors.engine import connect

    url = settings.executors.socket.docker_host
    needed = any(executors.is_enabled(settings, n) for n in ("socket", "dind", "sysbox"))
    try:
        api = connect(url, timeout=5)
        version, info = api.version(), api.info()
        api.close()
    except Exception as exc:  # noqa: BLE001
        return Check("docker engine", False, f"{url}: {exc}", required=needed)
    runtimes = ",".join(sorted(info.get("Runtimes", {})))
    return Check("docker engine", True, f"{version.get('Version')} at {url}, storage {info.get('Driver')}, runtimes {runtimes}", required=needed)


def check_registry(registry) -> Check:
    try:
        RegistryClient(registry).ping()
        login = "login works" if registry.username else "anonymous"
        return Check(f"registry {registry.host}", True, f"reachable, {login}")
    except Exception as exc:  # noqa: BLE001
        return Check(f"registry {registry.host}", False, getattr(exc, "message", str(exc)), required=False, shown=True)


def check_executors(settings: Settings) -> list[Check]:
    checks = []
    for name in executors.known_names():
        enabled = executors.is_enabled(settings, name)
        try:
            result = executors.create(settings, name).check()
            summary, ok = result.summary, result.ok
        except Exception as exc:  # noqa: BLE001
            summary, ok = f"check crashed: {exc}", False
        state = "enabled" if enabled else "disabled"
        checks.append(Check(f"executor {name} ({state})", ok, summary, required=enabled))
    return checks


def check_build_secrets(settings: Settings) -> Check:
    return Check("build secrets", True, f"{len(settings.build_secrets)} configured; socket/dind/sysbox pass them to RUN --mount=type=secret "
                 "through a BuildKit session (BuildKit builder only: a classic-builder job naming secrets is refused)", required=False)


def run_checks(settings: Settings) -> list[Check]:
    return [check_redis(settings), check_engine(settings),
            *[check_registry(r) for r in settings.registries], *check_executors(settings), check_build_secrets(settings)]
