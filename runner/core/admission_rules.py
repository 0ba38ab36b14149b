"""Admission's checks of a request against the config that need only plain values (how many
tags and platforms, which registries, which executors are on, the longest timeout, which build
secrets exist), with the standard library only. The worker's admission
(runner/worker/admission.py, admit) runs them with the values of the validated Settings; the
CLI's light path runs them with the same values read plainly (runner.config.client_plain), so
the client and the worker refuse the same requests with the same words. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runner.core.frozen import Frozen, field
from runner.core.request_rules import parse_image_ref

#: the defaults of limits.max_tags, limits.max_platforms, limits.max_timeout (LimitsConfig's)
MAX_TAGS, MAX_PLATFORMS, MAX_TIMEOUT = 32, 4, 4 * 3600


class Rejected(ValueError):
    """Invalid input; `field` names what was wrong. Nothing was queued."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class NeedsModels(Exception):
    """The light path cannot decide this one (a part of a request or of the config it does not
    read plainly): the models do, and refuse it with their own message if it is wrong."""


class AdmissionPolicy(Frozen):
    """What admission reads of the config, as plain values."""

    max_tags: int
    max_platforms: int
    max_timeout: int
    registries: tuple[str, ...]  # the hosts jobs may push to
    default_executor: str
    executors: Mapping[str, bool] = field(default_factory=dict)  # name -> enabled, for every executor the config has
    build_secrets: frozenset[str] = frozenset()

    def enabled_executors(self) -> list[str]:
        return sorted(name for name, enabled in self.executors.items() if enabled)


def check_admission(policy: AdmissionPolicy, tags: list[str], platforms: list[str], executor: str | None,
                    timeout: int | None, secrets: list[str], unlisted: Callable[[str], None]) -> str:
    """The executor the request runs on, or Rejected naming the field. `unlisted(name)` is asked
    about an executor the config has no section for: it raises (Rejected for an unknown name,
    NeedsModels) or returns (a known one: it is not enabled)."""
    if len(tags) > policy.max_tags:
        raise Rejected("tags", f"{len(tags)} tags is over the limit of {policy.max_tags} (limits.max_tags)")
    if len(platforms) > policy.max_platforms:
        raise Rejected("platforms", f"{len(platforms)} platforms ({', '.join(platforms)}) is over the limit "
                       f"of {policy.max_platforms} (limits.max_platforms)")
    for index, ref in enumerate(tags):
        registry = parse_image_ref(ref)[0]
        if registry not in policy.registries:
            raise Rejected(f"tags.{index}", f"registry {registry!r} is not allowed; configured registries: "
                           f"{', '.join(policy.registries) or 'none (add one under registries:)'}")
    name = executor or policy.default_executor
    enabled = policy.executors.get(name)
    if enabled is None:
        unlisted(name)
    if not enabled:
        raise Rejected("executor", f"executor {name!r} is not enabled; enabled: "
                       f"{', '.join(policy.enabled_executors()) or 'none'}")
    if timeout is not None and timeout > policy.max_timeout:
        raise Rejected("timeout", f"{timeout}s is over the maximum of {policy.max_timeout}s (limits.max_timeout)")
    unknown = [s for s in secrets if s not in policy.build_secrets]
    if unknown:
        raise Rejected("secrets", f"unknown build secret(s) {unknown}; configured: {sorted(policy.build_secrets)}")
    return name
