"""`runner doctor`: one check per line — Redis, Docker Engine, registries, executors, the
platforms each executor can build here, and secret files that others can read."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel

from executors.base import Executor
from executors.plugins import ExecutorRegistry
from runner.config.settings import Settings
from runner.core.docker_config import DockerConfigError
from runner.core.registry_client import Registries
from runner.core.registry_config import RegistryConfig
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
    #: works, but should be fixed: a WARN mark, never a failure
    warning: bool = False


def check_redis(settings: Settings) -> list[Check]:
    """Redis answers (where: no password shown), and a WARN when it could drop jobs."""
    store = JobStore.from_settings(settings)
    try:
        store.ping()
    except StoreUnavailable as exc:
        return [Check("redis", False, str(exc))]
    checks = [Check("redis", True, f"reachable at {store.target.describe()}")]
    try:
        memory = store.r.info("memory")
    except redis.RedisError as exc:  # a managed Redis may refuse INFO: say so, never fail
        return [*checks, Check("redis memory", True, f"cannot read its memory settings ({exc})", required=False, warning=True)]
    return [*checks, *check_redis_memory(memory)]


def check_redis_memory(memory: dict[str, Any]) -> list[Check]:
    """Queued jobs, their contexts and records live in Redis: an eviction policy other than
    noeviction may drop them when memory runs short, and no maxmemory lets a burst of uploads
    grow Redis until the host kills it. Both are WARN lines, never a failure."""
    policy, limit = str(memory.get("maxmemory_policy", "unknown")), int(memory.get("maxmemory", 0) or 0)
    warnings = []
    if policy != "noeviction":
        warnings.append(Check("redis eviction", True, f"maxmemory-policy is {policy}: when memory runs short Redis may "
                              "evict queued jobs' messages, contexts and records; set it to noeviction (full Redis "
                              "then refuses new uploads instead)", required=False, warning=True))
    if not limit:
        warnings.append(Check("redis maxmemory", True, "maxmemory is 0 (no limit): uploads waiting in Redis can grow it "
                              "until the host's memory runs out and it is killed; set maxmemory below its memory limit",
                              required=False, warning=True))
    return warnings or [Check("redis memory", True, f"maxmemory {limit // 2**20} MiB, policy noeviction", required=False)]


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


def check_registry(registry: RegistryConfig, registries: Registries) -> Check:
    """Where the registry's login comes from (never the value), and whether it works."""
    name = f"registry {registry.host}"
    try:
        credentials = registries.credentials.lookup(registry.host)
        registries.client(registry.host).ping()
    except Exception as exc:  # noqa: BLE001
        why, source = getattr(exc, "message", str(exc)), registries.credentials.source(registry.host)
        return Check(name, False, why if source in why else f"{why} (credentials: {source})", required=False, shown=True)
    login = f"login works (credentials: {credentials.source})" if credentials is not None else \
        "anonymous (no credentials configured)"
    return Check(name, True, f"reachable, {login}")


def check_docker_configs(registries: Registries) -> list[Check]:
    """Each registry_auth.docker_config file: readable, and what it holds (names only)."""
    checks = []
    for file in registries.credentials.files:
        try:
            config = file.read()
        except DockerConfigError as exc:
            checks.append(Check(f"docker config {file.path}", False, str(exc), required=False, shown=True))
            continue
        parts = [f"auths for {len(config.auths)} {'registry' if len(config.auths) == 1 else 'registries'}"]
        if config.cred_helpers:
            parts.append("credHelpers: " + ", ".join(f"{host} -> {helper}" for host, helper in config.cred_helpers.items()))
        if config.creds_store:
            parts.append(f"credsStore: {config.creds_store}")
        checks.append(Check(f"docker config {file.path}", True, f"{file.where}: " + "; ".join(parts), required=False))
    return checks


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


def check_platforms(executors: dict[str, Executor]) -> list[Check]:
    """Which platforms each executor can build on this host: natively, or emulated through a
    binfmt handler (qemu-user-static); a job asking for another is refused before it runs."""
    checks = []
    for name, executor in executors.items():
        if not executor.config.enabled:
            continue
        try:
            support = executor.platforms()
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as text
            checks.append(Check(f"platforms {name}", False, getattr(exc, "message", str(exc)), required=False, shown=True))
            continue
        if support is not None:
            checks.append(Check(f"platforms {name}", True, support.describe(), required=False))
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


