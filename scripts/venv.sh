#!/usr/bin/env bash
# Make .venv with the runner and its test tools installed (idempotent), and .venv-debian: the
# runner alone on Debian's own python3 (3.11.2 on Debian 12, which lacks tarfile's extraction
# filters), so the hostile-input tests run a worker on both Pythons.
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=venv
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
LOGS=${RUNNER_DEV_STATE:-/var/tmp/runner-dev}
mkdir -p "$LOGS"
stamp_name=.installed-$(sha1sum pyproject.toml | cut -c1-12)

system_python() {
  if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || ! python3 -m venv --help >/dev/null 2>&1 \
      || ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
    say "installing python3, python3-venv, python3-pip"
    apt-get update -qq >>"$log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >>"$log" 2>&1
  fi
}

make_venv() {  # make_venv DIR PYTHON EXTRAS
  local dir=$1 python=$2 extras=$3
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir" >>"$log" 2>&1
  if [ ! -f "$dir/$stamp_name" ]; then
    say "installing the runner into $dir ($("$dir/bin/python" --version))"
    "$dir/bin/pip" install -q --upgrade pip >>"$log" 2>&1 || true
    "$dir/bin/pip" install -q -e ".$extras" >>"$log" 2>&1
    rm -f "$dir"/.installed-*
    touch "$dir/$stamp_name"
  fi
}

log=$LOGS/venv.log
step "install python3 and venv" "$log" system_python
step "make .venv" "$log" make_venv .venv python3 "[test]"
step "make .venv-debian" "$log" make_venv .venv-debian /usr/bin/python3 ""
