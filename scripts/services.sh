#!/usr/bin/env bash
# Install (Debian, as root) and start everything the runner and its tests need:
# Docker Engine, Redis (with AOF), an htpasswd-protected registry on :5000, buildah,
# skopeo, git, Prometheus and promtool (the metrics and alert-rule tests; never started as a
# service here), qemu-user-static with its binfmt handlers registered (emulated builds of other
# platforms), redis-sentinel (the failover tests start their own; never as a
# service), a tiny busybox base image pushed to that registry, and a two-platform one
# (linux/amd64 + linux/arm64, from Debian's own busybox-static of each architecture).
# Idempotent: running it again only starts what is not running.
set -euo pipefail

STATE=${RUNNER_DEV_STATE:-/var/tmp/runner-dev}
REGISTRY_PORT=${RUNNER_DEV_REGISTRY_PORT:-5000}
REGISTRY_NAME=${RUNNER_DEV_REGISTRY_NAME:-registry.runner.test}
REGISTRY_USER=${RUNNER_DEV_REGISTRY_USER:-ci}
REGISTRY_PASSWORD=${RUNNER_DEV_REGISTRY_PASSWORD:-ci-password}
REDIS_PORT=${RUNNER_DEV_REDIS_PORT:-6379}
BASE_IMAGE=127.0.0.1:${REGISTRY_PORT}/base/busybox:1
MULTI_BASE_IMAGE=127.0.0.1:${REGISTRY_PORT}/base/busybox-multi:1
mkdir -p "$STATE"
SAY_PREFIX=services
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install_packages() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  command -v buildah >/dev/null || need+=(buildah)
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v git >/dev/null || need+=(git)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v iptables >/dev/null || need+=(iptables)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl)
  command -v pgrep >/dev/null || need+=(procps)
  command -v unshare >/dev/null || need+=(util-linux)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
  [ -x /bin/busybox ] || need+=(busybox-static)
  # the dashboard's tests drive Debian's Chromium headless through its ChromeDriver
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq >>"$STATE/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >>"$STATE/apt.log" 2>&1
  fi
}

install_prometheus() {  # Debian's server and promtool; the tests start their own on a spare port
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return; fi
  say "installing prometheus (without the node exporter it recommends, and not started as a service)"
  install_without_starting "$STATE/apt.log" --no-install-recommends prometheus  # its postinst would start one on :9090
}

install_sentinel() {  # Debian's redis-sentinel; tests/test_redis_ha.py starts its own set on spare ports
  if command -v redis-sentinel >/dev/null; then return; fi
  say "installing redis-sentinel (not started as a service)"
  install_without_starting "$STATE/apt.log" --no-install-recommends redis-sentinel  # its postinst would start one on :26379
}

add_hosts() {  # before dockerd starts: its resolver caches /etc/hosts for a while
  grep -q " $REGISTRY_NAME\$" /etc/hosts || echo "127.0.0.1 $REGISTRY_NAME" >>/etc/hosts
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "$what did not come up in ${secs}s" >&2; return 1
}

start_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  say "starting dockerd"
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  wait_for 60 dockerd docker info
}

start_redis() {
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  say "starting redis-server on 127.0.0.1:$REDIS_PORT (AOF on)"
  mkdir -p "$STATE/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$STATE/redis" --appendonly yes --appendfsync everysec --save "" \
    --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
  wait_for 20 redis redis-cli -p "$REDIS_PORT" ping
}

start_registry() {
  if curl -s -o /dev/null "http://127.0.0.1:$REGISTRY_PORT/v2/"; then return; fi
  say "starting docker-registry on :$REGISTRY_PORT (htpasswd auth)"
  mkdir -p "$STATE/registry/data"
  htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$STATE/registry/htpasswd"
  cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry/data}
  delete: {enabled: true}
http:
  addr: :$REGISTRY_PORT
auth:
  htpasswd: {realm: runner-dev, path: $STATE/registry/htpasswd}
EOF
  nohup docker-registry serve "$STATE/registry/config.yml" >"$STATE/registry.log" 2>&1 &
  echo $! >"$STATE/registry.pid"
  wait_for 20 registry curl -s -o /dev/null "http://127.0.0.1:$REGISTRY_PORT/v2/"
}

seed_base_image() {
  if skopeo inspect --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
      "docker://$BASE_IMAGE" >/dev/null 2>&1 && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  say "making base image $BASE_IMAGE from busybox-static"
  local root; root=$(mktemp -d)
  busybox_root "$root" /bin/busybox
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$BASE_IMAGE" >"$STATE/base-image.log" 2>&1
  rm -rf "$root"
  retry 5 1 docker push -q "$BASE_IMAGE" >>"$STATE/base-image.log" 2>&1
}

install_emulation() {  # Debian's qemu-user-static and its binfmt handlers (registered with the F flag,
  # so containers and dind sidecars use them too). Without systemd nothing registers them: do it here.
  command -v qemu-aarch64-static >/dev/null || install_without_starting "$STATE/apt.log" qemu-user-static
  if ! sh "$(dirname "$0")/binfmt-register.sh" >>"$STATE/emulation.log" 2>&1; then
    say "warning: could not register qemu's binfmt handlers (see $STATE/emulation.log): no emulated platforms here" >&2
  fi
}

busybox_root() {  # busybox_root DIR BUSYBOX: a tiny root file system around one static busybox
  local root=$1
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp "$2" "$root/bin/busybox"
  for tool in sh echo cat ls mkdir rm cp mv test true false sleep env grep wc head tail touch \
      sed tr id printf find sort uniq date expr seq stat chmod du yes uname; do
    ln -sf busybox "$root/bin/$tool"
  done
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
}

