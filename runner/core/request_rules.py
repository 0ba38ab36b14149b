"""The rules a build request's own fields follow, with the standard library only: the models
(runner.core.jobs.BuildRequest's validators) apply them, and so does the CLI's light path
(runner.core.plain_request), so each rule and its message is written once. Each check raises
ValueError saying what is wrong, as a validator does. Pure: no I/O."""

from __future__ import annotations

import posixpath
import re

from runner.core.platforms import canonical, parse_platform

# Docker's reference grammar (distribution/reference), restricted to what we push:
# REGISTRY/PATH:TAG or REGISTRY/PATH@sha256:... with an explicit registry host.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
IMAGE_REF = re.compile(rf"^(?P<registry>{_DOMAIN})/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?$")
#: One id rule that works everywhere an id goes: Redis keys, directory names, and image
#: repository names on engine executors (`runner-job/<id>:build`), so Docker's path-component
#: grammar: lower-case letters and digits, separated by one `.` or `_`, `__`, or dashes.
JOB_ID = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
MAX_JOB_ID = 128
MAX_BUILD_ARG_BYTES = 64 * 1024
#: build args and labels together; they travel in one request line to an engine (its cap is
#: 1 MB after URL-encoding, which can triple a value) and in argv to buildah and img
MAX_BUILD_ARGS_TOTAL_BYTES = 256 * 1024
#: a bound on what a message may carry; the config's limits.max_platforms (default 4) is the real cap
MAX_PLATFORMS_FIELD = 64
#: a build arg's or label's name
PAIR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,255}")
CACHE_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MAX_TARGET = 255
MAX_PLATFORM = 100
BUILDERS = ("auto", "buildkit", "classic")


def check_job_id(value: str) -> str:
    if len(value) > MAX_JOB_ID or not JOB_ID.match(value):
        raise ValueError(f"{value[:140]!r} is not a valid job id: use lower-case letters and digits separated by "
                         "`.`, `_`, `__` or dashes (at most 128 characters), e.g. release-1.2")
    return value


def inside_context(path: str, allow_empty: bool = False) -> str:
    """Normalise a relative path and refuse one that leaves the build context."""
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    if not path:
        if allow_empty:
            return ""
        raise ValueError("path is empty")
    if path.startswith("/"):
        raise ValueError(f"{path!r} is absolute; give a path inside the build context")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"{path!r} leaves the build context")
    return "" if normal == "." else normal


def parse_image_ref(ref: str) -> tuple[str, str, str]:
    """(registry, repository, tag) of a full image reference; `latest` when it names no tag."""
    match = IMAGE_REF.match(ref)
    if not match or len(ref) > 255:
        raise ValueError(
            f"{ref!r} is not a full image reference; expected REGISTRY/NAME[:TAG], "
            "for example 127.0.0.1:5000/team/app:1.0"
        )
    registry = match["registry"]
    if "." not in registry and ":" not in registry and registry != "localhost":
        raise ValueError(f"{ref!r} does not start with a registry host (like registry.example.com/ or 127.0.0.1:5000/)")
    return registry, match["path"], match["tag"] or "latest"


def check_tags(tags: list[str]) -> list[str]:
    for ref in tags:
        parse_image_ref(ref)
    if len(set(tags)) != len(tags):
        raise ValueError("the same tag is listed twice")
    return tags


def check_pairs(pairs: dict[str, str]) -> dict[str, str]:
    """Build args or labels: valid names, each value bounded."""
    for key, value in pairs.items():
        if not PAIR_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid name")
        if len(value.encode()) > MAX_BUILD_ARG_BYTES:
            raise ValueError(f"the value of {key!r} is over {MAX_BUILD_ARG_BYTES} bytes")
    return pairs


def check_secret_args(names: list[str], build_args: dict[str, str]) -> list[str]:
    missing = [name for name in names if name not in build_args]
    if missing:
        raise ValueError(f"names {missing} which are not in build_args")
    return names


def one_platform(value: str) -> str:
    if "," in value:
        raise ValueError(f"{value[:100]!r} names several platforms: list them in `platforms`")
    return str(parse_platform(value))


def canonical_platforms(values: list[str]) -> list[str]:
    return canonical(values)


def platform_and_platforms(platform: str | None, platforms: list[str]) -> tuple[str | None, list[str]]:
    """`platform` (one) and `platforms` say the same thing: a request may give either, and the
    stored one has both (`platform` set only for a single-platform job)."""
    if platform is not None and platforms and platforms != [platform]:
        raise ValueError(f"platform {platform!r} and platforms {platforms} disagree: give one of them")
    if platform is not None and not platforms:
        platforms = [platform]
    return (platforms[0] if len(platforms) == 1 else None), platforms


def check_pairs_total(build_args: dict[str, str], labels: dict[str, str]) -> None:
    total = sum(len(k.encode()) + len(v.encode()) for pairs in (build_args, labels) for k, v in pairs.items())
    if total > MAX_BUILD_ARGS_TOTAL_BYTES:
        raise ValueError(f"build_args and labels hold {total:,} bytes together, over the limit of "
                         f"{MAX_BUILD_ARGS_TOTAL_BYTES:,}; pass large values as build secrets or files in the context")


def redacted_args(build_args: dict[str, str], secret_names: list[str]) -> dict[str, str]:
    """Build args safe to store and show: secret values replaced."""
    return {k: ("***" if k in secret_names else v) for k, v in build_args.items()}
