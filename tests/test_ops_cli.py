"""The CLI an operator meets first, with the real `runner` executable: `--version`; `--config`
and the default locations, which `runner config show` names; RUNNER_* variables that name no
setting refused (the CLI's own, the scripts' and GitHub Actions' excepted); `runner doctor`'s
exit codes (0, 2 invalid config, 3 infrastructure) and its warnings about a Redis that could
drop jobs. Redis is a redis-server of the test's own (fast tier)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import pytest

from runner.config import loader
from runner.config.client import SETTINGS_KEYS
from runner.config.settings import Settings
from tests.conftest import RUNNER
from tests.support.fleet import OwnRedis, free_port

#: enough config for `runner doctor` to look at Redis and nothing slow: no executor enabled
QUIET = "executors: {buildah: {enabled: false}}\n"


def runner(*args: str, env: dict[str, str] | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI with a clean RUNNER_* environment (and HOME, for ~/.config)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    if home is not None:
        clean["HOME"] = str(home)
    return subprocess.run([RUNNER, *args], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=120)


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


def config_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_version():
    result = runner("--version")
    assert result.returncode == 0 and result.stdout == f"runner (ci-build-runner) {importlib.metadata.version('ci-build-runner')}\n"


def test_config_flag_env_and_the_default_location_are_used_in_that_order(tmp_path):
    home = tmp_path / "home"
    user = config_file(home / ".config" / "ci-build-runner" / "runner.yml", "worker: {namespace: from-home}\n")
    named = config_file(tmp_path / "named.yml", "worker: {namespace: from-env}\n")
    flagged = config_file(tmp_path / "flagged.yml", "worker: {namespace: from-flag}\n")

    def shown(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
        result = runner(*args, "config", "show", env=env, home=home)
        assert result.returncode == 0, result.stderr
        first, _, rest = result.stdout.partition("\n")
        return first, next(line for line in rest.splitlines() if "namespace:" in line).split()[-1]

    assert shown() == (f"# config file: {user} (default location)", "from-home")
    assert shown(env={"RUNNER_CONFIG": str(named)}) == (f"# config file: {named} (RUNNER_CONFIG)", "from-env")
    assert shown("--config", str(flagged), env={"RUNNER_CONFIG": str(named)}) == (f"# config file: {flagged} (--config)", "from-flag")
    after = runner("config", "show", "--config", str(flagged), home=home)  # after the command too
    assert after.stdout.startswith(f"# config file: {flagged} (--config)")
    user.unlink()
    first, _ = shown()
    assert first.startswith("# no config file (neither --config nor RUNNER_CONFIG, nor ~/.config/ci-build-runner/runner.yml or "
                            "/etc/ci-build-runner/runner.yml)")
    missing = runner("--config", str(tmp_path / "nope.yml"), "status", "x", home=home)
    assert missing.returncode == 2 and f"cannot read config file {tmp_path / 'nope.yml'}" in missing.stderr


def test_the_system_location_comes_after_the_users(tmp_path, monkeypatch):
    """/etc/ci-build-runner is the machine's (not written by a test): the same lookup, pointed elsewhere."""
    system = config_file(tmp_path / "etc" / "runner.yml", "worker: {namespace: system}\n")
    user = tmp_path / "home" / "runner.yml"
    monkeypatch.setattr(loader, "DEFAULT_LOCATIONS", (str(user), str(system)))
    monkeypatch.delenv("RUNNER_CONFIG", raising=False)
    assert loader.config_source() == (system, "default location")
    config_file(user, "worker: {namespace: user}\n")
    assert loader.config_source() == (user, "default location")


