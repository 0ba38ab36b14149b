"""The client's settings without pydantic: what `runner status`, `list`, `logs`, `cancel` and
`submit` through the API need (where Redis or the API is, the namespace, the retention of
what they write), read from the same file and RUNNER_* variables as ClientSettings.

Importing pydantic and building the models cost tens of ms on every command, so this reads
the plain values itself and takes a setting only when it has the plain type it must have (a
string, an int, a bool, a list of strings...). Anything else, and any RUNNER_* variable it
does not read plainly, goes to the real ClientSettings (runner.config.client), which loads it
or refuses it with its own message: one rule, one error text. A test keeps the two readings
equal."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executors.builtin import BUILTIN, DEFAULT_EXECUTOR, ENABLED_BY_DEFAULT
from runner.config.loader import ENV_PREFIX, NESTED, NOT_SETTINGS, NOT_SETTINGS_PREFIXES, merge, read_config_file
from runner.config.redis_target import RedisTarget, SentinelSet, TlsFiles, parse_node
from runner.context.ignore_limits import MAX_CONTEXT_BYTES, MAX_IGNORE_FILE_BYTES, MAX_IGNORE_PATTERNS
from runner.core.admission_rules import MAX_PLATFORMS, MAX_TAGS, MAX_TIMEOUT, AdmissionPolicy


@dataclass(frozen=True)
class PlainRetention:
    finished_seconds: int = 7 * 24 * 3600
    upload_seconds: int = 3600
    queued_seconds: int = 7 * 24 * 3600


@dataclass(frozen=True)
class PlainWorker:
    namespace: str = "runner"


@dataclass(frozen=True)
class PlainApi:
    url: str | None = None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PlainDeliveries:
    recover_after: float = 30.0


@dataclass(frozen=True)
class PlainClientSettings:
    """ClientSettings' values as plain objects (the same attribute names)."""

    target: RedisTarget = field(default_factory=RedisTarget)
    retention: PlainRetention = field(default_factory=PlainRetention)
    worker: PlainWorker = field(default_factory=PlainWorker)
    api: PlainApi = field(default_factory=PlainApi)
    deliveries: PlainDeliveries = field(default_factory=PlainDeliveries)

    def redis_target(self) -> RedisTarget:
        return self.target


@dataclass(frozen=True)
class PlainLimits:
    """The `limits:` a submit reads: admission's, and those the context is packed and uploaded with."""

    max_tags: int = MAX_TAGS
    max_platforms: int = MAX_PLATFORMS
    max_timeout: int = MAX_TIMEOUT
    max_context_bytes: int = MAX_CONTEXT_BYTES
    max_ignore_file_bytes: int = MAX_IGNORE_FILE_BYTES
    max_ignore_patterns: int = MAX_IGNORE_PATTERNS


@dataclass(frozen=True)
class PlainSubmitSettings(PlainClientSettings):
    """What `runner submit` through Redis reads: the client's settings, the limits, and what
    admission checks a request against (runner.core.admission_rules). Only these are read: the
    rest of the file is the worker's, which validates it."""

    limits: PlainLimits = field(default_factory=PlainLimits)
    policy: AdmissionPolicy = field(default_factory=lambda: AdmissionPolicy(
        MAX_TAGS, MAX_PLATFORMS, MAX_TIMEOUT, (), DEFAULT_EXECUTOR, dict.fromkeys(BUILTIN, ENABLED_BY_DEFAULT)))

    def queue_for(self, executor: str) -> str:
        return f"{self.worker.namespace}.{executor}"


class _NotPlain(Exception):
    """A value the plain reading does not take: the models decide."""


