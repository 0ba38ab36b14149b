"""Git build contexts: fetch what one commit needs on the worker (the commit by its id, no
other branch, no tag), pack `subdir` as the build context tar (honouring .dockerignore) and
delete the clone. As in BuildKit, `.git` is left out of the context unless the job asks for it
(`keep_git_dir`, or the build arg BUILDKIT_CONTEXT_KEEP_GIT_DIR), and then it is what BuildKit
keeps: the commit checked out, named by the job's branch or tag, shallow unless git.shallow is off.

A failure says what the job got wrong (kind `invalid`: no such host, repository, ref or
commit, a refused login, a submodule that cannot be fetched) or that the git host is in
trouble (`infrastructure`), never with a path of the worker's (GitOutput takes them out).

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
import socket
import stat
from contextlib import closing
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from runner.config.settings import Settings
from runner.context.build_context import BuildContext
from runner.context.extract import make_private
from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.context.tarstream import file_chunks
from runner.core.cancel import CancelToken
from runner.core.errors import ExecutorError, InfrastructureError, InvalidJob
from runner.core.jobs import BuildRequest, GitContext
from runner.core.log_sink import LogSink
from runner.core.process import Tool, ToolOutput

FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
BAD_REF = re.compile(r"(^-|[\s:~^?*\[\\]|\.\.|@\{|^/|/$|\.lock$)")
#: where a fetch by ref puts what it fetched, in the clone's own namespace
FETCHED_REF = "refs/runner/fetched"

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

#: BuildKit's build arg for keeping `.git` in a git context, read as its Dockerfile frontend
#: reads it (Go's strconv.ParseBool; only a true value matters here)
KEEP_GIT_DIR_ARG = "BUILDKIT_CONTEXT_KEEP_GIT_DIR"
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")

# What git's output says went wrong, in the order `failure` asks.
_AUTH = ("authentication failed", "could not read username", "could not read password", "permission denied",
         "terminal prompts disabled", "returned error: 401", "returned error: 403", "host key verification failed")
#: a name lookup that failed: the name does not exist (EAI_NONAME, EAI_NODATA), or we ask the resolver
_LOOKUP = re.compile(r"(?:could not resolve host(?:name)?:?|unable to look up) ([^\s:'\"]+)", re.IGNORECASE)
_NO_SUCH_NAME = ("name or service not known", "no address associated with hostname")
_NOT_ALLOWED = re.compile(r"transport '([^']*)' not allowed")
_TRANSIENT = ("could not resolve host", "unable to look up", "temporary failure in name resolution", "connection refused",
              "connection timed out", "network is unreachable", "operation timed out", "unable to connect",
              "connection reset", "returned error: 5", "early eof", "rpc failed", "timed out")
_NOT_FOUND = ("repository not found", "does not appear to be a git repository", "no such repository",
              "returned error: 404", "not found")
_NO_SUCH_OBJECT = ("not our ref", "unadvertised object", "couldn't find remote ref", "no such remote ref",
                   "did not contain")
_SUBMODULE = re.compile(r"submodule path '([^']*)'|Failed to clone '([^']*)'")
_MISSING_COMMIT = re.compile(r"did not contain ([0-9a-f]{7,64})|not our ref ([0-9a-f]{7,64})")
#: the lines of git's output a job's error message quotes (its log has all of them)
ERROR_LINES = 12


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


def keeps_git_dir(request: BuildRequest) -> bool:
    """Whether the job asks for `.git` in its context: `keep_git_dir` on its git context, or
    BuildKit's build arg BUILDKIT_CONTEXT_KEEP_GIT_DIR set true."""
    assert isinstance(request.context, GitContext)
    return request.context.keep_git_dir or request.build_args.get(KEEP_GIT_DIR_ARG, "") in _GO_TRUE


def local_ref(ref: str | None) -> str | None:
    """The ref a kept `.git` names the commit with: a branch or tag named in full as itself,
    a plain name as a branch (as BuildKit, which prefers a branch on ambiguity), else none."""
    if not ref or (ref.startswith("refs/") and not ref.startswith(("refs/heads/", "refs/tags/"))):
        return None
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"


