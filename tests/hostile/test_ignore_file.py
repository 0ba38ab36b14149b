"""Hostile `.dockerignore` files against a real worker (venv Python and Debian's python3), one
build slot, its /healthz asked every 0.2 s throughout: a pattern that made a backtracking
matcher run for hours, a 39,000-pattern file, and a file whose matching outlasts the job's
timeout. Each job ends by its timeout at the latest, the worker answers all along, and the job
queued behind it builds. Then the caps on the ignore file (limits.max_ignore_file_bytes,
limits.max_ignore_patterns), on the worker and in `runner submit`. Timings are measured by
bench/bench_hostile.py, not asserted here."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from runner.config.settings import LimitsConfig
from tests.conftest import RunnerHarness, cleanup_namespace, new_harness, registry_digest, run_image, wait_cleaned
from tests.hostile.context_support import free_port, post_raw, wait_finished, wait_status
from tests.hostile.context_tars import file, tar_of
from tests.hostile.ignore_files import DEEP_PATH, NESTED_DOUBLESTAR, flip_flop, many_patterns, member_paths

PROBE_TIMEOUT = 5.0  # a frozen worker (the GIL held for minutes) misses it by far
SLACK = 60.0  # clean-up after a timeout, on a loaded machine


class HealthWatch(threading.Thread):
    """Asks GET /healthz every 0.2 s until stopped, keeping what went wrong."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped = url, threading.Event()
        self.answered, self.failures = 0, []

    def run(self) -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT) as client:
            while True:
                try:
                    status = client.get(self.url).status_code
                    if status == 200:
                        self.answered += 1
                    else:
                        self.failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__} at {time.strftime('%X')}")
                if self.stopped.wait(0.2):
                    return

    def __enter__(self) -> HealthWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join()
        assert self.answered > 0 and self.failures == [], f"/healthz: {self.answered} answers, failures {self.failures}"


@pytest.fixture(scope="module")
def slot(services, tmp_path_factory, worker_runner) -> Iterator[tuple[RunnerHarness, str]]:
    """A worker with one build slot and its health server on loopback; (harness, /healthz URL)."""
    port = free_port()
    harness = new_harness(services, tmp_path_factory,
                          worker={"concurrency": 1, "metrics_port": port, "metrics_host": "127.0.0.1"})
    harness.worker_proc = harness.start_worker("--queues", harness.settings.queue_for("socket"), runner=worker_runner)
    try:
        yield harness, f"http://127.0.0.1:{port}/healthz"
    finally:
        harness.stop_worker(harness.worker_proc)
        cleanup_namespace(harness)


def job(harness: RunnerHarness, name: str, timeout: int) -> dict:
    return {"id": f"{name}-{uuid.uuid4().hex[:12]}", "executor": "socket", "timeout": timeout,
            "tags": [f"{harness.registry()}/ignore/{name}:{uuid.uuid4().hex[:8]}"]}


def context_tar(dockerfile: str, ignore: bytes, paths: list[str], extra: dict[str, bytes] | None = None) -> bytes:
    members = [file("Dockerfile", dockerfile.encode()), file(".dockerignore", ignore)]
    members += [file(path, b"x\n") for path in paths]
    members += [file(path, data) for path, data in (extra or {}).items()]
    return tar_of(members)


