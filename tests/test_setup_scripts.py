"""The set-up scripts never fail mute: forcing each step of scripts/services.sh and
scripts/venv.sh to fail (RUNNER_SETUP_FAIL=<step name>, see scripts/lib.sh) must print the
step's name and its log, and exit non-zero. The step names are read from the scripts, so a new
step is covered without touching this test."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = ("services.sh", "venv.sh", "demo.sh")
#: demo.sh steps after the worker starts are the main job itself (they build and push)
SET_UP_STEPS_ONLY = {"demo.sh": 3}


def steps(script: str) -> list[str]:
    names = re.findall(r'^step "([^"]+)"', (ROOT / "scripts" / script).read_text(), re.MULTILINE)
    state = os.environ.get("RUNNER_DEV_STATE", "/var/tmp/runner-dev")
    names = [name.replace("$REGISTRY_NAME", "registry.runner.test").replace("$STATE", state) for name in names]
    return names[: SET_UP_STEPS_ONLY.get(script, len(names))]


CASES = [pytest.param(script, name, id=f"{script}:{name}") for script in SCRIPTS for name in steps(script)]


def test_every_script_has_named_steps():
    assert all(steps(script) for script in SCRIPTS) and len(CASES) >= 12


@pytest.mark.parametrize("script, name", CASES)
def test_a_failing_step_names_itself_and_its_log(services, script, name):
    result = subprocess.run(["bash", str(ROOT / "scripts" / script)], env={**os.environ, "RUNNER_SETUP_FAIL": name},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    message = next((line for line in result.stderr.splitlines() if "FAILED at step" in line), "")
    assert f"FAILED at step '{name}'" in message, result.stderr[-2000:]
    log = message.rsplit("its log: ", 1)[1]
    forced = f"forced failure (RUNNER_SETUP_FAIL={name})"
    assert forced in Path(log).read_text().splitlines()[-1]  # the named log is the one written
    tail = [line for line in result.stderr.splitlines() if "   | " in line]
    assert tail and forced in tail[-1], result.stderr[-2000:]  # and its end is printed after the failure
