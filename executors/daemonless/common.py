"""Shared by the daemonless executors (buildah, img).

- `JobFiles`: one private directory per job (0700) for the files a build tool needs —
  registry auth file, registries.conf, CA directory, build-secret files (each 0600).
  Secrets reach the tool through these files or its environment, never its argv.
- `unpack`: the context as the tool reads it: a folder holding exactly what `COPY .` sees in
  `docker build`, and the Dockerfile from a private folder beside it.
- `common_build_flags`: the build flags both tools spell alike.
The tools themselves run through runner.core.process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from executors.base import ExecutorEnv
from runner.context.build_context import BuildContext, Unpacked
from runner.core.cancel import CancelToken
from runner.core.errors import AUTH_WORDS, InfrastructureError, InvalidJob, RegistryAuthFailed
from runner.core.jobs import BuildRequest, ImageRef
from runner.core.log_sink import LogSink
from runner.core.registry_auth import HUB
from runner.core.registry_config import RegistryConfig

if TYPE_CHECKING:
    from runner.core.registry_client import Registries

#: Names a secret build arg may not take: it travels in the tool's environment, where these
#: names would change how the tool itself runs.
RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER", "SHELL", "PWD", "IFS", "TERM"})
RESERVED_ENV_PREFIXES = ("BUILDAH_", "STORAGE_", "CONTAINERS_", "REGISTRY_", "DOCKER_", "XDG_", "IMG_", "LD_")
SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")


# -- per-job private files ---------------------------------------------------------------------
def private_root(env: ExecutorEnv, executor: str, job_id: str) -> Path:
    """Where an executor keeps a job's private files; derivable from the job id alone so
    `cleanup(job_id)` finds it after a crash."""
    return env.job_dir(job_id) / f".{executor}-private"


class JobFiles:
    """A 0700 directory of 0600 files; `remove()` is idempotent."""

    def __init__(self, root: Path):
        self.root = root

    def create(self) -> JobFiles:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        return path

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def remove(self, *names: str) -> None:
        """Remove the named entries, or the whole directory when no name is given."""
        for target in [self.root / n for n in names] if names else [self.root]:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


def unpack(context: BuildContext, executor: str, cancel: CancelToken) -> Unpacked:
    """`<workspace>/<executor>-context` holds what `COPY .` sees (the ignore file applied; the
    Dockerfile and ignore file Docker always sends are there only if the patterns keep them);
    the Dockerfile and everything left out go to `<workspace>/<executor>-aside`."""
    return context.unpack(context.workspace / f"{executor}-context", context.workspace / f"{executor}-aside", cancel)


# -- registry access ---------------------------------------------------------------------------
def registry_auths(registries: Registries, log: LogSink, hub_key: str = HUB) -> dict:
    """The `{"auths": {host: {"auth": b64(user:password)} or {"identitytoken": ...}}}` document
    that both containers-auth.json (buildah) and Docker's config.json (img: `hub_key`
    INDEX_SERVER) use, for every registry a build may pull from or push to
    (CredentialResolver.everything): base images may come from any of them. A registry whose
    login cannot be had is left out, with a warning line in `log`; every secret written is
    masked in `log`."""
    auths = {}
    everything = registries.credentials.everything(lambda message: log.line(f"[runner] warning: {message}"))
    for host, credentials in everything.items():
        log.add_secret(credentials.secret)
        entry = {"identitytoken": credentials.secret} if credentials.identity_token else {"auth": credentials.basic()}
        auths[hub_key if host == HUB else host] = entry
    return {"auths": auths}


def _system_search_settings() -> str:
    """Short-name settings copied from the system registries.conf into a per-job one."""
    try:
        data = tomllib.loads(SYSTEM_REGISTRIES_CONF.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    lines = []
    if isinstance(data.get("unqualified-search-registries"), list):
        lines.append(f"unqualified-search-registries = {json.dumps(data['unqualified-search-registries'])}")
    if isinstance(data.get("short-name-mode"), str):
        lines.append(f"short-name-mode = {json.dumps(data['short-name-mode'])}")
    return "\n".join(lines)


def registries_conf(registries: Iterable[RegistryConfig]) -> str | None:
    """A containers-registries.conf marking plain-HTTP registries insecure, or None if no
    configured registry needs it (then the system file applies unchanged)."""
    insecure = [r.host for r in registries if r.plain_http]
    if not insecure:
        return None
    parts = [_system_search_settings()]
    parts += [f"[[registry]]\nlocation = {json.dumps(host)}\ninsecure = true" for host in insecure]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_cert_dir(registries: Iterable[RegistryConfig], files: JobFiles) -> Path | None:
    """Copy each configured CA into one directory (containers/image trusts a --cert-dir for
    every registry, on top of the system roots)."""
    cas = [r for r in registries if r.ca_file]
    if not cas:
        return None
    certs = files.directory("certs")
    for registry in cas:
        assert registry.ca_file is not None
        try:
            data = registry.ca_file.read_bytes()
        except OSError as exc:
            raise InfrastructureError(f"registry {registry.host}: cannot read ca_file {registry.ca_file}: {exc.strerror}") from None
        files.write(f"certs/{re.sub(r'[^A-Za-z0-9_.-]', '_', registry.host)}.crt", data)
    return certs


def auth_failed(what: str, message: str) -> RegistryAuthFailed:
    """The error for a refused login; `message` is cut to the registry's own words."""
    lower = message.lower()
    start = min((lower.find(word) for word in AUTH_WORDS if word in lower), default=0)
    return RegistryAuthFailed(f"the registry refused our credentials {what}: {message[start:]}. "
                              "Check that registry's login (`registries:` in the runner config, its credential helper "
                              "or registry_auth.docker_config; `runner doctor` shows where each comes from)")


