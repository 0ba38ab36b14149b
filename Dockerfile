# The runner's own image: the `runner` CLI, worker and API server, with buildah and git for
# the daemonless executor and git sources. The base image is a build argument because CI
# hosts (and these test machines) may not be able to pull: pass any Debian 12 based image
# that has python3 (>= 3.11), e.g. --build-arg BASE=python:3.11-slim-bookworm.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
# Hosts behind a TLS-inspecting proxy: pass its CA (PEM text) so apt and pip trust it.
ARG EXTRA_CA=""

RUN if [ -n "$EXTRA_CA" ]; then mkdir -p /usr/local/share/ca-certificates \
      && printf '%s\n' "$EXTRA_CA" > /usr/local/share/ca-certificates/extra-ca.crt; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      buildah fuse-overlayfs git ca-certificates python3-venv \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/runner
COPY pyproject.toml README.md ./
COPY runner runner
COPY executors executors
RUN update-ca-certificates >/dev/null \
 && python3 -m venv /opt/venv \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH \
    RUNNER_CONFIG=/etc/runner/runner.yml

# buildah inside a container: vfs storage and chroot isolation work without privileges
# beyond the defaults (the executor's "auto" settings pick them when overlay is missing).
VOLUME ["/var/lib/runner"]
ENTRYPOINT ["runner"]
CMD ["worker"]
