"""JobLog's burst batching against real Redis: lines that come close together (a builder
printing line by line) go out in few round trips, a line after a quiet spell at once, and every
line arrives in order."""

from __future__ import annotations

import time

import pytest

from runner.store.joblog import LINGER, JobLog
from runner.store.jobstore import JobStore


class CountingStore(JobStore):
    appends = 0

    def append_log(self, job_id, entries):
        self.appends += 1
        return super().append_log(job_id, entries)


@pytest.fixture
def store(new_store):
    return new_store(CountingStore)


def test_lines_a_millisecond_apart_go_out_in_few_round_trips(store):
    log = JobLog(store, "burst")
    for n in range(300):  # ~0.3 s of lines, 1 ms apart: about 0.3 / LINGER batches
        log.line(f"line {n}")
        time.sleep(0.001)
    log.close()
    assert list(store.read_log("burst")) == [f"line {n}" for n in range(300)]
    assert store.appends <= 3 * (0.3 / LINGER) + 5, store.appends  # one round trip per line before


def test_a_line_after_a_quiet_spell_goes_out_at_once(store):
    log = JobLog(store, "quiet")
    log.line("first")
    assert list(store.read_log("quiet")) == ["first"]
    time.sleep(LINGER * 2)
    log.line("after a pause")
    assert list(store.read_log("quiet")) == ["first", "after a pause"]
    log.close()
