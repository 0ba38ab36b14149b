"""A docker-in-docker sidecar: its container spec, bring-up, readiness and removal.

The sidecar runs its own dockerd. The runner reaches it through a unix socket in a
per-sidecar host directory bind-mounted at /run/runner, or over TCP with mutual TLS made for
this one sidecar (published on 127.0.0.1 only). Never plain TCP: that is unauthenticated,
and dockerd deliberately stalls 15 s at start when asked for it.

Per-sidecar host directory (under `socket_dir`, mode 0700):
  sock/      -> /run/runner          (unix mode: the daemon's docker.sock)
  tls/       -> /run/runner-tls:ro   (tls mode: CA, server cert and key)
  client/                            (tls mode: the runner's client cert and key; never mounted)
  certs.d/   -> /etc/docker/certs.d:ro  (CA certs of private registries, HOST/ca.crt)
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from executors.dind.config import DindConfig
from executors.engine.client import EngineClient
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.labels import LABEL_EXECUTOR, LABEL_JOB
from runner.core.log_sink import LogSink
from runner.core.registry_config import RegistryConfig

log = logging.getLogger(__name__)

LABEL_DIR = "io.runner.dind.dir"
SOCKET_MOUNT = "/run/runner"
TLS_MOUNT = "/run/runner-tls"
TLS_PORT = 2376
POLL_INTERVAL = 0.05
LOG_TAIL = 20
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def daemon_args(config: DindConfig, registries: Iterable[RegistryConfig]) -> list[str]:
    """The inner dockerd's command line (starts with "dockerd", as docker:dind expects)."""
    if config.connection == "tls":
        args = ["dockerd", f"--host=tcp://0.0.0.0:{TLS_PORT}", "--tlsverify",
                f"--tlscacert={TLS_MOUNT}/ca.pem", f"--tlscert={TLS_MOUNT}/server-cert.pem",
                f"--tlskey={TLS_MOUNT}/server-key.pem"]
    else:
        args = ["dockerd", f"--host=unix://{SOCKET_MOUNT}/docker.sock"]
    # "http://" makes the embedded BuildKit of Docker 20.10 use plain HTTP (it misreads a bare
    # NAME:PORT); dockerd strips the scheme for its own pulls and pushes. CIDRs stay as given.
    args += [f"--insecure-registry={host if '://' in host or '/' in host else 'http://' + host}"
             for host in insecure_registries(config, registries)]
    args += [f"--registry-mirror={mirror}" for mirror in config.registry_mirrors]
    if config.mtu:
        args.append(f"--mtu={config.mtu}")
    return args


def insecure_registries(config: DindConfig, registries: Iterable[RegistryConfig]) -> list[str]:
    """Configured ones plus every registry in `registries:` marked insecure."""
    hosts = list(config.insecure_registries)
    hosts += [r.host for r in registries if r.insecure and r.host not in hosts]
    return hosts


def registry_cas(registries: Iterable[RegistryConfig]) -> dict[str, Path]:
    return {r.host: r.ca_file for r in registries if r.ca_file}