def no_such_host(output: str) -> str | None:
    """The host name git could not look up, when that name does not exist (the job's
    mistake); None when no lookup failed or it failed for now (DNS trouble: transient)."""
    match = _LOOKUP.search(output)
    if match is None:
        return None
    lower = output.lower()
    if any(words in lower for words in _NO_SUCH_NAME):
        return match[1]
    if "temporary failure" in lower:
        return None
    try:  # curl does not say why a lookup failed: ask the resolver the same question
        socket.getaddrinfo(match[1].encode(), None)
    except socket.gaierror as exc:
        return match[1] if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)) else None
    except (UnicodeError, OSError):
        return None
    return None


def first_group(match: re.Match | None) -> str | None:
    """The first group of `match` that took part in it (alternatives each have their own)."""
    return next((group for group in match.groups() if group is not None), None) if match else None


def failure(output: str, what: str, repository: str, host: str | None) -> ExecutorError:
    """The error for git failing to `what`, from its output: the job's own mistakes (auth
    refused, no such host, repository, ref or commit, a scheme not allowed) are `invalid`;
    trouble that may pass (timeouts, refused or reset connections, 5xx) and anything not
    understood are `infrastructure`."""
    lower = output.lower()
    detail = f"\n{output}" if output else ""
    if any(words in lower for words in _AUTH):
        return InvalidJob(f"git: cannot {what}: authentication to {host or 'the host'} failed or is missing "
                          f"(configure a token or SSH key for it under git.credentials){detail}")
    if (name := no_such_host(output)) is not None:
        return InvalidJob(f"git: cannot {what}: no host is named {name!r} (the name does not resolve){detail}")
    if scheme := _NOT_ALLOWED.search(output):
        return InvalidJob(f"git: cannot {what}: it uses {scheme[1]!r}, which this runner does not allow "
                          f"(git.allowed_schemes){detail}")
    if any(words in lower for words in _TRANSIENT):
        return InfrastructureError(f"git: cannot {what}: {repository} is unreachable{detail}")
    if any(words in lower for words in _NOT_FOUND):
        return InvalidJob(f"git: cannot {what}: repository {repository} not found{detail}")
    if any(words in lower for words in _NO_SUCH_OBJECT):
        commit = first_group(_MISSING_COMMIT.search(output))
        return InvalidJob(f"git: cannot {what}: {repository} does not have {f'commit {commit}' if commit else 'the commit it needs'}"
                          f"{detail}")
    return InfrastructureError(f"git: cannot {what}{detail}")


