"""Registry logins the way clouds issue them, end to end through a real worker: a credential
helper of the tests' own (`docker-credential-test` on the worker's PATH), a Docker config file
mounted the way Kubernetes mounts a dockerconfigjson secret (rotated by a symlink swap), and a
registry of these tests' own (`docker-registry` with htpasswd, its own port, users and
passwords: tests/support/credentials.py) besides the shared one.

What it shows, on every executor that can run here: a job pushes with no password anywhere in
the runner's config; a FROM on a second registry with its own login pulls; a rotated secret
(a new password set on the registry) is used by the next job without a worker restart; the
helper is asked once and again after its answer expires; a helper that fails or hangs fails the
job as `infrastructure` naming it and the registry, never with its output; and no credential
appears in Redis, logs, records, metrics or any process's argv."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from runner.config.settings import Settings
from runner.core.cancel import CancelToken
from runner.core.errors import RegistryAuthFailed
from runner.core.jobs import BuildRequest
from runner.core.registry_client import Registries
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig
from tests.conftest import RUNNER, cleanup_namespace, new_harness, registry_digest, run_image
from tests.support import ListLog, all_support, every_value, executor_for, spooled_context
from tests.support.credentials import MountedSecret, PrivateRegistry, TestHelper, basic
from tests.support.fleet import free_port

pytestmark = pytest.mark.skipif(not all(map(shutil.which, ("docker-registry", "htpasswd", "skopeo"))),
                                reason="needs docker-registry, htpasswd (apache2-utils) and skopeo: scripts/services.sh installs them")

SUPPORT = all_support()
PUSHER, PULLER, HELPED = "pusher", "puller", "helped"


def executors(*names: str):
    for name in names:
        reason = SUPPORT[name].skip_reason()
        yield pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


def by_name(executor: str) -> bool:
    """Does this executor reach registries by name (a dind sidecar: 127.0.0.1 is itself)?"""
    return SUPPORT[executor].registry_key == "RUNNER_DEV_REGISTRY_NAME"


def name_host(services: dict) -> str:
    return services["RUNNER_DEV_REGISTRY_NAME"].rsplit(":", 1)[0]


def context(root: Path, dockerfile: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    return root


def submit(h, ctx: Path, executor: str, *args: str) -> dict:
    out = h.cli("submit", str(ctx), "--executor", executor, "--json", *args)
    assert out.stdout.strip().startswith("{"), out.stdout + out.stderr
    return json.loads(out.stdout)


def start_worker(h, helper: TestHelper):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", helper.path_env())
        h.worker_proc = h.start_worker()
    return h


def stop(h) -> None:
    if h.worker_proc is not None:
        h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


# == a worker whose config holds no password at all: the helper answers =============================
@pytest.fixture(scope="module")
def helped(services, tmp_path_factory):
    """(harness, registry, helper): registries known only by a credential_helper."""
    root = tmp_path_factory.mktemp("helped")
    registry = PrivateRegistry(root / "registry", {HELPED: "helped-" + uuid.uuid4().hex, "client": "client-" + uuid.uuid4().hex},
                               name_host(services)).start()
    helper = TestHelper(root / "helper")
    answer = {"Username": HELPED, "Secret": registry.users[HELPED]}
    # localhost:PORT is the broken one: its helper fails from the start (a failure is never kept)
    helper.answer({registry.loopback: answer, registry.by_name: answer, f"localhost:{registry.port}": "fail"})
    h = new_harness(services, tmp_path_factory, registries=[
        {"host": registry.loopback, "credential_helper": "test"},
        {"host": registry.by_name, "credential_helper": "test", "insecure": True},
        {"host": f"localhost:{registry.port}", "credential_helper": "test", "insecure": True},
    ], registry_auth={"cache_seconds": 3600, "helper_timeout": 3})
    assert "password" not in h.config_path.read_text()  # nowhere in the runner's config
    start_worker(h, helper)
    yield h, registry, helper
    stop(h)
    registry.stop()


@pytest.mark.parametrize("executor", list(executors("socket", "buildah", "dind", "img", "sysbox")))
def test_a_job_pushes_with_only_a_credential_helper(helped, executor, tmp_path):
    h, registry, helper = helped
    host = registry.by_name if by_name(executor) else registry.loopback
    base = registry.seed(h.services, f"helped/base-{uuid.uuid4().hex[:8]}")
    image = f"{host}/helped/{executor}:{uuid.uuid4().hex[:8]}"
    record = submit(h, context(tmp_path, f"FROM {host}/{base}\nRUN echo helped > /out\n"), executor, "-t", image)
    assert record["status"] == "succeeded", record
    [pushed] = record["images"]
    assert pushed["digest"] == registry.digest(image)
    assert host in helper.calls()  # the helper was asked for that registry (server URL on stdin)


def test_the_helper_answer_is_kept_between_jobs(helped, tmp_path):
    h, registry, helper = helped
    base = registry.seed(h.services, f"helped/base-{uuid.uuid4().hex[:8]}")
    first = submit(h, context(tmp_path / "a", f"FROM {registry.loopback}/{base}\nRUN echo a > /a\n"), "socket",
                   "-t", f"{registry.loopback}/helped/kept:a")
    assert first["status"] == "succeeded", first
    asked = len(helper.calls())
    second = submit(h, context(tmp_path / "b", f"FROM {registry.loopback}/{base}\nRUN echo b > /b\n"), "socket",
                    "-t", f"{registry.loopback}/helped/kept:b")
    assert second["status"] == "succeeded", second
    assert len(helper.calls()) == asked  # cache_seconds 3600: the second job asks nobody


@pytest.mark.parametrize("executor", list(executors("socket", "buildah")))
@pytest.mark.parametrize("answer", ["fail", "hang"])
def test_a_failing_or_hanging_helper_fails_the_job_as_infrastructure_naming_it(helped, executor, answer, tmp_path):
    h, registry, helper = helped
    broken = f"localhost:{registry.port}"
    good = {"Username": HELPED, "Secret": registry.users[HELPED]}
    helper.answer({registry.loopback: good, registry.by_name: good, broken: answer})
    base = registry.seed(h.services, f"helped/base-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    record = submit(h, context(tmp_path, f"FROM {registry.loopback}/{base}\nRUN echo x > /x\n"), executor,
                    "-t", f"{broken}/helped/broken:1")
    assert record["status"] == "failed" and record["error"]["kind"] == "infrastructure", record
    message = record["error"]["message"]
    assert "docker-credential-test" in message and f"registry {broken}" in message, message
    if answer == "hang":
        assert "did not answer within 3 s" in message and time.monotonic() - started < 120
    log = h.cli("logs", record["id"]).stdout
    for text in (json.dumps(record), log, h.worker_proc.log_path.read_text()):
        assert "helper-leak" not in text  # what the helper printed is never shown


def test_a_refused_kept_answer_has_the_helper_asked_again(helped, monkeypatch):
    """The registry client holds a login from a helper; the password changes on the registry
    and in the helper: the next request is refused once, the helper asked again, and it works."""
    _, registry, helper = helped
    monkeypatch.setenv("PATH", helper.path_env())
    helper.answer({registry.loopback: {"Username": "client", "Secret": registry.users["client"]}})
    registries = Registries([RegistryConfig(host=registry.loopback, credential_helper="test")],
                            RegistryAuthConfig(cache_seconds=3600))
    client = registries.client(registry.loopback)
    client.ping()
    asked = len(helper.calls())
    new = "client-" + uuid.uuid4().hex
    registry.set_password("client", new)
    helper.answer({registry.loopback: {"Username": "client", "Secret": new}})
    client.ping()  # the kept basic header and the kept answer are both stale: refused, asked again, works
    assert len(helper.calls()) == asked + 1


def test_the_helper_is_asked_again_once_its_answer_expires(services, tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("expiring")
    registry = PrivateRegistry(root / "registry", {HELPED: "exp-" + uuid.uuid4().hex}, name_host(services)).start()
    helper = TestHelper(root / "helper")
    helper.answer({registry.loopback: {"Username": HELPED, "Secret": registry.users[HELPED]}})
    h = new_harness(services, tmp_path_factory, registries=[{"host": registry.loopback, "credential_helper": "test"}],
                    registry_auth={"cache_seconds": 1})
    try:
        start_worker(h, helper)
        base = registry.seed(services, "expiring/base")
        first = submit(h, context(tmp_path / "a", f"FROM {registry.loopback}/{base}\nRUN echo a > /a\n"), "socket",
                       "-t", f"{registry.loopback}/expiring/app:a")
        assert first["status"] == "succeeded", first
        asked = len(helper.calls())
        assert asked >= 1
        time.sleep(1.5)  # past cache_seconds (not a timing assertion: only waits for the answer to expire)
        second = submit(h, context(tmp_path / "b", f"FROM {registry.loopback}/{base}\nRUN echo b > /b\n"), "socket",
                        "-t", f"{registry.loopback}/expiring/app:b")
        assert second["status"] == "succeeded", second
        assert len(helper.calls()) > asked  # expired: asked again
    finally:
        stop(h)
        registry.stop()


def test_doctor_names_the_helper_without_a_secret(helped):
    h, registry, helper = helped
    out = subprocess.run([RUNNER, "doctor"], env={**h.env, "PATH": helper.path_env()}, capture_output=True, text=True, timeout=120)
    line = next(line for line in out.stdout.splitlines() if f"registry {registry.loopback}" in line)
    assert "reachable, login works (credentials: credential helper test)" in line, out.stdout
    assert registry.users[HELPED] not in out.stdout + out.stderr


# == a worker with a mounted dockerconfigjson secret =================================================
@pytest.fixture(scope="module")
def mounted(services, tmp_path_factory):
    """(harness, registry, helper, secret): the shared registry with its password in the config as
    ever; a second registry known from a mounted docker config: `auths` for its loopback address
    (user `puller`), `credHelpers` (the test helper, user `helped`) for its name."""
    root = tmp_path_factory.mktemp("mounted")
    registry = PrivateRegistry(root / "registry", {PULLER: "puller-" + uuid.uuid4().hex, HELPED: "helped-" + uuid.uuid4().hex},
                               name_host(services)).start()
    helper = TestHelper(root / "helper")
    helper.answer({registry.by_name: {"Username": HELPED, "Secret": registry.users[HELPED]}})
    secret = MountedSecret(root / "secret")
    secret.write(docker_config(registry))
    h = new_harness(services, tmp_path_factory, registry_auth={"docker_config": [str(secret.path)], "cache_seconds": 0},
                    worker={"metrics_port": free_port()})
    h.config["registries"] += [{"host": registry.loopback}, {"host": registry.by_name, "insecure": True}]
    h.config_path.write_text(yaml.safe_dump(h.config))
    start_worker(h, helper)
    yield h, registry, helper, secret
    stop(h)
    registry.stop()


def docker_config(registry: PrivateRegistry) -> str:
    return json.dumps({"auths": {registry.loopback: {"auth": basic(PULLER, registry.users[PULLER])}},
                       "credHelpers": {registry.by_name: "test"}})


def builders():
    """Each executor; engine executors with each builder (BuildKit's session, the classic builder's header)."""
    for param in executors("socket", "buildah", "dind", "img", "sysbox"):
        (name,) = param.values
        for builder in ("buildkit", "classic") if SUPPORT[name].engine else (None,):
            yield pytest.param(name, builder, id=f"{name}-{builder}" if builder else name, marks=param.marks)


@pytest.mark.parametrize(("executor", "builder"), list(builders()))
def test_a_private_base_image_on_a_second_registry_with_its_own_login(mounted, executor, builder, tmp_path):
    """FROM a registry whose login only the docker config holds; the image is pushed to the
    shared registry with the config's own password. The base is new to every engine (a fresh
    repository), so the build has to pull it with that login."""
    h, registry, _, _ = mounted
    host = registry.by_name if by_name(executor) else registry.loopback
    base = registry.seed(h.services, f"private/base-{uuid.uuid4().hex[:8]}")
    marker = uuid.uuid4().hex
    target = h.registry(SUPPORT[executor].registry_key)
    image = f"{target}/creds/{executor}-from-private:{uuid.uuid4().hex[:8]}"
    args = ["-t", image, *(["--builder", builder] if builder else [])]
    record = submit(h, context(tmp_path, f"FROM {host}/{base}\nRUN echo {marker} > /marker\n"), executor, *args)
    assert record["status"] == "succeeded", (record, h.cli("logs", record["id"]).stdout[-3000:])
    assert record["images"][0]["digest"] == registry_digest(h.services, image)
    assert run_image(image, "cat", "/marker").strip() == marker


@pytest.mark.parametrize("executor", list(executors("socket", "buildah")))
def test_a_rotated_secret_is_used_by_the_next_job_without_a_restart(mounted, executor, tmp_path):
    """Between two jobs the registry gets new passwords, the mounted secret a new version (a
    symlink swap) and the helper a new answer; the same worker pushes with the new ones."""
    h, registry, helper, secret = mounted
    pid = h.worker_proc.pid
    base = registry.seed(h.services, f"rotated/base-{uuid.uuid4().hex[:8]}")
    dockerfile = f"FROM {registry.loopback}/{base}\nRUN echo rotated > /r\n"
    # the loopback address: the mounted `auths`; the name (plain HTTP to the host engine too): the helper
    # (two repositories: the two names are one registry's storage)
    targets = [f"{registry.loopback}/rotated/{executor}-a", f"{registry.by_name}/rotated/{executor}-b"]
    first = submit(h, context(tmp_path / "1", dockerfile), executor, *[a for t in targets for a in ("-t", f"{t}:1")])
    assert first["status"] == "succeeded", (first, h.cli("logs", first["id"]).stdout[-3000:])
    old = dict(registry.users)
    registry.set_password(PULLER, "puller-" + uuid.uuid4().hex)
    registry.set_password(HELPED, "helped-" + uuid.uuid4().hex)
    assert not registry.logs_in(PULLER, old[PULLER]) and not registry.logs_in(HELPED, old[HELPED])
    secret.write(docker_config(registry))
    helper.answer({registry.by_name: {"Username": HELPED, "Secret": registry.users[HELPED]}})
    second = submit(h, context(tmp_path / "2", dockerfile), executor, *[a for t in targets for a in ("-t", f"{t}:2")])
    assert second["status"] == "succeeded", (second, h.cli("logs", second["id"]).stdout[-3000:])
    for image in second["images"]:
        assert image["digest"] == registry.digest(image["ref"])
    assert h.worker_proc.pid == pid and h.worker_proc.poll() is None  # the same worker, never restarted


def test_doctor_names_each_source_without_a_secret(mounted):
    h, registry, helper, secret = mounted
    out = subprocess.run([RUNNER, "doctor"], env={**h.env, "PATH": helper.path_env()}, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()

    def line(name: str) -> str:
        return next(text for text in lines if name in text)

    assert "login works (credentials: password)" in line(f"registry {h.registry()}")
    assert "login works (credentials: registry_auth.docker_config[0] (auths))" in line(f"registry {registry.loopback}")
    assert "login works (credentials: registry_auth.docker_config[0] (credHelpers: test))" in line(f"registry {registry.by_name}")
    assert f"credHelpers: {registry.by_name} -> test" in line(f"docker config {secret.path}")
    for value in (*registry.users.values(), h.services["RUNNER_DEV_REGISTRY_PASSWORD"]):
        assert value not in out.stdout + out.stderr


# == the secrets scan =================================================================================
class ArgvWatch(threading.Thread):
    """Reads every process's argv (/proc/*/cmdline) and parent over and over while a job runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[tuple[int, str], int] = {}  # (pid, argv) -> parent pid
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                    parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                self.seen[(int(proc.name), argv)] = parent
            time.sleep(0.02)

    def everything(self) -> str:
        return "\n".join(argv for _, argv in self.seen)

    def under(self, root: int) -> str:
        """The argv of `root`'s descendants (the worker's: its tools and helpers)."""
        parents = {pid: parent for (pid, _), parent in self.seen.items()}

        def descends(pid: int) -> bool:
            for _ in range(64):
                if pid == root:
                    return True
                if pid not in parents or pid <= 1:
                    return False
                pid = parents[pid]
            return False

        return "\n".join(argv for (pid, argv) in self.seen if descends(pid))


