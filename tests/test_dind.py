"""dind executor: the container spec (pure), and on the real Docker Engine: removal after
success, failure, cancel and timeout; readiness failures; TLS; inner daemon options; the warm
pool; the per-repository cache (reuse, isolation, busy lock, eviction); the reaper.

The sidecars use the image from scripts/dind-image.sh and the capability profile these hosts
need (they refuse --privileged); the registry is reached by name through the host gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
import requests
from pydantic import ValidationError

from executors.dind import cache as dind_cache
from executors.dind import pool as dind_pool
from executors.dind.config import DindConfig, SysboxConfig
from executors.dind.executor import DindExecutor
from executors.dind.sidecar import bring_up, container_spec, daemon_args
from executors.engine.client import EngineClient
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, InfrastructureError
from runner.core.jobs import BuildRequest
from runner.core.labels import LABEL_EXECUTOR, LABEL_JOB, LABEL_NAMESPACE
from runner.core.registry_config import RegistryConfig
from tests.conftest import registry_digest
from tests.support import dind as support
from tests.support import executor_for
from tests.support.dind import Sink, build_context, docker_ids, leftovers

pytestmark = pytest.mark.skipif(support.skip_reason() is not None, reason=support.skip_reason() or "")
OWNER = dind_pool.process_owner()  # the owner label of pools this test process makes


# -- the container spec (no engine needed) --------------------------------------------------------
def spec_for(config: DindConfig, registries: list[RegistryConfig] | None = None, **kwargs) -> dict:
    args = {"name": "runner-dind-abc", "labels": {LABEL_JOB: "j1"}, "directory": Path("/run/x/runner-dind-abc"),
            "data_volume": "runner-dind-abc", "network": None, **kwargs}
    return container_spec(config, registries or [], **args)


def test_default_spec_is_privileged_on_a_unix_socket_without_the_host_socket():
    spec = spec_for(DindConfig())
    host = spec["host_config"]
    assert spec["image"] == "docker:dind"
    assert host["privileged"] is True
    assert spec["command"][:2] == ["dockerd", "--host=unix:///run/runner/docker.sock"]
    assert not any("tcp://" in arg for arg in spec["command"])
    assert host["binds"]["/run/x/runner-dind-abc/sock"] == {"bind": "/run/runner", "mode": "rw"}
    assert host["binds"]["runner-dind-abc"] == {"bind": "/var/lib/docker", "mode": "rw"}
    assert not any("docker.sock" in source for source in host["binds"])
    assert spec["labels"][LABEL_JOB] == "j1" and spec["labels"]["io.runner.dind.dir"] == "/run/x/runner-dind-abc"


def test_capability_profile_for_hosts_that_refuse_privileged():
    config = DindConfig(privileged=False, **{k: v for k, v in support.PROFILE.items() if k != "privileged"})
    spec = spec_for(config)
    host = spec["host_config"]
    assert host["privileged"] is False
    assert host["cap_add"] == ["ALL"] and host["cap_drop"] == ["SYS_RESOURCE"]
    assert host["security_opt"] == ["seccomp=unconfined", "apparmor=unconfined"]
    assert spec["host_config_raw"] == {"MaskedPaths": [], "ReadonlyPaths": []}  # systempaths=unconfined
    assert host["binds"]["/sys/fs/cgroup"] == {"bind": "/sys/fs/cgroup", "mode": "rw"}


def test_inner_daemon_options_come_from_config(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    registries = [RegistryConfig(host="reg.example:5000", insecure=True), RegistryConfig(host="private.example", ca_file=ca)]
    config = DindConfig(insecure_registries=["10.0.0.0/8", "named.example:5000"], registry_mirrors=["https://mirror.example"],
                                mtu=1400, cpus=1.5, memory="512m", extra_hosts={"registry.runner.test": "host-gateway"})
    spec = spec_for(config, registries, network="runner-dind-abc", gateway="172.30.0.1")
    command, host = spec["command"], spec["host_config"]
    assert "--insecure-registry=10.0.0.0/8" in command
    assert "--insecure-registry=http://named.example:5000" in command  # BuildKit of Docker 20.10 needs the scheme
    assert "--insecure-registry=http://reg.example:5000" in command  # from `registries:` marked insecure
    assert "--registry-mirror=https://mirror.example" in command and "--mtu=1400" in command
    assert host["nano_cpus"] == 1_500_000_000 and host["mem_limit"] == "512m"
    assert host["extra_hosts"] == {"registry.runner.test": "172.30.0.1"}  # the sidecar network's gateway
    assert host["network_mode"] == "runner-dind-abc"
    assert host["binds"]["/run/x/runner-dind-abc/certs.d"] == {"bind": "/etc/docker/certs.d", "mode": "ro"}


def test_tls_connection_is_mutual_tls_on_loopback_only_and_plain_tcp_is_refused():
    spec = spec_for(DindConfig(connection="tls"))
    command = spec["command"]
    assert "--host=tcp://0.0.0.0:2376" in command and "--tlsverify" in command
    assert any(a.startswith("--tlscacert=") for a in command) and any(a.startswith("--tlskey=") for a in command)
    assert spec["host_config"]["port_bindings"] == {2376: ("127.0.0.1", None)}
    assert daemon_args(DindConfig(), [])[1].startswith("--host=unix://")
    with pytest.raises(ValidationError):
        DindConfig(connection="tcp")


# -- on the real engine ---------------------------------------------------------------------------
@pytest.fixture
def sockdir():
    path = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))  # short: unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host_api():
    client = EngineClient.connect("unix:///var/run/docker.sock")
    yield client.api
    client.close()


def executor(services, sockdir, worker: str | None = None, **overrides) -> DindExecutor:
    return executor_for(support.settings(services, sockdir, **overrides), "dind", worker or f"test-{uuid.uuid4().hex[:6]}")


def tag(services, name: str) -> str:
    return f"{services['RUNNER_DEV_REGISTRY_NAME']}/test-dind/{name}:{uuid.uuid4().hex[:10]}"


def base(services) -> str:
    return support.base_image(services)


def assert_nothing_left(job_id: str, sockdir: Path) -> None:
    assert leftovers(f"{LABEL_JOB}={job_id}") == {}
    assert not [p for p in sockdir.iterdir() if p.name.startswith("runner-")]


def run_job(ex: DindExecutor, job: BuildRequest, ctx, cancel: CancelToken | None = None):
    sink = Sink()
    try:
        return ex.run(job, ctx, sink, cancel or CancelToken()), sink
    finally:
        ex.cleanup(job.id)


def sidecar_name(sink: Sink) -> str:
    return next(word for line in sink.lines for word in line.split() if word.startswith("runner-dind-"))


def test_success_builds_inside_the_sidecar_and_removes_it(services, sockdir, tmp_path):
    ex = executor(services, sockdir)
    image = tag(services, "ok")
    job = BuildRequest(tags=[image])
    ctx = build_context(tmp_path, f"FROM {base(services)}\nRUN echo in-sidecar > /where\n")
    [pushed], sink = run_job(ex, job, ctx)
    assert pushed.digest == registry_digest(services, image)
    name = sidecar_name(sink)
    assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0  # gone
    assert_nothing_left(job.id, sockdir)
    # the host engine never held the job's image
    for ref in (image, f"runner-job/{job.id}:build"):
        assert subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0


def test_failure_removes_the_sidecar(services, sockdir, tmp_path):
    ex = executor(services, sockdir)
    job = BuildRequest(tags=[tag(services, "fail")])
    ctx = build_context(tmp_path, f"FROM {base(services)}\nRUN echo about-to-fail && exit 4\n")
    with pytest.raises(Exception) as caught:
        run_job(ex, job, ctx)
    assert getattr(caught.value, "kind", None) == "build", caught.value
    assert_nothing_left(job.id, sockdir)


@pytest.mark.parametrize("reason", ["cancelled", "timeout"])
def test_cancel_and_timeout_stop_the_build_and_remove_the_sidecar(services, sockdir, tmp_path, reason):
    ex = executor(services, sockdir)
    job = BuildRequest(tags=[tag(services, "cancel")])
    marker = f"sleep {2000 + uuid.uuid4().int % 5000}"
    ctx = build_context(tmp_path, f"FROM {base(services)}\nRUN echo long-step-started && {marker}\n")
    cancel, sink, fired = CancelToken(), Sink(), {}

    def fire_when_running():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "long-step-started" not in sink.text:
            time.sleep(0.05)
        fired["at"] = time.monotonic()
        cancel.set(reason)

    threading.Thread(target=fire_when_running, daemon=True).start()
    with pytest.raises(Cancelled) as caught:
        try:
            ex.run(job, ctx, sink, cancel)
        finally:
            ex.cleanup(job.id)
    assert caught.value.kind == reason
    assert time.monotonic() - fired["at"] < 5
    assert_nothing_left(job.id, sockdir)
    assert marker not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_cancel_while_the_sidecar_starts_removes_it(services, sockdir, tmp_path):
    ex = executor(services, sockdir)
    job = BuildRequest(tags=[tag(services, "early")])
    cancel = CancelToken()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):
        run_job(ex, job, build_context(tmp_path, f"FROM {base(services)}\n"), cancel)
    assert_nothing_left(job.id, sockdir)


@pytest.fixture
def broken_image():
    """An image whose 'daemon' never answers: it prints an error and sleeps (or exits)."""
    made = []

    def make(script: str) -> str:
        name = f"runner-test-nodaemon:{uuid.uuid4().hex[:8]}"
        dockerfile = (f"FROM {os.environ.get('RUNNER_DEV_BASE_IMAGE', '127.0.0.1:5000/base/busybox:1')}\n"
                      f'ENTRYPOINT ["sh", "-c", "{script}"]\n')
        subprocess.run(["docker", "build", "-q", "-t", name, "-"], input=dockerfile, text=True, check=True,
                       capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=120)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["docker", "rmi", "-f", name], capture_output=True)


def test_daemon_that_never_answers_fails_clearly_with_its_log(services, sockdir, tmp_path, broken_image):
    image = broken_image("echo fake-daemon-starting; echo failed to start daemon: no storage driver >&2; sleep 600")
    ex = executor(services, sockdir, image=image, ready_timeout=2)
    job = BuildRequest(tags=[tag(services, "notready")])
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as caught:
        run_job(ex, job, build_context(tmp_path, f"FROM {base(services)}\n"))
    assert time.monotonic() - started < 10
    assert "did not answer within 2s" in caught.value.message
    assert "failed to start daemon: no storage driver" in caught.value.message
    assert_nothing_left(job.id, sockdir)


def test_sidecar_that_exits_fails_at_once_with_its_exit_code_and_log(services, sockdir, tmp_path, broken_image, host_api):
    image = broken_image("echo cannot mount overlay >&2; exit 3")
    settings = support.settings(services, sockdir, image=image, ready_timeout=30)
    sink = Sink()
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as caught:
        bring_up(host_api, settings.executors["dind"], settings.registries, executor="dind", labels={LABEL_JOB: "exits"},
                 log_sink=sink)
    assert time.monotonic() - started < 5
    assert "exited with code 3" in caught.value.message
    assert "[sidecar] cannot mount overlay" in sink.lines
    assert_nothing_left("exits", sockdir)


def test_tls_connection_builds_and_refuses_clients_without_the_certificate(services, sockdir, tmp_path, host_api):
    ex = executor(services, sockdir, connection="tls")
    job = BuildRequest(tags=[tag(services, "tls")])
    [pushed], _ = run_job(ex, job, build_context(tmp_path, f"FROM {base(services)}\nRUN echo tls > /t\n"))
    assert pushed.digest == registry_digest(services, job.tags[0])
    assert_nothing_left(job.id, sockdir)

    config = ex.config
    sidecar = bring_up(host_api, config, ex.env.registries, executor="dind", labels={LABEL_JOB: "tls-probe"})
    try:
        assert sidecar.base_url.startswith("https://127.0.0.1:")
        inner = sidecar.client(timeout=10)
        assert inner.api.version()["ApiVersion"]
        inner.close()
        with pytest.raises(requests.RequestException):  # TLS, but no client certificate
            session = requests.Session()
            session.trust_env = False
            session.get(f"{sidecar.base_url}/_ping", verify=str(sidecar.directory / "client" / "ca.pem"), timeout=5)
        plain = sidecar.base_url.replace("https://", "http://")
        response = requests.get(f"{plain}/_ping", timeout=5)
        assert response.status_code == 400  # Go's TLS server answers plain HTTP with 400
        assert not (sidecar.directory / "ca-key.pem").exists()  # nothing else can ever be signed
    finally:
        sidecar.remove(host_api)
    assert_nothing_left("tls-probe", sockdir)


def test_inner_daemon_gets_mirrors_mtu_limits_hosts_and_registry_ca(services, sockdir, tmp_path, host_api):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot-a-real-ca\n-----END CERTIFICATE-----\n")
    settings = support.settings(services, sockdir, registry_mirrors=["https://mirror.runner.test"], mtu=1400, cpus=1.5,
                                memory="512m")
    settings.registries.append(settings.registries[0].model_copy(update={"host": "private.runner.test:5443", "ca_file": ca}))
    sidecar = bring_up(host_api, settings.executors["dind"], settings.registries, executor="dind",
                       labels={LABEL_JOB: "options"})
    try:
        inner = sidecar.client(timeout=30).api
        info = inner.info()
        assert info["RegistryConfig"]["Mirrors"] == ["https://mirror.runner.test/"]
        assert info["RegistryConfig"]["IndexConfigs"][services["RUNNER_DEV_REGISTRY_NAME"]]["Secure"] is False
        assert inner.inspect_network("bridge")["Options"]["com.docker.network.driver.mtu"] == "1400"
        inner.close()
        host = host_api.inspect_container(sidecar.container)["HostConfig"]
        assert host["Memory"] == 512 * 1024**2 and host["NanoCpus"] == 1_500_000_000
        gateway = host_api.inspect_network(sidecar.network)["IPAM"]["Config"][0]["Gateway"]
        assert host["ExtraHosts"] == [f"registry.runner.test:{gateway}"]
        exec_id = host_api.exec_create(sidecar.container, ["cat", "/etc/docker/certs.d/private.runner.test:5443/ca.crt"])
        assert host_api.exec_start(exec_id).decode() == ca.read_text()
    finally:
        sidecar.remove(host_api)
    assert_nothing_left("options", sockdir)


# -- warm pool ------------------------------------------------------------------------------------
def test_warm_pool_serves_one_job_per_sidecar_refills_and_never_exceeds_its_size(services, sockdir, tmp_path):
    ex = executor(services, sockdir, warm_pool=2)
    ex.start()
    pool = ex.pool
    assert pool is not None
    owner = f"{dind_pool.LABEL_POOL}={OWNER}"
    samples, stop = [], threading.Event()

    def sample():
        while not stop.wait(0.05):
            samples.append((pool.idle + pool._starting, len(docker_ids("container", owner))))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        assert pool.wait_full(60)
        sampler.start()
        first_idle = set(docker_ids("container", owner))
        assert len(first_idle) == 2
        served = []
        for n in range(3):
            job = BuildRequest(tags=[tag(services, f"warm{n}")])
            [pushed], sink = run_job(ex, job, build_context(tmp_path / str(n), f"FROM {base(services)}\nRUN echo {n} > /n\n"))
            assert pushed.digest == registry_digest(services, job.tags[0])
            assert "warm sidecar" in sink.text, sink.text
            name = sidecar_name(sink)
            assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0  # destroyed after one job
            served.append(name)
            assert pool.wait_full(60)  # refilled in the background
        assert len(set(served)) == 3  # never the same sidecar twice
        assert list(ex.buildkit._known) == [ex.config.image]  # BuildKit support asked once for the image, not per sidecar
    finally:
        stop.set()
        ex.shutdown()
    assert samples and max(s[0] for s in samples) <= 2  # idle + starting
    assert max(s[1] for s in samples) <= 3  # at most the pool plus the one serving a job
    assert leftovers(owner) == {}
    assert ex.pool is None


# -- per-repository cache -------------------------------------------------------------------------
@pytest.fixture
def cache_keys(host_api):
    keys: list[str] = []

    def new() -> str:
        keys.append(f"test-{uuid.uuid4().hex[:10]}")
        return keys[-1]

    yield new
    for key in keys:
        for executor_name in ("dind", "sysbox"):
            try:
                host_api.remove_volume(dind_cache.volume_name(executor_name, key), force=True)
            except docker.errors.NotFound:
                pass


def test_repo_cache_reuses_layers_per_key_and_never_across_keys(services, sockdir, tmp_path, cache_keys, host_api):
    ex = executor(services, sockdir, repo_cache=True)
    key_a, key_b = cache_keys(), cache_keys()
    dockerfile = f"FROM {base(services)}\nRUN echo expensive-step-{uuid.uuid4().hex} > /e\n"

    logs = []
    for n, key in enumerate([key_a, key_a, key_b]):
        job = BuildRequest(tags=[tag(services, "cache")], cache_key=key)
        _, sink = run_job(ex, job, build_context(tmp_path / str(n), dockerfile))
        logs.append(sink.text)
        assert_nothing_left(job.id, sockdir)
    first, second, other_key = logs
    assert f"repository cache {key_a!r}: new volume" in first and "CACHED" not in first
    assert f"repository cache {key_a!r}: reusing volume" in second
    assert any("RUN echo expensive-step" in line for line in second.splitlines())
    assert any(line.startswith("#") and line.endswith("CACHED") for line in second.splitlines()), second
    assert f"repository cache {key_b!r}: new volume" in other_key and "CACHED" not in other_key
    volumes = set(docker_ids("volume", f"{dind_cache.LABEL_CACHE}"))
    assert {dind_cache.volume_name("dind", key_a), dind_cache.volume_name("dind", key_b)} <= volumes


def test_busy_cache_waits_then_builds_uncached_and_says_so(services, sockdir, tmp_path, cache_keys, host_api):
    ex = executor(services, sockdir, repo_cache=True, repo_cache_wait=0.5)
    key = cache_keys()
    holder = dind_cache.acquire(host_api, ex.config, "dind", key, CancelToken(), Sink())
    try:
        job = BuildRequest(tags=[tag(services, "busy")], cache_key=key)
        [pushed], sink = run_job(ex, job, build_context(tmp_path, f"FROM {base(services)}\nRUN echo busy > /b\n"))
    finally:
        holder.release()
    assert "is in use by another job; waiting up to 0.5s" in sink.text
    assert "building WITHOUT the repository cache" in sink.text
    assert pushed.digest == registry_digest(services, job.tags[0])
    assert_nothing_left(job.id, sockdir)


def test_eviction_removes_least_recently_used_volumes_but_never_one_in_use(services, sockdir, cache_keys, host_api):
    config = DindConfig(socket_dir=sockdir, repo_cache=True, repo_cache_max_bytes=int(2.5 * 1024**2))
    keys = [cache_keys() for _ in range(3)]
    for age, key in zip((300, 200, 100), keys, strict=True):
        dind_cache.acquire(host_api, config, "dind", key, CancelToken(), Sink()).release()
        subprocess.run(["docker", "run", "--rm", "-v", f"{dind_cache.volume_name('dind', key)}:/d",
                        os.environ.get("RUNNER_DEV_BASE_IMAGE", "127.0.0.1:5000/base/busybox:1"),
                        "sh", "-c", "head -c 1048576 /dev/zero > /d/blob"], check=True, capture_output=True, timeout=60)
        stamp = time.time() - age
        os.utime(dind_cache.lock_path(config, "dind", key), (stamp, stamp))
    oldest, middle, newest = keys
    in_use = dind_cache.acquire(host_api, config, "dind", oldest, CancelToken(), Sink())
    try:
        removed = dind_cache.evict(host_api, config, "dind")
    finally:
        in_use.release()
    assert removed == [dind_cache.volume_name("dind", middle)]
    remaining = set(docker_ids("volume", dind_cache.LABEL_CACHE))
    assert dind_cache.volume_name("dind", oldest) in remaining and dind_cache.volume_name("dind", newest) in remaining


# -- sidecars kept per cache key (reuse: per_cache_key) -------------------------------------------
def exists(name: str) -> bool:
    return subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0


def wait_gone(name: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and exists(name):
        time.sleep(0.2)
    return not exists(name)


def leave_things_behind(ex: DindExecutor, job_id: str) -> None:
    """What a job that reaches its daemon (docker compose in a test step) could leave there."""
    inner = ex._serving[job_id].sidecar.client(timeout=30).api
    try:
        image = inner.inspect_image(f"runner-job/{job_id}:build")["Id"]
        inner.create_network("left-net")
        inner.create_volume("left-vol")
        inner.create_container(image, ["true"], name="left-container", host_config=inner.create_host_config(binds=["left-vol:/v"]))
    finally:
        inner.close()


def inner_state(ex: DindExecutor, name: str, job_id: str) -> dict:
    sidecar = next(k.sidecar for items in ex.kept._idle.values() for k in items if k.sidecar.name == name)
    inner = sidecar.client(timeout=30).api
    try:
        tags = [t for image in inner.images() for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        return {"containers": inner.containers(all=True), "volumes": inner.volumes().get("Volumes") or [],
                "networks": sorted(n["Name"] for n in inner.networks()), "job tags": [t for t in tags if job_id in t]}
    finally:
        inner.close()


def test_reuse_keeps_a_clean_sidecar_per_cache_key_never_across_keys_or_namespaces(services, sockdir, tmp_path):
    ex = executor(services, sockdir, reuse="per_cache_key", reuse_max_jobs=2)
    other_namespace = executor(services, sockdir, reuse="per_cache_key")
    dockerfile = f"FROM {base(services)}\nRUN echo step-{uuid.uuid4().hex} > /s\n"
    key_a, key_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    names, logs = [], []
    try:
        for n, (runner, key) in enumerate([(ex, key_a), (ex, key_a), (ex, key_b), (other_namespace, key_a), (ex, key_a)]):
            job = BuildRequest(tags=[tag(services, "reuse")], cache_key=key)
            sink = Sink()
            [pushed] = runner.run(job, build_context(tmp_path / str(n), dockerfile), sink, CancelToken())
            assert pushed.digest == registry_digest(services, job.tags[0])
            name = sidecar_name(sink)
            assert exists(name)  # run() leaves removal and cleaning to cleanup(), after the job's record
            if n == 0:
                leave_things_behind(runner, job.id)
            runner.cleanup(job.id)
            if n == 0:
                state = inner_state(runner, name, job.id)
                assert state == {"containers": [], "volumes": [], "networks": ["bridge", "host", "none"], "job tags": []}
            names.append(name)
            logs.append(sink.text)
        first, second, other_key, other_ns, third = names
        assert second == first and "reusing sidecar" in logs[1] and "job 2 of at most 2" in logs[1]
        assert any(line.startswith("#") and line.endswith("CACHED") for line in logs[1].splitlines())  # build cache kept
        assert other_key != first and "reusing" not in logs[2]  # never across cache keys
        assert other_ns != first and "reusing" not in logs[3]  # never across namespaces
        assert third not in (first, other_key) and not exists(first)  # it served its 2 jobs
        assert exists(third) and exists(other_key)
        kept = subprocess.run(["docker", "ps", "--format", "{{.Names}}", "--filter", f"label={dind_pool.LABEL_POOL}={OWNER}",
                               "--filter", f"label={LABEL_NAMESPACE}={ex.env.namespace}"], capture_output=True, text=True).stdout
        assert set(kept.split()) == {third, other_key}  # labelled as its worker's, so a sweep judges them by it
    finally:
        ex.shutdown()
        other_namespace.shutdown()
    for name in names:
        assert not exists(name)
    assert leftovers(f"{dind_pool.LABEL_POOL}={OWNER}") == {}
    assert not [p for p in sockdir.iterdir() if p.name.startswith("runner-")]


def test_kept_sidecar_goes_when_idle_cancelled_or_swept_after_its_worker(services, sockdir, tmp_path, host_api):
    ex = executor(services, sockdir, reuse="per_cache_key", reuse_idle_seconds=1)
    key = f"idle-{uuid.uuid4().hex[:8]}"
    ctx = build_context(tmp_path / "a", f"FROM {base(services)}\nRUN echo idle > /i\n")
    try:
        _, sink = run_job(ex, BuildRequest(tags=[tag(services, "idle")], cache_key=key), ctx)
        assert wait_gone(sidecar_name(sink))  # idle past reuse_idle_seconds
        assert ex.kept.idle == 0

        cancel, sink = CancelToken(), Sink()
        threading.Thread(target=lambda: (wait_for(sink, "long-step"), cancel.set("cancelled")), daemon=True).start()
        slow = build_context(tmp_path / "b", f"FROM {base(services)}\nRUN echo long-step && sleep 600\n")
        job = BuildRequest(tags=[tag(services, "idle")], cache_key=key)
        with pytest.raises(Cancelled):
            try:
                ex.run(job, slow, sink, cancel)
            finally:
                ex.cleanup(job.id)
        assert not exists(sidecar_name(sink))  # a cancelled job's sidecar is not kept
    finally:
        ex.shutdown()
    # a worker that died leaves kept sidecars; the next sweep on the host removes them by their owner
    dead_owner = f"{OWNER.split(':')[0]}:999999999:1"
    kept_labels = {**ex.reuse_labels(key), dind_pool.LABEL_POOL: dead_owner}
    bring_up(host_api, ex.config, ex.env.registries, executor="dind", labels=kept_labels)
    assert executor(services, sockdir).sweep(lambda job: True) == []  # no job's; judged by the dead owner
    assert ex.sweep(lambda job: True) == [] and leftovers(f"{dind_pool.LABEL_POOL}={dead_owner}") == {}


def wait_for(sink: Sink, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in sink.text:
        assert time.monotonic() < deadline, f"{text!r} never appeared in the job log: {sink.text[-1000:]}"
        time.sleep(0.05)


def test_default_mode_removes_the_sidecar_in_cleanup_after_run(services, sockdir, tmp_path):
    """The job's result does not wait for the sidecar's removal: run() returns with it still
    there, and cleanup() (called after the record is written) removes it."""
    ex = executor(services, sockdir)
    job = BuildRequest(tags=[tag(services, "later")])
    sink = Sink()
    try:
        ex.run(job, build_context(tmp_path, f"FROM {base(services)}\nRUN echo later > /l\n"), sink, CancelToken())
        assert exists(sidecar_name(sink))
    finally:
        ex.cleanup(job.id)
    assert not exists(sidecar_name(sink))
    assert_nothing_left(job.id, sockdir)


# -- the registry build cache (BuildKit's inline cache through the Engine API) --------------------
def test_registry_cache_feeds_a_new_engine_and_stays_per_repository(services, sockdir, tmp_path):
    """Each job gets a new sidecar: an engine with empty storage, as on a new host. The first
    job puts its image (carrying BuildKit's inline cache) under the repository's cache tag;
    the same build on another new engine takes its steps from there; a job of another
    repository has a cache of its own."""
    registry = services["RUNNER_DEV_REGISTRY_NAME"]
    ex = executor(services, sockdir, cache_repo=f"{registry}/cache-test/{{repo}}")
    repo, other = f"test-dind/cached-{uuid.uuid4().hex[:8]}", f"test-dind/other-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {base(services)}\nRUN echo expensive-{uuid.uuid4().hex} > /e\n"
    first = BuildRequest(tags=[f"{registry}/{repo}:1"])
    [pushed], sink = run_job(ex, first, build_context(tmp_path / "1", dockerfile))
    cache_tag = f"{registry}/cache-test/{repo}:buildcache"
    assert f"[runner] registry build cache: {cache_tag}" in sink.text
    assert f"[runner] tagged {cache_tag} {pushed.digest}" in sink.text  # exported without a second push
    assert registry_digest(services, cache_tag) == pushed.digest
    run_step = next(line.split()[0] for line in sink.lines if "RUN echo expensive" in line)
    assert f"{run_step} CACHED" not in sink.lines  # a new engine, no cache yet: the step ran

    again = BuildRequest(tags=[f"{registry}/{repo}:2"])
    _, sink = run_job(ex, again, build_context(tmp_path / "2", dockerfile))
    assert f"importing cache manifest from {cache_tag}" in sink.text
    run_step = next(line.split()[0] for line in sink.lines if "RUN echo expensive" in line)
    assert f"{run_step} CACHED" in sink.lines, sink.text  # the new engine did not run the step

    elsewhere = BuildRequest(tags=[f"{registry}/{other}:1"])
    _, sink = run_job(ex, elsewhere, build_context(tmp_path / "3", dockerfile))
    assert f"[runner] registry build cache: {registry}/cache-test/{other}:buildcache" in sink.text
    run_step = next(line.split()[0] for line in sink.lines if "RUN echo expensive" in line)
    assert f"{run_step} CACHED" not in sink.lines  # another repository: not this one's cache


# -- labels, cleanup, sweep -----------------------------------------------------------------------
def test_sweep_removes_only_leftovers_of_jobs_that_are_not_live(services, sockdir, host_api):
    ex = executor(services, sockdir)
    live, dead = f"live-{uuid.uuid4().hex[:8]}", f"dead-{uuid.uuid4().hex[:8]}"
    config, registries = ex.config, ex.env.registries
    bring_up(host_api, config, registries, executor="dind", labels=ex.labels(live))
    bring_up(host_api, config, registries, executor="dind", labels=ex.labels(dead))
    ours = {**ex.labels("warm-pool-dind"), dind_pool.LABEL_POOL: OWNER}
    gone_owner = f"{OWNER.split(':')[0]}:999999999:1"
    bring_up(host_api, config, registries, executor="dind", labels=ours)
    bring_up(host_api, config, registries, executor="dind", labels={**ours, dind_pool.LABEL_POOL: gone_owner})
    other = executor(services, sockdir)  # another deployment (namespace) on the same engine
    elsewhere = f"elsewhere-{uuid.uuid4().hex[:8]}"
    bring_up(host_api, config, registries, executor="dind", labels=other.labels(elsewhere))
    try:
        for job in (live, dead):
            assert set(leftovers(f"{LABEL_JOB}={job}")) == {"container", "volume", "network"}
        asked = []
        removed = ex.sweep(lambda job: asked.append(job) or job == live)
        assert removed == [dead]  # the dead pool's sidecar is gone too (below), but it is no job's
        assert leftovers(f"{LABEL_JOB}={dead}") == {}
        assert leftovers(f"{dind_pool.LABEL_POOL}={gone_owner}") == {}
        assert set(leftovers(f"{LABEL_JOB}={live}")) == {"container", "volume", "network"}
        assert len(leftovers(f"{dind_pool.LABEL_POOL}={OWNER}")["container"]) == 1  # our live pool's
        assert "warm-pool-dind" not in asked  # pool sidecars are judged by their owner process
        assert elsewhere not in asked and set(leftovers(f"{LABEL_JOB}={elsewhere}")) == {"container", "volume", "network"}
    finally:
        other.cleanup(elsewhere)
        ex.cleanup(live)
        ex.cleanup(live)  # idempotent
        ex.cleanup("warm-pool-dind")
    assert leftovers(f"{LABEL_JOB}={live}") == {} and leftovers(f"{dind_pool.LABEL_POOL}={OWNER}") == {}
    assert leftovers(f"{LABEL_JOB}={elsewhere}") == {}
    assert not [p for p in sockdir.iterdir() if p.name.startswith("runner-")]


def test_cleanup_touches_only_its_own_namespace(services, sockdir, host_api):
    """Job ids may be chosen by the submitter, so two deployments on one engine can share one."""
    ex, other = executor(services, sockdir), executor(services, sockdir)
    job = f"same-id-{uuid.uuid4().hex[:8]}"
    bring_up(host_api, other.config, other.env.registries, executor="dind", labels=other.labels(job))
    try:
        ex.cleanup(job)
        assert set(leftovers(f"{LABEL_JOB}={job}")) == {"container", "volume", "network"}
    finally:
        other.cleanup(job)
    assert_nothing_left(job, sockdir)


def test_each_executor_sweeps_its_own_objects_on_its_own_engine(services, sockdir, host_api, tmp_path):
    """sysbox's leftovers are swept by the sysbox executor on sysbox's docker_host, never by
    dind on dind's (the two may drive different engines)."""
    settings = support.settings(services, sockdir)
    dind = executor_for(settings, "dind", "test-sweep")
    dead = f"dead-{uuid.uuid4().hex[:8]}"
    # a sysbox sidecar as sysbox would label it (the runtime cannot be installed here)
    labels = {**dind.labels(dead), LABEL_EXECUTOR: "sysbox"}
    bring_up(host_api, dind.config, dind.env.registries, executor="sysbox", labels=labels)
    settings.executors["sysbox"] = SysboxConfig(docker_host=f"unix://{tmp_path}/no-engine.sock")
    sysbox_elsewhere = executor_for(settings, "sysbox", "test-sweep")
    settings.executors["sysbox"] = SysboxConfig(docker_host=dind.config.docker_host)
    sysbox_here = executor_for(settings, "sysbox", "test-sweep")
    try:
        assert dind.sweep(lambda job: False) == []
        assert sysbox_elsewhere.sweep(lambda job: False) == []  # its engine is unreachable: nothing swept
        assert set(leftovers(f"{LABEL_JOB}={dead}")) == {"container", "volume", "network"}
        assert sysbox_here.sweep(lambda job: False) == [dead]
    finally:
        sysbox_here.cleanup(dead)
    assert_nothing_left(dead, sockdir)


def test_worker_fills_the_pool_at_start_uses_it_and_removes_it_at_stop(services, make_harness, tmp_path):
    """A real `runner worker`: start() fills the pool, a job takes a warm sidecar, SIGTERM empties it."""
    h = make_harness(executors={"dind": support.config(services, warm_pool=1)})
    namespace = f"{LABEL_NAMESPACE}={h.config['worker']['namespace']}"
    h.worker_proc = h.start_worker()
    pooled = lambda: docker_ids("container", namespace, dind_pool.LABEL_POOL)  # noqa: E731
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(pooled()) < 1:
        time.sleep(0.2)
    assert len(pooled()) == 1
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base(services)}\nRUN echo warm > /w\n")
    image = tag(services, "worker")
    result = h.cli("submit", str(ctx), "--executor", "dind", "-t", image, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    job_id = json.loads(result.stdout)["id"]
    assert "warm sidecar" in h.cli("logs", job_id).stdout
    assert registry_digest(services, image)
    h.stop_worker(h.worker_proc)
    assert leftovers(namespace) == {}
