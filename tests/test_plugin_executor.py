"""Adding an executor is one package plus one entry point. tests/plugins/toy is laid out as an
installed distribution (a module and its dist-info with a `runner.executors` entry point); with
it on PYTHONPATH the real CLI and worker find it, validate and document its config, and run a
job on it. No code of ours names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from executors.plugins import ExecutorRegistry
from runner.store.jobstore import JobStore
from tests.conftest import RUNNER, new_harness
from tests.plugins import FAKE, with_path

TOY = Path(__file__).parent / "plugins" / "toy"


def with_toy(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TOY), env.get("PYTHONPATH", "")]))}


def test_a_plugin_is_documented_validated_and_runs_jobs(services, tmp_path_factory, tmp_path):
    h = new_harness(services, tmp_path_factory, executors={"toy": {"enabled": True, "greeting": "ahoy", "repeat": 2}})
    env = with_toy(h.env)
    try:
        example = subprocess.run([RUNNER, "config", "example"], env=env, capture_output=True, text=True, check=True).stdout
        toy_section = example[example.index("  toy:"):]
        assert "what the toy says before each job" in toy_section and 'greeting: "hello"' in toy_section

        bad = tmp_path / "bad.yml"
        bad.write_text(yaml.safe_dump({**h.config, "executors": {"toy": {"enabled": True, "repeat": 99}}}))
        shown = subprocess.run([RUNNER, "config", "show"], env={**env, "RUNNER_CONFIG": str(bad)}, capture_output=True, text=True)
        assert shown.returncode == 2 and "toy.repeat" in shown.stderr

        without = subprocess.run([RUNNER, "config", "show"], env=h.env, capture_output=True, text=True)
        assert without.returncode == 2 and "unknown executor 'toy'" in without.stderr  # not installed: an error, not ignored

        log = (h.workdir / "toy-worker.log").open("w")
        worker = subprocess.Popen([RUNNER, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        h.worker_proc = worker
        context = tmp_path / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM scratch\n")
        ref = f"{h.registry()}/toy/app:{uuid.uuid4().hex[:6]}"
        result = subprocess.run([RUNNER, "submit", str(context), "-t", ref, "--executor", "toy", "--json"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["status"] == "succeeded" and record["executor"] == "toy" and record["images"][0]["ref"] == ref
        lines = subprocess.run([RUNNER, "logs", record["id"]], env=env, capture_output=True, text=True).stdout.splitlines()
        assert sum(line.startswith("[toy] ahoy from ") for line in lines) == 2
    finally:
        if h.worker_proc is not None:
            h.stop_worker(h.worker_proc)
        store = JobStore(services["RUNNER_DEV_REDIS_URL"], h.config["worker"]["namespace"])  # h.settings needs the plugin
        for pattern in (f"{store.ns}:*", f"{store.ns}.*", f"_kombu.binding*.{store.ns}.*"):
            for key in store.r.scan_iter(pattern):
                store.r.delete(key)


def test_a_plain_installation_does_not_know_the_fake_executor(plain_installation, tmp_path):
    """The fake executor (it builds nothing, and SIGKILLs its worker on a build arg) is the tests'
    own plugin, not the runner's: without tests/plugins on the path the registry does not know
    it, `runner config example` does not document it, and a config that names it is refused by
    every command, naming it. With the plugin's directory on the path, the same config loads."""
    assert not ExecutorRegistry().is_known("fake") and "fake" not in ExecutorRegistry().names()
    probe = "from executors.plugins import ExecutorRegistry as R; print(R().is_known('fake'), R().names())"
    known = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert known.startswith("False") and "'buildah'" in known, known
    example = subprocess.run([RUNNER, "config", "example"], capture_output=True, text=True, check=True).stdout
    assert "\n  buildah:" in example and "\n  fake:" not in example and "executors.fake" not in example

    config = tmp_path / "runner.yml"
    config.write_text(yaml.safe_dump({"default_executor": "fake", "executors": {"fake": {"enabled": True}}}))
    env = {**os.environ, "RUNNER_CONFIG": str(config)}
    for command in (["config", "show"], ["worker"], ["doctor"]):
        refused = subprocess.run([RUNNER, *command], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "invalid configuration: executors: unknown executor 'fake'; known: buildah, dind, img, socket, sysbox" in refused.stderr

    shown = subprocess.run([RUNNER, "config", "show"], env=with_path(env, FAKE), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "  fake:\n    enabled: true" in shown.stdout, shown.stderr
