"""A job's `source` gets commit statuses only where it is bound to what was built or to who
asked (runner/worker/admission.py): through a real `runner serve`, a real worker, raw
messages posted to Redis and the CLI, against a local server that answers like GitHub's
status API (tests/test_statuses.py's FakeHost). Without the binding, any `submit` token (or
anyone who can write to the queue) could mark another repository's commit green with the
host's token."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from runner.config.sections import ApiToken
from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, Status
from runner.worker.admission import QUEUE, WEBHOOK, Origin, Rejected, admit, clone_location, statuses_for
from tests.hostile.rawqueue import post_raw
from tests.test_api import start_stack, stop_stack
from tests.test_gitsource import commit_files, free_port, git, wait_port
from tests.test_statuses import FakeHost, empty_context, new_sha, serve, wait_delivered, wait_finished

GITHUB_TOKEN = "ghp_" + uuid.uuid4().hex
SUBMIT_ONLY = "submit-" + uuid.uuid4().hex
STATUS_RIGHT = "status-" + uuid.uuid4().hex
ALLOW_LISTED = "listed-" + uuid.uuid4().hex
PROTECTED = "someone-else/protected-repo"
OWN = "acme/app"


@pytest.fixture(scope="module")
def github():
    host = FakeHost("github", GITHUB_TOKEN, {OWN, PROTECTED})  # the host would take a status on either
    server = serve(host)
    yield host
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """acme/app, served by `git daemon` on 127.0.0.1 (the status API's host): (clone URL, commit)."""
    root = tmp_path_factory.mktemp("bound")
    work = root / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    commit = commit_files(work, {"Dockerfile": "FROM scratch\n"}, "one")
    (root / "srv" / "acme").mkdir(parents=True)
    git(root / "srv" / "acme", "clone", "-q", "--bare", str(work), "app.git")
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={root / 'srv'}", "--export-all",
                               "--listen=127.0.0.1", f"--port={port}", str(root / "srv")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    yield f"git://127.0.0.1:{port}/acme/app.git", commit
    daemon.terminate()
    daemon.wait(10)


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory, github):
    tokens = [{"name": "ci", "token": SUBMIT_ONLY, "rights": ["submit", "read"]},
              {"name": "releaser", "token": STATUS_RIGHT, "rights": ["submit", "read", "status"]},
              {"name": "acme-ci", "token": ALLOW_LISTED, "rights": ["submit", "read"], "status_repositories": [OWN]}]
    s = start_stack(services, tmp_path_factory, default_executor="fake", executors={"fake": {"enabled": True}},
                    api={"tokens": tokens, "max_body_bytes": 64 * 1024},
                    statuses={"github": {"api_url": github.url, "token": GITHUB_TOKEN}, "backoff": 0.2})
    yield s
    stop_stack(s)


def upload(stack, token: str) -> str:
    job_id = uuid.uuid4().hex
    with stack.client(token) as client:
        assert client.post(f"/v1/jobs/{job_id}/context", content=empty_context()).status_code == 201
    return job_id


def tag(stack) -> str:
    return f"{stack.harness.registry()}/binding/app:{uuid.uuid4().hex[:8]}"


def source(repository: str, sha: str) -> dict:
    return {"host": "github", "repository": repository, "sha": sha, "ref": "refs/heads/main"}


def posts_for(host: FakeHost, sha: str) -> list:
    return [p for p in host.posts if sha in p.path]


# -- the API ---------------------------------------------------------------------------------------
def test_a_submit_token_cannot_mark_another_repositorys_commit(stack, github):
    sha = new_sha()
    job_id = upload(stack, SUBMIT_ONLY)
    with stack.client(SUBMIT_ONLY) as client:
        answer = client.post("/v1/jobs", json={"id": job_id, "tags": [tag(stack)], "source": source(PROTECTED, sha)})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == "source" and PROTECTED in body["message"] and "'ci'" in body["message"]
    assert "status right" in body["message"] and "status_repositories" in body["message"]
    assert stack.harness.store.get(job_id) is None  # nothing queued
    time.sleep(1)
    assert posts_for(github, sha) == []


@pytest.mark.parametrize("token, repository", [(STATUS_RIGHT, PROTECTED), (ALLOW_LISTED, OWN)], ids=["status-right", "allow-listed"])
def test_the_status_right_or_the_allow_list_binds_any_commit(stack, github, token, repository):
    sha = new_sha()
    job_id = upload(stack, token)
    with stack.client(token) as client:
        answer = client.post("/v1/jobs", json={"id": job_id, "tags": [tag(stack)], "source": source(repository, sha)})
    assert answer.status_code == 202, answer.text
    assert wait_finished(stack.harness, job_id).status is Status.succeeded
    wait_delivered(stack.harness, job_id)
    assert github.states(sha) == ["pending", "pending", "success"]


