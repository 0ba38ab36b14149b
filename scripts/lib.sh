# Shared by the set-up scripts: every step says what it is, and a failing step never fails mute.
#   step NAME LOG COMMAND...   run COMMAND (a function, under set -e) with its output going where
#                              it likes; on failure print which step failed and the end of LOG
# RUNNER_SETUP_FAIL=NAME makes step NAME fail on purpose (the tests check every step's message).
# SAY_PREFIX names the script in messages.

say() { printf '[%s] %s\n' "${SAY_PREFIX:-setup}" "$*"; }

step() {
  local name=$1 log=$2 rc=0
  shift 2
  if [ "${RUNNER_SETUP_FAIL:-}" = "$name" ]; then
    rc=97
    mkdir -p "$(dirname "$log")"
    say "forced failure (RUNNER_SETUP_FAIL=$name)" | tee -a "$log" >&2  # into the log too: its end is printed below
  else
    set +e
    (set -e; "$@")
    rc=$?
    set -e
  fi
  if [ "$rc" -ne 0 ]; then
    say "FAILED at step '$name' (exit $rc); its log: $log" >&2
    if [ -s "$log" ]; then tail -n 15 "$log" | sed "s/^/[${SAY_PREFIX:-setup}]   | /" >&2; fi
    exit "$rc"
  fi
}

retry() {  # retry TIMES DELAY COMMAND...: for what a just-started daemon may refuse for a moment
  local times=$1 delay=$2 n
  shift 2
  for n in $(seq "$times"); do
    "$@" && return 0
    if [ "$n" -lt "$times" ]; then sleep "$delay"; fi
  done
  return 1
}

install_without_starting() {  # install_without_starting LOG APT-ARGS...: Debian packages whose postinst
  # would start a daemon (redis-server, prometheus) are installed without starting it: the scripts
  # and the tests start their own, with their own settings
  local log=$1 policy=/usr/sbin/policy-rc.d added="" rc=0
  shift
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
  fi
  apt-get update -qq >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1 || rc=$?
  if [ -n "$added" ]; then rm -f "$policy"; fi
  return "$rc"
}
