"""What `runner submit` through Redis reads of the config, without pydantic: the client's settings
(runner.config.client_plain), the limits, and what admission checks a request against
(runner.core.admission_rules.AdmissionPolicy), each taken only in its plain type, as
client_plain does; anything else and the caller loads the whole Settings, which takes it or
refuses it with its own message. A test keeps the two readings equal (tests/test_plain_submit.py).

Only these are read: the rest of the file is the worker's, which validates all of it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from executors.builtin import BUILTIN, DEFAULT_EXECUTOR, ENABLED_BY_DEFAULT
from runner.config.client_plain import (
    _BOOL,
    _INT,
    _POS_INT,
    _STR,
    _TOP,
    PlainClientSettings,
    _env_values,
    _NotPlain,
    _plain,
    _value,
)
from runner.config.loader import merge, read_config_file
from runner.context.ignore_limits import MAX_CONTEXT_BYTES, MAX_IGNORE_FILE_BYTES, MAX_IGNORE_PATTERNS
from runner.core.admission_rules import MAX_PLATFORMS, MAX_TAGS, MAX_TIMEOUT, AdmissionPolicy
from runner.core.frozen import Frozen


class PlainLimits(Frozen):
    """The `limits:` a submit reads: admission's, and those the context is packed and uploaded with."""

    max_tags: int = MAX_TAGS
    max_platforms: int = MAX_PLATFORMS
    max_timeout: int = MAX_TIMEOUT
    max_context_bytes: int = MAX_CONTEXT_BYTES
    max_ignore_file_bytes: int = MAX_IGNORE_FILE_BYTES
    max_ignore_patterns: int = MAX_IGNORE_PATTERNS


class PlainSubmitSettings(PlainClientSettings):
    """What `runner submit` through Redis reads: the client's settings, the limits, and what
    admission checks a request against (runner.core.admission_rules). Only these are read: the
    rest of the file is the worker's, which validates it."""

    limits: PlainLimits = PlainLimits()
    policy: AdmissionPolicy = AdmissionPolicy(MAX_TAGS, MAX_PLATFORMS, MAX_TIMEOUT, (), DEFAULT_EXECUTOR,
                                              dict.fromkeys(BUILTIN, ENABLED_BY_DEFAULT))

    def queue_for(self, executor: str) -> str:
        return f"{self.worker.namespace}.{executor}"


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
