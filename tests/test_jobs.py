"""The job model rejects bad requests with a message naming the field."""

import pytest
from pydantic import ValidationError

from runner.config.loader import describe_errors
from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, ImageRef
from runner.core.request_rules import inside_context
from runner.worker.admission import QUEUE, Rejected, admit, parse_request


def rejected_field(data) -> str:
    with pytest.raises(Rejected) as info:
        parse_request(data)
    return info.value.field


@pytest.mark.parametrize("data, field", [
    ({"tags": ["127.0.0.1:5000/a:1"], "colour": "red"}, "colour"),
    ({"tags": []}, "tags"),
    ({}, "tags"),
    ({"tags": ["no-registry/app:1"]}, "tags"),
    ({"tags": ["127.0.0.1:5000/UPPER:1"]}, "tags"),
    ({"tags": ["127.0.0.1:5000/a:bad tag"]}, "tags"),
    ({"tags": ["127.0.0.1:5000/a:1", "127.0.0.1:5000/a:1"]}, "tags"),
    ({"tags": ["127.0.0.1:5000/a:1"], "dockerfile": "../Dockerfile"}, "dockerfile"),
    ({"tags": ["127.0.0.1:5000/a:1"], "dockerfile": "/etc/passwd"}, "dockerfile"),
    ({"tags": ["127.0.0.1:5000/a:1"], "id": "../../etc"}, "id"),
    ({"tags": ["127.0.0.1:5000/a:1"], "timeout": 0}, "timeout"),
    ({"tags": ["127.0.0.1:5000/a:1"], "build_args": {"BAD NAME": "x"}}, "build_args"),
    ({"tags": ["127.0.0.1:5000/a:1"], "build_args": {"BIG": "x" * 70000}}, "build_args"),
    ({"tags": ["127.0.0.1:5000/a:1"], "secret_build_args": ["MISSING"]}, "secret_build_args"),
    ({"tags": ["127.0.0.1:5000/a:1"], "context": {"type": "git", "url": "file:///x"}}, "context.git"),
    ({"tags": ["127.0.0.1:5000/a:1"], "context": {"type": "ftp"}}, "context"),
])
def test_invalid_requests_name_the_field(data, field):
    assert rejected_field(data).startswith(field)


def test_what_pydantic_found_is_said_by_field_path_without_its_prefix():
    """One helper (runner.core.validation) says it for every door: a refused request names the
    dotted field (or the whole request) and the validator's own words, without pydantic's
    "Value error, "; so do a settings error inside an executor's section and each config line."""
    with pytest.raises(Rejected) as info:
        parse_request({"tags": ["127.0.0.1:5000/a:1"], "context": {"type": "git", "url": "file:///x"}})
    assert (info.value.field, info.value.message) == ("context.git", "a git context needs `ref` or `commit`")
    with pytest.raises(Rejected) as info:
        parse_request({"tags": ["127.0.0.1:5000/a:1"], "build_args": {f"A{i}": "x" * 60000 for i in range(5)}})
    assert info.value.field == "request" and info.value.message.startswith("build_args and labels hold 300,010 bytes")
    with pytest.raises(ValidationError) as error:
        Settings(executors={"socket": {"enabled": "maybe"}})
    assert describe_errors(error.value, {("executors",): "RUNNER_EXECUTORS"}) == (
        "executors: socket.enabled: Input should be a valid boolean, unable to interpret input (from RUNNER_EXECUTORS)")


def test_image_ref_parsing():
    ref = ImageRef.parse("registry.example.com:443/team/app")
    assert (ref.registry, ref.repository, ref.tag) == ("registry.example.com:443", "team/app", "latest")
    assert str(ImageRef.parse("localhost/app:v1.2")) == "localhost/app:v1.2"


def test_dockerfile_path_is_normalised_inside_context():
    assert inside_context("docker/./x/../Dockerfile") == "docker/Dockerfile"
    assert BuildRequest(tags=["127.0.0.1:5000/a:1"], dockerfile="./sub/Dockerfile").dockerfile == "sub/Dockerfile"


def test_secret_build_args_are_redacted_in_the_stored_copy():
    request = BuildRequest(tags=["127.0.0.1:5000/a:1"], build_args={"TOKEN": "s3cr3t", "MODE": "x"}, secret_build_args=["TOKEN"])
    assert request.redacted().build_args == {"TOKEN": "***", "MODE": "x"}
    assert request.secret_values() == ["s3cr3t"]


def settings(**kw) -> Settings:
    base = {"registries": [{"host": "127.0.0.1:5000"}], "executors": {"socket": {"enabled": True}}, "default_executor": "socket"}
    return Settings(**{**base, **kw})


@pytest.mark.parametrize("data, field", [
    ({"tags": ["other.example.com/a:1"]}, "tags.0"),
    ({"tags": ["127.0.0.1:5000/a:1", "10.0.0.1:5000/b:1"]}, "tags.1"),
    ({"tags": ["127.0.0.1:5000/a:1"], "executor": "nope"}, "executor"),
    ({"tags": ["127.0.0.1:5000/a:1"], "executor": "buildah"}, "executor"),
    ({"tags": ["127.0.0.1:5000/a:1"], "timeout": 10**6}, "timeout"),
    ({"tags": ["127.0.0.1:5000/a:1"], "secrets": ["npmrc"]}, "secrets"),
    ({"tags": [f"127.0.0.1:5000/a:{n}" for n in range(40)]}, "tags"),
])
def test_admission_against_config(data, field):
    with pytest.raises(Rejected) as info:
        admit(parse_request(data), settings(), QUEUE)
    assert info.value.field == field
    assert info.value.message


def test_credentials_in_a_git_url_never_reach_the_stored_copy():
    request = BuildRequest(tags=["127.0.0.1:5000/a:1"], context={"type": "git", "url": "https://bot:tok3n@git.example/x.git", "ref": "main"})
    assert request.redacted().context.url == "https://***@git.example/x.git"


def test_admission_refuses_git_urls_with_credentials_or_bad_schemes():
    for url, words in (("https://bot:tok3n@git.example/x.git", "password or token"), ("ext::sh -c evil", "does not allow")):
        with pytest.raises(Rejected) as info:
            admit(parse_request({"tags": ["127.0.0.1:5000/a:1"], "context": {"type": "git", "url": url, "ref": "main"}}), settings(), QUEUE)
        assert info.value.field == "context.url" and words in info.value.message