def test_a_runner_variable_that_names_no_setting_is_refused_by_name(tmp_path):
    empty = config_file(tmp_path / "runner.yml", "{}\n")
    for command in (("status", "some-job"), ("config", "show")):
        result = runner("--config", str(empty), *command, env={"RUNNER_REDIS_URLL": "redis://x", "RUNNER_WORKERS__CONCURRENCY": "4"})
        assert result.returncode == 2, result.stderr
        assert "RUNNER_REDIS_URLL, RUNNER_WORKERS__CONCURRENCY: no such setting" in result.stderr
        assert "redis://x" not in result.stderr  # a value is never shown: it may be a secret
    nested = runner("--config", str(empty), "config", "show", env={"RUNNER_WORKER__CONCURENCY": "4"})
    assert nested.returncode == 2 and "worker.concurency" in nested.stderr  # inside a section: the model refuses it
    fine = {"RUNNER_OS": "Linux", "RUNNER_TEMP": "/tmp", "RUNNER_DEV_STATE": "/var/tmp/x", "RUNNER_API_URL": "http://127.0.0.1:9",
            "RUNNER_WORKER__CONCURRENCY": "4"}  # GitHub Actions', the scripts', the CLI's own, and a real setting
    ok = runner("--config", str(empty), "config", "show", env=fine)
    assert ok.returncode == 0, ok.stderr
    assert "concurrency: 4" in ok.stdout


def test_the_client_knows_every_setting_name():
    assert SETTINGS_KEYS == set(Settings.model_fields)


def test_doctor_exit_codes_follow_the_scheme(tmp_path, own_redis):
    good = config_file(tmp_path / "good.yml", f"redis_url: {own_redis.url}\n{QUIET}")
    assert runner("--config", str(good), "doctor").returncode == 0
    down = config_file(tmp_path / "down.yml", f"redis_url: redis://127.0.0.1:{free_port()}/0\n{QUIET}")
    result = runner("--config", str(down), "doctor")
    assert result.returncode == 3 and "FAIL redis" in result.stdout  # infrastructure unreachable
    invalid = config_file(tmp_path / "invalid.yml", "worker: {concurrency: none}\n")
    assert runner("--config", str(invalid), "doctor").returncode == 2


def test_doctor_warns_when_redis_could_drop_jobs(tmp_path, own_redis):
    config = config_file(tmp_path / "runner.yml", f"redis_url: {own_redis.url}\n{QUIET}")
    redis_cli = ["redis-cli", "-p", str(own_redis.port)]
    subprocess.run([*redis_cli, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru"], check=True, capture_output=True)
    result = runner("--config", str(config), "doctor")
    assert result.returncode == 0, result.stdout  # warnings never fail it
    assert "WARN redis eviction: maxmemory-policy is allkeys-lru" in result.stdout
    assert "WARN redis maxmemory: maxmemory is 0 (no limit)" in result.stdout
    subprocess.run([*redis_cli, "CONFIG", "SET", "maxmemory-policy", "noeviction"], check=True, capture_output=True)
    subprocess.run([*redis_cli, "CONFIG", "SET", "maxmemory", "64mb"], check=True, capture_output=True)
    result = runner("--config", str(config), "doctor")
    assert "WARN redis" not in result.stdout and "redis memory: maxmemory 64 MiB, policy noeviction" in result.stdout


def test_a_full_redis_refuses_an_upload_with_exit_3(tmp_path, own_redis):
    """maxmemory with noeviction: `runner submit` is told Redis is full; nothing is queued."""
    subprocess.run(["redis-cli", "-p", str(own_redis.port), "CONFIG", "SET", "maxmemory", "3mb"], check=True, capture_output=True)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY big /\n")
    (context / "big").write_bytes(os.urandom(8 * 1024 * 1024))
    config = config_file(tmp_path / "runner.yml", f"redis_url: {own_redis.url}\nregistries: [{{host: r.example:5000}}]\n"
                                                  "executors: {buildah: {enabled: true}}\n")
    result = runner("--config", str(config), "submit", str(context), "-t", "r.example:5000/a/b:1", "--detach")
    assert result.returncode == 3, result.stderr
    assert "Redis refused the upload (OutOfMemoryError" in result.stderr and "nothing was queued" in result.stderr
    keys = subprocess.run(["redis-cli", "-p", str(own_redis.port), "--scan"], capture_output=True, text=True).stdout.split()
    assert not [k for k in keys if ":job:" in k or ":ctx:" in k], keys  # the upload was undone


def test_runner_drain_with_no_worker_has_nothing_to_do(tmp_path):
    result = runner("drain", "--port", str(free_port()))
    assert result.returncode == 0 and "nothing to drain" in result.stderr
