"""Real parts only: scripts/services.sh installs and starts Docker Engine, Redis, an
htpasswd registry and buildah; a real `runner worker` process takes the jobs.

Each test session uses its own Redis namespace (keys and queues), so sessions never take
each other's jobs.

The fake executor is a plugin of the tests (tests/plugins/fake), not of the runner: this
session, and every process it starts, has it on the path (`use_fake`); `plain_installation`
takes it away again for a test about what a plain install knows.

`pytest --fast` (`bash scripts/test.sh --fast`) runs only the fast tier: the tests that need no
Docker, registry or buildah, with a throwaway redis-server (tests/support/tiers.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from runner.config.settings import load_settings
from runner.store.jobstore import JobStore
from tests.plugins import PLUGINS, use_fake, without_plugins
from tests.support import all_support, stop, tiers
from tests.support.fleet import OwnRedis

use_fake()

ROOT = Path(__file__).resolve().parent.parent
RUNNER = str(Path(sys.executable).with_name("runner"))
#: the runner installed on Debian's own python3 (3.11.2 on Debian 12) by scripts/venv.sh
DEBIAN_RUNNER = str(ROOT / ".venv-debian" / "bin" / "runner")
WRONG_PASSWORD_HOST = "localhost:5000"  # the same registry, configured with a wrong password


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true",
                     help="only the fast tier (tests/support/tiers.py): no Docker, registry or buildah; a throwaway redis-server")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fast: needs no Docker, registry or buildah (tests/support/tiers.py); set by the conftest")
    config.addinivalue_line("markers", "serial: runs alone, after the modules run side by side (tests/support/tiers.py)")
    if config.getoption("fast"):
        if missing := sorted(m for m in tiers.FAST_MODULES if not (config.rootpath / m).is_file()):
            raise pytest.UsageError(f"tests/support/tiers.py lists test modules that do not exist: {', '.join(missing)}")
        os.environ["DOCKER_HOST"] = tiers.NO_DOCKER


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("fast"):
        return "tier: fast (tests/support/tiers.py): no Docker, registry or buildah; Redis is a throwaway redis-server"
    return "tier: full (every test)"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier does not even import the other test modules (some probe Docker as they load)."""
    if config.getoption("fast") and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return tiers.module_name(collection_path, config.rootpath) not in tiers.FAST_MODULES or None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    fast = [item for item in items if tiers.is_fast(item)]
    for item in fast:
        item.add_marker(pytest.mark.fast)
    for item in items:
        if tiers.is_serial(item):
            item.add_marker(pytest.mark.serial)
    if config.getoption("fast"):
        chosen = set(map(id, fast))
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in chosen])
        items[:] = fast


@pytest.fixture(autouse=True)
def _forget_learned_logins():
    """Registry logins a process learned (credential helpers, docker config files) are masked in
    every later log line of that process (runner.core.process_log.remembered_secrets): a test's
    short made-up secret ("one") must not mask another test's words ("gone", "done")."""
    from runner.core import process_log

    yield
    with process_log._remembered_lock:
        process_log._remembered.clear()


@pytest.fixture(scope="session")
def services(request) -> dict[str, str]:
    if request.config.getoption("fast"):
        pytest.fail("this test uses the services (Docker, the registry, buildah), which the fast tier does not start: "
                    "it belongs to the full suite (tests/support/tiers.py)")
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], check=True, stdout=subprocess.DEVNULL)
    state = Path(os.environ.get("RUNNER_DEV_STATE", "/var/tmp/runner-dev"))
    return dict(line.split("=", 1) for line in (state / "env").read_text().split())


