"""Where registry logins come from (runner/core/registry_auth.py): Docker config files read as
the Docker CLI reads them (its host matching and test tables ported from docker/cli), credential
helpers spoken to over the docker-credential-helpers protocol (a real helper executable of the
tests, tests/support/credentials.py), the order the sources win, how long a helper's answer is
kept, and that no secret reaches an error, a log line or argv. Fast tier: no Docker, no registry."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from runner.config.settings import Settings
from runner.core.credential_helper import HelperFailed
from runner.core.docker_config import (
    INDEX_SERVER,
    DockerConfigError,
    DockerConfigFile,
    auth_key,
    convert_to_hostname,
    decode_auth,
    parse,
)
from runner.core.errors import InfrastructureError
from runner.core.jobs import ImageRef
from runner.core.process_log import Redactor, remembered_secrets
from runner.core.registry_auth import CredentialResolver, CredentialsUnavailable
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig
from tests.support import ListLog
from tests.support.credentials import TestHelper, basic

HOST = "registry.example.test:5000"


# -- docker/cli: ConvertToHostname (cli/config/credentials/file_store_test.go) -----------------------
@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
    ("[::1]", "[::1]"),
    ("example.com", "example.com"),
    ("http://example.com", "example.com"),
    ("https://example.com", "example.com"),
    ("https://example.com/", "example.com"),
    ("https://example.com/v2/", "example.com"),
    ("unix:///var/run/docker.sock", "unix:"),
    ("ftp://example.com", "example.com"),
    ("127.0.0.1:6556", "127.0.0.1:6556"),
    ("::1:6556", "::1:6556"),
    ("[::1]:6556", "[::1]:6556"),
    ("example.com:6555", "example.com:6555"),
    ("https://127.0.0.1:6555/v2/", "127.0.0.1:6555"),
    ("https://::1:6555/v2/", "[::1]:6555"),
    ("https://[::1]:6555/v2/", "[::1]:6555"),
    ("http://example.com:6555", "example.com:6555"),
    ("https://example.com:6555", "example.com:6555"),
    ("https://example.com:6555/v2/", "example.com:6555"),
])
def test_convert_to_hostname_as_docker_cli(given, expected):
    assert convert_to_hostname(given) == expected


def test_docker_hub_is_kept_under_the_index_server_key():
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert auth_key(name) == INDEX_SERVER
    assert auth_key("ghcr.io") == "ghcr.io" and auth_key("127.0.0.1:5000") == "127.0.0.1:5000"


# -- docker/cli: decodeAuth and LoadFromReader (cli/config/configfile) -------------------------------
def test_auth_decodes_user_and_password_and_wins_over_the_fields():
    assert decode_auth(basic("user", "pass")) == ("user", "pass")
    assert decode_auth(basic("user", "pa:ss")) == ("user", "pa:ss")  # the first colon splits
    for both in ({"username": "user", "password": "pass"}, {"auth": basic("user", "pass")},
                 {"auth": basic("user", "pass"), "username": "other", "password": "other"}):
        entry = parse(json.dumps({"auths": {"example.com/foo": both}}), "f").entry_for("example.com/foo")
        assert entry is not None and (entry.username, entry.password) == ("user", "pass")


@pytest.mark.parametrize("bad", ["not base64!", basic("", "pass"), "dXNlcg=="])  # not b64, no user, no colon
def test_an_auth_that_is_not_user_colon_password_is_refused_without_showing_it(bad):
    with pytest.raises(DockerConfigError) as caught:
        parse(json.dumps({"auths": {HOST: {"auth": bad}}}), "registry_auth.docker_config[0]")
    assert "registry_auth.docker_config[0]" in str(caught.value) and HOST in str(caught.value)
    assert bad not in str(caught.value)


def test_a_file_that_is_not_a_config_is_refused_naming_the_setting_not_its_content():
    for text, why in (('{"auths": {"h": {"auth": "c2VjcmV0LXZhbHVl"', "not valid JSON"), ("[1]", "not a JSON object"),
                      ('{"credHelpers": {"h": "../bin/evil"}}', "not a credential helper name"),
                      ('{"credsStore": "a b"}', "not a credential helper name"),
                      ('{"auths": {"h": {"auth": 5}}}', "must be strings")):
        with pytest.raises(DockerConfigError, match=why) as caught:
            parse(text, "registry_auth.docker_config[1]")
        assert "c2VjcmV0LXZhbHVl" not in str(caught.value)


def test_lookup_by_exact_key_then_by_hostname_of_legacy_keys():
    config = parse(json.dumps({"auths": {
        "https://legacy.example.com/v1/": {"auth": basic("old", "one")},
        "https://index.docker.io/v1/": {"auth": basic("hub", "two")},
        "example.com": {"identitytoken": "refresh-token"},
    }}), "f")
    assert config.entry_for("legacy.example.com").username == "old"
    for hub in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert config.entry_for(hub).username == "hub"
    token = config.entry_for("example.com")
    assert token.identity_token == "refresh-token" and not token.username
    assert config.entry_for("other.example.com") is None
    assert config.entry_for("legacy.example.com:443") is None  # a port is part of the name, as for Docker


def test_the_legacy_dockercfg_layout_is_read():
    config = parse(json.dumps({HOST: {"auth": basic("u", "p"), "email": "x@example.com"}}), "f")
    assert config.entry_for(HOST).password == "p"


def test_cred_helpers_win_over_creds_store_which_wins_over_auths():
    """GetCredentialsStore: credHelpers[host], else credsStore, else the file's auths."""
    config = parse(json.dumps({"credsStore": "store", "credHelpers": {HOST: "helper"},
                               "auths": {HOST: {"auth": basic("u", "p")}, "other": {"auth": basic("u", "p")}}}), "f")
    assert config.helper_for(HOST) == "helper"
    assert config.helper_for("other") == "store"
    assert parse(json.dumps({"auths": {"other": {}}}), "f").helper_for("other") is None
    assert parse(json.dumps({"credHelpers": {INDEX_SERVER: "hub-helper"}}), "f").helper_for("registry-1.docker.io") == "hub-helper"