def container_spec(config: DindConfig, registries: Iterable[RegistryConfig], *, name: str, labels: dict[str, str],
                   directory: Path, data_volume: str, network: str | None, gateway: str | None = None,
                   force_unprivileged: bool = False) -> dict:
    """Everything the host engine is told about the sidecar: create_container kwargs plus
    `host_config` (kwargs for create_host_config) and `host_config_raw` (API fields docker-py
    has no argument for). Pure, so tests can pin it."""
    binds = {data_volume: {"bind": "/var/lib/docker", "mode": "rw"}}
    if config.connection == "tls":
        binds[str(directory / "tls")] = {"bind": TLS_MOUNT, "mode": "ro"}
    else:
        binds[str(directory / "sock")] = {"bind": SOCKET_MOUNT, "mode": "rw"}
    if registry_cas(registries):
        binds[str(directory / "certs.d")] = {"bind": "/etc/docker/certs.d", "mode": "ro"}
    if config.mount_cgroup:
        binds["/sys/fs/cgroup"] = {"bind": "/sys/fs/cgroup", "mode": "rw"}
    host_config: dict = {
        "privileged": config.privileged and not force_unprivileged,
        "binds": binds,
        # On a network of its own, the sidecar reaches the host at that network's gateway. The
        # engine's "host-gateway" (docker0, 172.17.0.1) would be shadowed there: the inner
        # dockerd takes 172.17.0.0/16 for its own bridge when that range is not on-link.
        "extra_hosts": {host: (gateway if ip == "host-gateway" and gateway else ip)
                        for host, ip in config.extra_hosts.items()} or None,
        "network_mode": network or "bridge",
    }
    if config.cap_add:
        host_config["cap_add"] = list(config.cap_add)
    if config.cap_drop:
        host_config["cap_drop"] = list(config.cap_drop)
    security = [opt for opt in config.security_opt if opt.replace(":", "=") != "systempaths=unconfined"]
    if security:
        host_config["security_opt"] = security
    if config.runtime:
        host_config["runtime"] = config.runtime
    if config.cpus:
        host_config["nano_cpus"] = int(config.cpus * 1e9)
    if config.memory:
        host_config["mem_limit"] = config.memory
    spec: dict[str, Any] = {"image": config.image, "command": daemon_args(config, registries), "name": name,
            "labels": {**labels, LABEL_DIR: str(directory)},
            # docker:dind's entrypoint would otherwise generate its own TLS setup
            "environment": {"DOCKER_TLS_CERTDIR": ""}, "host_config": host_config, "host_config_raw": {}}
    if len(security) != len(config.security_opt):
        # the docker CLI's `--security-opt systempaths=unconfined` is these two fields in the API
        spec["host_config_raw"] = {"MaskedPaths": [], "ReadonlyPaths": []}
    if config.connection == "tls":
        spec["ports"] = [TLS_PORT]
        host_config["port_bindings"] = {TLS_PORT: ("127.0.0.1", None)}
    return spec


@dataclass
class Sidecar:
    """A running sidecar and everything made for it (removed together)."""

    name: str
    directory: Path
    volume: str | None = None  # owned per-sidecar volume; None when a cache volume is mounted
    network: str | None = None
    container: str | None = None
    base_url: str = ""
    tls: docker.tls.TLSConfig | None = None
    ready_at: float = field(default_factory=time.monotonic)
    api_version: str = "1.41"

    def client(self, timeout: int | None = None) -> EngineClient:
        """A client for the inner daemon, at the API version its ping reported."""
        try:
            return EngineClient.at(self.base_url, self.api_version, timeout, self.tls)
        except docker.errors.DockerException as exc:
            raise InfrastructureError(f"the Docker daemon in sidecar {self.name} is unreachable: {exc}") from None

    def probe(self) -> EngineClient:
        """A client for ping only: fixed API version, so it needs no round trip to be made."""
        return EngineClient.at(self.base_url, "1.24", 2, self.tls)

    def ping(self, probe: EngineClient | None = None) -> bool:
        """True when the daemon answers; records the API version it speaks."""
        client = probe or self.probe()
        try:
            response = client.ping(timeout=2)
            if response.status_code != 200:
                return False
            self.api_version = response.headers.get("Api-Version") or self.api_version
            return True
        except (requests.RequestException, docker.errors.DockerException, OSError):
            return False
        finally:
            if probe is None:
                client.close()

    def alive(self) -> bool:
        return self.ping()

    def remove(self, api: docker.APIClient) -> None:
        """Container (with anonymous volumes), owned volume, network, host directory. Never raises."""
        if self.container:
            _quietly(api.remove_container, self.container, force=True, v=True)
        if self.volume:
            _quietly(api.remove_volume, self.volume, force=True)
        if self.network:
            _quietly(api.remove_network, self.network)
        remove_dir(self.directory)