@pytest.mark.parametrize("executor", list(executors("socket", "buildah", "dind")))
def test_no_credential_appears_anywhere(mounted, executor, tmp_path):
    """Every login a job used (a password from the config, an `auths` entry, a helper's answer):
    not in Redis (every value of every type), the job's log, its record, the worker's log, its
    /metrics, `runner doctor` or `config show`, nor in any process's argv while the job ran."""
    h, registry, helper, _ = mounted
    host = registry.by_name if by_name(executor) else registry.loopback
    base = registry.seed(h.services, f"scan/base-{uuid.uuid4().hex[:8]}")
    target = h.registry(SUPPORT[executor].registry_key)
    tags = [f"{target}/creds/scan-{executor}:1", f"{registry.by_name}/scan/{executor}-b:1"]
    if not by_name(executor):
        tags.append(f"{registry.loopback}/scan/{executor}-a:1")
    watch = ArgvWatch()
    watch.start()
    try:
        record = submit(h, context(tmp_path, f"FROM {host}/{base}\nRUN echo scanning-{uuid.uuid4().hex} && sleep 2\n"), executor,
                        *[a for t in tags for a in ("-t", t)])
    finally:
        watch.done.set()
        watch.join(10)
    assert record["status"] == "succeeded", (record, h.cli("logs", record["id"]).stdout[-3000:])
    assert "sleep 2" in watch.everything(), "the scan should have seen the build's own processes"  # a RUN not cached
    # (the shared registry's password is in the argv of other tests' tools on this machine, skopeo's
    # --creds: for it, only the worker's own processes count; the second registry's are this test's alone)
    shared = h.services["RUNNER_DEV_REGISTRY_PASSWORD"]
    secrets = [*registry.users.values(), *(basic(user, password) for user, password in registry.users.items())]
    metrics = httpx.get(f"http://127.0.0.1:{h.config['worker']['metrics_port']}/metrics", timeout=10).text
    places = {
        "redis": every_value(h.store, "unacked*"),
        "job log": h.cli("logs", record["id"]).stdout,
        "record": json.dumps(record) + h.cli("status", record["id"], "--json").stdout,
        "worker log": h.worker_proc.log_path.read_text(),
        "metrics": metrics,
        "config show": h.cli("config", "show").stdout,
        "argv": watch.everything(),
    }
    for where, text in places.items():
        for value in [*secrets, *([shared] if where != "argv" else [])]:
            assert value not in text, f"a credential in {where}"
    assert shared not in watch.under(h.worker_proc.pid), "the shared registry's password in the argv of the worker's processes"
    if executor == "buildah":
        assert "buildah" in watch.under(h.worker_proc.pid)  # the worker's own tools were seen
    assert "runner_" in metrics and record["id"] in places["redis"]  # the places scanned hold the job