class GitOutput(ToolOutput):
    """git's output into the job log, prefixed `[git] `, with the worker's paths taken out
    (`scrub`: (path, shown instead), longest first); the last lines kept for error messages."""

    def __init__(self, log, scrub: list[tuple[str, str]]):
        super().__init__(log)
        self.scrub = scrub

    def handle(self, text: str) -> str | None:
        for path, shown in self.scrub:
            text = text.replace(path, shown)
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
        #: the worker's paths as git prints them (given and resolved), and what is shown instead
        scrub = {f"{self.src}/": "", str(self.src): ".", str(workspace): "<job workspace>"}
        for path, shown in list(scrub.items()):
            scrub.setdefault(path.replace(str(workspace), os.path.realpath(workspace), 1), shown)
        self.scrub = sorted(scrub.items(), key=lambda item: -len(item[0]))
        self.extra_fetched = False  # the fetch brought more than the commit needs (a refusal's fallback)
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
        ssh_cred = self.settings.git.credential_for(host) if host else None
        if ssh_cred and ssh_cred.ssh_key_file and url_scheme(self.url) == "ssh":
            key = self.auth_dir / "ssh-key"
            try:
                key.touch(mode=0o600)
                key.write_bytes(ssh_cred.ssh_key_file.read_bytes())
            except OSError as exc:
                raise InfrastructureError(f"git.credentials[{ssh_cred.host}].ssh_key_file: cannot read it: {exc.strerror}") from None
            known = str(ssh_cred.known_hosts_file) if ssh_cred.known_hosts_file else os.devnull
            env["GIT_SSH_COMMAND"] = shlex.join(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                                 "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"])
        return env

    def run(self, *args: str, quiet: bool = False) -> tuple[int, GitOutput]:
        output = GitOutput(_Quiet(self.log) if quiet else self.log, self.scrub)
        code = self.tool.stream(args, output, self.cancel)
        return code, output

    def in_src(self, *args: str, quiet: bool = False) -> tuple[int, GitOutput]:
        return self.run("-C", str(self.src), *args, quiet=quiet)

    def shown_output(self, tail: GitOutput) -> str:
        """git's last lines, fit for a job's error: secrets masked, the URL's credentials out
        (paths are out already: GitOutput)."""
        lines = [line for line in tail.lines if line.strip() not in ("", "[git]")][-ERROR_LINES:]
        return self.log.mask("\n".join(lines)).replace(self.source.url, self.shown)

    def fail(self, tail: GitOutput, what: str) -> NoReturn:
        raise failure(self.shown_output(tail), what, self.shown, url_host(self.url))

    def fail_submodules(self, tail: GitOutput, said: str) -> NoReturn:
        """`said`: all git said while updating the submodules (it names their URLs once)."""
        output = self.shown_output(tail)
        path = first_group(_SUBMODULE.search(output))
        what = f"fetch submodule {path!r}" if path else "fetch the submodules"
        quoted = re.escape(f"'{path}'") if path else "'[^']*'"
        url = first_group(re.search(rf"clone of '([^']*)' into submodule path {quoted}|"
                                    rf"Submodule '[^']*' \((.*)\) registered for path {quoted}", self.log.mask(said)))
        raise failure(output, what, mask_url(url) if url else "its repository", url_host(url) if url else None)

    def checkout(self) -> str:
        """Fetch what the wanted commit needs, check it out into `self.src` (and its
        submodules, if asked); return the full commit id."""
        code, tail = self.run("init", "-q", str(self.src), quiet=True)
        if code != 0:
            raise InfrastructureError(f"git init failed: {tail.text()}")
        self.in_src("remote", "add", "origin", self.url, quiet=True)
        commit = self.fetch()
        code, tail = self.in_src("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit)
        if code != 0:
            raise InfrastructureError(f"git: cannot check out {commit}:\n{self.shown_output(tail)}")
        if self.source.submodules:
            self.update_submodules()
        return commit

    def fetch(self) -> str:
        """Fetch the wanted commit and nothing else the server lets us leave out: the commit
        by its id (`git.shallow`: only it, else its history), no other branch, no tag. A
        server that refuses a fetch by id (or a short id) gets the ref's history, and then
        every branch and tag, until the commit is there. Returns its full id."""
        source, shallow = self.source, self.settings.git.shallow
        steps: list[tuple[str, list[str], bool]] = []  # (what is fetched, refspecs, depth 1 if shallow)
        if source.commit and FULL_SHA.match(source.commit):
            steps.append((f"commit {source.commit}", [source.commit], True))
        if source.ref:
            steps.append((f"ref {source.ref!r}", [f"+{source.ref}:{FETCHED_REF}"], not source.commit))
        if source.commit:
            steps.append(("every branch and tag", ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], False))
        for index, (what, refspecs, depth) in enumerate(steps):
            last = index == len(steps) - 1
            code, tail = self.in_src("fetch", "-q", "--no-tags", "--refmap=", *(["--depth", "1"] if depth and shallow else []),
                                     "origin", *refspecs)  # --refmap=: no remote-tracking branch on the side
            if code != 0:
                lower = tail.text().lower()
                if refspecs[0].endswith(FETCHED_REF) and "couldn't find remote ref" in lower:
                    raise InvalidJob(f"git: ref {source.ref!r} does not exist in {self.shown}")
                if last or not any(m in lower for m in _NO_SUCH_OBJECT):
                    self.fail(tail, f"fetch {what} from {self.shown}")
                self.log.line(f"[runner] git: {self.shown} did not send {what} (a server may refuse a fetch by commit id); "
                              f"fetching {steps[index + 1][0]}")
                continue
            self.extra_fetched = bool(source.commit) and refspecs != [source.commit]  # more than the commit by its id
            wanted = source.commit or FETCHED_REF
            code, tail = self.in_src("rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", quiet=True)
            if code == 0:
                return tail.lines[-1].removeprefix("[git] ").strip()
            if not last:
                self.log.line(f"[runner] git: commit {source.commit} is not in {what}; fetching {steps[index + 1][0]}")
        raise InvalidJob(f"git: commit {source.commit} is not in {self.shown} (looked in {', '.join(s[0] for s in steps)})")

    def update_submodules(self) -> None:
        """The submodules at the commits the checkout records: depth 1 with `git.shallow`
        (as BuildKit fetches them), their whole history again if a server refuses that."""
        depth = ["--depth", "1"] if self.settings.git.shallow else []
        code, tail = self.in_src("submodule", "update", "--init", "--recursive", *depth)
        said = tail.text()
        if code != 0 and depth and any(m in said.lower() for m in _NO_SUCH_OBJECT):
            self.log.line("[runner] git: a submodule's server did not send its commit at depth 1; fetching its history")
            code, tail = self.in_src("submodule", "update", "--init", "--recursive")
            said += "\n" + tail.text()
        if code != 0:
            self.fail_submodules(tail, said)

    def git_dirs(self) -> list[str]:
        """What git made in the checkout, relative to it: `.git`, and each submodule's `.git` file."""
        found = [".git"]
        if self.source.submodules:
            code, tail = self.in_src("submodule", "foreach", "--quiet", "--recursive", 'echo "$displaypath"', quiet=True)
            if code != 0:
                raise InfrastructureError(f"git: cannot list the submodules:\n{self.shown_output(tail)}")
            found += [f"{line.removeprefix('[git] ')}/.git" for line in tail.lines]
        return found

    def drop_git_dirs(self) -> None:
        """Leave `.git` out of the context, as BuildKit does unless asked to keep it. Each is
        reached without following a link (lstat_walk), so nothing outside the checkout goes."""
        for rel in reversed(self.git_dirs()):
            path, mode = lstat_walk(self.src, rel)
            if mode is None:
                continue
            if stat.S_ISDIR(mode):
                shutil.rmtree(path)
            else:
                path.unlink()

    def keep_git_dir(self, commit: str) -> None:
        """Make `.git` what BuildKit keeps (BUILDKIT_CONTEXT_KEEP_GIT_DIR): HEAD detached at
        the commit, the job's branch or tag naming it, `origin` the URL without credentials,
        no FETCH_HEAD or reflog, and (`git.shallow`) only the commit itself."""
        name = local_ref(self.source.ref)
        script = ('"$1" -C "$2" for-each-ref --format="delete %(refname)" | "$1" -C "$2" update-ref --stdin'
                  + (' && "$1" -C "$2" update-ref "$3" "$4"' if name else ""))
        code = Tool("sh", env=self.env).stream(["-c", script, "sh", self.tool.binary, str(self.src), name or "", commit],
                                               GitOutput(self.log, self.scrub), self.cancel)
        if code != 0:
            raise InfrastructureError("git: cannot keep .git: updating its refs failed")
        git_dir = self.src / ".git"
        (git_dir / "FETCH_HEAD").unlink(missing_ok=True)
        self.in_src("reflog", "expire", "--expire=now", "--all", quiet=True)
        if self.extra_fetched:  # a refused fetch by id brought more than the commit: drop it
            if self.settings.git.shallow:
                (git_dir / "shallow").write_text(f"{commit}\n")
            self.in_src("gc", "-q", "--prune=now", quiet=True)

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
        if not keeps_git_dir(request):
            fetch.drop_git_dirs()
        elif source.subdir:  # as BuildKit: .git is kept only with the repository's root as the context
            joblog.line(f"[runner] git: .git is not kept: the context is subdir {source.subdir!r}, not the repository")
            fetch.drop_git_dirs()
        else:
            fetch.keep_git_dir(commit)
            joblog.line("[runner] git: .git is kept in the context (keep_git_dir, BUILDKIT_CONTEXT_KEEP_GIT_DIR)")
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
        context.commit = commit
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
