"""Git contexts on the worker side, against real repositories served on loopback:
file://, `git daemon` (git://) and `git http-backend` behind HTTP Basic auth (token path)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.config.sections import GitConfig, GitCredential
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, InfrastructureError, InvalidJob
from runner.core.jobs import BuildRequest
from runner.sources.git import check_url, mask_url, prepare_git_context, url_host, url_scheme
from runner.store.joblog import JobLog

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
TOKEN = "tok-" + uuid.uuid4().hex


def git(cwd: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=check, capture_output=True, text=True).stdout.strip()


def commit_files(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_repo(root: Path, name: str = "app") -> tuple[Path, list[str]]:
    """A repository with two commits on main and a tag on the first."""
    repo = root / name
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    first = commit_files(repo, {
        "Dockerfile": "FROM scratch\nCOPY greeting /greeting\n", "greeting": "one\n",
        "sub/Dockerfile": "FROM scratch\nCOPY . /app\n", "sub/kept.txt": "kept\n",
        "sub/secret.txt": "do not send\n", "sub/.dockerignore": "secret.txt\n",
    }, "first")
    git(repo, "tag", "v1")
    second = commit_files(repo, {"greeting": "two\n"}, "second")
    return repo, [first, second]


def tar_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    repo, commits = make_repo(root)
    return root, repo, commits


@pytest.fixture(scope="module")
def git_daemon(repos):
    root = repos[0]
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={root}", "--export-all",
                             "--listen=127.0.0.1", f"--port={port}", "--informative-errors", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    yield f"git://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


class GitHttp(BaseHTTPRequestHandler):
    """`git http-backend` (smart HTTP) behind Basic auth: user anything, password TOKEN.
    `protocol_v2 = False` serves protocol v0 only, where (by default) git refuses to send a
    commit by its id unless a ref points at it, as older servers do."""

    root: Path
    seen_auth: list[str] = []
    token: str | None = TOKEN
    protocol_v2 = True

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _serve(self):
        header = self.headers.get("Authorization", "")
        GitHttp.seen_auth.append(header)
        if self.token is not None and (not header.startswith("Basic ")
                                       or base64.b64decode(header[6:]).decode().partition(":")[2] != self.token):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        env = {**GIT_ENV, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
               "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": "ci",
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "") if self.protocol_v2 else "",
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]):
    """`handler` served on a loopback port (yielded) by a thread, for the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def git_http(repos):
    with http_server(type("Handler", (GitHttp,), {"root": repos[0]})) as port:
        yield port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def prepare(harness, tmp_path):
    """prepare_git_context with the session's store, a job log, and a git config override."""

    def run(context: dict, git: GitConfig | None = None, dockerfile: str = "Dockerfile", cancel=None, settings=None,
            build_args: dict | None = None):
        base = settings or harness.settings
        cfg = base.model_copy(update={"git": git or GitConfig(allowed_schemes=["file", "git", "http"])})
        request = BuildRequest(context={"type": "git", **context}, dockerfile=dockerfile, tags=["127.0.0.1:5000/x/y:1"],
                               build_args=build_args or {})
        joblog = JobLog(harness.store, request.id)
        workspace = tmp_path / "ws" / request.id
        try:
            ctx = prepare_git_context(request, workspace, joblog, cancel or CancelToken(), cfg)
        finally:
            joblog.flush()
            run.log = list(harness.store.read_log(request.id))
        return ctx

    return run


def test_clones_exactly_the_commit_and_cleans_up(prepare, repos):
    _, repo, (first, second) = repos
    ctx = prepare({"url": f"file://{repo}", "ref": "main", "commit": first})
    assert tar_files(ctx.tar_path)["greeting"] == b"one\n"
    assert sorted(p.name for p in ctx.workspace.iterdir()) == ["context.tar"], "clone and credentials are deleted"
    assert any(first in line for line in prepare.log)
    ctx = prepare({"url": f"file://{repo}", "commit": second})
    assert tar_files(ctx.tar_path)["greeting"] == b"two\n"


def test_shallow_fetch_over_git_daemon(prepare, repos, git_daemon):
    _, _, (first, _) = repos
    ctx = prepare({"url": f"{git_daemon}/app", "commit": first})
    assert tar_files(ctx.tar_path)["greeting"] == b"one\n"
    assert not any("refused a shallow fetch" in line for line in prepare.log)


