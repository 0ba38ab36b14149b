"""The fast tier (tests/support/tiers.py) is what it says: every listed module still gives it
tests, none of them uses the services (Docker, the registry, buildah), nothing else is in it,
and the full run still collects every test, fast ones included. (This test collects the whole
suite, so it runs in the full run only.)"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT
from tests.support.tiers import FAST_MODULES


def collect(*args: str) -> tuple[list[str], str]:
    """The test ids pytest collects with `args`, and its summary line."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    return [line for line in lines if "::" in line], next(line for line in reversed(lines) if " collected" in line)


def test_the_fast_tier_is_the_listed_modules_without_their_service_tests():
    fast, _ = collect("--fast")
    modules = {test.partition("::")[0] for test in fast}
    assert modules == FAST_MODULES, f"listed but without a fast test: {sorted(FAST_MODULES - modules)}"
    assert len(fast) > 1000
    # tests of listed modules that start real workers or run Docker stay in the full run
    for full_only in ("tests/test_statuses.py::test_kill_9_mid_request_each_state_reaches_the_host_once",
                      "tests/test_plugin_executor.py::test_a_plugin_is_documented_validated_and_runs_jobs",
                      "tests/test_dockerignore_oracle.py::test_oracle_builds_what_the_walker_selects[case000]"):
        assert full_only not in fast
    # tests that need Redis alone are in it, on the tier's own redis-server
    for redis_only in ("tests/test_pipeline.py::test_cancel_while_running_stops_it_and_cleans_up",
                       "tests/test_statuses.py::test_a_late_pending_never_overwrites_success",
                       "tests/test_joblog.py::test_lines_a_millisecond_apart_go_out_in_few_round_trips"):
        assert redis_only in fast

    # the full run collects everything: the fast tests (marked `fast`) and the rest
    marked, summary = collect("-m", "fast")
    match = re.fullmatch(r"(\d+)/(\d+) tests collected \((\d+) deselected\).*", summary)
    assert match, summary
    chosen, everything, others = map(int, match.groups())
    assert set(marked) == set(fast) and chosen == len(fast) and everything == chosen + others and others > 0
