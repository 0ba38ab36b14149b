"""Executor plugins of the runner's own tests, each laid out as an installed distribution: a
module and its dist-info with a `runner.executors` entry point, found by whatever has the
directory on its path, and by nothing else.

  fake/  the fake executor (builds nothing, steered by build args): the pipeline, worker and
         entry-point tests and the benchmarks that run jobs without a build
  toy/   a third-party plugin's shape (tests/test_plugin_executor.py)

The runner itself ships neither: a plain installation does not know `fake`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent
FAKE = PLUGINS / "fake"


def with_path(env: dict[str, str], directory: Path) -> dict[str, str]:
    """`env` with `directory` first on its PYTHONPATH (once)."""
    parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part and part != str(directory)]
    return {**env, "PYTHONPATH": os.pathsep.join([str(directory), *parts])}


def use_fake() -> None:
    """Make the fake executor known to this process and to every process it starts from
    os.environ (real `runner worker`, `runner serve` and CLI processes)."""
    if str(FAKE) not in sys.path:
        sys.path.insert(0, str(FAKE))
    os.environ["PYTHONPATH"] = with_path(dict(os.environ), FAKE)["PYTHONPATH"]


def without_plugins(env: dict[str, str]) -> dict[str, str]:
    """`env` as a plain installation has it: no directory of this package on its PYTHONPATH."""
    parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep)
             if part and not Path(part).resolve().is_relative_to(PLUGINS)]
    return {**env, "PYTHONPATH": os.pathsep.join(parts)} if parts else {k: v for k, v in env.items() if k != "PYTHONPATH"}