def _quietly(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.warning("sidecar cleanup: %s", exc)


def remove_dir(directory: Path) -> None:
    """Remove a sidecar directory; refuses anything that is not one (the path comes from a label)."""
    if directory.is_absolute() and ".." not in directory.parts and directory.name.startswith("runner-"):
        shutil.rmtree(directory, ignore_errors=True)


def bring_up(api: docker.APIClient, config: DindConfig, registries: Iterable[RegistryConfig], *, executor: str,
             labels: dict[str, str], cancel: CancelToken | None = None, log_sink: LogSink | None = None,
             data_volume: str | None = None, force_unprivileged: bool = False) -> Sidecar:
    """Start a sidecar and wait until its daemon answers; on any failure remove what was made."""
    name = f"runner-{executor}-{uuid.uuid4().hex[:12]}"
    sidecar = Sidecar(name=name, directory=config.socket_dir / name)
    try:
        _prepare_dir(sidecar.directory, config, registries)
        labels = {**labels, LABEL_DIR: str(sidecar.directory)}
        if data_volume is None:
            sidecar.volume = data_volume = api.create_volume(name, labels=labels)["Name"]
        gateway = None
        if config.isolate_network:
            sidecar.network = name
            api.create_network(name, driver="bridge", labels=labels)
            gateway = api.inspect_network(name)["IPAM"]["Config"][0]["Gateway"]
        spec = container_spec(config, registries, name=name, labels=labels, directory=sidecar.directory,
                              data_volume=data_volume, network=sidecar.network, gateway=gateway,
                              force_unprivileged=force_unprivileged)
        host_config = api.create_host_config(**spec.pop("host_config"))
        host_config.update(spec.pop("host_config_raw"))
        sidecar.container = api.create_container(**spec, host_config=host_config)["Id"]
        api.start(sidecar.container)
        _connect_details(api, sidecar, config)
        wait_ready(api, sidecar, config, cancel, log_sink)
        return sidecar
    except docker.errors.ImageNotFound:
        sidecar.remove(api)
        raise InfrastructureError(f"the dind image {config.image!r} is not on the host engine: pull it, or build one "
                                  f"with scripts/dind-image.sh and set executors.{executor}.image") from None
    except docker.errors.APIError as exc:
        sidecar.remove(api)
        raise InfrastructureError(_start_error(exc, config, executor)) from None
    except BaseException:
        sidecar.remove(api)
        raise


def _start_error(exc: docker.errors.APIError, config: DindConfig, executor: str) -> str:
    text = str(exc.explanation or exc)
    if config.runtime and "runtime" in text.lower():
        return (f"the host engine has no {config.runtime} runtime ({text}); install it, "
                f"or use another executor")
    if "operation not permitted" in text.lower() or "privileged" in text.lower():
        return (f"the host refused to start the {executor} sidecar: {text}. On hosts that refuse --privileged "
                f"set executors.{executor}.privileged: false with cap_add/cap_drop/security_opt (see README)")
    return f"cannot start the {executor} sidecar: {text}"


def _prepare_dir(directory: Path, config: DindConfig, registries: Iterable[RegistryConfig]) -> None:
    if config.connection == "unix" and len(str(directory / "sock" / "docker.sock")) > MAX_SOCKET_PATH:
        raise InfrastructureError(f"socket_dir {config.socket_dir} is too long for a unix socket path "
                                  f"(at most {MAX_SOCKET_PATH - 45} characters); choose a shorter one")
    config.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.mkdir(mode=0o700)
    (directory / "sock").mkdir()
    for host, ca_file in registry_cas(registries).items():
        target = directory / "certs.d" / host
        target.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(ca_file, target / "ca.crt")
        except OSError as exc:
            raise InfrastructureError(f"registry {host}: cannot read ca_file {ca_file}: {exc.strerror}") from None
    if config.connection == "tls":
        make_tls(directory)


def make_tls(directory: Path) -> None:
    """A CA for this sidecar alone, a server cert (localhost / 127.0.0.1) and a client cert.
    The CA key is deleted once both are signed, so nothing else can ever be trusted."""
    tls, client = directory / "tls", directory / "client"
    tls.mkdir(mode=0o700)
    client.mkdir(mode=0o700)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", directory / "ca-key.pem", "-out", tls / "ca.pem",
             "-days", "7", "-subj", "/CN=runner-dind-ca")
    for who, folder, usage, extra in (("server", tls, "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
                                      ("client", client, "clientAuth", "")):
        ext = directory / f"{who}.ext"
        ext.write_text(f"{extra}extendedKeyUsage={usage}\n")
        _openssl("req", "-new", *key, "-keyout", folder / f"{who}-key.pem", "-out", directory / f"{who}.csr",
                 "-subj", f"/CN=runner-dind-{who}")
        _openssl("x509", "-req", "-in", directory / f"{who}.csr", "-CA", tls / "ca.pem", "-CAkey", directory / "ca-key.pem",
                 "-CAcreateserial", "-out", folder / f"{who}-cert.pem", "-days", "7", "-extfile", ext)
    for leftover in ("ca-key.pem", "server.csr", "client.csr", "server.ext", "client.ext", "ca.srl"):
        (directory / leftover).unlink(missing_ok=True)
    (tls / "ca.srl").unlink(missing_ok=True)
    # the inner dockerd runs as root; the files stay unreadable to anyone else on the host
    for path in [*tls.iterdir(), *client.iterdir()]:
        path.chmod(0o600)
    shutil.copyfile(tls / "ca.pem", client / "ca.pem")


def _openssl(*args) -> None:
    try:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    except FileNotFoundError:
        raise InfrastructureError("openssl is not installed; the dind executor needs it for connection: tls") from None
    except subprocess.CalledProcessError as exc:
        raise InfrastructureError(f"openssl failed making the sidecar's TLS certificates: {exc.stderr.decode()[-300:]}") from None


def _connect_details(api: docker.APIClient, sidecar: Sidecar, config: DindConfig) -> None:
    if config.connection == "tls":
        [binding] = api.port(sidecar.container, TLS_PORT)
        client = sidecar.directory / "client"
        sidecar.base_url = f"https://127.0.0.1:{binding['HostPort']}"
        sidecar.tls = docker.tls.TLSConfig(client_cert=(str(client / "client-cert.pem"), str(client / "client-key.pem")),
                                           ca_cert=str(client / "ca.pem"), verify=str(client / "ca.pem"))
    else:
        sidecar.base_url = f"unix://{sidecar.directory / 'sock' / 'docker.sock'}"


def wait_ready(api: docker.APIClient, sidecar: Sidecar, config: DindConfig,
               cancel: CancelToken | None, log_sink: LogSink | None) -> None:
    """Poll the inner daemon's ping until it answers, the container dies, or the deadline."""
    deadline = time.monotonic() + config.ready_timeout
    probe = sidecar.probe()
    next_inspect = 0.0
    try:
        while True:
            if cancel is not None:
                cancel.raise_if_set()
            if sidecar.ping(probe):
                sidecar.ready_at = time.monotonic()
                return
            now = time.monotonic()
            if now >= next_inspect:
                state = api.inspect_container(sidecar.container)["State"]
                if not state.get("Running"):
                    raise _not_ready(api, sidecar, config, log_sink,
                                     f"the {sidecar.name} sidecar exited with code {state.get('ExitCode')} "
                                     "before its Docker daemon was ready")
                next_inspect = now + 0.5
            if now >= deadline:
                raise _not_ready(api, sidecar, config, log_sink,
                                 f"the Docker daemon in the {sidecar.name} sidecar did not answer within "
                                 f"{config.ready_timeout:g}s (executors.*.ready_timeout)")
            time.sleep(POLL_INTERVAL)
    finally:
        probe.close()


def _not_ready(api, sidecar: Sidecar, config: DindConfig, log_sink: LogSink | None, what: str) -> InfrastructureError:
    tail = last_log_lines(api, sidecar.container)
    if log_sink is not None:
        log_sink.line(f"[runner] {what}; its last log lines:")
        for line in tail:
            log_sink.line(f"[sidecar] {line}")
    hint = " | ".join(line.strip() for line in tail[-3:]) if tail else "no output"
    return InfrastructureError(f"{what}. Last sidecar log lines: {hint}. Check that {config.image!r} is a "
                               "docker-in-docker image and that the privilege settings let dockerd run.")


def last_log_lines(api: docker.APIClient, container: str | None, count: int = LOG_TAIL) -> list[str]:
    if not container:
        return []
    try:
        raw = api.logs(container, stdout=True, stderr=True, tail=count)
    except (docker.errors.DockerException, requests.RequestException):
        return []
    return raw.decode("utf-8", "replace").splitlines()[-count:]


def remove_labelled(api: docker.APIClient, labels: dict[str, str]) -> int:
    """Remove containers, volumes and networks carrying all `labels`; returns how many went."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    removed = 0
    for item in _list(api.containers, all=True, filters=filters):
        _quietly(api.remove_container, item["Id"], force=True, v=True)
        directory = item.get("Labels", {}).get(LABEL_DIR)
        if directory:
            remove_dir(Path(directory))
        removed += 1
    for item in (_list(api.volumes, filters=filters) or {}).get("Volumes") or []:
        _quietly(api.remove_volume, item["Name"], force=True)
        removed += 1
    for item in _list(api.networks, filters=filters):
        _quietly(api.remove_network, item["Id"])
        removed += 1
    return removed


def _list(call, **kwargs):
    try:
        return call(**kwargs)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.warning("listing leftovers: %s", exc)
        return []


def is_ours(labels: dict[str, str] | None, executor: str) -> bool:
    """Made by `executor` for a job (or a warm pool): a sweep may judge it."""
    return labels is not None and labels.get(LABEL_EXECUTOR) == executor and LABEL_JOB in labels

