#!/usr/bin/env bash
# Build a docker-in-docker image locally (no image can be pulled on these machines):
# a minimal Debian with docker.io, made with debootstrap and `docker import`.
# Cached by tag: when the tag exists the script exits at once. Prints the tag.
#
#   scripts/dind-image.sh [TAG]      (default runner-dind:bookworm-1; bump the suffix when
#                                     this script changes so hosts rebuild)
# Needs root, debootstrap (scripts/services.sh installs it) and a running dockerd.
set -euo pipefail

TAG=${1:-${RUNNER_DIND_IMAGE:-runner-dind:bookworm-1}}
SUITE=${RUNNER_DIND_SUITE:-bookworm}

cached() { docker image inspect "$TAG" >/dev/null 2>&1; }
if cached; then echo "$TAG"; exit 0; fi
# One build at a time on this host; a second caller waits and then finds the tag.
exec 9>/var/tmp/runner-dind-image.lock
flock 9
if cached; then echo "$TAG"; exit 0; fi

mirror() {  # the Debian URI this host already uses (deb822 or one-line sources)
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list)
  fi
  echo "${RUNNER_DIND_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

command -v debootstrap >/dev/null || { echo "dind-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

ROOT=$(mktemp -d /var/tmp/runner-dind-root.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "dind-image: debootstrap $SUITE from $(mirror) (about 40 s)" >&2
debootstrap --variant=minbase --include=docker.io,iptables,ca-certificates \
  "$SUITE" "$ROOT" "$(mirror)" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"

# The entrypoint: on cgroup v2 move our processes into a child group so the inner dockerd
# can delegate controllers (what docker's own dind script does), then run dockerd with the
# runner's arguments. A leading "dockerd" is accepted, as docker:dind's entrypoint takes it.
cat >"$ROOT/usr/local/bin/runner-dind" <<'EOF'
#!/bin/sh
set -e
[ "${1:-}" = dockerd ] && shift
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
fi
exec dockerd "$@"
EOF
chmod 755 "$ROOT/usr/local/bin/runner-dind"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc "$ROOT"/usr/share/man

tar -C "$ROOT" -c . | docker import \
  -c 'ENTRYPOINT ["/usr/local/bin/runner-dind"]' \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'LABEL io.runner.image=dind' - "$TAG" >/dev/null
echo "$TAG"
