"""One push, tried again while the registry is in trouble: the same rule for every executor
(the engine's push through the Engine API, `buildah push`, `img push`).

A push that fails for a reason that may pass (the registry unreachable, a reset connection,
a 5xx, a push that reported success but left no tag) is tried again after 1 s, 2 s, 4 s, 8 s,
then every 10 s, for as long as the next attempt starts within the registry's
`push_retry_seconds` (90 s by default) of the first failure: so an outage of that length is
ridden out, and a registry that stays down fails the job that much later. Each retry is a
line in the job's log and counted (runner_push_retries_total). A refusal is final at once:
our credentials refused (kind `auth`), or the registry saying the image is wrong (an invalid
manifest, name or tag). A cancel or the job's timeout ends the wait at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.jobs import ImageRef
from runner.core.log_sink import LogSink
from runner.core.registry_config import RegistryConfig

T = TypeVar("T")

FIRST_DELAY = 1.0
MAX_DELAY = 10.0
#: the registry's answer that no retry can change (distribution's error codes, as tools print them)
REFUSALS = ("manifest invalid", "name invalid", "tag invalid", "digest invalid", "size invalid", "unsupported")


def delay_before(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, …): 1, 2, 4, 8, then 10 each."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** (retry - 1))


def is_refusal(message: str) -> bool:
    lower = message.lower()
    return any(words in lower for words in REFUSALS)


def push_with_retries(ref: ImageRef, attempt: Callable[[], T], registry: RegistryConfig, log: LogSink,
                      cancel: CancelToken, retried: Callable[[], None],
                      failed: InfrastructureError | None = None) -> T:
    """`attempt()` (one push of `ref`, raising InfrastructureError when it fails) until it
    succeeds or the retry window of the first failure closes. `failed`: the first attempt
    already ran elsewhere (buildah pushes from the build's own process) and failed so."""
    window = registry.push_retry_seconds
    first_failure: float | None = None
    attempts = 0
    while True:
        if failed is None:
            cancel.raise_if_set()
            attempts += 1
            try:
                return attempt()
            except InfrastructureError as exc:
                failed = exc
        else:
            attempts += 1
        cancel.raise_if_set()  # a push cut short by a cancel is the cancel, not a registry failure
        now = time.monotonic()
        first_failure = now if first_failure is None else first_failure
        delay = delay_before(attempts)
        elapsed = now - first_failure
        if is_refusal(failed.message) or elapsed + delay > window:
            why = "the registry refused it" if is_refusal(failed.message) else \
                f"retried for {elapsed:.0f} s, registries[{registry.host}].push_retry_seconds is {window:g}"
            raise InfrastructureError(f"push of {ref} failed after {attempts} attempt(s) ({why}): {failed.message}") from None
        log.line(f"[runner] push of {ref} failed ({failed.message}); attempt {attempts + 1} in {delay:g} s "
                 f"(retrying up to {window:g} s after the first failure)")
        retried()
        failed = None
        if cancel.wait(delay):
            cancel.raise_if_set()
