"""The shipped config files load, and the example documents every option that exists."""

from pathlib import Path

import yaml

from runner.config.example import render_example
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