def test_a_config_file_is_parsed_again_only_when_it_changes(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {HOST: {"auth": basic("u", "first")}}}))
    file = DockerConfigFile(path, "registry_auth.docker_config[0]")
    first = file.read()
    assert file.read() is first  # unchanged: not parsed again
    new = tmp_path / "config.json.new"
    new.write_text(json.dumps({"auths": {HOST: {"auth": basic("u", "second")}}}))
    new.replace(path)  # a rotated secret: a new file under the same name
    assert file.read().entry_for(HOST).password == "second"
    path.write_text("{broken")
    with pytest.raises(DockerConfigError, match="not valid JSON"):
        file.read()
    path.unlink()
    with pytest.raises(DockerConfigError, match="cannot read it: No such file"):
        file.read()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text(json.dumps({"auths": {HOST: {"auth": basic("u", "in-dir")}}}))
    assert DockerConfigFile(tmp_path / "dir", "w").read().entry_for(HOST).password == "in-dir"  # a DOCKER_CONFIG folder


# -- the settings -----------------------------------------------------------------------------------
def test_a_registry_takes_one_source_and_a_helper_name_without_a_path():
    with pytest.raises(ValueError, match="credential_helper or username/password, not both"):
        RegistryConfig(host=HOST, credential_helper="ecr-login", username="u", password="p")
    with pytest.raises(ValueError, match="is not a helper name"):
        RegistryConfig(host=HOST, credential_helper="../../bin/sh")
    assert Settings(registry_auth={"docker_config": "/x/config.json"}).registry_auth.docker_config == [Path("/x/config.json")]


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def helper(tmp_path, monkeypatch) -> TestHelper:
    helper = TestHelper(tmp_path / "helper")
    monkeypatch.setenv("PATH", helper.path_env())
    return helper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sources_win_in_the_documented_order(tmp_path, helper):
    """username/password (or password_file) > the registry's credential_helper > each
    docker_config file in order (credHelpers > credsStore > auths) > anonymous."""
    helper.answer({HOST: {"Username": "from-helper", "Secret": "helper-secret"}})
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"auths": {"other.test": {"auth": basic("first-file", "s1")}}}))
    second.write_text(json.dumps({"auths": {HOST: {"auth": basic("second-file", "s2")},
                                            "other.test": {"auth": basic("second-file", "s3")}}}))
    password_file = tmp_path / "password"
    password_file.write_text("file-secret\n")
    auth = RegistryAuthConfig(docker_config=[first, second])

    def resolved(registry: RegistryConfig | None, host: str = HOST) -> tuple[str, str, str] | None:
        found = CredentialResolver([registry] if registry else [], auth).lookup(host)
        return (found.username, found.secret, found.source) if found else None

    assert resolved(RegistryConfig(host=HOST, username="u", password="inline")) == ("u", "inline", "password")
    assert resolved(RegistryConfig(host=HOST, username="u", password_file=password_file)) == ("u", "file-secret", "password_file")
    assert resolved(RegistryConfig(host=HOST, credential_helper="test")) == ("from-helper", "helper-secret", "credential helper test")
    assert resolved(RegistryConfig(host=HOST)) == ("second-file", "s2", "registry_auth.docker_config[1] (auths)")
    assert resolved(None, "other.test") == ("first-file", "s1", "registry_auth.docker_config[0] (auths)")
    assert resolved(None, "nobody.test") is None
    first.write_text(json.dumps({"credHelpers": {HOST: "test"}, "auths": {HOST: {"auth": basic("x", "y")}}}))
    assert resolved(None) == ("from-helper", "helper-secret", "registry_auth.docker_config[0] (credHelpers: test)")
    first.write_text(json.dumps({"credsStore": "test", "auths": {HOST: {"auth": basic("x", "y")}}}))
    assert resolved(None) == ("from-helper", "helper-secret", "registry_auth.docker_config[0] (credsStore: test)")
    helper.answer({})  # the store has nothing for it: Docker then stays anonymous for that file; the next file answers
    assert resolved(None) == ("second-file", "s2", "registry_auth.docker_config[1] (auths)")