# == only the runner's sources ==========================================================================
@pytest.mark.parametrize("executor", list(executors("socket", "buildah")))
def test_the_worker_users_own_docker_login_is_never_used(services, executor, tmp_path):
    """The worker's user has a `docker login` of its own to the shared registry (scripts/services.sh
    logs the host's docker CLI in): a registry the runner's config gives no login is pushed to
    anonymously, and refused, instead of quietly using that one (docker-py loads it when it is
    handed no login at all; containers/image falls back to it from --authfile)."""
    shared = services["RUNNER_DEV_REGISTRY"]
    own = json.loads((Path.home() / ".docker" / "config.json").read_text())
    assert shared in own.get("auths", {}), "the worker's user should have a docker login of its own here"
    settings = Settings(registries=[{"host": shared}], executors={executor: SUPPORT[executor].config(services)},
                        worker={"workspace": str(tmp_path / "work"), "namespace": f"test-{uuid.uuid4().hex[:8]}"})
    job = BuildRequest(tags=[f"{shared}/creds/own-login-{executor}:{uuid.uuid4().hex[:8]}"],
                       builder="classic" if SUPPORT[executor].engine else None)
    context = spooled_context(settings, job, tmp_path / "src", {"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": uuid.uuid4().hex})
    runner = executor_for(settings, executor)
    try:
        with pytest.raises(RegistryAuthFailed):
            runner.run(job, context, ListLog(), CancelToken())
    finally:
        runner.cleanup(job.id)
    with pytest.raises(subprocess.CalledProcessError):  # nothing was pushed
        registry_digest(services, job.tags[0])
