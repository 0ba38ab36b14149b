"""Git build contexts: clone a repository at exactly one commit on the worker, pack `subdir`
as the build context tar (honouring .dockerignore) and delete the clone.

Credentials never reach argv, logs or errors: tokens go to git through a credential helper
script that reads them from the environment and answers only for the configured host; an
SSH key is copied to a 0600 file named in GIT_SSH_COMMAND. Each job gets an empty HOME, so
the worker's own ~/.ssh and ~/.gitconfig are never used for a job's repository.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runner.config.settings import Settings
from runner.core.build import BuildContext, LogSink
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError, InvalidJob
from runner.core.extract import make_private
from runner.core.jobs import BuildRequest, GitContext
from runner.core.process import Tool, ToolOutput
from runner.core.tarstream import file_chunks
from runner.sources.pack import write_tar
from runner.sources.upload import spool_context

FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
BAD_REF = re.compile(r"(^-|[\s:~^?*\[\\]|\.\.|@\{|^/|/$|\.lock$)")

CREDENTIAL_HELPER = r"""#!/bin/sh
# git credential helper for one job: answers `get` only for hosts listed in RUNNER_GIT_HOST_<n>.
[ "$1" = get ] || exit 0
host=
while IFS='=' read -r key value; do
  [ "$key" = host ] && host=$value
done
i=0
while :; do
  eval "known=\${RUNNER_GIT_HOST_$i-}"
  [ -n "$known" ] || exit 0
  if [ "$known" = "$host" ]; then
    eval "printf 'username=%s\npassword=%s\n' \"\$RUNNER_GIT_USER_$i\" \"\$RUNNER_GIT_TOKEN_$i\""
    exit 0
  fi
  i=$((i+1))
done
"""

_INFRA = ("could not resolve host", "connection refused", "connection timed out", "network is unreachable",
          "operation timed out", "unable to connect", "connection reset", "returned error: 5",
          "temporary failure in name resolution", "early eof")
_AUTH = ("authentication failed", "could not read username", "could not read password", "permission denied",
         "terminal prompts disabled", "returned error: 401", "returned error: 403", "host key verification failed")
_NO_SUCH_OBJECT = ("not our ref", "unadvertised object", "couldn't find remote ref", "no such remote ref")
_NOT_FOUND = ("repository not found", "does not appear to be a git repository", "no such repository",
              "returned error: 404", "not found")


def url_scheme(url: str) -> str:
    """The transport git will use: https, http, ssh, git or file (scp-like `host:path` is ssh)."""
    transport = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)::", url)  # git's <transport>::<address> form
    if transport:
        return transport[1].lower()
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        return "ssh" if scheme in ("ssh", "git+ssh", "ssh+git") else scheme
    if re.match(r"^[^/:]+:", url) and not re.match(r"^[A-Za-z]:[\\/]", url):
        return "ssh"
    return "file"


def url_host(url: str) -> str | None:
    if "://" in url:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{host}:{parts.port}" if parts.port else host or None
    if url_scheme(url) == "ssh":
        return url.split(":", 1)[0].rpartition("@")[2]
    return None


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password, user, password) for URLs like https://user:tok@host/x."""
    if "://" not in url:
        return url, None, None
    parts = urlsplit(url)
    if parts.password is None:
        return url, None, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), parts.username, parts.password


def mask_url(url: str) -> str:
    """The URL safe to show: any user:password@ part replaced by ***@."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


def check_url(url: str, settings: Settings) -> str:
    """Refuse a clone URL this runner may not fetch; return its scheme. Raises InvalidJob."""
    if url.startswith("-") or any(ord(c) < 32 for c in url):
        raise InvalidJob(f"git URL {mask_url(url)!r} is not a valid repository URL")
    scheme = url_scheme(url)
    allowed = settings.git.allowed_schemes
    if scheme not in allowed:
        raise InvalidJob(f"git URL {mask_url(url)!r} uses {scheme!r}, which this runner does not allow "
                         f"(git.allowed_schemes: {', '.join(allowed) or 'none'})")
    return scheme


def check_ref(ref: str) -> None:
    if BAD_REF.search(ref) or any(ord(c) < 32 for c in ref):
        raise InvalidJob(f"git ref {ref!r} is not a valid branch, tag or ref name")


class GitOutput(ToolOutput):
    """git's output into the job log, prefixed `[git] `; the last lines kept for error messages."""

    def handle(self, text: str) -> str | None:
        return f"[git] {text}"

    def text(self) -> str:
        return "\n".join(self.lines)