def test_the_helper_is_asked_with_the_server_on_stdin_and_its_token_answer_is_an_identity_token(helper):
    helper.answer({HOST: {"Username": "<token>", "Secret": "refresh-token-1"}, INDEX_SERVER: {"Username": "hub", "Secret": "h"}})
    found = CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")]).lookup(HOST)
    assert found.identity_token and found.secret == "refresh-token-1" and found.username == ""
    hub = CredentialResolver([RegistryConfig(host="docker.io", credential_helper="test")]).lookup("registry-1.docker.io")
    assert (hub.username, hub.secret) == ("hub", "h")
    assert helper.calls() == [HOST, INDEX_SERVER]  # Docker Hub is asked for by its index server key


def test_an_answer_is_kept_for_cache_seconds_then_asked_again_and_forgotten_after_a_refusal(helper):
    helper.answer({HOST: {"Username": "u", "Secret": "one"}})
    clock = Clock()
    resolver = CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")],
                                  RegistryAuthConfig(cache_seconds=60), clock=clock)
    assert resolver.lookup(HOST).secret == "one"
    helper.answer({HOST: {"Username": "u", "Secret": "two"}})
    clock.now += 59
    assert resolver.lookup(HOST).secret == "one" and len(helper.calls()) == 1  # kept
    clock.now += 2
    assert resolver.lookup(HOST).secret == "two" and len(helper.calls()) == 2  # expired: asked again
    helper.answer({HOST: {"Username": "u", "Secret": "three"}})
    assert resolver.forget(HOST) is True  # the registry refused "two"
    assert resolver.lookup(HOST).secret == "three" and len(helper.calls()) == 3
    assert resolver.forget("elsewhere.test") is False
    resolver.forget_all()
    assert resolver.lookup(HOST).secret == "three" and len(helper.calls()) == 4
    every_use = CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")], RegistryAuthConfig(cache_seconds=0))
    every_use.lookup(HOST)
    every_use.lookup(HOST)
    assert len(helper.calls()) == 6