def test_short_sha_falls_back_to_a_full_fetch(prepare, repos, git_daemon):
    _, _, (first, _) = repos
    ctx = prepare({"url": f"{git_daemon}/app", "commit": first[:10]})
    assert tar_files(ctx.tar_path)["greeting"] == b"one\n"
    assert any(first in line for line in prepare.log)


def test_ref_only_builds_the_tip_and_tags_work(prepare, repos, git_daemon):
    assert tar_files(prepare({"url": f"{git_daemon}/app", "ref": "main"}).tar_path)["greeting"] == b"two\n"
    assert tar_files(prepare({"url": f"{git_daemon}/app", "ref": "refs/tags/v1"}).tar_path)["greeting"] == b"one\n"


def test_subdir_honours_dockerignore(prepare, repos):
    _, repo, (first, _) = repos
    files = tar_files(prepare({"url": f"file://{repo}", "commit": first, "subdir": "sub"}).tar_path)
    assert set(files) == {"Dockerfile", "kept.txt", ".dockerignore"}


def test_missing_commit_is_a_clear_invalid_job(prepare, repos, git_daemon):
    with pytest.raises(InvalidJob, match="commit 0123456789abcdef0123456789abcdef01234567 is not in"):
        prepare({"url": f"{git_daemon}/app", "commit": "0123456789abcdef0123456789abcdef01234567"})
    with pytest.raises(InvalidJob, match="ref 'nope' does not exist"):
        prepare({"url": f"{git_daemon}/app", "ref": "nope"})


def test_missing_repository_and_unreachable_host(prepare, git_daemon):
    with pytest.raises(InvalidJob, match="not found"):
        prepare({"url": f"{git_daemon}/no-such-repo", "ref": "main"})
    with pytest.raises(InfrastructureError, match="unreachable"):
        prepare({"url": f"git://127.0.0.1:{free_port()}/app", "ref": "main"})


def test_scheme_not_allowed(prepare, repos):
    with pytest.raises(InvalidJob, match="git.allowed_schemes"):
        prepare({"url": f"file://{repos[1]}", "ref": "main"}, git=GitConfig())
    with pytest.raises(InvalidJob, match="not a valid"):
        prepare({"url": "--upload-pack=touch /tmp/x", "ref": "main"})
    with pytest.raises(InvalidJob, match="not a valid branch"):
        prepare({"url": f"file://{repos[1]}", "ref": "--output=/tmp/x"})


def test_missing_dockerfile_and_bad_subdir(prepare, repos):
    url = f"file://{repos[1]}"
    with pytest.raises(InvalidJob, match="Dockerfile 'Nope' not found in file://"):
        prepare({"url": url, "ref": "main"}, dockerfile="Nope")
    with pytest.raises(InvalidJob, match="subdir 'greeting' is not a directory"):
        prepare({"url": url, "ref": "main", "subdir": "greeting"})


def test_context_size_cap(prepare, repos, harness):
    small = harness.settings.model_copy(update={"limits": harness.settings.limits.model_copy(update={"max_context_bytes": 1000})})
    with pytest.raises(InvalidJob, match="over the limit of 1,000 bytes"):
        prepare({"url": f"file://{repos[1]}", "ref": "main"}, settings=small)


def test_token_from_config_reaches_only_its_host_and_is_never_logged(prepare, git_http):
    cred = GitCredential(host=f"127.0.0.1:{git_http}", token=TOKEN)
    git_cfg = GitConfig(allowed_schemes=["http"], credentials=[cred])
    ctx = prepare({"url": f"http://127.0.0.1:{git_http}/app", "ref": "main"}, git=git_cfg)
    assert tar_files(ctx.tar_path)["greeting"] == b"two\n"
    assert not any(TOKEN in line for line in prepare.log)
    # the same server under another host name: the helper does not hand the token out
    GitHttp.seen_auth.clear()
    with pytest.raises(InvalidJob, match="authentication to localhost") as info:
        prepare({"url": f"http://localhost:{git_http}/app", "ref": "main"}, git=git_cfg)
    assert TOKEN not in str(info.value)
    assert not any(base64.b64encode(f"git:{TOKEN}".encode()).decode() in h for h in GitHttp.seen_auth)


