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
from pathlib import Path

from runner.config.loader import ENV_PREFIX, NESTED, NOT_SETTINGS, NOT_SETTINGS_PREFIXES, merge, read_config_file
from runner.config.redis_target import RedisTarget, SentinelSet, TlsFiles, parse_node
from runner.core.frozen import Frozen

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any


class PlainRetention(Frozen):
    finished_seconds: int = 7 * 24 * 3600
    upload_seconds: int = 3600
    queued_seconds: int = 7 * 24 * 3600


class PlainWorker(Frozen):
    namespace: str = "runner"


class PlainApi(Frozen):
    url: str | None = None
    token: str | None = None
    _hidden = frozenset({"token"})


class PlainDeliveries(Frozen):
    recover_after: float = 30.0


class PlainClientSettings(Frozen):
    """ClientSettings' values as plain objects (the same attribute names)."""

    target: RedisTarget = RedisTarget()
    retention: PlainRetention = PlainRetention()
    worker: PlainWorker = PlainWorker()
    api: PlainApi = PlainApi()
    deliveries: PlainDeliveries = PlainDeliveries()

    def redis_target(self) -> RedisTarget:
        return self.target


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