def test_a_helper_with_nothing_for_the_registry_means_anonymous(helper):
    helper.answer({})
    assert CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")]).lookup(HOST) is None


@pytest.mark.parametrize(("answer", "why"), [
    ("fail", "failed for registry registry.example.test:5000 (exit status 1)"),
    ("garbage", "answered for registry registry.example.test:5000 with something that is not"),
])
def test_a_failing_helper_is_an_infrastructure_error_naming_it_and_the_registry_never_its_output(helper, answer, why):
    helper.answer({HOST: answer})
    with pytest.raises(InfrastructureError) as caught:
        CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")]).lookup(HOST)
    message = caught.value.message
    assert isinstance(caught.value, HelperFailed) and caught.value.kind == "infrastructure"
    assert "docker-credential-test" in message and why in message
    assert "helper-leak" not in message and "not json" not in message


def test_a_hanging_helper_is_stopped_with_its_children_after_helper_timeout(helper):
    helper.answer({HOST: "hang"})
    resolver = CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")], RegistryAuthConfig(helper_timeout=1))
    with pytest.raises(HelperFailed, match=r"docker-credential-test \(get\) for registry registry.example.test:5000 "
                                           r"did not answer within 1 s"):
        resolver.lookup(HOST)
    child = int((helper.folder / "hang.pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
        assert time.monotonic() < deadline, "the helper's child outlived it"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_a_missing_helper_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HelperFailed, match="docker-credential-ecr-login is not installed"):
        CredentialResolver([RegistryConfig(host=HOST, credential_helper="ecr-login")]).lookup(HOST)


def test_an_unreadable_source_fails_the_lookup_naming_the_setting_not_the_path(tmp_path):
    missing = tmp_path / "secret-dir" / "password"
    resolver = CredentialResolver([RegistryConfig(host=HOST, username="u", password_file=missing)])
    with pytest.raises(CredentialsUnavailable, match=f"registry {HOST}: password_file: cannot read it") as caught:
        resolver.lookup(HOST)
    assert "secret-dir" not in caught.value.message
    broken = tmp_path / "config.json"
    broken.write_text("{")
    with pytest.raises(CredentialsUnavailable, match=f"registry {HOST}: registry_auth.docker_config\\[0\\]: not valid JSON"):
        CredentialResolver([], RegistryAuthConfig(docker_config=[broken])).lookup(HOST)


def test_every_registry_a_build_may_pull_from_and_a_failing_one_only_warned_about(tmp_path, helper):
    """GetAllCredentials: the auths, each credHelpers entry, and what the credsStore lists; a
    helper failing for one registry leaves that one out (a warning), not the others."""
    helper.answer({"store.test": {"Username": "s", "Secret": "store-secret"}, "helped.test": {"Username": "h", "Secret": "hs"},
                   "broken.test": "fail"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "test", "credHelpers": {"helped.test": "test", "broken.test": "test"},
                                  "auths": {"https://index.docker.io/v1/": {"auth": basic("hub", "hp")}}}))
    resolver = CredentialResolver([RegistryConfig(host=HOST, username="u", password="p"), RegistryConfig(host="anon.test"),
                                   RegistryConfig(host="index.docker.io", username="hub-user", password="hub-password")],
                                  RegistryAuthConfig(docker_config=[config]))
    warnings: list[str] = []
    found = resolver.everything(warnings.append)
    assert {host: (c.username, c.secret) for host, c in found.items()} == {  # Docker Hub once, by one name
        HOST: ("u", "p"), "docker.io": ("hub-user", "hub-password"), "store.test": ("s", "store-secret"),
        "helped.test": ("h", "hs")}
    assert [w for w in warnings if "broken.test" in w and "docker-credential-test" in w and "helper-leak" not in w]
    assert "list" in [line.split(" ")[1] for line in (helper.folder / "calls.log").read_text().splitlines()]