def test_credentials_in_the_url_are_masked_and_kept_out_of_argv(prepare, git_http):
    url = f"http://ci:{TOKEN}@127.0.0.1:{git_http}/app"
    ctx = prepare({"url": url, "ref": "main"}, git=GitConfig(allowed_schemes=["http"]))
    assert tar_files(ctx.tar_path)["greeting"] == b"two\n"
    assert not any(TOKEN in line for line in prepare.log)
    assert any("http://***@127.0.0.1" in line for line in prepare.log)
    with pytest.raises(InvalidJob) as info:
        prepare({"url": f"http://ci:wrong-{TOKEN}@127.0.0.1:{git_http}/app", "ref": "main"}, git=GitConfig(allowed_schemes=["http"]))
    assert TOKEN not in str(info.value) and "***@" in str(info.value)


def test_ssh_key_goes_to_a_0600_file_named_in_git_ssh_command(harness, tmp_path):
    """sshd is not installed here, so this checks the environment git gets, not a real SSH clone."""
    from runner.sources.git import GitFetch

    key = tmp_path / "id_test"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    cfg = harness.settings.model_copy(update={"git": GitConfig(credentials=[GitCredential(host="git.example.com", ssh_key_file=key)])})
    request = BuildRequest(context={"type": "git", "url": "git@git.example.com:team/app.git", "ref": "main"}, tags=["127.0.0.1:5000/a:1"])
    fetch = GitFetch(request.context, tmp_path / "ws", JobLog(harness.store, request.id), CancelToken(), cfg)
    copied = tmp_path / "ws" / "git-auth" / "ssh-key"
    assert copied.stat().st_mode & 0o777 == 0o600 and copied.read_text() == key.read_text()
    assert f"-i {copied}" in fetch.env["GIT_SSH_COMMAND"] and "StrictHostKeyChecking=yes" in fetch.env["GIT_SSH_COMMAND"]
    fetch.cleanup()
    assert not copied.exists()