def check_push_logins(registries: Registries, refs: Iterable[ImageRef], log: LogSink) -> None:
    """Fail the job at once, before building, when the login of a registry it pushes to cannot
    be had (an unreadable password_file, a failing credential helper, a broken docker config):
    no retry can help, and pushing without credentials would only end in an auth error. The
    message names the registry and the source, never the path or a secret."""
    for host in dict.fromkeys(ref.registry for ref in refs):
        if (credentials := registries.credentials.lookup(host)) is not None:
            log.add_secret(credentials.secret)


# -- the flags both tools take ---------------------------------------------------------------
def common_build_flags(job: BuildRequest, secrets: Iterable[tuple[str, Path]], cache: str | None,
                       export_cache: bool = True) -> list[str]:
    """What `buildah build` and `img build` spell alike: --no-cache, --target, --platform, labels,
    build args (a secret one by name only: its value travels in the environment), build-secret
    files and the registry cache (read, and written unless `export_cache` is off)."""
    args = ["--no-cache"] if job.no_cache else []
    if job.target:
        args += ["--target", job.target]
    if job.platforms:  # one, or several (buildx's syntax: a,b), both tools build each and name a manifest list
        args += ["--platform", ",".join(job.platforms)]
    for key, value in job.labels.items():
        args += ["--label", f"{key}={value}"]
    for key, value in job.build_args.items():
        args += ["--build-arg", key if key in job.secret_build_args else f"{key}={value}"]
    for secret_id, path in secrets:
        args += ["--secret", f"id={secret_id},src={path}"]
    if cache:
        args += ["--cache-from", cache, *(["--cache-to", cache] if export_cache else [])]
    return args


# -- secrets -----------------------------------------------------------------------------------
def write_build_secrets(secrets: dict[str, bytes], files: JobFiles, log: LogSink) -> list[tuple[str, Path]]:
    """Each build secret the job names, in its own 0600 file; the values are masked in the log."""
    written = []
    for index, (secret_id, value) in enumerate(secrets.items()):
        log.add_secret(value.decode())
        written.append((secret_id, files.write(f"secrets/{index}", value)))
    return written


def secret_arg_env(job: BuildRequest) -> dict[str, str]:
    """Secret build-arg values for the tool's environment (`--build-arg NAME` reads them)."""
    env = {}
    for name in job.secret_build_args:
        if name in RESERVED_ENV or name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise InvalidJob(f"secret build arg {name!r} would travel in the build tool's environment, where that name "
                             "changes how the tool runs; rename the build arg")
        env[name] = job.build_args[name]
    return env


