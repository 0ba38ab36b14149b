"""A worker killed (SIGKILL) between each pair of steps of a job's end still gets the job its
final commit status exactly once, and its callback, through a second worker: the end's record,
closing line, end marker and deliveries are written in one transaction (JobStore.end), so no
moment leaves a finished record whose final status nobody owes.

Real `runner worker` processes, the fake executor (tests/plugins/fake), a fake GitHub status
API and a callback receiver on loopback (tests/test_statuses.py, tests/test_callbacks.py). The
first worker dies at a fault point (RUNNER_TEST_FAULT=after:STEP, runner/worker/faults.py)."""

from __future__ import annotations

import json
import time

import pytest

from runner.core.jobs import Status
from runner.store.jobstore import END_FIELD
from tests.conftest import cleanup_namespace
from tests.test_callbacks import LOOPBACK, STANDARD_SECRET, receiver  # noqa: F401 - the receiver fixture
from tests.test_statuses import TOKENS, FakeHost, queue_job, serve, statuses_harness, wait_delivered, wait_finished

#: the steps of a job's end on a worker, in order (runner/worker/faults.py)
STEPS = ["result", "end", "told", "cleanup", "release"]


@pytest.fixture(scope="module")
def hosts():
    made = {kind: FakeHost(kind, TOKENS[kind], {repo}) for kind, repo in
            (("github", "acme/app"), ("gitlab", "platform/app"), ("gitea", "tools/app"))}
    servers = [serve(host) for host in made.values()]
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("step", STEPS)
def test_a_worker_killed_at_any_step_of_a_jobs_end_still_sends_the_final_status_once(step, services, tmp_path_factory,
                                                                                    hosts, receiver):  # noqa: F811
    h = statuses_harness(services, tmp_path_factory, hosts, worker={"recover_interval": 0.5, "lease_ttl": 3.0},
                         deliveries={"recover_after": 1.0},
                         callbacks={"secret": STANDARD_SECRET, "timeout": 2.0, "backoff": 0.2, **LOOPBACK})
    second = None
    try:
        rec = receiver(STANDARD_SECRET)
        first = h.start_worker(prefix=("env", f"RUNNER_TEST_FAULT=after:{step}"))  # env execs: the pid is the worker's
        request = queue_job(h, "github", callback_url=rec.url)
        assert first.wait(60) == -9, f"the worker was not killed after {step}"
        second = h.start_worker()
        record = wait_finished(h, request.id, 90)
        deliveries = wait_delivered(h, request.id, 90)
        host, sha = hosts["github"], request.source.sha

        assert record.status is Status.succeeded
        assert deliveries[f"{request.id}:status:finished"]["state"] == "delivered"
        assert deliveries[f"{request.id}:callback:finished"]["state"] == "delivered"
        assert host.states(sha)[-1] == "success"
        assert [p.answer for p in host.posts if sha in p.path and p.body.get("state") == "success"] == [201], \
            "the final status reaches the host exactly once"
        ends = [fields for _, fields in h.store.r.xrange(h.store.log_key(request.id)) if END_FIELD in fields]
        assert ends == [{END_FIELD: "succeeded"}], "one end"
        calls = [(headers["webhook-id"], json.loads(body)["status"]) for _, headers, body, ok in rec.calls if ok]
        time.sleep(0.5)
        assert calls and set(calls) == {(calls[0][0], "succeeded")}, "the callback: one delivery, one webhook-id"
    finally:
        if second is not None:
            h.stop_worker(second)
        cleanup_namespace(h)