def test_cancel_kills_a_hanging_fetch(prepare):
    """A server that accepts and never answers: cancel must end the fetch at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    cancel = CancelToken()
    threading.Timer(0.5, cancel.set).start()
    start = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            prepare({"url": f"git://127.0.0.1:{server.getsockname()[1]}/app", "ref": "main"}, cancel=cancel)
    finally:
        server.close()
    assert time.monotonic() - start < 5


def test_submodules(prepare, tmp_path):
    lib, _ = make_repo(tmp_path, "lib")
    app = tmp_path / "outer"
    app.mkdir()
    git(app, "init", "-q", "-b", "main")
    commit_files(app, {"Dockerfile": "FROM scratch\nCOPY . /\n"}, "outer")
    subprocess.run(["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", f"file://{lib}", "vendor/lib"],
                   cwd=app, env=GIT_ENV, check=True, capture_output=True)
    git(app, "commit", "-q", "-m", "add lib")
    with_modules = tar_files(prepare({"url": f"file://{app}", "ref": "main", "submodules": True}).tar_path)
    assert with_modules["vendor/lib/greeting"] == b"two\n"
    assert not [name for name in with_modules if ".git" in name.split("/")]  # the submodule's .git file too
    kept = tar_files(prepare({"url": f"file://{app}", "ref": "main", "submodules": True, "keep_git_dir": True}).tar_path)
    assert kept["vendor/lib/.git"] == b"gitdir: ../../.git/modules/vendor/lib\n"  # inside the context
    assert ".git/modules/vendor/lib/HEAD" in kept
    without = tar_files(prepare({"url": f"file://{app}", "ref": "main"}).tar_path)
    assert "vendor/lib/greeting" not in without


@pytest.mark.parametrize("url, scheme, host", [
    ("https://github.com/team/app.git", "https", "github.com"),
    ("git@github.com:team/app.git", "ssh", "github.com"),
    ("ssh://git@git.example.com:2222/team/app.git", "ssh", "git.example.com:2222"),
    ("/srv/git/app", "file", None),
    ("file:///srv/git/app", "file", None),
])
def test_url_parsing(url, scheme, host):
    assert url_scheme(url) == scheme
    assert url_host(url) == host


def test_mask_and_check_url(harness):
    assert mask_url("https://user:secret@host/x.git") == "https://***@host/x.git"
    with pytest.raises(InvalidJob, match="uses 'ext'"):
        check_url("ext::sh -c touch% /tmp/pwned", harness.settings)
    assert check_url("https://github.com/team/app.git", harness.settings) == "https"


# -- .git stays out of the context unless asked (BuildKit's BUILDKIT_CONTEXT_KEEP_GIT_DIR) ------------------------
def extracted(ctx, where: Path) -> Path:
    return ctx.extract_to(where / uuid.uuid4().hex[:8])


def test_the_context_has_no_git_dir_unless_the_job_asks(prepare, repos, tmp_path):
    _, repo, (first, second) = repos
    for context, args in [({}, {}), ({}, {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "0"}),
                          ({}, {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "yes"})]:  # not a Go boolean: BuildKit ignores it
        names = tar_files(prepare({"url": f"file://{repo}", "ref": "main", **context}, build_args=args).tar_path)
        assert not [n for n in names if n == ".git" or n.startswith(".git/")], (context, args)
    for context, args in [({"keep_git_dir": True}, {}), ({}, {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1"}),
                          ({}, {"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "true"})]:
        out = extracted(prepare({"url": f"file://{repo}", "ref": "refs/heads/main", "commit": first, **context},
                                build_args=args), tmp_path)
        assert git(out, "rev-parse", "HEAD") == first and (out / "greeting").read_text() == "one\n"
    # with a subdir as the context, BuildKit keeps no .git either
    names = tar_files(prepare({"url": f"file://{repo}", "ref": "main", "subdir": "sub", "keep_git_dir": True}).tar_path)
    assert not [n for n in names if ".git" in n.split("/")]
    assert any(".git is not kept: the context is subdir 'sub'" in line for line in prepare.log)


def test_a_kept_git_dir_is_what_buildkit_keeps(prepare, tmp_path):
    """HEAD detached at the commit, the job's branch naming it, shallow, `origin` the URL
    without its credentials, no FETCH_HEAD, nothing else fetched; `git status` clean."""
    _, wanted = many_refs_repo(tmp_path / "served")
    with served(tmp_path / "served") as port:
        url = f"http://ci:{TOKEN}@127.0.0.1:{port}/many"
        out = extracted(prepare({"url": url, "ref": "refs/heads/main", "commit": wanted, "keep_git_dir": True},
                                git=GitConfig(allowed_schemes=["http"])), tmp_path)
    assert git(out, "rev-parse", "HEAD") == wanted
    assert git(out, "symbolic-ref", "-q", "HEAD", check=False) == ""  # detached, as BuildKit's checkout of FETCH_HEAD
    assert git(out, "for-each-ref", "--format=%(refname) %(objectname)") == f"refs/heads/main {wanted}"
    assert git(out, "rev-parse", "--is-shallow-repository") == "true"
    assert (out / ".git" / "shallow").read_text().split() == [wanted]
    assert git(out, "remote", "get-url", "origin") == f"http://127.0.0.1:{port}/many"
    assert not (out / ".git" / "FETCH_HEAD").exists()
    assert git(out, "status", "--porcelain") == ""
    assert TOKEN not in "".join(p.read_text(errors="replace") for p in (out / ".git").rglob("*") if p.is_file())


def many_refs_repo(root: Path, branches: int = 12) -> tuple[Path, str]:
    """A repository with a main branch of four commits, `branches` other branches each with a
    file of its own, and a tag (lightweight and annotated) on each; returns it and main's
    third commit (not its tip)."""
    repo = root / "many"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    commits = [commit_files(repo, {"Dockerfile": "FROM scratch\nCOPY . /c\n", "main.txt": f"main {i}\n"}, f"main {i}")
               for i in range(4)]
    for i in range(branches):
        git(repo, "checkout", "-q", "-b", f"feature-{i}", commits[1])
        commit_files(repo, {f"only-on-feature-{i}.txt": f"feature {i} {uuid.uuid4().hex}\n"}, f"feature {i}")
        git(repo, "tag", f"light-{i}")
        git(repo, "tag", "-a", "-m", f"release {i}", f"v{i}")
    git(repo, "checkout", "-q", "main")
    return repo, commits[2]


@contextmanager
def served(root: Path, protocol_v2: bool = True):
    """The repositories under `root` over smart HTTP (token auth), protocol v2 or v0 only."""
    with http_server(type("Handler", (GitHttp,), {"root": root, "protocol_v2": protocol_v2})) as port:
        yield port


def objects_in(clone: Path) -> set[str]:
    listing = git(clone, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(listing.split())


def reachable(repo: Path, commit: str, depth_one: bool) -> set[str]:
    """The objects a fetch of `commit` needs: its tree (depth one) or its whole history."""
    if depth_one:
        listing = git(repo, "ls-tree", "-r", "-t", commit, "--format=%(objectname)")
        return {commit, git(repo, "rev-parse", f"{commit}^{{tree}}"), *listing.split()}
    return {line.split()[0] for line in git(repo, "rev-list", "--objects", commit).splitlines()}


@pytest.mark.parametrize("shallow, protocol_v2", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["shallow", "history", "shallow-v0-server", "history-v0-server"])
def test_only_what_the_commit_needs_is_fetched(harness, tmp_path, shallow, protocol_v2):
    """Twelve other branches and 24 tags on the server: the clone gets the commit (shallow) or
    its history, no other branch, no tag; a v0 server that will not send a commit by its id
    gets the ref's history fetched instead, never every branch and tag."""
    from runner.sources.git import GitFetch

    repo, wanted = many_refs_repo(tmp_path / "served")
    cfg = harness.settings.model_copy(update={"git": GitConfig(allowed_schemes=["http"], shallow=shallow,
                                                               credentials=[])})
    with served(tmp_path / "served", protocol_v2) as port:
        request = BuildRequest(context={"type": "git", "url": f"http://ci:{TOKEN}@127.0.0.1:{port}/many",
                                        "ref": "refs/heads/main", "commit": wanted}, tags=["127.0.0.1:5000/x/y:1"])
        log = JobLog(harness.store, request.id)
        fetch = GitFetch(request.context, tmp_path / "ws", log, CancelToken(), cfg)
        try:
            assert fetch.checkout() == wanted
            clone = fetch.src
            refs = git(clone, "for-each-ref", "--format=%(refname)").split()
            assert not [r for r in refs if r.startswith(("refs/tags/", "refs/remotes/"))], refs
            got = objects_in(clone)
            on_main = reachable(repo, "main", depth_one=False)
            assert got <= on_main, "objects of other branches or tags were fetched"
            assert reachable(repo, wanted, depth_one=shallow) <= got
            if protocol_v2:  # the commit by its id: exactly what it needs
                assert got == reachable(repo, wanted, depth_one=shallow)
        finally:
            fetch.cleanup()
            log.flush()
    said = "\n".join(harness.store.read_log(request.id))
    assert ("fetching ref 'refs/heads/main'" in said) is not protocol_v2