#: the settings read here, each with its plain type; (section, key) for a key in a section
_STR, _OPT_STR, _INT, _POS_INT, _BOOL, _POS_NUM, _NODES = "str", "str?", "int", "int>0", "bool", "num>0", "nodes"
_TOP = {"redis_url": _STR, "redis_username": _OPT_STR, "redis_password": _OPT_STR, "redis_password_file": _OPT_STR}
_SECTIONS: dict[str, dict[str, str]] = {
    "redis_tls": {"ca_file": _OPT_STR, "cert_file": _OPT_STR, "key_file": _OPT_STR, "check_hostname": _BOOL},
    "redis_sentinel": {"master": _STR, "sentinels": _NODES, "password": _OPT_STR, "sentinel_password": _OPT_STR,
                       "db": _INT, "tls": _BOOL},
    "retention": {"finished_seconds": _POS_INT, "upload_seconds": _POS_INT, "queued_seconds": _POS_INT},
    "worker": {"namespace": _STR},
    "api": {"url": _OPT_STR, "token": _OPT_STR},
    "deliveries": {"recover_after": _POS_NUM},
}
_STRICT = {"redis_tls", "redis_sentinel"}  # extra="forbid" in the models: an unknown key is an error there


def load_plain_client_settings(config: str | Path | None = None) -> PlainClientSettings:
    """The client's settings from the config file (runner.config.loader.config_source) and
    RUNNER_* env. Raises runner.config.loader.SettingsError as load_client_settings does."""
    data = read_config_file(config)
    try:
        return _plain(merge(data, _env_values(os.environ)))
    except _NotPlain:
        from runner.config.client import load_client_settings

        full = load_client_settings(config)  # refuses what is wrong, with the models' message
        return from_client_settings(full)


def load_plain_submit_settings(config: str | Path | None = None) -> PlainSubmitSettings | None:
    """The submit's settings read plainly, or None when something in them is not plain (the
    caller loads the whole Settings, which takes it or refuses it with its own message)."""
    data = read_config_file(config)
    try:
        merged = merge(data, _env_values(os.environ, _SUBMIT_TOP))
        client = _plain(merged)
        return PlainSubmitSettings(client.target, client.retention, client.worker, client.api, client.deliveries,
                                   *_submit_sections(merged))
    except _NotPlain:
        return None


def from_client_settings(full: Any) -> PlainClientSettings:
    """The plain settings of a ClientSettings (or Settings) the models validated."""
    token = full.api.token.get_secret_value() if full.api.token else None
    r = full.retention
    return PlainClientSettings(
        full.redis_target(), PlainRetention(r.finished_seconds, r.upload_seconds, r.queued_seconds),
        PlainWorker(full.worker.namespace), PlainApi(full.api.url, token), PlainDeliveries(full.deliveries.recover_after))


def _env_values(environ: Mapping[str, str], plain_top: Mapping[str, str] = _TOP) -> dict[str, Any]:
    """The RUNNER_* variables this reads plainly (a string setting, or a section as JSON); any
    other RUNNER_* setting variable, even one it leaves to the full settings, hands over to the
    models (which refuse a name that is no setting, and parse numbers and booleans)."""
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        path = tuple(name[len(ENV_PREFIX):].lower().split(NESTED))
        if len(path) == 1 and plain_top.get(path[0]) in (_STR, _OPT_STR):
            values[path[0]] = raw
        elif len(path) == 2 and _SECTIONS.get(path[0], {}).get(path[1]) in (_STR, _OPT_STR):
            values.setdefault(path[0], {})[path[1]] = raw
        elif len(path) == 1 and path[0] in _SECTIONS:
            try:
                section = json.loads(raw)
            except ValueError:
                raise _NotPlain from None
            if not isinstance(section, dict):
                raise _NotPlain
            values[path[0]] = merge(values.get(path[0], {}), section)
        else:
            raise _NotPlain
    return values


