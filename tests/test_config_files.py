"""The shipped config files load, and the example documents every option that exists."""

import os
from pathlib import Path

import pytest
import yaml

from runner.config.example import render_example
from runner.config.loader import SettingsError
from runner.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path) -> Settings:
    return Settings(**yaml.safe_load(path.read_text()))


def leaf_paths(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_paths(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_example_is_generated_from_the_settings(plain_installation):  # the example a plain install prints: no test plugin
    current = (ROOT / "config" / "runner.example.yml").read_text()
    assert current == render_example(), "config/runner.example.yml is stale: run `runner config example > config/runner.example.yml`"


def test_example_names_every_option_and_loads():
    text = (ROOT / "config" / "runner.example.yml").read_text()
    settings = load(ROOT / "config" / "runner.example.yml")
    assert settings == Settings()
    for path in leaf_paths(Settings):
        assert f"{path.rsplit('.', 1)[-1]}:" in text, path


def test_shipped_configs_load():
    dev = load(ROOT / "config" / "dev.yml")
    assert dev.default_executor == "buildah" and dev.executors["buildah"].enabled
    deploy = load(ROOT / "deploy" / "runner.yml")
    assert deploy.executors["buildah"].enabled and not deploy.executors["socket"].enabled


def test_compose_has_the_whole_stack():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "registry", "worker", "api"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert "/var/run/docker.sock" not in str(services["worker"])  # the socket executor stays opt-in
    settings = load(ROOT / "deploy" / "runner.yml")
    assert settings.shutdown_grace() >= settings.limits.max_timeout  # a stop never cuts a build short
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > settings.shutdown_grace()


# -- the client's plain reading (runner.config.client_plain) agrees with the models --------------
CLIENT_FILES = [
    {},
    {"redis_url": "rediss://:pw@redis.example.com:6380/2", "redis_username": "ci", "worker": {"namespace": "ns", "concurrency": 3},
     "retention": {"finished_seconds": 60, "upload_seconds": 30, "queued_seconds": 90},
     "api": {"url": "http://127.0.0.1:8080", "token": "t0k", "tokens": []}, "deliveries": {"recover_after": 5},
     "redis_tls": {"ca_file": "/etc/ca.pem", "cert_file": "/etc/c.pem", "check_hostname": False},
     "executors": {"socket": {"enabled": True}}, "limits": {"max_tags": 3}},
    {"redis_sentinel": {"master": "m", "sentinels": ["10.0.0.1", "[::1]:26380"], "password": "p", "db": 3, "tls": True},
     "redis_password_file": "/run/secrets/redis"},
    {"redis_password": "x", "deliveries": {"recover_after": 1.5}},
]
CLIENT_ENVS = [
    {},
    {"RUNNER_WORKER__NAMESPACE": "from-env", "RUNNER_REDIS_URL": "redis://10.1.1.1:6379/1", "RUNNER_API__URL": "http://h:1"},
    {"RUNNER_RETENTION": '{"finished_seconds": 7}', "RUNNER_API": '{"token": "e"}'},
    {"RUNNER_DELIVERIES__RECOVER_AFTER": "4", "RUNNER_REDIS_TLS__CHECK_HOSTNAME": "false"},  # not plain: the models read them
    {"RUNNER_LIMITS__MAX_TAGS": "9", "RUNNER_CONFIG": "ignored-here"},
]


@pytest.mark.parametrize("env", CLIENT_ENVS)
@pytest.mark.parametrize("data", CLIENT_FILES)
def test_the_plain_client_settings_equal_the_models(tmp_path, monkeypatch, data, env):
    from runner.config.client import load_client_settings
    from runner.config.client_plain import from_client_settings, load_plain_client_settings

    config = tmp_path / "runner.yml"
    config.write_text(yaml.safe_dump(data))
    for name in [n for n in os.environ if n.startswith("RUNNER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    plain = load_plain_client_settings(config)
    assert plain == from_client_settings(load_client_settings(config))
    assert plain.redis_target().describe() == load_client_settings(config).redis_target().describe()


@pytest.mark.parametrize("data", [
    {"retention": {"finished_seconds": 0}}, {"redis_tls": {"ca_file": "/a", "oops": 1}}, {"worker": None},
    {"redis_sentinel": {"master": "m", "sentinels": []}}, {"redis_password": "a", "redis_password_file": "/b"},
    {"redis_tls": {"key_file": "/k"}}, {"redis_sentinel": {"master": "m", "sentinels": ["h:99999"]}},
])
def test_the_plain_client_settings_refuse_what_the_models_refuse(tmp_path, monkeypatch, data):
    from runner.config.client import load_client_settings
    from runner.config.client_plain import load_plain_client_settings

    config = tmp_path / "runner.yml"
    config.write_text(yaml.safe_dump(data))
    for name in [n for n in os.environ if n.startswith("RUNNER_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SettingsError) as models:
        load_client_settings(config)
    with pytest.raises(SettingsError) as plain:
        load_plain_client_settings(config)
    assert str(plain.value) == str(models.value)


def test_the_plain_defaults_are_the_models_defaults():
    from runner.config.client import RetentionConfig
    from runner.config.client_plain import PlainRetention
    from runner.context.ignore_limits import IgnoreLimits
    from runner.context.limits import ContextLimits

    assert PlainRetention() == PlainRetention(**RetentionConfig().model_dump())
    limits = ContextLimits()
    assert IgnoreLimits() == IgnoreLimits(limits.max_ignore_file_bytes, limits.max_ignore_patterns)
