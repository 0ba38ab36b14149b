"""Issue 13 §5: many workers, one queue. Two `runner worker` processes with separate storage
(workspace, buildah storage root: two "hosts"), one `runner serve`, jobs sent through the API.
Each job is built exactly once, the jobs spread over both workers, the two /metrics endpoints
sum to the number of jobs, and a worker SIGTERMed mid-way drains (its running jobs finish,
it takes no new one, /readyz is 503) while the other takes the rest.

Most jobs run on the fake executor (tests/plugins/fake: a build that sleeps); one real buildah
build goes through the same fleet. bench/bench_fleet.py does this with real builds only."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import RunnerHarness, registry_digest
from tests.support.fleet import API, ApiClient, Serve, free_port, metrics_config, sample, scrape, start_serve, status, wait_for

JOBS = 40
BUILDAH_ROOTS = Path("/var/tmp/runner-test-fleet")


@dataclass
class Host:
    """One worker "host": its config (own workspace, buildah storage, metrics port) and process."""

    harness: RunnerHarness
    metrics: str

    @property
    def proc(self):
        return self.harness.worker_proc

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"

    def jobs_total(self, executor: str = "fake") -> float:
        return sample(scrape(f"{self.metrics}/metrics"), "runner_jobs_total", executor=executor, status="succeeded")


@dataclass
class Fleet:
    hosts: list[Host]
    serve: Serve
    api: ApiClient
    queues: list[str]

    def wait_all(self, ids: list[str], timeout: float = 240) -> dict[str, dict]:
        def done():
            records = {job_id: self.api.record(job_id) for job_id in ids}
            return records if all(r["status"] not in ("queued", "running") for r in records.values()) else None

        return wait_for(done, timeout, f"{len(ids)} jobs to finish", every=0.5)


@pytest.fixture
def fleet(make_harness, services, tmp_path_factory):
    port = free_port()
    executors = {"fake": {"enabled": True}}
    buildah = shutil.which("buildah") is not None
    roots = BUILDAH_ROOTS / uuid.uuid4().hex[:8]
    if buildah:
        executors["buildah"] = {"enabled": True, "storage_root": str(roots / "a" / "root"), "run_root": str(roots / "a" / "run")}
    first = make_harness(default_executor="fake", executors=executors, api=API, worker=metrics_config(port))
    namespace = first.config["worker"]["namespace"]
    # the second "host": the same namespace (one queue per executor), its own everything else
    config = copy.deepcopy(first.config)
    second_port = free_port()
    workdir = tmp_path_factory.mktemp("second-host")
    config["worker"].update(workspace=str(workdir / "work"), **metrics_config(second_port))
    if buildah:
        config["executors"]["buildah"].update(storage_root=str(roots / "b" / "root"), run_root=str(roots / "b" / "run"))
    second = RunnerHarness(services, workdir, config)
    queues = [f"{namespace}.fake"] + ([f"{namespace}.buildah"] if buildah else [])
    hosts = [Host(first, f"http://127.0.0.1:{port}"), Host(second, f"http://127.0.0.1:{second_port}")]
    serve = None
    try:
        for host in hosts:
            host.harness.worker_proc = host.harness.start_worker("--queues", ",".join(queues))
        serve = start_serve(first)
        api = ApiClient(serve.url)
        wait_for(lambda: sample(scrape(f"{serve.url}/metrics"), "runner_workers", executor="fake") == 2, 20,
                 "both workers to count as live")
        yield Fleet(hosts, serve, api, queues)
        api.close()
    finally:
        if serve is not None:
            serve.stop()
        if second.worker_proc is not None:
            second.stop_worker(second.worker_proc)
        shutil.rmtree(roots, ignore_errors=True)


def fake_job(registry: str, seconds: float) -> dict:
    return {"tags": [f"{registry}/fleet/fake:{uuid.uuid4().hex[:8]}"], "executor": "fake",
            "build_args": {"FAKE_SLEEP": str(seconds)}}


def built_once(fleet: Fleet, records: dict[str, dict]) -> None:
    for job_id, record in records.items():
        assert record["status"] == "succeeded", (job_id, record["error"])
        assert record["attempts"] == 1, (job_id, record["attempts"])
        assert fleet.api.log(job_id).count(f"[runner] job {job_id} running on ") == 1


def test_forty_jobs_spread_over_two_workers_each_built_once(fleet, services, tmp_path):
    registry = fleet.hosts[0].harness.registry()
    ids = [fleet.api.submit(fake_job(registry, 0.3)) for _ in range(JOBS)]
    real = None
    if any(q.endswith(".buildah") for q in fleet.queues):
        ref = f"{registry}/fleet/real:{uuid.uuid4().hex[:8]}"
        dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} > /fleet\n"
        real = fleet.api.submit({"tags": [ref], "executor": "buildah"}, {"Dockerfile": dockerfile})
    records = fleet.wait_all(ids + ([real] if real else []))
    built_once(fleet, records)

    by_worker = {host.worker_id: sum(1 for job_id in ids if records[job_id]["worker"] == host.worker_id) for host in fleet.hosts}
    assert sum(by_worker.values()) == JOBS and all(by_worker.values()), by_worker  # both took a share
    counted = [host.jobs_total() for host in fleet.hosts]
    assert sum(counted) == JOBS
    assert counted == [by_worker[host.worker_id] for host in fleet.hosts]  # each endpoint counts its own jobs
    if real:
        assert records[real]["images"][0]["digest"] == registry_digest(services, ref)
        assert sum(host.jobs_total("buildah") for host in fleet.hosts) == 1


def test_a_worker_sigtermed_mid_way_drains_while_the_other_takes_the_rest(fleet):
    keep, leave = fleet.hosts
    ids = [fleet.api.submit(fake_job(keep.harness.registry(), 0.5)) for _ in range(JOBS)]
    store = keep.harness.store

    def leaving_is_busy():
        running = [r for r in (store.get(job_id) for job_id in ids) if r.status.value == "running" and r.worker == leave.worker_id]
        finished = sum(1 for job_id in ids if store.get(job_id).finished)
        return running if finished >= 8 and running else None

    busy = wait_for(leaving_is_busy, 60, "the worker to leave to be running jobs mid-way")
    os.killpg(leave.proc.pid, signal.SIGTERM)
    sigterm = time.time()
    wait_for(lambda: status(f"{leave.metrics}/readyz") in (503, None), 2, "/readyz to turn 503 on SIGTERM", every=0.02)
    assert leave.proc.wait(30) == 0  # drained within shutdown_grace: its running jobs finished

    records = fleet.wait_all(ids)
    built_once(fleet, records)
    for record in busy:  # what it was running when SIGTERM came, it finished itself
        assert records[record.id]["worker"] == leave.worker_id
    started_after = [r for r in records.values() if r["started_at"] and _ts(r["started_at"]) > sigterm + 0.5]
    assert started_after and all(r["worker"] == keep.worker_id for r in started_after)
    on_keep = sum(1 for r in records.values() if r["worker"] == keep.worker_id)
    on_leave = sum(1 for r in records.values() if r["worker"] == leave.worker_id)
    assert on_keep + on_leave == JOBS and on_leave >= len(busy)
    assert keep.jobs_total() == on_keep
    wait_for(lambda: sample(scrape(f"{fleet.serve.url}/metrics"), "runner_workers", executor="fake") == 1, 5,
             "the stopped worker to leave the live list")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
