"""The push retry rule every executor uses (executors/push_retry.py), on attempts that fail as
a registry's trouble reaches the executors (InfrastructureError, RegistryAuthFailed). The real
outages, on real registries and executors: tests/test_push_outage.py."""

from __future__ import annotations

import threading

import pytest

from executors.push_retry import delay_before, push_with_retries
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, InfrastructureError, RegistryAuthFailed
from runner.core.jobs import ImageRef
from runner.core.registry_config import RegistryConfig
from tests.support import ListLog

REF = ImageRef.parse("127.0.0.1:5999/app:1")


class Attempts:
    """Fails with the errors given, one per call, then returns "pushed"."""

    def __init__(self, *errors: Exception):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "pushed"


def run(attempt, window: float, cancel: CancelToken | None = None, failed=None) -> tuple[ListLog, list[int]]:
    log, retried = ListLog(), []
    result = push_with_retries(REF, attempt, RegistryConfig(host=REF.registry, push_retry_seconds=window), log,
                               cancel or CancelToken(), lambda: retried.append(1), failed)
    assert result == "pushed"
    return log, retried


def test_backoff_doubles_from_one_second_to_ten():
    assert [delay_before(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_a_failure_is_retried_logged_and_counted_until_the_push_succeeds():
    attempt = Attempts(InfrastructureError("connection refused"))
    log, retried = run(attempt, window=90)
    assert attempt.calls == 2 and retried == [1]
    assert log.lines == [f"[runner] push of {REF} failed (connection refused); attempt 2 in 1 s "
                         "(retrying up to 90 s after the first failure)"]


def test_retries_stop_when_the_next_would_start_past_the_window():
    attempt = Attempts(*[InfrastructureError("502 Bad Gateway")] * 5)
    with pytest.raises(InfrastructureError, match=r"failed after 2 attempt\(s\) \(retried for \d+ s, "
                                                  r"registries\[127.0.0.1:5999\]\.push_retry_seconds is 2\.5\): 502"):
        run(attempt, window=2.5)  # attempts at 0 and 1 s; the next would wait 2 s more
    assert attempt.calls == 2
    attempt = Attempts(InfrastructureError("502 Bad Gateway"))
    with pytest.raises(InfrastructureError, match=r"after 1 attempt\(s\)"):
        run(attempt, window=0)


def test_refusals_are_final_at_once():
    attempt = Attempts(RegistryAuthFailed("unauthorized: authentication required"))
    with pytest.raises(RegistryAuthFailed):
        run(attempt, window=90)
    attempt = Attempts(InfrastructureError("manifest invalid: manifest invalid"))
    with pytest.raises(InfrastructureError, match="the registry refused it"):
        run(attempt, window=90)
    assert attempt.calls == 1


def test_a_first_attempt_made_elsewhere_counts():
    """buildah pushes the first tag from the build's own process: its failure starts the retries."""
    attempt = Attempts()
    log, retried = run(attempt, window=90, failed=InfrastructureError("connection reset by peer"))
    assert attempt.calls == 1 and retried == [1] and "attempt 2 in 1 s" in log.text


def test_a_cancel_ends_the_wait():
    cancel = CancelToken()
    attempt = Attempts(*[InfrastructureError("connection refused")] * 5)
    threading.Timer(0.2, cancel.set, args=("timeout",)).start()
    with pytest.raises(Cancelled) as caught:
        run(attempt, window=90, cancel=cancel)
    assert caught.value.kind == "timeout" and attempt.calls == 1
