#!/usr/bin/env bash
# The test command: set up what the tests need, lint (ruff, import-linter, mypy), then run pytest.
#   bash scripts/test.sh [PYTEST-ARGS...]         everything (.ci/run): starts the services (Docker
#                                                 Engine, Redis, the registry, buildah...) first
#   bash scripts/test.sh --fast [PYTEST-ARGS...]  the fast tier (tests/support/tiers.py): installs or
#                                                 starts no Docker, registry or buildah; the tests start a
#                                                 throwaway redis-server of their own and stop it
# Extra arguments go to one pytest run of what they name. Exit 5 from pytest (nothing collected)
# counts as failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=test
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(--fast)
  state=${RUNNER_DEV_STATE:-/var/tmp/runner-dev}
  mkdir -p "$state"
  install_redis() {  # Debian's, never started as a service: the fast tier's tests start their own
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then return; fi
    say "installing redis-server (not started as a service)"
    install_without_starting "$state/apt.log" redis-server
  }
  step "install redis-server" "$state/apt.log" install_redis
else
  bash scripts/services.sh
fi
bash scripts/venv.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers (docs/architecture.md)
.venv/bin/mypy                     # every package of runner and executors (pyproject.toml)

run_pytest() {  # run_pytest ARGS...: pytest, with exit 5 (nothing collected) as a failure
  local rc=0
  .venv/bin/pytest -q -p no:cacheprovider --durations=15 "${tier[@]}" "$@" || rc=$?  # the slowest 15: keeping CI short
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests ($*): failing" >&2
    return 1
  fi
  return "$rc"
}

if [ $# -gt 0 ]; then
  run_pytest "$@"
  exit
fi
# Everything: two modules at a time (pytest-xdist; a module stays in one process, its fixtures
# with it; RUNNER_TEST_WORKERS=0 runs them in one process), then the load tests alone (`serial`,
# tests/support/tiers.py). Both parts always run; the first failure's code is the result.
rc=0
run_pytest -n "${RUNNER_TEST_WORKERS:-2}" --dist loadfile -m "not serial" || rc=$?
serial_rc=0
run_pytest -m serial || serial_rc=$?
[ "$rc" -ne 0 ] || rc=$serial_rc
exit "$rc"