@pytest.fixture
def plain_installation(monkeypatch) -> None:
    """This process, and the processes it starts, as a plain installation of the runner: no
    plugin of the tests (tests/plugins) on sys.path or PYTHONPATH."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not Path(p or ".").resolve().is_relative_to(PLUGINS)])
    plain = without_plugins(dict(os.environ))
    if "PYTHONPATH" in plain:
        monkeypatch.setenv("PYTHONPATH", plain["PYTHONPATH"])
    else:
        monkeypatch.delenv("PYTHONPATH", raising=False)


@pytest.fixture(scope="session")
def redis_url(request, tmp_path_factory):
    """The Redis of tests that need no other service: the shared one (scripts/services.sh) in a
    full run; in the fast tier a throwaway redis-server of this session's own (its own directory,
    a spare loopback port), stopped by its pid at the end."""
    if not request.config.getoption("fast"):
        yield request.getfixturevalue("services")["RUNNER_DEV_REDIS_URL"]
        return
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("the fast tier needs Debian's redis-server and redis-cli (bash scripts/test.sh --fast installs them)")
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def new_store(redis_url):
    """JobStores (JobStore or a subclass) in namespaces of their own, emptied afterwards."""
    made: list[JobStore] = []

    def make(cls: type[JobStore] = JobStore) -> JobStore:
        made.append(cls(redis_url, f"test-{uuid.uuid4().hex[:8]}"))
        return made[-1]

    yield make
    for store in made:
        for key in store.r.scan_iter(f"{store.ns}:*"):
            store.r.delete(key)


def make_config(services: dict[str, str], workdir: Path, namespace: str, **overrides) -> dict:
    user, password = services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"]
    support = all_support()
    config = {
        "redis_url": services["RUNNER_DEV_REDIS_URL"],
        "default_executor": "socket",
        "registries": [
            {"host": services["RUNNER_DEV_REGISTRY"], "username": user, "password": password},
            {"host": services["RUNNER_DEV_REGISTRY_NAME"], "username": user, "password": password, "insecure": True},
            {"host": WRONG_PASSWORD_HOST, "username": user, "password": "wrong-password", "insecure": True},
        ],
        "executors": {name: s.config(services) for name, s in support.items() if s.skip_reason() is None},
        "limits": {"default_timeout": 600, "max_timeout": 1800, "max_context_bytes": 50 * 1024**2},
        # metrics_port 0: test workers leave the default port alone; tests that read /metrics pick one
        "worker": {"namespace": namespace, "workspace": str(workdir / "work"), "concurrency": 2, "metrics_port": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@dataclass
class RunnerHarness:
    """A config file, its store, and helpers to drive the `runner` CLI as a user would."""

    services: dict[str, str]
    workdir: Path
    config: dict
    config_path: Path = field(init=False)
    worker_proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "runner.yml"
        self.config_path.write_text(yaml.safe_dump(self.config))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RUNNER_CONFIG": str(self.config_path)}

    @property
    def settings(self):
        old = os.environ.get("RUNNER_CONFIG")
        os.environ["RUNNER_CONFIG"] = str(self.config_path)
        try:
            return load_settings()
        finally:
            if old is None:
                os.environ.pop("RUNNER_CONFIG")
            else:
                os.environ["RUNNER_CONFIG"] = old

    @property
    def store(self) -> JobStore:
        return JobStore.from_settings(self.settings)

    def cli(self, *args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RUNNER, *args], env=self.env, capture_output=True, text=True, timeout=timeout, input=input)

    def registry(self, key: str = "RUNNER_DEV_REGISTRY") -> str:
        return self.services[key]

    def start_worker(self, *args: str, prefix: tuple[str, ...] = (), runner: str = RUNNER) -> subprocess.Popen:
        """`prefix`: a wrapper command that execs the worker (e.g. unshare), so the pid stays the worker's.
        `runner`: the runner executable (DEBIAN_RUNNER runs the worker on Debian's python3)."""
        log = (self.workdir / f"worker-{uuid.uuid4().hex[:6]}.log").open("w")
        proc = subprocess.Popen([*prefix, runner, "worker", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if " ready." in Path(log.name).read_text():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"worker not ready: {Path(log.name).read_text()[-2000:]}")
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
        stop(proc, sig, wait)


def new_harness(services, tmp_path_factory, **overrides) -> RunnerHarness:
    workdir = tmp_path_factory.mktemp("runner")
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    return RunnerHarness(services, workdir, make_config(services, workdir, namespace, **overrides))


def cleanup_namespace(harness: RunnerHarness) -> None:
    store = harness.store
    try:
        store.ping()
    except Exception:  # noqa: BLE001 - a harness pointed at a dead Redis has nothing to clean
        return
    for key in store.r.scan_iter(f"{store.ns}:*", count=1000):
        store.r.delete(key)
    for pattern in (f"{store.ns}.*", f"_kombu.binding.{store.ns}.*", f"_kombu.binding_permanent.{store.ns}.*"):
        for key in store.r.scan_iter(pattern):
            store.r.delete(key)


@pytest.fixture(scope="session")
def harness(services, tmp_path_factory):
    """The session's runner: config, namespace and one real worker process."""
    h = new_harness(services, tmp_path_factory)
    h.worker_proc = h.start_worker()
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


@pytest.fixture
def make_harness(services, tmp_path_factory):
    """Make extra harnesses (own namespace, config overrides); their workers are stopped after."""
    made = []

    def factory(**overrides) -> RunnerHarness:
        h = new_harness(services, tmp_path_factory, **overrides)
        made.append(h)
        return h

    yield factory
    for h in made:
        if h.worker_proc is not None:
            h.stop_worker(h.worker_proc)
        cleanup_namespace(h)


def wait_cleaned(harness: RunnerHarness, job_id: str, timeout: float = 60) -> None:
    """A job's record is written before its clean-up; the worker drops the job's lease only
    once clean-up is done, so wait for that before looking for leftovers."""
    deadline = time.monotonic() + timeout
    while harness.store.lease_holder(job_id) is not None:
        assert time.monotonic() < deadline, f"job {job_id} still held after {timeout}s"
        time.sleep(0.05)


def registry_digest(services: dict[str, str], ref: str) -> str:
    """What the registry holds for `ref`, read with skopeo (not with our code)."""
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", creds, f"docker://{ref}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)["Digest"]


def run_image(ref: str, *cmd: str) -> str:
    """Pull and run the image on the host engine; return its output."""
    out = subprocess.run(["docker", "run", "--rm", "--pull", "always", ref, *cmd], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    return out.stdout
