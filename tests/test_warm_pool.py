"""WarmPool's hand-off logic with stand-in sidecars (the pool takes factories, so no engine is
needed here; tests/test_dind.py covers it with real sidecars)."""

from __future__ import annotations

import threading
import time

from executors.dind.pool import WarmPool


class Stub:
    def __init__(self, name: str):
        self.name = name


def pool_with_slow_start(release: threading.Event, made: list[Stub]) -> WarmPool:
    def factory() -> Stub:
        release.wait(10)
        made.append(Stub(f"s{len(made)}"))
        return made[-1]
    return WarmPool(1, factory, lambda s: None, lambda s: True, "test")  # type: ignore[arg-type]


def test_a_job_arriving_while_the_pool_sidecar_starts_waits_for_it_instead_of_starting_its_own():
    release, made = threading.Event(), []
    pool = pool_with_slow_start(release, made)
    pool.start()
    try:
        time.sleep(0.1)  # the fill thread is inside the factory now
        threading.Timer(0.3, release.set).start()
        got = pool.take(wait=5)
        assert got is made[0]
    finally:
        pool.shutdown()


def test_without_wait_an_empty_pool_answers_none_at_once():
    release, made = threading.Event(), []
    pool = pool_with_slow_start(release, made)
    pool.start()
    try:
        time.sleep(0.1)
        assert pool.take() is None
    finally:
        release.set()
        pool.shutdown()


def test_a_waiting_job_gives_up_when_cancelled_or_when_the_wait_runs_out():
    release, made = threading.Event(), []
    pool = pool_with_slow_start(release, made)
    pool.start()
    try:
        time.sleep(0.1)
        assert pool.take(wait=0.3) is None
        cancelled = threading.Event()
        threading.Timer(0.2, cancelled.set).start()
        started = time.monotonic()
        assert pool.take(wait=30, cancelled=cancelled.is_set) is None
        assert time.monotonic() - started < 5
    finally:
        release.set()
        pool.shutdown()


def test_two_jobs_do_not_both_wait_for_one_starting_sidecar():
    """One sidecar starting, two jobs: the second one starts its own at once."""
    release, made = threading.Event(), []
    pool = pool_with_slow_start(release, made)
    pool.start()
    got: list[object] = []
    try:
        time.sleep(0.1)
        first = threading.Thread(target=lambda: got.append(pool.take(wait=10)))
        first.start()
        time.sleep(0.2)
        assert pool.take(wait=10) is None  # does not wait: the one starting is the first job's
        release.set()
        first.join(10)
        assert got == [made[0]]
    finally:
        release.set()
        pool.shutdown()
