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


#: what packing a context needs besides the standard library: RE2, the regexp engine Go's
#: filepath.Match is, for matching .dockerignore exactly as Docker does (runner.context.gocompat)
PACKING = ("re2",)


def at_start(env: dict[str, str]) -> set[str]:
    """The modules the interpreter has loaded before any code runs (site: the editable install's
    finder, setuptools' hook)."""
    code = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         check=True).stdout))


def not_ours_nor_stdlib(modules: set[str], env: dict[str, str]) -> list[str]:
    """The modules loaded after start that are neither the standard library's, the runner's own
    nor what packing a context needs."""
    return sorted(m for m in modules - at_start(env) if m.partition(".")[0] not in sys.stdlib_module_names
                  and m.partition(".")[0] not in ("runner", "executors", "__main__", *PACKING))
