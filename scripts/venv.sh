#!/usr/bin/env bash
# Make .venv with the runner and its test tools installed (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