def test_the_allow_list_names_only_its_repositories(stack, github):
    job_id = upload(stack, ALLOW_LISTED)
    with stack.client(ALLOW_LISTED) as client:
        answer = client.post("/v1/jobs", json={"id": job_id, "tags": [tag(stack)], "source": source(PROTECTED, new_sha())})
    assert answer.status_code == 422 and PROTECTED in answer.json()["message"] and "'acme-ci'" in answer.json()["message"]


def test_a_git_job_that_builds_the_commit_is_bound_without_any_right(stack, github, served):
    url, commit = served
    with stack.client(SUBMIT_ONLY) as client:
        built = client.post("/v1/jobs", json={"tags": [tag(stack)], "source": source(OWN, commit),
                                              "context": {"type": "git", "url": url, "commit": commit}})
        assert built.status_code == 202, built.text
        other_commit = new_sha()
        elsewhere = client.post("/v1/jobs", json={"tags": [tag(stack)], "source": source(OWN, other_commit),
                                                  "context": {"type": "git", "url": url, "commit": commit}})
        assert elsewhere.status_code == 422 and f"at commit {other_commit}" in elsewhere.json()["message"]
        other_repo = client.post("/v1/jobs", json={"tags": [tag(stack)], "source": source(PROTECTED, commit),
                                                   "context": {"type": "git", "url": url, "commit": commit}})
        assert other_repo.status_code == 422 and PROTECTED in other_repo.json()["message"]
    job_id = built.json()["id"]
    assert wait_finished(stack.harness, job_id).status is Status.succeeded
    wait_delivered(stack.harness, job_id)
    assert github.states(commit)[-1] == "success"


# -- what reaches Redis without the API ------------------------------------------------------------------
def test_a_raw_message_naming_another_commit_is_refused(stack, github):
    h, sha = stack.harness, new_sha()
    job_id = post_raw(h.store, f"{h.store.ns}.fake", {"id": uuid.uuid4().hex, "tags": [tag(stack)], "executor": "fake",
                                                      "source": source(PROTECTED, sha)}, empty_context())
    record = wait_finished(h, job_id)
    assert record.status is Status.failed and record.error.kind == "invalid"
    assert record.error.message.startswith("refused: source: ") and PROTECTED in record.error.message
    assert "statuses.trust_queue_sources" in record.error.message
    assert not h.store.has_context(job_id)
    time.sleep(1)
    assert posts_for(github, sha) == []


def test_a_raw_git_message_that_builds_the_commit_gets_its_statuses(stack, github, served):
    h, (url, commit) = stack.harness, served
    job_id = post_raw(h.store, f"{h.store.ns}.fake", {"id": uuid.uuid4().hex, "tags": [tag(stack)], "executor": "fake",
                                                      "context": {"type": "git", "url": url, "commit": commit},
                                                      "source": {**source(OWN, commit), "ref": "refs/heads/raw"}})
    assert wait_finished(h, job_id).status is Status.succeeded
    wait_delivered(h, job_id)
    started = [p.body["state"] for p in posts_for(github, commit) if p.body.get("description") == "building"]
    assert started  # a raw message has no "queued" moment: the worker posts from "started" on