def test_a_kept_git_dir_after_a_refused_fetch_by_id_is_still_only_the_commit(prepare, tmp_path):
    """A v0 server refuses the commit by id: the ref's history comes instead, and the kept
    .git is cut back to the commit (shallow), as BuildKit keeps it."""
    repo, wanted = many_refs_repo(tmp_path / "served")
    with served(tmp_path / "served", protocol_v2=False) as port:
        out = extracted(prepare({"url": f"http://ci:{TOKEN}@127.0.0.1:{port}/many", "ref": "refs/heads/main",
                                 "commit": wanted, "keep_git_dir": True}, git=GitConfig(allowed_schemes=["http"])), tmp_path)
    assert any("did not send commit" in line for line in prepare.log)
    assert git(out, "rev-parse", "HEAD") == wanted
    assert git(out, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    assert objects_in(out) == reachable(repo, wanted, depth_one=True)
    assert git(out, "status", "--porcelain") == ""
    # a short commit id and no ref: only every branch and tag can find it; what is kept is still the commit
    with served(tmp_path / "served") as port:
        out = extracted(prepare({"url": f"http://ci:{TOKEN}@127.0.0.1:{port}/many", "commit": wanted[:10],
                                 "keep_git_dir": True}, git=GitConfig(allowed_schemes=["http"])), tmp_path)
    assert git(out, "rev-parse", "HEAD") == wanted and git(out, "for-each-ref") == ""
    assert objects_in(out) == reachable(repo, wanted, depth_one=True)


# -- failures: the job's own mistakes are `invalid`, the host's trouble `infrastructure`, no worker path shown --
def outer_with_submodule(root: Path, url: str, commit: str | None = None) -> Path:
    """A repository whose submodule vendor/lib is `url` at `commit` (or its tip)."""
    outer = root / f"outer-{uuid.uuid4().hex[:6]}"
    outer.mkdir(parents=True)
    git(outer, "init", "-q", "-b", "main")
    commit_files(outer, {"Dockerfile": "FROM scratch\nCOPY . /\n"}, "outer")
    lib, _ = make_repo(root, f"lib-{uuid.uuid4().hex[:6]}")
    subprocess.run(["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", f"file://{lib}", "vendor/lib"],
                   cwd=outer, env=GIT_ENV, check=True, capture_output=True)
    if commit:
        subprocess.run(["git", "update-index", "--cacheinfo", f"160000,{commit},vendor/lib"], cwd=outer, env=GIT_ENV, check=True)
    git(outer, "config", "-f", ".gitmodules", "submodule.vendor/lib.url", url)
    git(outer, "add", ".gitmodules")
    git(outer, "commit", "-q", "-m", "submodule")
    return outer


def failed(prepare, context: dict, tmp_path: Path, **options):
    """The error of a git context that must fail, checked for worker paths (record and log)."""
    with pytest.raises((InvalidJob, InfrastructureError)) as caught:
        prepare(context, **options)
    workspace = str(tmp_path / "ws")
    for text in [caught.value.message, *prepare.log]:
        assert workspace not in text and os.path.realpath(workspace) not in text, text
    return caught.value


def test_a_submodule_that_cannot_be_fetched_is_the_jobs_mistake(prepare, tmp_path):
    missing_repo = outer_with_submodule(tmp_path, f"file://{tmp_path}/no-such-lib")
    error = failed(prepare, {"url": f"file://{missing_repo}", "ref": "main", "submodules": True}, tmp_path)
    assert error.kind == "invalid", error.message
    assert error.message.startswith(f"git: cannot fetch submodule 'vendor/lib': repository file://{tmp_path}/no-such-lib not found")
    assert "Cloning into 'vendor/lib'" in error.message  # git's words, with the path relative to the repository

    lib, _ = make_repo(tmp_path, "lib-moved-on")
    gone = outer_with_submodule(tmp_path, f"file://{lib}", commit="0123456789abcdef0123456789abcdef01234567")
    error = failed(prepare, {"url": f"file://{gone}", "ref": "main", "submodules": True}, tmp_path)
    assert error.kind == "invalid", error.message
    assert error.message.startswith(f"git: cannot fetch submodule 'vendor/lib': file://{lib} does not have commit 0123456789abcdef")

    not_allowed = outer_with_submodule(tmp_path, "ext::sh -c touch% /tmp/pwned")
    error = failed(prepare, {"url": f"file://{not_allowed}", "ref": "main", "submodules": True}, tmp_path)
    assert error.kind == "invalid" and "it uses 'ext', which this runner does not allow" in error.message, error.message


LONG_LABEL = "a" * 64  # longer than DNS allows: the resolver fails it at once, nothing is sent anywhere


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_a_host_that_does_not_resolve_is_the_jobs_mistake(prepare, tmp_path, scheme):
    error = failed(prepare, {"url": f"{scheme}://{LONG_LABEL}.example/app", "ref": "main"}, tmp_path)
    assert error.kind == "invalid", error.message
    assert f"no host is named '{LONG_LABEL}.example'" in error.message


class Unavailable(BaseHTTPRequestHandler):
    """A git host in trouble: 503 to everything."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_git_host_in_trouble_is_infrastructure(prepare, tmp_path):
    with http_server(Unavailable) as port:
        error = failed(prepare, {"url": f"http://127.0.0.1:{port}/app", "ref": "main"}, tmp_path)
    assert error.kind == "infrastructure" and f"http://127.0.0.1:{port}/app is unreachable" in error.message, error.message
    with socket.socket() as server:  # accepts, then resets the connection
        server.bind(("127.0.0.1", 0))
        server.listen(5)

        def reset() -> None:
            connection, _ = server.accept()
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.close()

        threading.Thread(target=reset, daemon=True).start()
        error = failed(prepare, {"url": f"http://127.0.0.1:{server.getsockname()[1]}/app", "ref": "main"}, tmp_path)
    assert error.kind == "infrastructure", error.message


def test_a_repository_missing_over_http_is_the_jobs_mistake(prepare, tmp_path, git_http):
    cred = GitCredential(host=f"127.0.0.1:{git_http}", token=TOKEN)
    error = failed(prepare, {"url": f"http://127.0.0.1:{git_http}/no-such-repo", "ref": "main"}, tmp_path,
                   git=GitConfig(allowed_schemes=["http"], credentials=[cred]))
    assert error.kind == "invalid" and "not found" in error.message, error.message
