#!/usr/bin/env bash
# Which securityContext does the buildah worker need? Runs a real `runner worker` from the
# runner image under several docker profiles that stand for Kubernetes securityContexts
# (--cap-drop/--cap-add = capabilities, seccomp=unconfined = seccompProfile Unconfined,
# no-new-privileges = allowPrivilegeEscalation false, --read-only + tmpfs = readOnlyRootFilesystem
# + emptyDirs), submits the same jobs to each, and prints a table. base/worker.yaml's comments
# and ../k8s/README.md report what it printed.
#
#   deploy/k8s/check-worker-profile.sh IMAGE
#
# IMAGE: the runner image built from the repository's Dockerfile, e.g.
#   docker build -t runner:dev --build-arg BASE=runner-dind:bookworm-1 .
# Needs the dev services (bash scripts/services.sh: Redis and the registry on loopback),
# Docker, the dind base image (scripts/dind-image.sh: a Debian to build FROM) and setcap.
# Takes about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${1:?usage: $0 RUNNER_IMAGE}
# shellcheck disable=SC1091
. "${RUNNER_DEV_STATE:-/var/tmp/runner-dev}/env"
REG=$RUNNER_DEV_REGISTRY
RUNNER=${RUNNER_BIN:-$PWD/.venv/bin/runner}
WORK=$(mktemp -d /var/tmp/k8s-profile.XXXXXX)
trap 'docker rm -f -v k8s-profile-worker k8s-profile-seed >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# -- base images in the registry: Debian, and Debian with a file capability on a binary ---------
DEBIAN=$REG/k8s-profile/debian:1 FCAPS=$REG/k8s-profile/fcaps:1
printf '%s' "$RUNNER_DEV_REGISTRY_PASSWORD" | docker login -u "$RUNNER_DEV_REGISTRY_USER" --password-stdin "$REG" >/dev/null
docker tag "$(bash scripts/dind-image.sh)" "$DEBIAN" && docker push -q "$DEBIAN" >/dev/null
docker run -d --name k8s-profile-seed --entrypoint sleep "$DEBIAN" 600 >/dev/null
docker cp "$(command -v setcap)" k8s-profile-seed:/usr/local/bin/setcap
docker exec k8s-profile-seed sh -c 'cp /bin/true /usr/local/bin/capped && setcap cap_net_raw+ep /usr/local/bin/capped && rm /usr/local/bin/setcap'
docker commit k8s-profile-seed "$FCAPS" >/dev/null && docker push -q "$FCAPS" >/dev/null
docker rm -f k8s-profile-seed >/dev/null

# -- the jobs -----------------------------------------------------------------------------------
job() { mkdir -p "$WORK/ctx/$1"; cat >"$WORK/ctx/$1/Dockerfile"; echo hi >"$WORK/ctx/$1/hello.txt"; }
job plain <<EOF
FROM $DEBIAN
COPY hello.txt /srv/hello.txt
RUN cat /srv/hello.txt
EOF
job users <<EOF
FROM $DEBIAN
RUN useradd -u 1000 -m builder && chown -R 1000:1000 /srv
COPY --chown=1000:1000 hello.txt /home/builder/hello.txt
RUN setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo dropped > /home/builder/x'
USER builder
RUN id -u
EOF
job setuid <<EOF
FROM $DEBIAN
RUN useradd -u 1000 -m builder && echo rootonly >/root/secret && chmod 600 /root/secret \\
 && cp /bin/cat /usr/local/bin/suidcat && chmod 4755 /usr/local/bin/suidcat