def test_what_the_resolver_hands_out_is_masked_in_process_logs(helper):
    helper.answer({HOST: {"Username": "u", "Secret": "process-log-secret-xyz"}})
    CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")]).lookup(HOST)
    assert "process-log-secret-xyz" in remembered_secrets()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "leaked %s", ("process-log-secret-xyz",), None)
    Redactor().filter(record)
    assert record.getMessage() == "leaked ***"


def test_helpers_get_the_server_on_stdin_never_in_argv(helper, tmp_path):
    """The helper's argv is `get` alone (the protocol); the secret travels on its stdout only."""
    spy = helper.folder / "docker-credential-spy"
    spy.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n"
                   'echo \'{"Username": "u", "Secret": "s3cr3t-value"}\'\n')
    spy.chmod(0o755)
    CredentialResolver([RegistryConfig(host=HOST, credential_helper="spy")]).lookup(HOST)
    assert (tmp_path / "argv").read_text().strip() == "get"
    assert (tmp_path / "stdin").read_text() == HOST


def test_check_push_logins_fails_before_building_and_masks(helper):
    from executors.daemonless.common import check_push_logins
    from runner.core.registry_client import Registries

    helper.answer({HOST: {"Username": "u", "Secret": "push-secret"}, "down.test": "fail"})
    registries = Registries([RegistryConfig(host=HOST, credential_helper="test"),
                             RegistryConfig(host="down.test", credential_helper="test")])
    log = ListLog()
    check_push_logins(registries, [ImageRef.parse(f"{HOST}/app:1")], log)
    assert log.secrets == ["push-secret"]
    with pytest.raises(HelperFailed, match="down.test"):
        check_push_logins(registries, [ImageRef.parse("down.test/app:1")], log)


def test_helper_environment_is_the_workers(helper, monkeypatch, tmp_path):
    """Cloud helpers read their identity from the environment (AWS_*, GOOGLE_*, AZURE_*): they get the worker's."""
    spy = helper.folder / "docker-credential-env"
    spy.write_text(f"#!/bin/sh\nprintf %s \"$AWS_ROLE_ARN\" > {tmp_path}/role\ncat >/dev/null\n"
                   'echo \'{"Username": "AWS", "Secret": "token-value"}\'\n')
    spy.chmod(0o755)
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123:role/runner")
    CredentialResolver([RegistryConfig(host=HOST, credential_helper="env")]).lookup(HOST)
    assert (tmp_path / "role").read_text() == "arn:aws:iam::123:role/runner"
    assert os.environ["AWS_ROLE_ARN"]


def test_a_job_refused_by_a_registry_has_every_kept_answer_asked_again(helper):
    """The worker's listener: a job that ended on refused credentials (kind auth, or a build whose
    pull was refused) drops the helpers' kept answers; any other ending keeps them."""
    from runner.core.jobs import BuildRequest, JobError, JobRecord, Status
    from runner.core.registry_client import Registries
    from runner.worker.worker import RefusedLogins

    helper.answer({HOST: {"Username": "u", "Secret": "kept"}})
    registries = Registries([RegistryConfig(host=HOST, credential_helper="test")], RegistryAuthConfig(cache_seconds=3600))
    listener = RefusedLogins(registries)
    request = BuildRequest(tags=[f"{HOST}/app:1"])

    def finished(kind: str, message: str) -> None:
        record = JobRecord(id=request.id, request=request, executor="socket", queue="q", status=Status.failed,
                           error=JobError(kind=kind, message=message))
        listener.job_finished(record, request)

    registries.credentials.lookup(HOST)
    finished("build", "build failed at RUN make: exit 2")
    registries.credentials.lookup(HOST)
    assert len(helper.calls()) == 1  # kept
    finished("auth", "registry refused the push")
    registries.credentials.lookup(HOST)
    finished("build", "failed to solve: pull access denied: unauthorized: authentication required")
    registries.credentials.lookup(HOST)
    assert len(helper.calls()) == 3  # asked again after each refusal
