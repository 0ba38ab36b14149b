"""A build request read, and a new job's record written, with the standard library only: the
CLI's light path for `runner submit` through Redis, which never loads the pydantic models.

`plain_request` applies the rules of runner.core.request_rules in the models' field order and
says a refusal as the models do (Rejected: the field and the message of
runner.worker.admission.parse_request); it writes the JSON BuildRequest.model_dump(mode="json")
would. What only the models read (a git context, a source, a callback URL, a value not of its
plain type, a field it does not know) raises NeedsModels: the caller hands the request to the
models, which decide. `queued_record` is jobstate.admitted's record as JSON, byte for byte
the record's model_dump_json (a test compares them)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from copy import copy
from datetime import UTC, datetime
from typing import Any

from runner.core.admission_rules import NeedsModels, Rejected
from runner.core.request_rules import (
    BUILDERS,
    CACHE_KEY,
    MAX_PLATFORM,
    MAX_PLATFORMS_FIELD,
    MAX_TARGET,
    canonical_platforms,
    check_job_id,
    check_pairs,
    check_pairs_total,
    check_secret_args,
    check_tags,
    inside_context,
    one_platform,
    platform_and_platforms,
    redacted_args,
)
from runner.core.status import Status, new_job_id

#: BuildRequest's fields in its order (model_dump's), with the default of each that has one
_FIELDS: dict[str, Any] = {
    "id": None, "context": None, "dockerfile": "Dockerfile", "tags": None, "build_args": {}, "secret_build_args": [],
    "secrets": [], "target": None, "labels": {}, "platform": None, "platforms": [], "no_cache": False, "reuse": True,
    "executor": None, "builder": None, "timeout": None, "push": True, "cache_key": None, "callback_url": None, "source": None,
}


def plain_request(data: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the models would store it (not yet redacted), or Rejected / NeedsModels."""
    if set(data) - set(_FIELDS):
        raise NeedsModels("a field the light path does not read")
    if data.get("callback_url") is not None or data.get("source") is not None:
        raise NeedsModels("a callback or a source: admission's checks of them read the whole config")
    if data.get("context") not in (None, {"type": "upload"}):
        raise NeedsModels("a context other than an upload")
    out = {name: data[name] if name in data else copy(default) for name, default in _FIELDS.items()}
    out["context"] = {"type": "upload"}
    if out["id"] is None and "id" not in data:
        out["id"] = new_job_id()
    _typed({**out, "tags": out["tags"] if "tags" in data else []})  # a missing tags is said in its turn
    record_text(out)  # text a record can hold (UTF-8), else NeedsModels
    _checked(out, "id", check_job_id)
    _checked(out, "dockerfile", inside_context)
    if "tags" not in data:
        raise Rejected("tags", "Field required")
    if not out["tags"]:
        raise Rejected("tags", "List should have at least 1 item after validation, not 0")
    _checked(out, "tags", check_tags)
    _checked(out, "build_args", check_pairs)
    _checked(out, "secret_build_args", lambda names: check_secret_args(names, out["build_args"]))
    if out["target"] is not None and len(out["target"]) > MAX_TARGET:
        raise Rejected("target", f"String should have at most {MAX_TARGET} characters")
    _checked(out, "labels", check_pairs)
    if out["platform"] is not None:
        if len(out["platform"]) > MAX_PLATFORM:
            raise Rejected("platform", f"String should have at most {MAX_PLATFORM} characters")
        _checked(out, "platform", one_platform)
    if len(out["platforms"]) > MAX_PLATFORMS_FIELD:
        raise Rejected("platforms", f"List should have at most {MAX_PLATFORMS_FIELD} items after validation, "
                       f"not {len(out['platforms'])}")
    _checked(out, "platforms", canonical_platforms)
    if out["builder"] is not None and out["builder"] not in BUILDERS:
        raise Rejected("builder", "Input should be " + ", ".join(f"'{b}'" for b in BUILDERS[:-1]) + f" or '{BUILDERS[-1]}'")
    if out["timeout"] is not None and out["timeout"] <= 0:
        raise Rejected("timeout", "Input should be greater than 0")
    if out["cache_key"] is not None and not _match(CACHE_KEY, out["cache_key"]):
        raise Rejected("cache_key", f"String should match pattern '{CACHE_KEY}'")
    try:  # the model-wide rules, in the models' order
        out["platform"], out["platforms"] = platform_and_platforms(out["platform"], out["platforms"])
        check_pairs_total(out["build_args"], out["labels"])
    except ValueError as exc:
        raise Rejected("request", str(exc)) from None
    return out


def _match(pattern: str, value: str) -> bool:
    """pydantic's `pattern`: its `$` is the very end (Python's also matches before a last newline)."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def _checked(out: dict[str, Any], name: str, rule: Any) -> None:
    try:
        out[name] = rule(out[name])
    except ValueError as exc:
        raise Rejected(name, str(exc)) from None


_STR, _OPT_STR, _BOOL, _OPT_POS_INT, _STRS, _PAIRS = range(6)
_TYPES = {"id": _STR, "dockerfile": _STR, "tags": _STRS, "build_args": _PAIRS, "secret_build_args": _STRS,
          "secrets": _STRS, "target": _OPT_STR, "labels": _PAIRS, "platform": _OPT_STR, "platforms": _STRS,
          "no_cache": _BOOL, "reuse": _BOOL, "executor": _OPT_STR, "builder": _OPT_STR, "timeout": _OPT_POS_INT, "push": _BOOL,
          "cache_key": _OPT_STR}


def _typed(out: Mapping[str, Any]) -> None:
    """NeedsModels unless every value has exactly its plain type (the models would coerce some)."""
    for name, kind in _TYPES.items():
        value = out[name]
        plain = (
            (kind == _STR and type(value) is str)
            or (kind == _OPT_STR and (value is None or type(value) is str))
            or (kind == _BOOL and type(value) is bool)
            or (kind == _OPT_POS_INT and (value is None or type(value) is int))
            or (kind == _STRS and type(value) is list and all(type(v) is str for v in value))
            or (kind == _PAIRS and type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items()))
        )
        if not plain:
            raise NeedsModels(f"{name}: not of its plain type")


def redacted(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request safe to store and show (BuildRequest.redacted of an upload's request)."""
    return {**request, "build_args": redacted_args(request["build_args"], request["secret_build_args"])}


def secret_arg_values(request: Mapping[str, Any]) -> dict[str, str]:
    return {name: request["build_args"][name] for name in request["secret_build_args"]}


def queued_record(request: Mapping[str, Any], executor: str, queue: str, statuses: bool,
                  submitted_by: str | None = None, created_at: datetime | None = None) -> dict[str, Any]:
    """jobstate.admitted's record as JSON (JobRecord's fields in its order): `request` as stored (redacted)."""
    return {
        "id": request["id"], "request": dict(request), "status": Status.queued.value, "executor": executor,
        "queue": queue, "worker": None, "images": [], "error": None, "attempts": 0,
        "created_at": json_time(created_at or datetime.now(UTC)), "queued_at": None, "started_at": None,
        "finished_at": None, "cancel_requested": False, "inputs": None, "attestation": None,
        "reused_from": None, "submitted_by": submitted_by, "statuses": statuses,
    }


def json_time(moment: datetime) -> str:
    """A UTC time as pydantic writes it in JSON (Z, not +00:00)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_text(record: Mapping[str, Any]) -> str:
    """The record's JSON as model_dump_json writes it: compact, UTF-8 (NeedsModels for text that
    is not)."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise NeedsModels("text that is not UTF-8") from None
    return text
