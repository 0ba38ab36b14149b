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


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


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
    """`git http-backend` (smart HTTP) behind Basic auth: user anything, password TOKEN."""

    root: Path
    seen_auth: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _serve(self):
        header = self.headers.get("Authorization", "")
        GitHttp.seen_auth.append(header)
        if not header.startswith("Basic ") or base64.b64decode(header[6:]).decode().partition(":")[2] != TOKEN:
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
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
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


@pytest.fixture(scope="module")
def git_http(repos):
    handler = type("Handler", (GitHttp,), {"root": repos[0]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


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

    def run(context: dict, git: GitConfig | None = None, dockerfile: str = "Dockerfile", cancel=None, settings=None):
        base = settings or harness.settings
        cfg = base.model_copy(update={"git": git or GitConfig(allowed_schemes=["file", "git", "http"])})
        request = BuildRequest(context={"type": "git", **context}, dockerfile=dockerfile, tags=["127.0.0.1:5000/x/y:1"])
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