def test_runner_submit_without_api_is_a_queue_writer(stack, github, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    sha = new_sha()
    result = stack.harness.cli("submit", str(tmp_path), "-t", tag(stack), "--executor", "fake", "--detach",
                               "--source-host", "github", "--source-repo", PROTECTED, "--source-sha", sha)
    assert result.returncode == 2, result.stdout
    assert PROTECTED in result.stderr and "statuses.trust_queue_sources" in result.stderr
    assert "Traceback" not in result.stderr and posts_for(github, sha) == []


# -- the rule itself ----------------------------------------------------------------------------------
def settings(statuses: dict | None = None, **top) -> Settings:
    return Settings(registries=[{"host": "127.0.0.1:5000"}], default_executor="fake", executors={"fake": {"enabled": True}},
                    statuses={"github": {"token": "t"}, "gitlab": {"api_url": "https://code.example.com/gitlab", "token": "t"},
                              **(statuses or {})}, **top)


SHA = "c" * 40


def git_job(url: str, repository: str = "acme/app", commit: str = SHA, host: str = "github") -> BuildRequest:
    return BuildRequest(tags=["127.0.0.1:5000/a:1"], context={"type": "git", "url": url, "commit": commit},
                        source={"host": host, "repository": repository, "sha": SHA})


@pytest.mark.parametrize("url", ["https://github.com/acme/app.git", "https://github.com/Acme/App", "git@github.com:acme/app.git",
                                 "ssh://git@github.com:22/acme/app.git", "https://GitHub.com/acme/app/"])
def test_clones_of_the_repository_on_the_host_are_bound(url):
    assert admit(git_job(url), settings(), QUEUE).statuses


@pytest.mark.parametrize("url, commit", [
    ("https://github.com/acme/other.git", SHA), ("https://github.com/acme/app.git", "c" * 7),
    ("https://github.com/acme/app.git", "d" * 40), ("https://gitlab.com/acme/app.git", SHA),
    ("https://github.com.evil.example/acme/app.git", SHA), ("https://github.com/acme/app/evil.git", SHA),
    ("ext::ssh -o x github.com %S acme/app", SHA), ("file:///srv/github.com/acme/app.git", SHA),
])
def test_other_clones_are_not(url, commit):
    with pytest.raises(Rejected) as refused:
        admit(git_job(url, commit=commit), settings(git={"allowed_schemes": ["https", "ssh", "file", "ext"]}), QUEUE)
    assert refused.value.field == "source" and "acme/app" in refused.value.message


def test_enterprise_and_self_hosted_instances():
    enterprise = settings({"github": {"api_url": "https://ghe.example.com/api/v3", "token": "t"}})
    assert admit(git_job("https://ghe.example.com/acme/app.git"), enterprise, QUEUE).statuses
    with pytest.raises(Rejected):
        admit(git_job("https://github.com/acme/app.git"), enterprise, QUEUE)
    job = git_job("https://code.example.com/gitlab/group/sub/app.git", "group/sub/app", host="gitlab")
    assert admit(job, settings(), QUEUE).statuses
    with pytest.raises(Rejected):
        admit(git_job("https://code.example.com/group/sub/app.git", "group/sub/app", host="gitlab"), settings(), QUEUE)


def test_each_door_and_its_trust():
    upload = BuildRequest(tags=["127.0.0.1:5000/a:1"], source={"host": "gitea", "repository": "Acme/App", "sha": SHA})
    plain = ApiToken(name="ci", token="x", rights=["submit"])
    listed = ApiToken(name="ci", token="x", rights=["submit"], status_repositories=["gitea:acme/app"])
    elsewhere = ApiToken(name="ci", token="x", rights=["submit"], status_repositories=["github:acme/app"])
    cfg = settings()
    for origin in (WEBHOOK, Origin.api(listed), Origin.api(ApiToken(name="r", token="x", rights=["status"]))):
        assert statuses_for(upload, cfg, origin) is False  # bound; gitea has no api_url here, so no status
    for origin in (QUEUE, Origin.api(plain), Origin.api(elsewhere)):
        with pytest.raises(Rejected, match="gitea repository Acme/App"):
            statuses_for(upload, cfg, origin)
    assert statuses_for(upload, settings({"trust_queue_sources": True}), QUEUE) is False
    assert statuses_for(upload.model_copy(update={"source": None}), cfg, QUEUE) is False
    with pytest.raises(ValueError, match="github, gitlab or gitea"):
        ApiToken(name="x", token="x", status_repositories=["bitbucket:acme/app"])


def test_clone_locations():
    assert clone_location("https://user@host.example:8443/a/b.git") == ("host.example", "a/b")
    assert clone_location("git@host.example:a/b.git") == ("host.example", "a/b")
    assert clone_location("/srv/a/b.git") is None and clone_location("https::https://host/a/b") is None


def test_the_readme_example_tokens_are_valid():
    import re

    import yaml

    from runner.core.jobs import JobSource
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("### Which jobs may name a commit")[1].split("\n## ")[0]
    tokens = Settings.model_validate(yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0])).api.tokens
    bot, acme = tokens
    gitlab_infra, github_site = (JobSource(host=h, repository=r, sha=SHA) for h, r in (("gitlab", "acme/infra"),
                                                                                       ("github", "Acme/Site")))
    assert bot.may_report_to(gitlab_infra) and acme.may_report_to(gitlab_infra) and acme.may_report_to(github_site)
    assert not acme.may_report_to(JobSource(host="github", repository="acme/infra", sha=SHA))
