"""Run the CLI's main() in a subprocess and see every module it loaded (the guards that the
client path stays light: tests/test_cli_imports.py, tests/test_api.py)."""

from __future__ import annotations

import json
import subprocess
import sys

SHOW_MODULES = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
from runner.entry.cli import main
main(sys.argv[1:])
"""


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI's main() with `args`; return its result and every module it had loaded."""
    result = subprocess.run([sys.executable, "-c", SHOW_MODULES, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    marker = result.stderr.rpartition("\nMODULES ")[2]
    return result, set(json.loads(marker))


def not_ours_nor_stdlib(modules: set[str]) -> list[str]:
    """The modules that are neither the standard library's nor the runner's own."""
    return sorted(m for m in modules if m.partition(".")[0] not in sys.stdlib_module_names
                  and m.partition(".")[0] not in ("runner", "executors", "__main__"))
