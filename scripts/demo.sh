#!/usr/bin/env bash
# The main job: set up Redis, Docker Engine, a registry and a runner worker, then build and
# push examples/app with `runner submit --follow`, and run the pushed image.
# The worker keeps running afterwards (its pid and log are printed) so you can submit more.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/venv.sh
export RUNNER_CONFIG=${RUNNER_CONFIG:-$PWD/config/dev.yml}
export PATH=$PWD/.venv/bin:$PATH
state=/var/tmp/runner-dev
if ! { [ -f $state/worker.pid ] && kill -0 "$(cat $state/worker.pid)" 2>/dev/null; }; then
  nohup runner worker >$state/worker.log 2>&1 &
  echo $! >$state/worker.pid
  for _ in $(seq 100); do grep -q " ready." $state/worker.log && break; sleep 0.2; done
fi
echo "worker pid $(cat $state/worker.pid), log $state/worker.log"
runner doctor || true
tag=$(date +%s)
runner submit examples/app -t 127.0.0.1:5000/example/app:$tag -t 127.0.0.1:5000/example/app:latest --follow
docker run --rm --pull always 127.0.0.1:5000/example/app:$tag
echo "done. stop the worker with: kill $(cat $state/worker.pid)"
