#!/usr/bin/env bash
# The test command: set up everything (services, venv), lint (ruff, import-linter, mypy), then run the whole suite.
# Extra arguments go to pytest. Exit 5 from pytest (nothing collected) counts as failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/venv.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers (docs/architecture.md)
.venv/bin/mypy                     # runner/core, runner/worker, executors (pyproject.toml)
set +e
.venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"  # the slowest 15, for keeping CI short
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
