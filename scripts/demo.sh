#!/usr/bin/env bash
# The main job: set up Redis, Docker Engine, a registry and a runner worker, then build and
# push examples/app with `runner submit --follow`, and run the pushed image.
# The worker keeps running afterwards (its pid and log are printed) so you can submit more.
# Every step that fails says which step it was and where its log is.
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=demo
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
state=${RUNNER_DEV_STATE:-/var/tmp/runner-dev}
mkdir -p "$state"
export RUNNER_CONFIG=${RUNNER_CONFIG:-$PWD/config/dev.yml}
export PATH=$PWD/.venv/bin:$PATH
tag=$(date +%s)

start_worker() {
  if [ -f "$state/worker.pid" ] && kill -0 "$(cat "$state/worker.pid")" 2>/dev/null; then return 0; fi
  nohup runner worker >"$state/worker.log" 2>&1 &
  echo $! >"$state/worker.pid"
  for _ in $(seq 150); do
    grep -q " ready." "$state/worker.log" && return 0
    kill -0 "$(cat "$state/worker.pid")" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

submit() {
  runner submit examples/app -t "127.0.0.1:5000/example/app:$tag" -t 127.0.0.1:5000/example/app:latest --follow
}

step "set up services (scripts/services.sh)" "$state/setup.log" bash scripts/services.sh
step "make the venvs (scripts/venv.sh)" "$state/venv.log" bash scripts/venv.sh
step "start the runner worker" "$state/worker.log" start_worker
say "worker pid $(cat "$state/worker.pid"), log $state/worker.log"
runner doctor || true
step "build and push examples/app" "$state/worker.log" submit
step "run the pushed image" "$state/setup.log" docker run --rm --pull always "127.0.0.1:5000/example/app:$tag"
say "done. stop the worker with: kill $(cat "$state/worker.pid")"
