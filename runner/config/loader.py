"""Where settings come from: a YAML file and RUNNER_* env vars.

The file: `--config PATH`, else the one RUNNER_CONFIG names, else the first of
DEFAULT_LOCATIONS that exists (the user's, then the system's); none: the defaults apply
(`runner config show` says which it was: `config_source`).

Plain dicts in, plain dicts out; the settings model validates the merged result once. The
env rules are pydantic-settings' (which this replaces because importing it cost ~60 ms on
every `runner` command): prefix RUNNER_, case-insensitive, `__` between levels, a value
for a list, mapping or section parsed as JSON, env over the file with nested mappings merged.
A RUNNER_* variable that names no setting is refused, naming it (a typo must not pass
silently), except those that are known not to be settings (NOT_SETTINGS).
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Collection, Mapping
from pathlib import Path

TYPE_CHECKING = False  # not typing's: a client reading its file needs no typing (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from pydantic import BaseModel, ValidationError

    # for the checker only: a TypeVar bound by a string compiles it at import, ~1 ms of every command
    M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "RUNNER_"
NESTED = "__"
#: env vars with the prefix that are not settings: where the settings are, the CLI's own,
#: this repository's scripts', and GitHub Actions' (it sets RUNNER_* in every job's steps)
NOT_SETTINGS = frozenset({
    "RUNNER_CONFIG", "RUNNER_API_URL", "RUNNER_API_TOKEN",
    "RUNNER_SETUP_FAIL", "RUNNER_BIN", "RUNNER_DASHBOARD_SCREENSHOTS",
    "RUNNER_ARCH", "RUNNER_DEBUG", "RUNNER_ENVIRONMENT", "RUNNER_NAME", "RUNNER_OS", "RUNNER_TEMP",
    "RUNNER_TOOL_CACHE", "RUNNER_WORKSPACE", "RUNNER_TRACKING_ID", "RUNNER_PERFLOG", "RUNNER_USER",
})
NOT_SETTINGS_PREFIXES = ("RUNNER_DEV_", "RUNNER_DIND_",  # the scripts' (scripts/services.sh, dind-image.sh)
                         "RUNNER_TEST_")  # the tests' fault points (runner/worker/faults.py)
#: where the config file is looked for when neither --config nor RUNNER_CONFIG names one, in order
DEFAULT_LOCATIONS = ("~/.config/ci-build-runner/runner.yml", "/etc/ci-build-runner/runner.yml")
_COMPLEX = (list, dict, set, tuple)
_UNKNOWN = object()  # below a mapping of free-form sections: the type is not known here


class SettingsError(ValueError):
    """The configuration cannot be loaded; the message names the file, variable or field."""


def config_source(config: str | Path | None = None) -> tuple[Path | None, str]:
    """The config file to read and why: `config` (the CLI's --config), else RUNNER_CONFIG, else
    the first DEFAULT_LOCATIONS file that exists; (None, why not) when there is none."""
    if config:
        return Path(config), "--config"
    if named := os.environ.get("RUNNER_CONFIG"):
        return Path(named), "RUNNER_CONFIG"
    for location in DEFAULT_LOCATIONS:
        path = Path(location).expanduser()
        if path.is_file():
            return path, "default location"
    return None, f"no config file (neither --config nor RUNNER_CONFIG, nor {' or '.join(DEFAULT_LOCATIONS)})"


def read_config_file(config: str | Path | None = None) -> dict[str, Any]:
    """The mapping in the config file (config_source); none: no settings from a file."""
    path, _ = config_source(config)
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    from runner.config.plain_yaml import read

    plain = read(text)  # the plain part of YAML without PyYAML (~15 ms to import); None: the rest
    if plain is not None:
        return plain
    import yaml

    try:
        # libyaml's parser where PyYAML has it (the same safe constructors, a few times quicker)
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return data


def load(model: type[M], overrides: Mapping[str, Any], config: str | Path | None = None,
         known: Collection[str] | None = None) -> M:
    """`model` from the config file (config_source), RUNNER_* env vars over it and `overrides`
    over both (nested mappings merge), validated once. `known`: every top-level setting's name
    (default: the model's fields), for refusing a variable that names none. Raises
    SettingsError naming what was wrong."""
    from pydantic import ValidationError

    from_env, origins = env_values(model, known=known)
    try:
        return model.model_validate(merge(merge(read_config_file(config), from_env), overrides))
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, origins)) from None


def env_values(model: type[BaseModel], environ: Mapping[str, str] | None = None,
               known: Collection[str] | None = None) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The settings given by RUNNER_* variables, nested, and which variable gave each path.
    A variable naming no setting in `known` (default: the model's fields) is refused; one
    naming a setting the model does not read (a client's subset) is left to the full settings."""
    environ = os.environ if environ is None else environ
    known = set(model.model_fields if known is None else known)
    found, unknown = [], []
    for name, raw in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        path = tuple(name[len(ENV_PREFIX):].lower().split(NESTED))
        if path[0] not in known or not all(path):
            unknown.append(name)
        elif path[0] in model.model_fields:
            found.append((path, name, raw))
    if unknown:
        raise SettingsError(f"{', '.join(sorted(unknown))}: no such setting. Settings are RUNNER_<name>, with __ between "
                            f"levels (RUNNER_WORKER__CONCURRENCY=4); the names: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for path, name, raw in sorted(found):  # a whole section first, then the keys inside it
        node = values
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        value = _decode(name, raw, _annotation_at(model, path))
        current = node.get(path[-1])
        node[path[-1]] = merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        origins[path] = name
    return values, origins


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; mappings present in both merge key by key."""
    result = dict(base)
    for key, value in over.items():
        current = result.get(key)
        result[key] = merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return result


def describe_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], str], most: int = 5) -> str:
    """`field.path: what is wrong (from RUNNER_VAR)` for each error; never the input value
    (it may be a secret)."""
    from runner.core.validation import field_errors  # only when something is wrong

    lines = []
    for error in field_errors(exc)[:most]:
        loc = error.path
        message = f"{error.field('settings')}: {error.message}"
        source = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
        below = [name for path, name in origins.items() if loc and path[:len(loc)] == loc]
        source = source or (below[0] if len(below) == 1 else None)  # a section's own validator failed
        lines.append(f"{message} (from {source})" if source else message)
    if exc.error_count() > most:
        lines.append(f"... and {exc.error_count() - most} more")
    return "; ".join(lines)


def _annotation_at(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    """The declared type at `path` in the settings tree, or _UNKNOWN."""
    from typing import get_args, get_origin  # here, not at the top: only the models' path reads types
    annotation: Any = model
    for key in path:
        annotation = _strip_optional(annotation)
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            field = annotation.model_fields.get(key)
            if field is None:
                return _UNKNOWN
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return _UNKNOWN
    return _strip_optional(annotation)


def _strip_optional(annotation: Any) -> Any:
    from typing import Union, get_args, get_origin
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _decode(name: str, raw: str, annotation: Any) -> Any:
    """JSON for a list, mapping or section; the string itself for a scalar (the model parses
    numbers and booleans). Below free-form sections, JSON is taken only if it is a list or mapping."""
    from typing import get_origin
    if annotation is _UNKNOWN:
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, list | dict) else raw
    complex_ = get_origin(annotation) in _COMPLEX or annotation in _COMPLEX or (
        isinstance(annotation, type) and hasattr(annotation, "model_fields"))
    if not complex_ or not raw:
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: expected JSON (a list or a mapping) for this setting: {exc}") from None