arm64_busybox() {  # Debian's busybox-static for arm64, unpacked once into $STATE (prints the binary)
  local dir=$STATE/busybox-arm64
  if [ ! -x "$dir/root/bin/busybox" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      dpkg --add-architecture arm64
    fi
    mkdir -p "$dir" && chmod 777 "$dir"  # apt-get download runs as _apt where it can
    (cd "$dir" && { apt-get download busybox-static:arm64 || { apt-get update -qq && apt-get download busybox-static:arm64; }; }) >&2
    dpkg-deb -x "$dir"/busybox-static_*_arm64.deb "$dir/root" >&2
  fi
  echo "$dir/root/bin/busybox"
}

seed_multi_base_image() {  # an OCI index with linux/amd64 and linux/arm64, made and pushed by buildah
  if skopeo inspect --raw --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
      "docker://$MULTI_BASE_IMAGE" 2>/dev/null | grep -q '"architecture": *"arm64"'; then
    return
  fi
  say "making two-platform base image $MULTI_BASE_IMAGE from busybox-static (amd64, arm64)"
  make_multi_base_image >>"$STATE/multi-base-image.log" 2>&1
}

make_multi_base_image() {
  local work arch binary ctr list=localhost/runner-dev/busybox-multi:1
  work=$(mktemp -d)
  buildah manifest rm "$list" || true
  buildah manifest create "$list"
  for arch in amd64 arm64; do
    binary=/bin/busybox
    if [ "$arch" = arm64 ]; then binary=$(arm64_busybox | tail -n 1); fi
    busybox_root "$work/$arch" "$binary"
    ctr=$(buildah from --arch "$arch" scratch)
    buildah copy "$ctr" "$work/$arch" /
    buildah config --os linux --arch "$arch" --env PATH=/bin --cmd sh "$ctr"
    buildah commit --rm "$ctr" "localhost/runner-dev/busybox-$arch:1"
    buildah manifest add --os linux --arch "$arch" "$list" "containers-storage:localhost/runner-dev/busybox-$arch:1"
  done
  retry 5 1 buildah manifest push --all --format oci --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
    "$list" "docker://$MULTI_BASE_IMAGE"
  buildah manifest rm "$list" || true
  buildah rmi localhost/runner-dev/busybox-amd64:1 localhost/runner-dev/busybox-arm64:1 || true
  rm -rf "$work"
}

login_once() {
  printf '%s' "$REGISTRY_PASSWORD" | docker login -u "$REGISTRY_USER" --password-stdin "$1" >>"$STATE/login.log" 2>&1
}

login_host_client() {  # so tests can `docker pull` what the runner pushed
  : >"$STATE/login.log"
  for host in "127.0.0.1:$REGISTRY_PORT" "$REGISTRY_NAME:$REGISTRY_PORT"; do
    grep -q "\"$host\"" ~/.docker/config.json 2>/dev/null && continue
    # a name added to /etc/hosts shortly before may not resolve in dockerd at once: retry
    retry 10 1 login_once "$host"
  done
}

write_password_file() {  # for configs that use registries[].password_file (config/dev.yml)
  umask 077
  printf '%s\n' "$REGISTRY_PASSWORD" >"$STATE/registry/password.new"
  mv "$STATE/registry/password.new" "$STATE/registry/password"  # whole or not at all: tests read it meanwhile
  umask 022
}

write_env() {  # to a new file moved in place: a reader never sees it half written
  cat >"$STATE/env.new" <<EOF
RUNNER_DEV_STATE=$STATE
RUNNER_DEV_REGISTRY=127.0.0.1:$REGISTRY_PORT
RUNNER_DEV_REGISTRY_NAME=$REGISTRY_NAME:$REGISTRY_PORT
RUNNER_DEV_REGISTRY_USER=$REGISTRY_USER
RUNNER_DEV_REGISTRY_PASSWORD=$REGISTRY_PASSWORD
RUNNER_DEV_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
RUNNER_DEV_BASE_IMAGE=$BASE_IMAGE
RUNNER_DEV_MULTI_BASE_IMAGE=$MULTI_BASE_IMAGE
EOF
  mv "$STATE/env.new" "$STATE/env"
}

step "install packages" "$STATE/apt.log" install_packages
step "install prometheus" "$STATE/apt.log" install_prometheus
step "install redis-sentinel" "$STATE/apt.log" install_sentinel
step "install emulation (qemu-user-static, binfmt)" "$STATE/emulation.log" install_emulation
step "add $REGISTRY_NAME to /etc/hosts" "$STATE/setup.log" add_hosts
step "start dockerd" "$STATE/dockerd.log" start_docker
step "start redis" "$STATE/redis.log" start_redis
step "start docker-registry" "$STATE/registry.log" start_registry
step "docker login to the registry" "$STATE/login.log" login_host_client
step "seed the base image" "$STATE/base-image.log" seed_base_image
step "seed the two-platform base image" "$STATE/multi-base-image.log" seed_multi_base_image
step "write the registry password file" "$STATE/setup.log" write_password_file
step "write $STATE/env" "$STATE/setup.log" write_env
say "ready: docker, redis 127.0.0.1:$REDIS_PORT, registry :$REGISTRY_PORT ($REGISTRY_NAME), base $BASE_IMAGE and $MULTI_BASE_IMAGE"
