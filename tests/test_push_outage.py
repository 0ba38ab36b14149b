"""Pushes ride out a registry outage, on every executor. Each test runs its OWN
`docker-registry serve` (htpasswd auth, like the shared one, which is never stopped), seeded
with the base image; the registry goes away (SIGKILL) while a job pushes to it and comes back
OUTAGE seconds later on the same port and storage. The job must succeed, its log must show the
retries, and the registry (read with skopeo, not our code) must hold the digest the record names.

- buildah, on a real worker: the registry dies when the push's first blob upload reaches it
  (seen in the registry's own request log), so mid-push.
- socket (the engine push dind and sysbox share), on a real worker: the registry is down from
  the job's last build step on, so the push starts into the outage (the engine retries an
  interrupted blob upload itself, but not a registry it cannot reach at all).
- img cannot be installed here: a FAKE img (tests/test_img.py: its push is a skopeo copy)
  runs in the executor in-process, with the registry down when the push starts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from runner.core.cancel import CancelToken
from runner.core.jobs import BuildRequest
from runner.core.registry_config import RegistryConfig
from tests.support import ListLog, executor_for, start_registry, wait_for_registry
from tests.test_gitsource import free_port
from tests.test_img import FAKE_IMG, context_for, with_img
from tests.test_reliability import detach, log_of, wait_finished

OUTAGE = 15.0  # seconds the registry is away: more than buildah's own 3 × 2 s, less than push_retry_seconds


class OwnRegistry:
    """A docker-registry of this test's: started, killed and started again on one port and storage."""

    def __init__(self, root: Path, services: dict[str, str]):
        self.services = services
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = root / "registry.log"
        self.config = root / "registry.yml"
        htpasswd = Path(services["RUNNER_DEV_STATE"]) / "registry" / "htpasswd"
        self.config.write_text(f"""version: 0.1
log: {{level: info}}
storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}
http: {{addr: {self.host}}}
auth: {{htpasswd: {{realm: outage, path: {htpasswd}}}}}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def creds(self) -> str:
        return f"{self.services['RUNNER_DEV_REGISTRY_USER']}:{self.services['RUNNER_DEV_REGISTRY_PASSWORD']}"

    def start(self) -> None:
        self.proc = start_registry(self.config, self.log)
        wait_for_registry(self.host, self.proc, log=self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(20)

    def outage(self, seconds: float) -> None:
        self.kill()
        time.sleep(seconds)
        self.start()

    def seed(self, image: str, name: str) -> str:
        ref = f"{self.host}/{name}"
        subprocess.run(["skopeo", "copy", "-q", "--src-creds", self.creds, "--dest-creds", self.creds, "--src-tls-verify=false",
                        "--dest-tls-verify=false", f"docker://{image}", f"docker://{ref}"], check=True, capture_output=True,
                       timeout=120)
        return ref

    def digest(self, ref: str) -> str:
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", self.creds, "--format", "{{.Digest}}",
                              f"docker://{ref}"], capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def saw_upload(self, repository: str) -> bool:
        """A push of `repository` started its first blob upload (the request reached the registry)."""
        pattern = re.compile(rf"method=POST .*uri=/v2/{re.escape(repository)}/blobs/uploads/")
        return bool(pattern.search(self.log.read_text(errors="replace")))


@pytest.fixture
def own_registry(services, tmp_path):
    registry = OwnRegistry(tmp_path, services)
    registry.start()
    registry.base = registry.seed(services["RUNNER_DEV_BASE_IMAGE"], "base/busybox:1")
    yield registry
    if registry.proc is not None and registry.proc.poll() is None:
        registry.proc.terminate()
        registry.proc.wait(20)


def registries_for(services, registry: OwnRegistry) -> list[dict]:
    creds = {"username": services["RUNNER_DEV_REGISTRY_USER"], "password": services["RUNNER_DEV_REGISTRY_PASSWORD"]}
    return [{"host": services["RUNNER_DEV_REGISTRY"], **creds}, {"host": registry.host, **creds}]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("executor", ["buildah", "socket"])
def test_a_push_rides_out_a_registry_outage(make_harness, services, tmp_path, own_registry, executor):
    h = make_harness(registries=registries_for(services, own_registry))
    h.worker_proc = h.start_worker("--queues", h.settings.queue_for(executor))
    marker = f"outage-{uuid.uuid4().hex[:8]}"
    repository = f"outage/{executor}"
    ref = f"{own_registry.host}/{repository}:{marker}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # 16 MiB that does not compress: the push takes a while; the marker says the last step began
    (ctx / "Dockerfile").write_text(f"FROM {own_registry.base}\n"
                                    f"RUN echo {marker} && sleep 2 && head -c 16777216 /dev/urandom > /blob\n")
    job_id = detach(h, ctx, "--executor", executor, "-t", ref)
    if executor == "buildah":
        wait_until(lambda: own_registry.saw_upload(repository), 240, "the push's first blob upload")
    else:
        wait_until(lambda: marker in log_of(h, job_id), 240, "the last build step")
    own_registry.outage(OUTAGE)
    final = wait_finished(h, job_id, 240)
    log = log_of(h, job_id)
    assert final["status"] == "succeeded", (final["error"], log[-3000:])
    assert re.search(rf"\[runner\] push of {re.escape(ref)} failed \(.*\); attempt 2 in 1 s", log), log[-3000:]
    assert final["images"][0]["digest"] == own_registry.digest(ref)


def test_a_fake_img_push_rides_out_a_registry_outage(harness, services, tmp_path, own_registry):
    """img cannot be installed here: a FAKE img stands in (its push: skopeo copy of the base)."""
    script = tmp_path / "fake-img"
    script.write_text(FAKE_IMG.format(python=sys.executable, record=str(tmp_path / "calls.jsonl"), base=own_registry.base,
                                      multi_base=own_registry.base))  # a single-platform job: the base is pushed
    script.chmod(0o755)
    settings = with_img(harness.settings, binary=str(script), state_dir=tmp_path / "img-state")
    settings = settings.model_copy(update={"registries": [RegistryConfig(**r) for r in registries_for(services, own_registry)]})
    ref = f"{own_registry.host}/outage/img:{uuid.uuid4().hex[:8]}"
    job = BuildRequest(tags=[ref], executor="img")
    context = context_for(settings, job, tmp_path, "FROM scratch\n")
    own_registry.kill()
    back = threading.Timer(OUTAGE, own_registry.start)
    back.start()
    log = ListLog()
    executor = executor_for(settings, "img")
    try:
        pushed = executor.run(job, context, log, CancelToken())
    finally:
        back.join()
        executor.cleanup(job.id)
    assert re.search(rf"\[runner\] push of {re.escape(ref)} failed \(.*\); attempt 2 in 1 s", log.text), log.text
    assert pushed[0].digest == own_registry.digest(ref)
