"""`runner doctor` warns, naming the file and its mode, about every configured secret file that
its group or other users can read; it never fails for that. Real files, real modes, the real CLI."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from runner.config.settings import Settings
from runner.entry.doctor import secret_files


def secret(directory: Path, name: str, mode: int, value: str | None = None) -> Path:
    path = directory / name
    path.write_text((value or uuid.uuid4().hex) + "\n")
    os.chmod(path, mode)
    return path


def test_doctor_warns_about_secret_files_others_can_read(make_harness, services, tmp_path):
    files = {name: secret(tmp_path, name, mode) for name, mode in [
        ("api-token", 0o644), ("github-hook", 0o640), ("git-token", 0o600), ("git-key", 0o604), ("status-token", 0o644),
        ("acme-status-token", 0o400), ("callbacks", 0o644)]}
    files["registry"] = secret(tmp_path, "registry", 0o644, services["RUNNER_DEV_REGISTRY_PASSWORD"])
    (tmp_path / "linked").symlink_to(files["api-token"])  # a Kubernetes secret volume's files are links
    h = make_harness(
        api={"tokens": [{"name": "ci", "token_file": str(files["api-token"])},
                        {"name": "linked", "token_file": str(tmp_path / "linked")}]},
        webhooks={"github": {"secret_file": str(files["github-hook"])}},
        git={"credentials": [{"host": "git.example.com", "token_file": str(files["git-token"]),
                              "ssh_key_file": str(files["git-key"])}]},
        statuses={"github": {"token_file": str(files["status-token"]),
                             "repositories": {"acme/app": {"token_file": str(files["acme-status-token"])}}}},
        callbacks={"secret_file": str(files["callbacks"])},
        registries=[{"host": services["RUNNER_DEV_REGISTRY"], "username": services["RUNNER_DEV_REGISTRY_USER"],
                     "password_file": str(files["registry"])}])
    out = h.cli("doctor")
    assert out.returncode == 0, out.stdout  # a warning, never a failure
    warned = [line for line in out.stdout.splitlines() if line.startswith("WARN secret file")]  # not Redis's memory warnings
    expected = {
        "api.tokens[ci].token_file": ("api-token", "0644", "group and others"),
        "api.tokens[linked].token_file": ("linked", "0644", "group and others"),
        "webhooks.github.secret_file": ("github-hook", "0640", "group"),
        "git.credentials[git.example.com].ssh_key_file": ("git-key", "0604", "others"),
        "statuses.github.token_file": ("status-token", "0644", "group and others"),
        "callbacks.secret_file": ("callbacks", "0644", "group and others"),
        f"registries[{services['RUNNER_DEV_REGISTRY']}].password_file": ("registry", "0644", "group and others"),
    }
    assert len(warned) == len(expected), out.stdout
    for where, (name, mode, readers) in expected.items():
        path = tmp_path / name
        assert f"WARN secret file {where}: {path} has mode {mode}: readable by {readers}; chmod 600 {path}" in warned, \
            (where, out.stdout)
    assert "git-token" not in out.stdout and "acme-status-token" not in out.stdout  # 0600 and 0400: fine
    for path in files.values():
        assert path.read_text().strip() not in out.stdout  # names and modes, never the secrets


def test_no_warning_when_every_secret_file_is_private(make_harness, tmp_path):
    token = secret(tmp_path, "token", 0o600)
    out = make_harness(api={"tokens": [{"name": "ci", "token_file": str(token)}]}).cli("doctor")
    assert "WARN secret" not in out.stdout and "secret files: 1 configured; none readable by group or others" in out.stdout


def test_every_secret_file_field_is_walked():
    settings = Settings(webhooks={"gitea": {"secret_file": "/s/gitea"}},
                        statuses={"gitlab": {"token_file": "/s/gl"}, "gitea": {"repositories": {"a/b": {"token_file": "/s/ab"}}}},
                        git={"credentials": [{"host": "h", "known_hosts_file": "/s/known"}]})
    assert dict(secret_files(settings)) == {"webhooks.gitea.secret_file": Path("/s/gitea"),
                                            "statuses.gitlab.token_file": Path("/s/gl"),
                                            "statuses.gitea.repositories[a/b].token_file": Path("/s/ab")}