def _plain(data: Mapping[str, Any]) -> PlainClientSettings:
    top = {key: _value(data[key], kind) for key, kind in _TOP.items() if key in data}
    sections: dict[str, dict[str, Any]] = {}
    for name, keys in _SECTIONS.items():
        given = data.get(name)
        if given is None:
            if name in data and name != "redis_sentinel":
                raise _NotPlain
            continue
        if not isinstance(given, dict) or (name in _STRICT and set(given) - set(keys)):
            raise _NotPlain
        sections[name] = {key: _value(given[key], kind) for key, kind in keys.items() if key in given}
    if top.get("redis_password") is not None and top.get("redis_password_file") is not None:
        raise _NotPlain
    tls = TlsFiles(**sections.get("redis_tls", {}))
    if tls.key_file and not tls.cert_file:
        raise _NotPlain
    password = top.get("redis_password")
    sentinel = None
    if "redis_sentinel" in sections:
        config = sections["redis_sentinel"]
        if not config.get("master") or "sentinels" not in config or config.get("db", 0) < 0:
            raise _NotPlain
        sentinel = SentinelSet(config["master"], config["sentinels"], config.get("sentinel_password"),
                               config.get("db", 0), config.get("tls", False))
        password = config.get("password") or password
    target = RedisTarget(url=top.get("redis_url", RedisTarget.url), username=top.get("redis_username"),
                         password=password, password_file=top.get("redis_password_file"), tls=tls, sentinel=sentinel)
    return PlainClientSettings(target, PlainRetention(**sections.get("retention", {})),
                               PlainWorker(**sections.get("worker", {})), PlainApi(**sections.get("api", {})),
                               PlainDeliveries(**sections.get("deliveries", {})))


#: the top-level settings a submit reads beside the client's
_SUBMIT_TOP = {**_TOP, "default_executor": _STR}
_LIMITS = {name: _INT for name in ("max_tags", "max_timeout", "max_context_bytes")} | {
    name: _POS_INT for name in ("max_platforms", "max_ignore_file_bytes", "max_ignore_patterns")}


def _submit_sections(data: Mapping[str, Any]) -> tuple[PlainLimits, AdmissionPolicy]:
    """limits:, registries: (their hosts), default_executor:, executors: (which are enabled) and
    build_secrets: (their ids), each taken only in its plain type."""
    limits = PlainLimits(**{key: _value(value, _LIMITS[key]) for key, value in _section(data, "limits").items()
                            if key in _LIMITS})
    registries = data.get("registries", [])
    if not isinstance(registries, list) or not all(isinstance(r, dict) for r in registries):
        raise _NotPlain
    hosts = tuple(_value(r.get("host"), _STR) for r in registries)
    executors = dict.fromkeys(BUILTIN, ENABLED_BY_DEFAULT)
    for name, section in _section(data, "executors").items():
        if name not in BUILTIN:  # a plugin's: its package decides what it takes
            raise _NotPlain
        section = section if section is not None else {}
        if not isinstance(section, dict):
            raise _NotPlain
        executors[name] = _value(section.get("enabled", ENABLED_BY_DEFAULT), _BOOL)
    secrets = _section(data, "build_secrets")
    if not all(isinstance(value, str) for value in secrets.values()):
        raise _NotPlain
    default = _value(data.get("default_executor", DEFAULT_EXECUTOR), _STR)
    policy = AdmissionPolicy(limits.max_tags, limits.max_platforms, limits.max_timeout, hosts, default, executors,
                             frozenset(secrets))
    return limits, policy


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A section given as a mapping (an empty one when absent; `executors:` may be empty)."""
    section = data.get(name, {})
    if section is None and name == "executors":
        return {}
    if not isinstance(section, dict):
        raise _NotPlain
    return section


def _value(value: Any, kind: str) -> Any:
    """`value` when it has the plain type `kind`, else _NotPlain."""
    if kind == _OPT_STR and value is None:
        return None
    if kind in (_STR, _OPT_STR) and isinstance(value, str):
        return value
    if kind == _BOOL and isinstance(value, bool):
        return value
    if kind in (_INT, _POS_INT) and isinstance(value, int) and not isinstance(value, bool) and (kind == _INT or value > 0):
        return value
    if kind == _POS_NUM and isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if kind == _NODES and isinstance(value, list) and value and all(isinstance(node, str) for node in value):
        try:
            return tuple(parse_node(node) for node in value)
        except ValueError:
            raise _NotPlain from None
    raise _NotPlain