def seconds_run(record: dict) -> float:
    started, finished = (datetime.fromisoformat(record[key].replace("Z", "+00:00")) for key in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def next_job_builds(harness: RunnerHarness, services, name: str = "next") -> dict:
    """Queued behind the hostile one (one slot): built and pushed once the slot is free."""
    posted = job(harness, name, timeout=600)
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\nRUN cat /ctx/ok.txt\n"
    post_raw(harness.store, posted, harness.settings.queue_for("socket"), [context_tar(dockerfile, b"*.tmp\n", [], {"ok.txt": b"fine\n"})])
    return posted


def test_nested_doublestar_ignore_file_leaves_the_worker_answering(slot, services):
    """The issue's ReDoS: `a/**/**/…/**/z` (17 × `**/`) and one 20-level path froze the
    worker (GIL held by a backtracking regexp: /healthz, the timeout, cancel and the lease all
    stopped). Now the job builds, with the answers Docker gives, well within its timeout."""
    harness, healthz = slot
    timeout = 30
    posted = job(harness, "nested", timeout)
    dockerfile = (f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\n"
                  f"RUN test -f /ctx/{DEEP_PATH} && test -f /ctx/a/keep && test ! -e /ctx/a/z && test ! -e /ctx/a/d0/d1/z\n")
    with HealthWatch(healthz):
        post_raw(harness.store, posted, harness.settings.queue_for("socket"),
                 [context_tar(dockerfile, NESTED_DOUBLESTAR, [DEEP_PATH, "a/keep", "a/z", "a/d0/d1/z", "x.tmp"])])
        behind = next_job_builds(harness, services)
        record = wait_finished(harness.store, posted["id"], timeout=timeout + SLACK)
        assert record["status"] == "succeeded", record
        assert seconds_run(record) <= timeout
        after = wait_finished(harness.store, behind["id"], timeout=300)
    assert after["status"] == "succeeded", after
    assert after["images"][0]["digest"] == registry_digest(services, behind["tags"][0])
    assert harness.worker_proc.poll() is None


def test_39000_pattern_ignore_file_is_matched_within_the_timeout(slot, services):
    """The issue's second file (~1 MiB, 39,000 patterns): it held a slot 160 s past a 30 s
    timeout. Now it is matched member by member through the index, and the build sees what
    Docker's rules leave (the last two lines: `leave-out/*.bin`, `!leave-out/keep.bin`)."""
    harness, healthz = slot
    timeout = 30
    ignore = many_patterns(39_000)
    assert len(ignore) <= LimitsConfig().max_ignore_file_bytes
    posted = job(harness, "many", timeout)
    dockerfile = (f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\n"
                  "RUN test -f /ctx/leave-out/keep.bin && test ! -e /ctx/leave-out/drop.bin && test -f /ctx/src/components/module7/lib0/file7.c\n")
    with HealthWatch(healthz):
        post_raw(harness.store, posted, harness.settings.queue_for("socket"),
                 [context_tar(dockerfile, ignore, [*member_paths(2000), "leave-out/keep.bin", "leave-out/drop.bin"])])
        record = wait_finished(harness.store, posted["id"], timeout=timeout + SLACK)
    assert record["status"] == "succeeded", record
    assert seconds_run(record) <= timeout
    assert run_image(posted["tags"][0], "ls", "/ctx/leave-out").split() == ["keep.bin"]


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_matching_that_outlasts_the_job_is_stopped(slot, services, how):
    """50,000 patterns that all match everything (`**`, `!**` in turn: within the default
    caps) on 5,000 members is minutes of matching: the per-member loop honours the job's
    timeout and a cancel, the worker answers meanwhile, and builds the next job."""
    harness, healthz = slot
    timeout = 8 if how == "timeout" else 600
    posted = job(harness, f"slow-{how}", timeout)
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\n"
    with HealthWatch(healthz):
        post_raw(harness.store, posted, harness.settings.queue_for("socket"),
                 [context_tar(dockerfile, flip_flop(50_000), member_paths(5000))])
        if how == "cancel":
            wait_status(harness.store, posted["id"], "running")
            time.sleep(1)  # inside the matching by now
            assert harness.cli("cancel", posted["id"]).returncode == 0
        record = wait_finished(harness.store, posted["id"], timeout=timeout + SLACK)
        assert record["status"] == ("timed_out" if how == "timeout" else "cancelled"), record
        log = harness.cli("logs", posted["id"]).stdout
        assert "[runner] context:" not in log  # stopped while the context was being matched
        behind = next_job_builds(harness, services, f"after-{how}")
        after = wait_finished(harness.store, behind["id"], timeout=300)
    assert after["status"] == "succeeded", after
    wait_cleaned(harness, posted["id"])
    assert not (harness.settings.worker.workspace / posted["id"]).exists()


@pytest.mark.parametrize("ignore, words", [
    (b"a\n" * 50_001, "holds 50,001 patterns, over the limit of 50,000 (limits.max_ignore_patterns)"),
    (b"# padding\n" * 104_858, "is 1,048,580 bytes, over the limit of 1,048,576 bytes (limits.max_ignore_file_bytes)"),
])
def test_ignore_file_over_the_caps_is_refused_on_the_worker(slot, services, ignore, words):
    harness, healthz = slot
    posted = job(harness, "caps", 600)
    with HealthWatch(healthz):
        post_raw(harness.store, posted, harness.settings.queue_for("socket"), [context_tar("FROM scratch\n", ignore, ["f"])])
        record = wait_finished(harness.store, posted["id"], timeout=120)
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record
    assert record["error"]["message"] == f".dockerignore: {words}"


# -- the CLI packs nothing past the caps ------------------------------------------------------------
@pytest.mark.parametrize("through", ["redis", "api"])
def test_runner_submit_refuses_an_ignore_file_over_the_caps_before_packing(make_harness, tmp_path, through):
    """The issue: `runner submit` with a 100,000-line ignore file ran > 300 s at 155 MiB. Now
    exit 2 naming the limit; nothing stored or queued (through --api, nothing is even sent:
    the API address here has no server)."""
    harness = make_harness(limits={"max_ignore_patterns": 1000})
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (ctx / ".dockerignore").write_bytes(b"".join(b"d%d/*\n" % n for n in range(100_000)))  # 0.8 MB
    api = ["--api", f"http://127.0.0.1:{free_port()}"] if through == "api" else []
    result = harness.cli("submit", str(ctx), "-t", f"{harness.registry()}/ignore/cli:1", *api, timeout=120)
    assert result.returncode == 2, result.stderr
    assert ".dockerignore: holds 100,000 patterns, over the limit of 1,000 (limits.max_ignore_patterns)" in result.stderr
    assert "Traceback" not in result.stderr
    store = harness.store
    assert store.r.zcard(f"{store.ns}:jobs") == 0 and not list(store.raw.scan_iter(f"{store.ns}:ctx:*"))
    (ctx / ".dockerignore").write_bytes(b"x" * (LimitsConfig().max_ignore_file_bytes + 1))
    big = make_harness().cli("submit", str(ctx), "-t", f"{harness.registry()}/ignore/cli:1", *api, timeout=120)
    assert big.returncode == 2 and "(limits.max_ignore_file_bytes)" in big.stderr, big.stderr

