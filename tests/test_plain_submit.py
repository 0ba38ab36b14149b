"""One admission rule for `runner submit` through Redis: the CLI's light path (the request read
by runner.core.plain_request, the config by runner.config.client_plain, admission's checks by
runner.core.admission_rules) refuses exactly what the worker's admission (the models,
runner.worker.admission) refuses, naming the same field with the same words, and writes the
record, secret values and message the models' JobStore.submit writes, byte for byte."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
import yaml

from runner.config.settings import load_settings
from runner.config.submit_plain import load_plain_submit_settings
from runner.core.admission_rules import NeedsModels, Rejected, check_admission
from runner.core.plain_request import plain_request, queued_record, record_text, redacted, secret_arg_values
from runner.core.status import Status
from runner.store import jobstate
from runner.worker.admission import QUEUE, admit, parse_request

REGISTRY = "127.0.0.1:5000"
CONFIG = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "default_executor": "socket",
    "registries": [{"host": REGISTRY, "username": "ci", "password": "x"}, {"host": "registry.runner.test:5000"}],
    "executors": {"socket": {"enabled": True}, "buildah": {"enabled": False}, "dind": None},
    "limits": {"max_tags": 3, "max_platforms": 2, "max_timeout": 100, "max_log_lines": 10},
    "build_secrets": {"npm": "token-value"},
}
TAG = f"{REGISTRY}/team/app:1"
BIG = "x" * 60_000  # under a value's own cap; five of them are over the total's


def base(**fields) -> dict:
    """A request as the CLI builds it (cmd_submit's payload), with `fields` over it."""
    payload = {"dockerfile": "Dockerfile", "tags": [TAG], "build_args": {}, "secret_build_args": [], "secrets": [],
               "target": None, "labels": {}, "executor": None, "builder": None, "push": True, "no_cache": False,
               "timeout": None, "id": "job-1"}
    payload.update(fields)
    return {key: value for key, value in payload.items() if value is not ...}


#: (what is wrong, the request): every one refused, by both
BAD = [
    ("id: capitals", base(id="Bad_ID")),
    ("id: too long", base(id="a" * 129)),
    ("id: two dots", base(id="a..b")),
    ("dockerfile: absolute", base(dockerfile="/etc/Dockerfile")),
    ("dockerfile: leaves the context", base(dockerfile="../Dockerfile")),
    ("dockerfile: empty", base(dockerfile="")),
    ("dockerfile: NUL", base(dockerfile="a\x00b")),
    ("tags: missing", base(tags=...)),
    ("tags: none", base(tags=[])),
    ("tags: no registry host", base(tags=["team/app:1"])),
    ("tags: upper-case path", base(tags=[f"{REGISTRY}/Team/app:1"])),
    ("tags: a bad tag", base(tags=[f"{REGISTRY}/team/app:-x"])),
    ("tags: twice", base(tags=[TAG, TAG])),
    ("tags: over limits.max_tags", base(tags=[f"{REGISTRY}/team/app:{n}" for n in range(4)])),
    ("tags: a registry not configured", base(tags=[TAG, "other.example:5000/team/app:1"])),
    ("build_args: a bad name", base(build_args={"1A": "x"})),
    ("build_args: a value over 64 KiB", base(build_args={"A": "x" * 70_000})),
    ("build args and labels: over 256 KiB together", base(build_args={f"A{n}": BIG for n in range(3)},
                                                          labels={f"L{n}": BIG for n in range(2)})),
    ("secret_build_args: not a build arg", base(secret_build_args=["TOKEN"])),
    ("target: too long", base(target="t" * 256)),
    ("labels: a bad name", base(labels={"bad name": "x"})),
    ("platform: two of them", base(platform="linux/amd64,linux/arm64")),
    ("platform: not linux", base(platform="windows/amd64")),
    ("platform: unknown architecture", base(platform="linux/foo")),
    ("platform: too long", base(platform="l" * 101)),
    ("platforms: twice the same", base(platforms=["linux/amd64", "linux/x86_64"])),
    ("platforms: over the message's bound", base(platforms=["linux/amd64"] * 65)),
    ("platforms: over limits.max_platforms", base(platforms=["linux/amd64", "linux/arm64", "linux/ppc64le"])),
    ("platform and platforms disagree", base(platform="linux/amd64", platforms=["linux/arm64"])),
    ("builder: unknown", base(builder="fast")),
    ("timeout: zero", base(timeout=0)),
    ("timeout: over limits.max_timeout", base(timeout=101)),
    ("cache_key: a leading dash", base(cache_key="-x")),
    ("cache_key: a trailing newline", base(cache_key="key\n")),
    ("executor: not enabled", base(executor="buildah")),
    ("executor: a built-in the config leaves off", base(executor="img")),
    ("executor: a section with nothing in it", base(executor="dind")),
    ("executor: unknown", base(executor="nope")),
    ("secrets: not configured", base(secrets=["nope"])),
    ("two things wrong: the first in the models' order", base(id="Bad", tags=[])),
]
#: what the light path leaves to the models (they are then what the CLI runs: cli.cmd_submit)
LEFT_TO_THE_MODELS = {"executor: unknown"}

GOOD = [
    base(),
    base(id=..., tags=[TAG, f"registry.runner.test:5000/team/app:{'9' * 20}"]),
    base(dockerfile="./sub/../docker/Dockerfile.dev", target="final", builder="buildkit", timeout=100, no_cache=True,
         push=False, cache_key="main.branch_1"),
    base(build_args={"A": "1", "TOKEN": "s3cret"},
         secret_build_args=["TOKEN"], labels={"org.opencontainers.image.title": "app ✓"}, secrets=["npm"]),
    base(platform="linux/aarch64"),
    base(platforms=["linux/arm64/v8", "amd64"]),
    base(platform="linux/arm64", platforms=["linux/arm64"]),
    base(executor="socket"),
    base(executor=""),
]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """The same config file read both ways: the models' Settings, and the light path's."""
    path = tmp_path_factory.mktemp("plain-submit") / "runner.yml"
    path.write_text(yaml.safe_dump(CONFIG, allow_unicode=True))
    plain = load_plain_submit_settings(path)
    assert plain is not None  # a config the light path reads
    return load_settings(path), plain


def by_the_worker(settings, payload: dict) -> tuple[str, str] | str:
    """(field, message) of the models' refusal, or the executor admitted."""
    try:
        return admit(parse_request(payload), settings, QUEUE).executor
    except Rejected as exc:
        return exc.field, exc.message


def by_the_client(plain, payload: dict) -> tuple[str, str] | str:
    def unlisted(name: str) -> None:
        raise NeedsModels(name)

    try:
        request = plain_request(payload)
        return check_admission(plain.policy, request["tags"], request["platforms"], request["executor"],
                               request["timeout"], request["secrets"], unlisted)
    except Rejected as exc:
        return exc.field, exc.message


@pytest.mark.parametrize("what, payload", BAD, ids=[what for what, _ in BAD])
def test_the_client_refuses_what_the_worker_refuses_naming_the_same_field(configs, what, payload):
    settings, plain = configs
    worker = by_the_worker(settings, payload)
    assert isinstance(worker, tuple), f"the table's request is not bad: {what}"
    if what in LEFT_TO_THE_MODELS:
        with pytest.raises(NeedsModels):
            by_the_client(plain, payload)
        return
    client = by_the_client(plain, payload)
    assert client == worker  # the same field, the same message


@pytest.mark.parametrize("payload", GOOD)
def test_what_the_worker_takes_the_client_takes_and_writes_as_the_models_do(configs, payload):
    settings, plain = configs
    executor = by_the_worker(settings, payload)
    assert by_the_client(plain, payload) == executor and isinstance(executor, str)
    payload = {**payload, "id": payload.get("id", "fixed-id")}  # the one random default
    model = parse_request(payload)
    light = plain_request(payload)
    assert light == model.model_dump(mode="json")
    assert secret_arg_values(light) == model.secret_arg_values()
    at = datetime(2026, 12, 7, 17, 40, 1, 250, tzinfo=UTC)
    record = jobstate.admitted(model.redacted(), executor, settings.queue_for(executor), False, "cli:u@host")
    record = record.model_copy(update={"created_at": at})
    plain_record = queued_record(redacted(light), executor, plain.queue_for(executor), False, "cli:u@host", at)
    assert record_text(plain_record) == record.model_dump_json()


def test_a_request_read_shares_nothing_with_the_next():
    bare = {"id": "job-1", "tags": [TAG]}  # every other field its default
    first = plain_request(bare)
    for name in ("build_args", "labels"):
        first[name]["A"] = "changed"
    for name in ("secret_build_args", "secrets"):
        first[name].append("A")
    assert plain_request(bare) == parse_request(bare).model_dump(mode="json")


def test_the_light_path_leaves_to_the_models_what_it_does_not_read():
    for payload in (base(source={"host": "github", "repository": "o/r", "sha": "a" * 40}),
                    base(callback_url="https://ci.example/cb"), base(context={"type": "git", "url": "https://x/r.git"}),
                    base(timeout="10"), base(push="yes"), base(unknown_field=1), base(id=None),
                    base(build_args={"A": "\udc80"})):
        with pytest.raises(NeedsModels):
            plain_request(payload)


def test_the_plain_reading_of_the_config_is_the_models(configs, tmp_path):
    settings, plain = configs
    assert plain.policy == settings.admission_policy()
    limits = settings.limits
    assert (plain.limits.max_context_bytes, plain.limits.max_ignore_file_bytes, plain.limits.max_ignore_patterns) == \
           (limits.max_context_bytes, limits.max_ignore_file_bytes, limits.max_ignore_patterns)
    empty = tmp_path / "empty.yml"
    empty.write_text("{}\n")
    assert load_plain_submit_settings(empty).policy == load_settings(empty).admission_policy()  # every default
    for odd in ({"executors": {"socket": {"enabled": "yes"}}}, {"limits": {"max_tags": "3"}},
                {"registries": [{"host": 5000}]}, {"executors": {"mine": {"enabled": True}}}, {"limits": None}):
        path = tmp_path / "odd.yml"
        path.write_text(yaml.safe_dump(odd))
        assert load_plain_submit_settings(path) is None, odd  # the models read it (or refuse it)


def test_the_light_submit_writes_what_jobstore_submit_writes(new_store, configs):
    """The same request submitted by the models' JobStore.submit and the light submit_plain, in
    two namespaces: the same record, indexes, secret values and message body."""
    settings, plain = configs
    payload = base(build_args={"A": "1", "TOKEN": "s3cret"}, secret_build_args=["TOKEN"], platforms=["linux/amd64"])
    at = datetime(2026, 12, 7, 17, 40, 1, tzinfo=UTC)
    by_models, by_plain = new_store(), new_store()
    model = parse_request(payload)
    record = jobstate.admitted(model.redacted(), "socket", f"{by_models.ns}.socket", False, "cli:u@host")
    by_models.submit(record.model_copy(update={"created_at": at}), model.secret_arg_values())
    light = plain_request(payload)
    view, created = by_plain.submit_plain(queued_record(redacted(light), "socket", f"{by_plain.ns}.socket", False,
                                                        "cli:u@host", at), secret_arg_values(light))
    assert created and view.id == "job-1" and view.status.value == "queued"

    def written(store) -> dict:
        message = json.loads(store.r.lindex(f"{store.ns}.socket", 0))
        text = store.r.get(store.job_key("job-1"))
        return {"record": text.replace(store.ns, "NS"), "body": json.loads(base64.b64decode(message["body"])),
                "jobs": store.r.zscore(f"{store.ns}:jobs", "job-1"),
                "queued": store.r.zscore(store.index_key(Status.queued), "job-1"),
                "secrets": store.load_secrets("job-1"), "ttl": store.r.ttl(store.job_key("job-1"))}

    assert written(by_plain) == written(by_models)
    assert by_plain.get("job-1").request.build_args == {"A": "1", "TOKEN": "***"}  # the models read it back
    again, created = by_plain.submit_plain(queued_record(redacted(light), "socket", "q", False, None, at), {})
    assert not created and again.data == view.data  # a repeat id writes nothing