class GitFetch:
    """One clone: environment (credentials), the git calls, and error classification."""

    def __init__(self, source: GitContext, workspace: Path, log, cancel: CancelToken, settings: Settings):
        self.source, self.workspace, self.log, self.cancel, self.settings = source, workspace, log, cancel, settings
        self.git = settings.git.binary
        self.url, user, password = split_credentials(source.url)
        self.shown = mask_url(source.url)
        self.auth_dir = workspace / "git-auth"
        self.src = workspace / "src"
        self.env = self._environment(user, password)
        config = ["-c", "credential.helper="] + (["-c", f"credential.helper={self.helper}"] if self.helper else [])
        self.tool = Tool(self.git, config, env=self.env)  # one lookup of the binary for the clone's git calls

    def _environment(self, url_user: str | None, url_password: str | None) -> dict[str, str]:
        home = self.auth_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.auth_dir.chmod(0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ALLOW_PROTOCOL": ":".join(self.settings.git.allowed_schemes),
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }
        entries = []
        host = url_host(self.url)
        if url_password is not None and host:
            entries.append((host, url_user or "git", url_password))
        for cred in self.settings.git.credentials:
            try:
                token = cred.secret_value(f"git.credentials[{cred.host}].token")
            except ValueError as exc:
                raise InfrastructureError(str(exc)) from None
            if token:
                entries.append((cred.host, cred.username, token))
        for index, (cred_host, username, token) in enumerate(entries):
            env[f"RUNNER_GIT_HOST_{index}"], env[f"RUNNER_GIT_USER_{index}"] = cred_host, username
            env[f"RUNNER_GIT_TOKEN_{index}"] = token
            self.log.add_secret(token)
        if entries:
            helper = self.auth_dir / "credential-helper"
            helper.write_text(CREDENTIAL_HELPER)
            helper.chmod(0o700)
            self.helper: str | None = str(helper)
        else:
            self.helper = None
        cred = self.settings.git.credential_for(host) if host else None
        if cred and cred.ssh_key_file and url_scheme(self.url) == "ssh":
            key = self.auth_dir / "ssh-key"
            try:
                key.touch(mode=0o600)
                key.write_bytes(cred.ssh_key_file.read_bytes())
            except OSError as exc:
                raise InfrastructureError(f"git.credentials[{cred.host}].ssh_key_file: cannot read it: {exc.strerror}") from None
            known = str(cred.known_hosts_file) if cred.known_hosts_file else os.devnull
            env["GIT_SSH_COMMAND"] = shlex.join(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                                 "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"])
        return env

    def run(self, *args: str, quiet: bool = False) -> tuple[int, GitOutput]:
        output = GitOutput(_Quiet(self.log) if quiet else self.log)
        code = self.tool.stream(args, output, self.cancel)
        return code, output

    def fail(self, tail: GitOutput, what: str) -> None:
        output = self.log.mask(tail.text()).replace(self.source.url, self.shown)
        lower = output.lower()
        detail = f"\n{output}" if output else ""
        host = url_host(self.url) or "the host"
        if any(p in lower for p in _AUTH):
            raise InvalidJob(f"git: cannot {what}: authentication to {host} failed or is missing "
                             f"(configure a token or SSH key for it under git.credentials){detail}")
        if any(p in lower for p in _INFRA):
            raise InfrastructureError(f"git: cannot {what}: {self.shown} is unreachable{detail}")
        if any(p in lower for p in _NOT_FOUND):
            raise InvalidJob(f"git: cannot {what}: repository {self.shown} not found{detail}")
        raise InfrastructureError(f"git: cannot {what}{detail}")

    def checkout(self) -> str:
        """Fetch and check out the wanted commit into `self.src`; return the full commit id."""
        src, source = str(self.src), self.source
        code, tail = self.run("init", "-q", src, quiet=True)
        if code != 0:
            raise InfrastructureError(f"git init failed: {tail.text()}")
        self.run("-C", src, "remote", "add", "origin", self.url, quiet=True)
        depth = ["--depth", "1"] if self.settings.git.shallow else []
        target = None
        if source.commit and FULL_SHA.match(source.commit) and depth:
            code, tail = self.run("-C", src, "fetch", "-q", "--no-tags", *depth, "origin", source.commit)
            if code == 0:
                target = source.commit
            elif any(m in tail.text().lower() for m in _NO_SUCH_OBJECT):
                self.log.line("[runner] git: the server refused a shallow fetch of the commit; fetching branches and tags")
            else:
                self.fail(tail, f"fetch {self.shown}")
        if target is None and source.commit:
            refspecs = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
            if source.ref and source.ref.startswith("refs/") and not source.ref.startswith(("refs/heads/", "refs/tags/")):
                refspecs.append(f"+{source.ref}:refs/runner/ref")
            code, tail = self.run("-C", src, "fetch", "-q", "origin", *refspecs)
            if code != 0:
                self.fail(tail, f"fetch {self.shown}")
            target = source.commit
        elif target is None:
            assert source.ref is not None
            code, tail = self.run("-C", src, "fetch", "-q", "--no-tags", *depth, "origin", source.ref)
            if code != 0:
                if "couldn't find remote ref" in tail.text().lower():
                    raise InvalidJob(f"git: ref {source.ref!r} does not exist in {self.shown}")
                self.fail(tail, f"fetch {source.ref!r} from {self.shown}")
            target = "FETCH_HEAD"
        code, tail = self.run("-C", src, "rev-parse", "--verify", "--quiet", f"{target}^{{commit}}", quiet=True)
        if code != 0:
            raise InvalidJob(f"git: commit {source.commit} is not in {self.shown} (fetched every branch and tag)")
        commit = tail.lines[-1].removeprefix("[git] ").strip()
        code, tail = self.run("-C", src, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit)
        if code != 0:
            raise InfrastructureError(f"git: cannot check out {commit}:\n{self.log.mask(tail.text())}")
        if source.submodules:
            code, tail = self.run("-C", src, "submodule", "update", "--init", "--recursive")
            if code != 0:
                self.fail(tail, "fetch the submodules")
        return commit

    def cleanup(self) -> None:
        shutil.rmtree(self.auth_dir, ignore_errors=True)
        shutil.rmtree(self.src, ignore_errors=True)


