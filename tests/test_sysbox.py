"""sysbox executor: the dind executor under sysbox-runc, never privileged.

sysbox-runc cannot be installed on these machines, so the spec is pinned without an engine,
check() and run() are shown to refuse clearly on the real engine here, and the end-to-end
build runs only where the runtime exists (it skips, naming sysbox-runc, elsewhere)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from executors.dind.config import SysboxConfig
from executors.dind.sidecar import container_spec
from executors.dind.sysbox import SysboxExecutor
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.jobs import BuildRequest
from runner.core.labels import LABEL_JOB
from tests.conftest import registry_digest
from tests.support import dind as dind_support
from tests.support import executor_for
from tests.support import sysbox as support
from tests.support.dind import Sink, build_context, leftovers


def test_spec_uses_sysbox_runc_never_privileged_and_no_host_socket():
    for config in (SysboxConfig(), SysboxConfig(privileged=True)):
        spec = container_spec(config, [], name="runner-sysbox-abc", labels={LABEL_JOB: "j"},
                              directory=Path("/run/x/runner-sysbox-abc"), data_volume="runner-sysbox-abc", network=None,
                              force_unprivileged=SysboxExecutor.force_unprivileged)
        host = spec["host_config"]
        assert host["runtime"] == "sysbox-runc"
        assert host["privileged"] is False
        assert "cap_add" not in host and "security_opt" not in host
        assert "/sys/fs/cgroup" not in host["binds"]  # sysbox virtualises cgroups itself
        assert not any("docker.sock" in source for source in host["binds"])
        assert spec["command"][1] == "--host=unix:///run/runner/docker.sock"


@pytest.fixture
def sockdir():
    path = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def executor(services, sockdir) -> SysboxExecutor:
    return executor_for(dind_support.settings(services, sockdir, executor="sysbox"), "sysbox", f"test-{uuid.uuid4().hex[:6]}")


def test_check_and_run_refuse_clearly_without_sysbox_runc(services, sockdir, tmp_path):
    if support.skip_reason() is None:
        pytest.skip("sysbox-runc is installed here; the refusal path cannot be shown")
    ex = executor(services, sockdir)
    result = ex.check()
    assert not result.ok
    assert "no sysbox-runc runtime" in result.summary and "install sysbox-runc" in result.summary
    job = BuildRequest(tags=[f"{services['RUNNER_DEV_REGISTRY_NAME']}/test-sysbox/refused:1"])
    with pytest.raises(InfrastructureError) as caught:
        try:
            ex.run(job, build_context(tmp_path, f"FROM {dind_support.base_image(services)}\n"), Sink(), CancelToken())
        finally:
            ex.cleanup(job.id)
    assert "sysbox-runc" in caught.value.message
    assert leftovers(f"{LABEL_JOB}={job.id}") == {}


@pytest.mark.skipif(support.skip_reason() is not None, reason=support.skip_reason() or "")
def test_sysbox_builds_pushes_and_removes_its_sidecar(services, sockdir, tmp_path):
    ex = executor(services, sockdir)
    assert ex.check().ok
    image = f"{services['RUNNER_DEV_REGISTRY_NAME']}/test-sysbox/ok:{uuid.uuid4().hex[:10]}"
    job = BuildRequest(tags=[image])
    try:
        [pushed] = ex.run(job, build_context(tmp_path, f"FROM {dind_support.base_image(services)}\nRUN echo sysbox > /s\n"),
                          Sink(), CancelToken())
    finally:
        ex.cleanup(job.id)
    assert pushed.digest == registry_digest(services, image)
    assert leftovers(f"{LABEL_JOB}={job.id}") == {}
