"""Redis as production runs it (tests/support/redis_ha.py): a build over TLS with a client
certificate and an ACL user whose password is in a file, and a Sentinel set that fails over in
the middle of a build. Real redis-server and redis-sentinel processes of the test's own; real
workers, builds (the socket executor: Docker Engine) and pushes.

The store-level tests (the password file read at each connection, the settings refused) need
only Redis and run in the fast tier."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from runner.config.client import ClientSettings
from runner.config.loader import SettingsError
from runner.config.settings import Settings
from runner.store.jobstore import JobStore, StoreUnavailable
from runner.store.redis_clients import FailoverWatch, probe_client
from tests.conftest import registry_digest
from tests.support import redis_ha
from tests.support.fleet import start_serve
from tests.support.redis_ha import PASSWORD, USER, LocalCA, Node, SentinelSet
from tests.test_reliability import base, detach, dockerfile, log_of, tag, wait_finished, wait_log


def needs_tools() -> None:
    """The Sentinel and TLS tests need redis-sentinel and openssl besides redis-server."""
    if why := redis_ha.missing_tools():
        pytest.skip(why)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> LocalCA:
    needs_tools()
    return LocalCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_redis(tmp_path, ca):
    node = redis_ha.tls_redis(tmp_path / "tls-redis", ca)
    yield node
    node.stop()


@pytest.fixture
def sentinel_set(tmp_path):
    needs_tools()
    servers = SentinelSet(tmp_path / "sentinel-set")
    yield servers
    servers.stop()


def tls_settings(node: Node, ca: LocalCA, password_file: Path, **tls) -> dict:
    return {"redis_url": f"rediss://127.0.0.1:{node.port}/0", "redis_username": USER, "redis_password_file": str(password_file),
            "redis_tls": {"ca_file": ca.path("ca.crt"), "cert_file": ca.path("client.crt"), "key_file": ca.path("client.key"),
                          **tls}}


def load_client_settings_from(tmp_path: Path, text: str) -> ClientSettings:
    from runner.config.client import load_client_settings

    config = tmp_path / "runner.yml"
    config.write_text(text)
    return load_client_settings(config=config)


def secret_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / f"secret-{uuid.uuid4().hex[:6]}"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


# -- TLS ----------------------------------------------------------------------------------------
def test_a_build_succeeds_over_tls_with_an_acl_user(tls_redis, ca, make_harness, services, tmp_path):
    """The CLI, the worker (its broker too) and `runner serve` (its asyncio log readers) all reach a
    Redis that speaks only TLS, wants a client certificate and knows only the ACL user."""
    h = make_harness(**tls_settings(tls_redis, ca, secret_file(tmp_path, PASSWORD)))
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.socket")
    ref = tag(h, "tls")
    result = h.cli("submit", str(dockerfile(tmp_path, base(services), "RUN echo built-over-tls")), "-t", ref,
                   "--executor", "socket", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{ref}@{registry_digest(services, ref)}"
    [job_id] = re.findall(r"job (\S+) queued", re.sub(r"\x1b\[[0-9;]*m", "", result.stderr))
    serve = start_serve(h)
    try:
        ready = httpx.get(f"{serve.url}/readyz", timeout=5)  # its asyncio client asked Redis over TLS
        assert ready.status_code == 200, ready.text
    finally:
        serve.stop()
    assert "built-over-tls" in log_of(h, job_id)
    doctor = h.cli("doctor")
    assert re.search(r"ok +redis: .*rediss://runner@127\.0\.0\.1", doctor.stdout), doctor.stdout


def test_tls_failures_say_what_is_wrong(tls_redis, ca, tmp_path):
    """No client certificate, a CA that did not sign the server's, plain TCP on the TLS port,
    the wrong password: each is refused, and the error names Redis without its password."""
    good = tls_settings(tls_redis, ca, secret_file(tmp_path, PASSWORD))
    assert JobStore.from_settings(ClientSettings.model_validate(good)).r.ping()
    other_ca = LocalCA(tmp_path / "other-ca")
    cases = {
        "no client certificate": {**good, "redis_tls": {"ca_file": ca.path("ca.crt")}},
        "another CA": {**good, "redis_tls": {**good["redis_tls"], "ca_file": other_ca.path("ca.crt")}},
        "plain TCP": {**good, "redis_url": f"redis://127.0.0.1:{tls_redis.port}/0"},
        "wrong password": {**good, "redis_password_file": str(secret_file(tmp_path, "not-the-password"))},
    }
    for why, settings in cases.items():
        store = JobStore.from_settings(ClientSettings.model_validate(settings))
        with pytest.raises(StoreUnavailable) as refused:
            store.ping()
        assert f"127.0.0.1:{tls_redis.port}" in str(refused.value), why
        assert PASSWORD not in str(refused.value) and "not-the-password" not in str(refused.value), why


# -- credentials (fast tier: only Redis) ----------------------------------------------------------
@pytest.fixture
def acl_redis(tmp_path):
    node = Node(tmp_path / "acl-redis", redis_ha.acl_lines(PASSWORD)).start()
    redis_ha.wait_for(lambda: _pings(node), 10, "ACL redis up")
    yield node
    node.stop()


def _pings(node: Node) -> bool:
    try:
        return bool(node.client(username=USER, password=PASSWORD).ping())
    except redis.RedisError:
        return False


def test_the_password_file_is_read_at_each_connection(acl_redis, tmp_path):
    """Rotate the ACL user's password and the file: the same store's next connection uses the
    new one (no restart); nothing reads the password once and keeps it."""
    password_file = secret_file(tmp_path, PASSWORD)
    settings = ClientSettings.model_validate({"redis_url": f"redis://127.0.0.1:{acl_redis.port}/0", "redis_username": USER,
                                              "redis_password_file": str(password_file)})
    store = JobStore.from_settings(settings)
    store.r.set("before", "1")
    admin = acl_redis.client(username=USER, password=PASSWORD)
    admin.execute_command("ACL", "SETUSER", USER, "resetpass", ">rotated-password-1")
    with pytest.raises(redis.AuthenticationError):  # a client that never retries: the file still holds the old one
        probe_client(settings.redis_target(), 2).ping()
    password_file.write_text("rotated-password-1\n")
    store.r.connection_pool.disconnect()
    assert store.r.get("before") == "1"  # the same store, a new connection: the new password
    assert "rotated-password-1" in settings.redis_target().secrets()


def test_redis_settings_are_checked_when_loaded(tmp_path):
    with pytest.raises(ValueError, match="redis_password and redis_password_file are both set"):
        ClientSettings.model_validate({"redis_password": "a", "redis_password_file": str(tmp_path / "f")})
    with pytest.raises(ValueError, match="port must be a number"):
        ClientSettings.model_validate({"redis_sentinel": {"master": "m", "sentinels": ["host:port"]}})
    with pytest.raises(ValueError, match="key_file is set without cert_file"):
        ClientSettings.model_validate({"redis_tls": {"key_file": "/k"}})
    with pytest.raises(ValueError, match="sentinel_pasword"):  # a typo inside the section is refused
        Settings.model_validate({"redis_sentinel": {"master": "m", "sentinels": ["h:1"], "sentinel_pasword": "x"}})
    target = ClientSettings.model_validate({"redis_sentinel": {"master": "m", "sentinels": ["[::1]:26380", "h"],
                                                               "sentinel_password": "s3cret-sentinel", "db": 2}}).redis_target()
    assert target.sentinel.nodes == (("::1", 26380), ("h", 26379)) and target.db == 2
    assert "s3cret-sentinel" in target.secrets() and "s3cret" not in target.describe() + repr(target)
    with pytest.raises(SettingsError, match="sentinels"):
        load_client_settings_from(tmp_path, "redis_sentinel: {master: m, sentinels: []}\n")


# -- Sentinel -----------------------------------------------------------------------------------
def test_sentinel_failover_in_the_middle_of_a_build(sentinel_set, make_harness, services, tmp_path):
    """SENTINEL FAILOVER while a build runs: the build and the next job succeed, each built
    once (one attempt, one start in its log, the registry holds its digest), and nothing is
    left in the queue or in kombu's unacked messages to run again later."""
    h = make_harness(**sentinel_set.config())
    queue = f"{h.config['worker']['namespace']}.socket"
    h.worker_proc = h.start_worker("--queues", queue)
    first_ref, second_ref = tag(h, "failover-1"), tag(h, "failover-2")
    first = detach(h, dockerfile(tmp_path, base(services), "RUN echo before-failover && sleep 3 && echo after-failover"),
                   "-t", first_ref, "--executor", "socket")
    wait_log(h, first, "before-failover")
    old_master = sentinel_set.master_port()
    new_master = sentinel_set.failover()
    assert new_master != old_master
    done = wait_finished(h, first, 120)
    assert done["status"] == "succeeded", done["error"]
    second = detach(h, dockerfile(tmp_path, base(services), "RUN echo next-job"), "-t", second_ref, "--executor", "socket")
    assert wait_finished(h, second, 120)["status"] == "succeeded"
    for job_id, ref in ((first, first_ref), (second, second_ref)):
        final = h.store.get(job_id)
        assert final is not None and final.status.value == "succeeded" and final.attempts == 1
        assert final.images[0].digest == registry_digest(services, ref)
        log = log_of(h, job_id)
        assert log.count("[runner] job ") == 1 and log.count("[runner] succeeded") == 1, log
    assert "after-failover" in log_of(h, first)
    new = redis.Redis(port=new_master, username=USER, password=PASSWORD)
    assert new.llen(queue) == 0 and new.hlen("unacked") == 0, "a message left to be delivered again"
    status = h.cli("status", first)
    assert status.returncode == 0 and "succeeded" in status.stdout  # the CLI finds the new master too
    serve = start_serve(h)
    try:  # runner serve's asyncio client asks the sentinels too
        ready = httpx.get(f"{serve.url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
    finally:
        serve.stop()
    log = h.worker_proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "moved (Sentinel failover)" in log and PASSWORD not in log


@pytest.mark.slow  # a Sentinel set takes seconds to start: not in the fast tier
def test_unknown_sentinel_master_is_a_clear_error(sentinel_set):
    settings = ClientSettings.model_validate({**sentinel_set.config(), "redis_sentinel": {
        **sentinel_set.config()["redis_sentinel"], "master": "no-such-master"}})
    with pytest.raises(StoreUnavailable, match="master 'no-such-master'.* is unreachable: No master found"):
        JobStore.from_settings(settings).ping()



@pytest.mark.slow  # a Sentinel set takes seconds to start: not in the fast tier
def test_sentinel_over_tls_follows_a_failover(tmp_path, ca):
    """Sentinels and data nodes that speak only TLS (`redis_sentinel.tls` with `redis_tls`):
    the store finds the master through them, and follows a failover (FailoverWatch over TLS)."""
    servers = SentinelSet(tmp_path / "tls-set", ca)
    try:
        settings = ClientSettings.model_validate(servers.config())
        store = JobStore.from_settings(settings)
        store.r.set("before", "1")
        watch = FailoverWatch(settings.redis_target(), store.clients())
        watch.start()
        try:
            servers.failover()
            redis_ha.wait_for(lambda: watch.switches, 10, "the watch to see the new master")
            store.r.set("after", "2")
            new = redis.Redis(port=servers.master_port(), username=USER, password=PASSWORD, **servers.tls())
            assert new.get("before") == b"1" and new.get("after") == b"2"
        finally:
            watch.stop()
    finally:
        servers.stop()