USER builder
RUN /usr/local/bin/suidcat /root/secret
EOF
job filecaps <<EOF
FROM $FCAPS
RUN echo a layer with a file capability unpacked
EOF
job whiteout <<EOF
FROM $DEBIAN
RUN rm -rf /usr/share/doc/* /etc/motd
EOF
# peek: a RUN step must not read the worker's environment (the Redis password lives there)
job peek <<EOF
FROM $DEBIAN
RUN for p in /proc/[0-9]*; do if tr '\\0' '\\n' <\$p/environ 2>/dev/null | grep -q PROBE_SECRET; then exit 1; fi; done
EOF
mkdir -p "$WORK/ctx/unwhiteout"  # FROM the whiteout job's image: its Dockerfile is written per profile
JOBS=(plain users setuid filecaps whiteout unwhiteout peek)

# -- the profiles -------------------------------------------------------------------------------
UNCONFINED=(--security-opt seccomp=unconfined --security-opt apparmor=unconfined)
THREE=(--cap-drop ALL --cap-add SETUID --cap-add SETGID --cap-add SETFCAP)
MANIFEST=("${UNCONFINED[@]}" "${THREE[@]}" --security-opt no-new-privileges --read-only --tmpfs /run --tmpfs /tmp --tmpfs /var/tmp)
declare -A PROFILE=(
  [1 runtime defaults (seccomp on)]=""
  [2 default caps, seccomp+apparmor unconfined]="${UNCONFINED[*]}"
  [3 drop ALL, unconfined]="${UNCONFINED[*]} --cap-drop ALL"
  [4 drop ALL + SETUID SETGID, unconfined]="${UNCONFINED[*]} --cap-drop ALL --cap-add SETUID --cap-add SETGID"
  [5 drop ALL + SETUID SETGID SETFCAP, unconfined]="${UNCONFINED[*]} ${THREE[*]}"
  [6 = base/worker.yaml (5 + no_new_privs + read-only root)]="${MANIFEST[*]}"
  [7 = 6 with storage_driver vfs]="${MANIFEST[*]} -e RUNNER_EXECUTORS__BUILDAH__STORAGE_DRIVER=vfs"
)

printf '| profile | %s |\n|---|%s\n' "$(IFS='|'; echo "${JOBS[*]}" | sed 's/|/ | /g')" "$(printf -- '---|%.0s' "${JOBS[@]}")"
while IFS= read -r name; do
  ns=k8sprofile$RANDOM
  cfg=$WORK/runner.yml
  printf '%s' "$RUNNER_DEV_REGISTRY_PASSWORD" >"$WORK/password"
  cat >"$cfg" <<EOF
redis_url: $RUNNER_DEV_REDIS_URL
registries: [{host: "$REG", username: $RUNNER_DEV_REGISTRY_USER, password_file: /run/secrets/registry, insecure: true}]
executors: {buildah: {enabled: true, isolation: chroot}}
worker: {namespace: $ns, concurrency: 1, metrics_port: 0, shutdown_grace: 5}
EOF
  # shellcheck disable=SC2086
  docker run -d --name k8s-profile-worker --network host ${PROFILE[$name]} -e PROBE_SECRET=x \
    -v "$cfg:/etc/runner/runner.yml:ro" -v "$WORK/password:/run/secrets/registry:ro" "$IMAGE" worker >/dev/null
  sed "s#/run/secrets/registry#$WORK/password#" "$cfg" >"$WORK/host.yml"
  printf 'FROM %s\nRUN test ! -e /etc/motd && test -z "$(ls /usr/share/doc)"\n' "$REG/k8s-profile/whiteout:$ns" \
    >"$WORK/ctx/unwhiteout/Dockerfile"
  row="| $name |"
  for j in "${JOBS[@]}"; do
    record=$(RUNNER_CONFIG=$WORK/host.yml timeout 900 "$RUNNER" submit "$WORK/ctx/$j" -t "$REG/k8s-profile/$j:$ns" \
             --executor buildah --json --timeout 600 2>/dev/null || true)
    row+=" $(printf '%s' "$record" | python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.find("{"):])["status"] if "{" in t else "no answer")') |"
  done
  echo "$row"
  docker rm -f -v k8s-profile-worker >/dev/null
done < <(printf '%s\n' "${!PROFILE[@]}" | sort)