class _Quiet:
    """Swallows lines (plumbing output such as rev-parse) but keeps masking available."""

    def __init__(self, log):
        self.log = log

    def line(self, text: str) -> None:
        pass

    def write(self, chunk: str) -> None:
        pass


class _CappedFile:
    """A file sink that refuses to grow past `max_bytes` (limits.max_context_bytes)."""

    def __init__(self, path: Path, max_bytes: int):
        self.handle, self.max_bytes, self.size = path.open("wb"), max_bytes, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InvalidJob(f"the build context is over the limit of {self.max_bytes:,} bytes "
                             "(limits.max_context_bytes); add a .dockerignore or build a smaller subdir")
        return self.handle.write(data)

    def flush(self) -> None:
        pass


def prepare_git_context(request: BuildRequest, workspace: Path, joblog, cancel: CancelToken,
                        settings: Settings) -> BuildContext:
    source = request.context
    assert isinstance(source, GitContext)
    check_url(source.url, settings)
    if source.ref:
        check_ref(source.ref)
    make_private(workspace.parent, workspace)
    fetch = GitFetch(source, workspace, joblog, cancel, settings)
    try:
        joblog.line(f"[runner] git: fetching {fetch.shown} at {source.commit or source.ref}")
        commit = fetch.checkout()
        joblog.line(f"[runner] git: checked out {commit}")
        root = checkout_subdir(fetch.src, source.subdir, f"{fetch.shown} at {commit}")
        _, mode = lstat_walk(root, request.dockerfile)
        if mode is None or not stat.S_ISREG(mode):
            where = f" (subdir {source.subdir!r})" if source.subdir else ""
            raise InvalidJob(f"Dockerfile {request.dockerfile!r} not found in {fetch.shown} at {commit}{where}")
        packed = workspace / "context.packed.tar"
        sink = _CappedFile(packed, settings.limits.max_context_bytes)
        try:
            write_tar(root, sink, request.dockerfile, settings.limits, cancel)
        finally:
            sink.handle.close()
        try:  # the same checks and canonical tar as an uploaded context
            with closing(file_chunks(packed)) as chunks:
                context = spool_context(chunks, workspace, request.dockerfile, settings.limits, cancel)
        finally:
            packed.unlink(missing_ok=True)
        joblog.line(f"[runner] context: {context.size:,} bytes from {source.subdir or 'the repository root'}")
        return context
    finally:
        fetch.cleanup()


def lstat_walk(top: Path, rel: str) -> tuple[Path, int | None]:
    """`top/rel` and its lstat mode, walked one name at a time and never through a link: the
    mode is None when it is missing or a component on the way is a symlink or not a folder."""
    path, mode = top, os.lstat(top).st_mode
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == ".." or not stat.S_ISDIR(mode):
            return path / part, None
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return path, None
    return path, mode


def checkout_subdir(src: Path, subdir: str, where: str) -> Path:
    """`src/subdir`, refused if it is (or passes through) a symlink or is not a folder, so
    nothing in the repository can point the context elsewhere."""
    root, mode = lstat_walk(src, subdir)
    if mode is None or not stat.S_ISDIR(mode):
        kind = "a symlink" if mode is not None and stat.S_ISLNK(mode) else "not a directory (or passes through a symlink)"
        raise InvalidJob(f"subdir {subdir!r} is {kind} in {where}")
    return root


class GitSource:
    """Contexts cloned from a git repository at exactly one commit."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def prepare(self, request: BuildRequest, workspace: Path, log: LogSink, cancel: CancelToken) -> BuildContext:
        return prepare_git_context(request, workspace, log, cancel, self.settings)