#: settings fields that name a file holding a secret (api tokens, webhook and callback secrets,
#: git tokens and SSH keys, commit-status tokens, registry passwords)
SECRET_FILE_FIELDS = ("token_file", "secret_file", "password_file", "ssh_key_file", "docker_config", "key_file",
                      "passphrase_file")


def secret_files(value: Any, where: str = "") -> Iterator[tuple[str, Path]]:
    """(where in the settings, path) of every secret file the settings name."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            field = getattr(value, name)
            here = f"{where}.{name}" if where else name
            if name in SECRET_FILE_FIELDS and isinstance(field, Path):
                yield here, field
            elif name in SECRET_FILE_FIELDS and isinstance(field, list):  # registry_auth.docker_config
                yield from ((f"{here}[{index}]", path) for index, path in enumerate(field) if isinstance(path, Path))
            else:
                yield from secret_files(field, here)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from secret_files(item, f"{where}[{key}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            label = getattr(item, "name", None) or getattr(item, "host", None)  # api tokens, git credentials, registries
            yield from secret_files(item, f"{where}[{label if isinstance(label, str) else index}]")


def check_secret_files(settings: Settings) -> list[Check]:
    """A WARN line for each secret file that its group or other users may read (its mode, and
    the fix); a secret is only as safe as the file that holds it. Never a failure."""
    warnings, count = [], 0
    for where, path in secret_files(settings):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)  # a symlink's target: what a reader gets
        except OSError:
            continue  # missing or unreadable: the check that uses it says so
        count += 1
        readers = [who for who, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit]
        if readers:
            warnings.append(Check(f"secret file {where}", True, f"{path} has mode {mode:04o}: readable by "
                                  f"{' and '.join(readers)}; chmod 600 {path}", required=False, warning=True))
    return warnings or [Check("secret files", True, f"{count} configured; none readable by group or others", required=False)]


def check_signing(settings: Settings) -> Check:
    """The signing key loads (with its passphrase), signs, and its public half verifies what it
    signed; signing.public_key_file, if set, is that public half."""
    from runner.supply.keys import SigningKeyError, fingerprint, load_private_key, load_public_key
    from runner.supply.verify import verifies

    signing = settings.signing
    if signing.key_file is None:
        return Check("signing", True, "no key (signing.key_file): provenance is attached to every pushed image, unsigned",
                     required=False)
    try:
        key = load_private_key(signing.key_file, signing.passphrase_file)
        probe = b"runner doctor"
        if not verifies(key.public, base64.b64decode(key.sign(probe)), probe):
            return Check("signing", False, f"{signing.key_file}: a signature made with it does not verify", required=signing.must_sign)
        if signing.public_key_file is not None and fingerprint(load_public_key(signing.public_key_file)) != key.key_id:
            return Check("signing", False, f"signing.public_key_file {signing.public_key_file} is not the public half of "
                         f"{signing.key_file} (verifiers given it would refuse every image)", required=signing.must_sign)
    except SigningKeyError as exc:
        return Check("signing", False, str(exc), required=signing.must_sign)
    published = f"; matches {signing.public_key_file}" if signing.public_key_file else ""
    return Check("signing", True, f"ECDSA P-256 key loads and signs; public key {key.key_id}{published}; "
                 f"a failure to sign {'fails' if signing.must_sign else 'does not fail'} the job", required=signing.must_sign)


def run_checks(settings: Settings) -> list[Check]:
    registry = ExecutorRegistry()
    env = executor_env(settings, "doctor")
    executors = make_executors(settings, registry.names(), env, registry)
    return [*check_redis(settings), *check_engines(executors), *check_docker_configs(env.registries),
            *[check_registry(r, env.registries) for r in settings.registries],
            *check_executors(executors), *check_platforms(executors), check_build_secrets(settings),
            check_signing(settings), *check_secret_files(settings)]
