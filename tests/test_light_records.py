"""The plain records of the CLI's light path (runner.core.frozen, in place of dataclasses, whose
import cost ~5 ms of every command) behave as the frozen dataclasses they replace: compared and
hashed by value, unchangeable, and shown without their secrets; an image's repository is read
from its ref as the request rules read it; and a Redis connection does not look redis-py's
version up in the installed metadata (~7 ms of every command)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.config.client_plain import PlainApi, PlainClientSettings, PlainRetention
from runner.config.redis_target import RedisTarget, SentinelSet, TlsFiles
from runner.context.dockerignore import IgnoreLine
from runner.context.ignore_limits import IgnoreLimits
from runner.core.admission_rules import AdmissionPolicy
from runner.core.jobview import ImageView, JobView
from runner.core.platforms import Platform
from runner.core.request_rules import parse_image_ref


def test_records_compare_and_hash_by_value_and_cannot_change():
    a = RedisTarget(url="redis://h:1/2", password="p", tls=TlsFiles(ca_file="ca"), sentinel=SentinelSet("m", (("s", 1),)))
    b = RedisTarget("redis://h:1/2", None, "p", None, TlsFiles("ca"), SentinelSet(master="m", nodes=(("s", 1),)))
    assert a == b and hash(a) == hash(b) and a != RedisTarget(url="redis://h:1/2", password="q")
    assert PlainRetention() != PlainApi() and PlainClientSettings() == PlainClientSettings()
    assert RedisTarget().url == RedisTarget.url == "redis://127.0.0.1:6379/0" and RedisTarget().tls == TlsFiles()
    with pytest.raises(AttributeError):
        a.password = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="missing argument 'master'"):
        SentinelSet()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'colour'"):
        TlsFiles(colour="red")  # type: ignore[call-arg]
    assert JobView({"id": "a"}) == JobView({"id": "a"}) != JobView({"id": "b"})


def test_order_and_default_factories_behave_as_dataclasses():
    """`order=True` orders as dataclass(order=True) does (by the tuple of fields, own class only);
    `field(default_factory=...)` makes a fresh default for each record."""
    a, b, c = Platform("linux", "amd64", "v2"), Platform("linux", "arm64"), Platform("linux", "arm64", "v8")
    assert sorted([c, b, a]) == [a, b, c] and b < c <= c and c > a >= a and not b > c
    with pytest.raises(TypeError):
        assert a < ("linux", "arm64")  # type: ignore[operator]
    one, two = AdmissionPolicy(1, 1, 1, (), "socket"), AdmissionPolicy(1, 1, 1, (), "socket")
    assert one.executors == {} and one.executors is not two.executors and one == two
    assert AdmissionPolicy(1, 1, 1, (), "socket", {"socket": True}).executors == {"socket": True}
    assert IgnoreLine("a", 1, "a") == IgnoreLine("a", 1, "a", ".dockerignore") and IgnoreLimits() == IgnoreLimits(1024**2, 50_000)
    assert repr(IgnoreLimits()) == "IgnoreLimits(max_ignore_file_bytes=1048576, max_ignore_patterns=50000)"


def test_secrets_stay_out_of_repr():
    target = RedisTarget(url="redis://:url-secret@h/0", password="pw-secret",
                         sentinel=SentinelSet("m", (("s", 1),), sentinel_password="sentinel-secret"))
    shown = repr(PlainClientSettings(target=target, api=PlainApi(url="http://api", token="token-secret")))
    assert "secret" not in shown and "master='m'" in shown and "url='http://api'" in shown
    assert repr(TlsFiles()) == "TlsFiles(ca_file=None, cert_file=None, key_file=None, check_hostname=True)"


@pytest.mark.parametrize("ref", ["127.0.0.1:5000/team/app:1.0", "127.0.0.1:5000/team/app", "registry.example.com/a/b/c:v1",
                                 "localhost/app:latest", "reg.io:443/x", "reg.io/a_b/c-d__e:tag_1.2-3"])
def test_an_images_repository_is_the_request_rules_reading(ref):
    registry, repository, _ = parse_image_ref(ref)
    assert ImageView(ref, "sha256:" + "0" * 64, []).repository == f"{registry}/{repository}"


def test_a_redis_connection_does_not_read_the_installed_metadata(redis_url):
    """redis-py looks its version up (importlib.metadata) for CLIENT SETINFO unless it is given."""
    code = ("import redis.utils; from runner.store.jobstore import JobStore; "
            f"store = JobStore({redis_url!r}, 'light-records'); store.ping(); store.view('none'); "
            "print(redis.utils.get_lib_version.cache_info().currsize)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "0"


@pytest.mark.parametrize("env", [{}, {"USERNAME": "d"}, {"LNAME": "c", "USERNAME": "d"}, {"USER": "b", "LNAME": "c"},
                                 {"LOGNAME": "a", "USER": "b"}, {"LOGNAME": "", "USER": "b"}])
def test_the_submitter_is_named_as_getpass_names_it(monkeypatch, env):
    """cli_user finds the user as getpass.getuser() does, without importing getpass (termios)."""
    import getpass
    import socket

    from runner.entry.cli_submit import cli_user

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli_user() == f"cli:{getpass.getuser()}@{socket.gethostname()}"
