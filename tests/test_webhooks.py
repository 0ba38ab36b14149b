"""Git-push webhooks on the real server, with bodies shaped like GitHub's, GitLab's and Gitea's
documented push events (tests/fixtures/webhooks) signed the way each host signs them, as JSON
or as a form; builds run on the real worker from real git repositories on loopback (file://,
and a bare repository served by `git daemon` that an annotated tag was pushed to)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from runner.config.sections import RepositoryHook
from runner.entry.webhooks import Push, WebhookError, form_payload, parse_push, render_images, tag_safe, why_not
from runner.supply.keys import generate
from tests.conftest import registry_digest, run_image
from tests.support.cosign_check import Registry, verified_statements
from tests.test_api import Stack, start_stack, stop_stack
from tests.test_gitsource import commit_files, free_port, git, wait_port

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
GITHUB_SECRET = "gh-" + uuid.uuid4().hex
GITLAB_TOKEN = "gl-" + uuid.uuid4().hex
GITEA_SECRET = "gt-" + uuid.uuid4().hex
CALLBACK_SECRET = "cb-" + uuid.uuid4().hex
PROVIDERS = ["github", "gitlab", "gitea"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class Callbacks(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        Callbacks.received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, services):
    """A repository whose builds say which commit they came from; three commits on main."""
    path = tmp_path_factory.mktemp("hooked") / "hello-app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nARG GREETING=none\nCOPY message.txt /message.txt\nRUN echo \"$GREETING\" > /greeting\n"
    commits = [commit_files(path, {"app/Dockerfile": dockerfile, "app/message.txt": f"commit {n}\n"}, f"commit {n}")
               for n in range(3)]
    return path, commits


@pytest.fixture(scope="module")
def callback_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hooks_key(tmp_path_factory) -> tuple[Path, Path]:
    """The key the hooks' worker signs with: (private, public)."""
    return generate(tmp_path_factory.mktemp("hooks-key") / "cosign", None)


@pytest.fixture(scope="module")
def hooks(services, tmp_path_factory, callback_server, hooks_key):
    reg = services["RUNNER_DEV_REGISTRY"]
    repos = {
        "acme/hello-app": {"images": [f"{reg}/hooks-gh/{{repo}}:{{short_sha}}", f"{reg}/hooks-gh/{{repo}}:{{branch}}",
                                      f"{reg}/hooks-gh/{{repo}}:{{tag}}"],
                           "context": "app", "executor": "socket", "branches": ["main", "release/*"], "tags": ["v2.*"],
                           "build_args": {"GREETING": "from-github"}},
        "platform/hello-app": {"images": [f"{reg}/hooks-gl/{{owner}}-{{repo}}:{{short_sha}}", f"{reg}/hooks-gl/{{owner}}-{{repo}}:{{tag}}"],
                               "context": "app", "executor": "socket", "tags": ["v*"]},
        "tools/hello-app": {"images": [f"{reg}/hooks-gt/{{repo}}:{{branch}}-{{short_sha}}", f"{reg}/hooks-gt/{{repo}}:{{tag}}"],
                            "context": "app", "executor": "socket", "branches": ["develop"], "tags": ["v2.*"],
                            "callback_url": callback_server},
    }
    s = start_stack(services, tmp_path_factory, webhooks={
        "github": {"secret": GITHUB_SECRET}, "gitlab": {"secret": GITLAB_TOKEN}, "gitea": {"secret": GITEA_SECRET},
        "repositories": repos}, callbacks={"secret": CALLBACK_SECRET, "backoff": 0.2,
                                                        "allowed_networks": ["127.0.0.0/8"]},  # the receiver is on loopback
        signing={"key_file": str(hooks_key[0])})
    yield s
    stop_stack(s)


# -- how each host signs and sends a delivery ------------------------------------------------------
def github(stack: Stack, payload: dict, event: str = "push", delivery: str | None = None, secret: str = GITHUB_SECRET,
           body: bytes | None = None, content_type: str = "application/json") -> httpx.Response:
    body = body if body is not None else json.dumps(payload).encode()
    headers = {"Content-Type": content_type, "User-Agent": "GitHub-Hookshot/7c1f2d0", "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "X-GitHub-Hook-ID": "488213907",
               "X-GitHub-Hook-Installation-Target-Type": "repository", "X-GitHub-Hook-Installation-Target-ID": "735102246",
               "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    return httpx.post(f"{stack.url}/v1/webhooks/github", content=body, headers=headers, timeout=10)


def gitlab(stack: Stack, payload: dict, event: str = "Push Hook", token: str = GITLAB_TOKEN,
           delivery: str | None = None, form: bool = False) -> httpx.Response:
    delivery = delivery or str(uuid.uuid4())
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "GitLab/17.6.0", "X-Gitlab-Event": event,
               "X-Gitlab-Token": token, "X-Gitlab-Instance": "https://gitlab.acme.example",
               "X-Gitlab-Webhook-UUID": "6f1b4c2e-0c3d-4e55-9f2a-1d2c3b4a5e6f", "X-Gitlab-Event-UUID": delivery,
               "Idempotency-Key": delivery}
    if form:  # GitLab itself sends only JSON; a relay that forwards it as a form is accepted too
        body, headers["Content-Type"] = urlencode({"payload": body.decode()}).encode(), "application/x-www-form-urlencoded"
    return httpx.post(f"{stack.url}/v1/webhooks/gitlab", content=body, headers=headers, timeout=10)


def gitea(stack: Stack, payload: dict, event: str = "push", secret: str = GITEA_SECRET,
          delivery: str | None = None, form: bool = False, sign_form_body: bool = False) -> httpx.Response:
    """As Gitea (and Forgejo) deliver: the signature is over the JSON payload, which a form
    delivery (content type `form`) carries URL-encoded in its `payload` field."""
    payload_json = json.dumps(payload, indent=2, ensure_ascii=False).encode()
    body = urlencode({"payload": payload_json.decode()}).encode() if form else payload_json
    digest = hmac.new(secret.encode(), body if sign_form_body else payload_json, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
               "User-Agent": "Go-http-client/1.1",
               "X-Gitea-Delivery": delivery or str(uuid.uuid4()), "X-Gitea-Event": event, "X-Gitea-Event-Type": event,
               "X-Gitea-Signature": digest, "X-Gogs-Delivery": "x", "X-Gogs-Event": event, "X-Gogs-Signature": digest,
               "X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={digest}"}
    return httpx.post(f"{stack.url}/v1/webhooks/gitea", content=body, headers=headers, timeout=10)


def moved_from() -> str:
    """A `before` of its own: each *_push call is a new push (the ref moved from some commit to
    `commit`), while a replay sends the same payload again."""
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def github_push(repo, commit: str, ref: str = "refs/heads/main") -> dict:
    payload = fixture("github-push.json")
    payload["ref"], payload["after"], payload["before"] = ref, commit, moved_from()
    payload["head_commit"]["id"] = payload["commits"][0]["id"] = commit
    payload["repository"]["clone_url"] = f"file://{repo[0]}"
    return payload


def gitlab_push(repo, commit: str, name: str = "gitlab-push.json") -> dict:
    payload = fixture(name)
    payload["after"] = payload["checkout_sha"] = commit
    payload["before"] = moved_from()
    payload["project"]["git_http_url"] = payload["repository"]["git_http_url"] = f"file://{repo[0]}"
    return payload


def gitea_push(repo, commit: str) -> dict:
    payload = fixture("gitea-push.json")
    payload["after"] = payload["head_commit"]["id"] = payload["commits"][0]["id"] = commit
    payload["before"] = moved_from()
    payload["repository"]["clone_url"] = f"file://{repo[0]}"
    return payload


# -- the "done when": a signed GitHub push builds that commit's tree, tagged with its short sha ----
def test_signed_github_push_builds_that_commit(hooks, repo, services):
    commit = repo[1][1]  # not the tip of main: the build must come from this commit's tree
    response = github(hooks, github_push(repo, commit))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["result"] == "queued" and body["commit"] == commit
    record = hooks.wait(body["job"])
    assert record["status"] == "succeeded", record["error"]
    assert record["request"]["context"] == {"type": "git", "url": f"file://{repo[0]}", "ref": "refs/heads/main",
                                            "commit": commit, "subdir": "app", "submodules": False,
                                            "keep_git_dir": False}
    ref = f"{services['RUNNER_DEV_REGISTRY']}/hooks-gh/hello-app:{commit[:7]}"
    assert record["images"][0] == {"ref": ref, "digest": registry_digest(services, ref), "platforms": []}
    assert registry_digest(services, f"{services['RUNNER_DEV_REGISTRY']}/hooks-gh/hello-app:main") == record["images"][0]["digest"]
    assert run_image(ref, "cat", "/message.txt") == "commit 1\n"
    assert run_image(ref, "cat", "/greeting") == "from-github\n"


def test_the_pushed_commit_is_in_the_signed_provenance(hooks, hooks_key, repo, services):
    """The image a push built is signed, and its provenance names the webhook's commit, read
    back from the registry by the tests' own verifier and by `runner verify`."""
    commit = repo[1][2]
    response = github(hooks, github_push(repo, commit))
    assert response.status_code == 202, response.text
    record = hooks.wait(response.json()["job"])
    assert record["status"] == "succeeded", record["error"]
    assert record["attestation"]["signed"]
    image = record["images"][0]
    registry, _, name = image["ref"].rsplit(":", 1)[0].partition("/")
    reader = Registry(registry, services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"])
    [statement] = [s for s in verified_statements(reader.attached(name, image["digest"], "att"), hooks_key[1].read_bytes())
                   if s["predicate"]["runDetails"]["metadata"]["invocationId"] == record["id"]]
    definition = statement["predicate"]["buildDefinition"]
    [source] = [d for d in definition["resolvedDependencies"] if d.get("name") == "source"]
    assert source["digest"] == {"gitCommit": commit} and source["uri"] == f"git+file://{repo[0]}@refs/heads/main"
    assert definition["externalParameters"]["source"] == {"url": f"file://{repo[0]}", "host": "github",
                                                          "repository": "acme/hello-app", "ref": "refs/heads/main",
                                                          "commit": commit, "path": "app"}
    assert definition["externalParameters"]["buildArgs"] == {"GREETING": "from-github"}
    verified = hooks.harness.cli("verify", image["ref"], "--key", str(hooks_key[1]))
    assert verified.returncode == 0, verified.stderr
    assert f"@ {commit}" in verified.stdout


def test_redelivery_builds_once(hooks, repo):
    payload, delivery = github_push(repo, repo[1][2]), str(uuid.uuid4())
    first = github(hooks, payload, delivery=delivery)
    assert first.status_code == 202
    before = hooks.job_count()
    again = github(hooks, payload, delivery=delivery)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert again.json()["job"] == first.json()["job"]
    assert hooks.job_count() == before
    gl_delivery, gl_payload = str(uuid.uuid4()), gitlab_push(repo, repo[1][2], "gitlab-tag-push.json")
    gl_first = gitlab(hooks, gl_payload, event="Tag Push Hook", delivery=gl_delivery)
    assert gl_first.status_code == 202
    assert gitlab(hooks, gl_payload, event="Tag Push Hook", delivery=gl_delivery).json()["result"] == "duplicate"
    gt_delivery, gt_payload = str(uuid.uuid4()), gitea_push(repo, repo[1][2])
    gt_first = gitea(hooks, gt_payload, delivery=gt_delivery)
    assert gt_first.status_code == 202
    assert gitea(hooks, gt_payload, delivery=gt_delivery).json()["result"] == "duplicate"
    for response in (first, gl_first, gt_first):
        hooks.wait(response.json()["job"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_replay_under_new_delivery_ids_builds_once(hooks, repo, provider):
    """A captured delivery sent again with a new delivery id (a header no host signs) is the same
    push: answered as a duplicate naming the first job, for webhooks.replay_window."""
    send = {"github": github, "gitlab": gitlab, "gitea": gitea}[provider]
    payload = {"github": github_push, "gitlab": gitlab_push, "gitea": gitea_push}[provider](repo, repo[1][0])
    first = send(hooks, payload)
    assert first.status_code == 202, first.text
    job, count = first.json()["job"], hooks.job_count()
    for _ in range(3):
        replay = send(hooks, payload)  # the helpers give each call a new delivery id
        assert replay.status_code == 200, replay.text
        answer = replay.json()
        assert answer["result"] == "duplicate" and answer["job"] == job, answer
        assert "webhooks.replay_window (3600 s)" in answer["reason"]
    assert hooks.job_count() == count
    store = hooks.harness.store
    ttls = [store.r.ttl(key) for key in store.r.scan_iter(f"{store.ns}:push:*")]
    assert ttls and all(0 < ttl <= 3600 for ttl in ttls)
    moved_again = send(hooks, {**payload, "before": moved_from()})  # the ref moved to that commit anew: a new push
    assert moved_again.status_code == 202 and moved_again.json()["job"] != job
    for response in (first, moved_again):
        done = hooks.wait(response.json()["job"])
        assert done["status"] == "succeeded", done["error"]


def test_bad_or_missing_signatures_are_401_and_queue_nothing(hooks, repo):
    before = hooks.job_count()
    payload = github_push(repo, repo[1][0])
    body = json.dumps(payload).encode()
    url = f"{hooks.url}/v1/webhooks"
    assert github(hooks, payload, secret="not-the-secret").status_code == 401
    forged = dict(payload, ref="refs/heads/release/evil")
    signed_original = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    tampered = httpx.post(f"{url}/github", content=json.dumps(forged).encode(),
                          headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signed_original})
    assert tampered.status_code == 401
    missing = httpx.post(f"{url}/github", content=body, headers={"X-GitHub-Event": "push"})
    assert missing.status_code == 401 and "X-Hub-Signature-256".lower() in missing.json()["message"].lower()
    sha1_only = httpx.post(f"{url}/github", content=body, headers={
        "X-GitHub-Event": "push", "X-Hub-Signature": "sha1=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha1).hexdigest()})
    assert sha1_only.status_code == 401
    assert gitlab(hooks, gitlab_push(repo, repo[1][0]), token="wrong").status_code == 401
    assert httpx.post(f"{url}/gitlab", json=gitlab_push(repo, repo[1][0]), headers={"X-Gitlab-Event": "Push Hook"}).status_code == 401
    assert gitea(hooks, gitea_push(repo, repo[1][0]), secret="wrong").status_code == 401
    prefixed = httpx.post(f"{url}/gitea", content=body, headers={
        "X-Gitea-Event": "push", "X-Gitea-Signature": "sha256=" + hmac.new(GITEA_SECRET.encode(), body, hashlib.sha256).hexdigest()})
    assert prefixed.status_code == 401
    # a GitHub signature is not accepted on the Gitea endpoint with another secret, and vice versa
    assert github(hooks, payload, secret=GITEA_SECRET).status_code == 401
    assert httpx.post(f"{url}/bitbucket", content=body).status_code == 422
    assert hooks.job_count() == before


def test_ping_and_other_events_are_answered_without_a_job(hooks, repo):
    before = hooks.job_count()
    pong = github(hooks, fixture("github-ping.json"), event="ping")
    assert pong.status_code == 200 and pong.json() == {"result": "pong"}
    assert github(hooks, fixture("github-ping.json"), event="ping", secret="wrong").status_code == 401
    issues = github(hooks, {"action": "opened"}, event="issues")
    assert issues.status_code == 200 and "not a push" in issues.json()["reason"]
    mr = gitlab(hooks, {"object_kind": "merge_request"}, event="Merge Request Hook")
    assert mr.status_code == 200 and mr.json()["result"] == "ignored"
    assert gitea(hooks, {"ref": "x", "ref_type": "branch"}, event="delete").json()["result"] == "ignored"
    assert hooks.job_count() == before


@pytest.mark.parametrize("change, reason", [
    (lambda p: p.update(fixture("github-delete-branch.json")), "was deleted"),
    (lambda p: p["repository"].update(full_name="someone/else"), "not configured"),
    (lambda p: p.update(ref="refs/heads/experiment"), "branch 'experiment' does not build"),
    (lambda p: p.update(ref="refs/tags/v9"), "tag 'v9' does not build"),
    (lambda p: p.update(ref="refs/notes/commits"), "neither a branch nor a tag"),
])
def test_pushes_that_build_nothing_say_why(hooks, repo, change, reason):
    before = hooks.job_count()
    payload = github_push(repo, repo[1][0])
    change(payload)
    response = github(hooks, payload)
    assert response.status_code == 200 and response.json()["result"] == "ignored"
    assert reason in response.json()["reason"]
    assert hooks.job_count() == before


def test_unreadable_payloads_are_400_never_500(hooks, repo):
    good = github_push(repo, repo[1][0])
    assert github(hooks, {}, body=b"{not json").status_code == 400
    assert github(hooks, {}, body=b"[1, 2]").status_code == 400
    no_repo = copy.deepcopy(good)
    del no_repo["repository"]
    assert "repository.full_name" in github(hooks, no_repo).json()["message"]
    bad_sha = dict(good, after="not-a-sha")
    assert github(hooks, bad_sha).status_code == 400
    assert gitlab(hooks, {"object_kind": "push", "ref": 5}).status_code == 400


def test_form_encoded_github_delivery(hooks, repo):
    body = urlencode({"payload": json.dumps(github_push(repo, repo[1][0], ref="refs/heads/release/1.x"))}).encode()
    response = github(hooks, {}, body=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202, response.text
    tags = hooks.harness.store.get(response.json()["job"]).request.tags
    assert tags[1].endswith(":release-1.x"), "a branch name becomes a valid image tag"
    hooks.wait(response.json()["job"])


def test_gitlab_tag_push_builds_with_the_tag_template(hooks, repo, services):
    commit = repo[1][0]
    response = gitlab(hooks, gitlab_push(repo, commit, "gitlab-tag-push.json"), event="Tag Push Hook")
    assert response.status_code == 202, response.text
    record = hooks.wait(response.json()["job"])
    assert record["status"] == "succeeded", record["error"]
    reg = services["RUNNER_DEV_REGISTRY"]
    assert [i["ref"] for i in record["images"]] == [f"{reg}/hooks-gl/platform-hello-app:{commit[:7]}",
                                                    f"{reg}/hooks-gl/platform-hello-app:v1.0.0"]
    assert run_image(record["images"][1]["ref"], "cat", "/message.txt") == "commit 0\n"
    # a branch push of a repository that builds tags only: the default branch builds, {tag} is skipped
    branch = gitlab(hooks, gitlab_push(repo, commit))
    assert branch.status_code == 202
    assert hooks.harness.store.get(branch.json()["job"]).request.tags == [f"{reg}/hooks-gl/platform-hello-app:{commit[:7]}"]
    hooks.wait(branch.json()["job"])


def test_gitea_push_builds_and_calls_back_signed(hooks, repo, services):
    Callbacks.received.clear()
    commit = repo[1][2]
    response = gitea(hooks, gitea_push(repo, commit))
    assert response.status_code == 202, response.text
    record = hooks.wait(response.json()["job"])
    assert record["status"] == "succeeded", record["error"]
    assert record["images"][0]["ref"].endswith(f"/hooks-gt/hello-app:develop-{commit[:7]}")
    deadline = time.monotonic() + 30
    while not Callbacks.received and time.monotonic() < deadline:
        time.sleep(0.05)
    headers, body = Callbacks.received[0]
    assert headers["X-Runner-Signature-256"] == "sha256=" + hmac.new(CALLBACK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(body)["id"] == record["id"] and json.loads(body)["status"] == "succeeded"


# -- form deliveries: each host's signature over what it signs --------------------------------------
def test_form_encoded_gitea_delivery_is_signed_over_the_json_payload(hooks, repo):
    commit = repo[1][1]
    payload = gitea_push(repo, commit)
    payload["head_commit"]["message"] = payload["commits"][0]["message"] = "Grüße ✓ a&b=c+d 100% ünïcödé\n"
    before = hooks.job_count()
    signed_wrong = gitea(hooks, payload, form=True, sign_form_body=True)  # Gitea never signs the form body
    assert signed_wrong.status_code == 401 and hooks.job_count() == before
    response = gitea(hooks, payload, form=True)
    assert response.status_code == 202, response.text
    record = hooks.wait(response.json()["job"])
    assert record["status"] == "succeeded", record["error"]
    assert record["request"]["context"]["commit"] == commit
    assert run_image(record["images"][0]["ref"], "cat", "/message.txt") == "commit 1\n"


def test_github_form_delivery_is_signed_over_the_raw_body(hooks, repo):
    payload = json.dumps(github_push(repo, repo[1][0], ref="refs/heads/experiment"))
    body = urlencode({"payload": payload}).encode()
    url, form = f"{hooks.url}/v1/webhooks/github", "application/x-www-form-urlencoded"
    over_payload = "sha256=" + hmac.new(GITHUB_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    refused = httpx.post(url, content=body, headers={"Content-Type": form, "X-GitHub-Event": "push", "X-Hub-Signature-256": over_payload})
    assert refused.status_code == 401
    read = github(hooks, {}, body=body, content_type=form)
    assert read.status_code == 200 and "branch 'experiment' does not build" in read.json()["reason"]


def test_gitlab_form_delivery_is_read_too(hooks, repo):
    payload = gitlab_push(repo, repo[1][0])
    payload["ref"] = "refs/heads/feature"
    response = gitlab(hooks, payload, form=True)
    assert response.status_code == 200 and "branch 'feature' does not build" in response.json()["reason"]
    assert gitlab(hooks, payload, form=True, token="wrong").status_code == 401


def test_malformed_forms_are_400(hooks, repo):
    form = "application/x-www-form-urlencoded"
    payload = json.dumps(gitea_push(repo, repo[1][0]))
    for body, words in ((b"other=1", "no `payload` field"),
                        (urlencode([("payload", payload), ("payload", "{}")]).encode(), "more than one `payload` field")):
        digest = hmac.new(GITEA_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
        response = httpx.post(f"{hooks.url}/v1/webhooks/gitea", content=body,
                              headers={"Content-Type": form, "X-Gitea-Event": "push", "X-Gitea-Signature": digest})
        assert response.status_code == 400 and words in response.json()["message"]
        signed = github(hooks, {}, body=body, content_type=form)
        assert signed.status_code == 400 and words in signed.json()["message"]


# -- an annotated tag, pushed for real to a git server -------------------------------------------------
@pytest.fixture(scope="module")
def tag_server(tmp_path_factory, services):
    """A bare repository served by `git daemon` on loopback, to which an annotated tag was pushed
    with `git push`. main moved on after the tag, so building main's tip would be wrong."""
    root = tmp_path_factory.mktemp("tag-server")
    served = root / "srv"
    served.mkdir()
    git(served, "init", "-q", "--bare", "-b", "main", "hello-app.git")
    work = root / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY message.txt /message.txt\n"
    tagged = commit_files(work, {"app/Dockerfile": dockerfile, "app/message.txt": "released 2.0.0\n"}, "release 2.0.0")
    git(work, "tag", "-a", "v2.0.0", "-m", "Release 2.0.0")
    commit_files(work, {"app/message.txt": "work after the release\n"}, "later work")
    git(work, "push", "-q", str(served / "hello-app.git"), "main", "refs/tags/v2.0.0")
    tag_object = git(served / "hello-app.git", "rev-parse", "refs/tags/v2.0.0")
    assert git(served / "hello-app.git", "cat-file", "-t", tag_object) == "tag"
    assert git(served / "hello-app.git", "rev-parse", "v2.0.0^{commit}") == tagged != tag_object
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={served}", "--export-all",
                               "--listen=127.0.0.1", f"--port={port}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    yield f"git://127.0.0.1:{port}/hello-app.git", tag_object, tagged
    daemon.terminate()
    daemon.wait(10)


def annotated_tag_delivery(hooks: Stack, provider: str, url: str, tag_object: str, commit: str) -> tuple[httpx.Response, str]:
    """Each host's delivery for the tag push, shaped as that host sends it; and the image repo it builds."""
    if provider == "github":
        payload = fixture("github-tag-push.json")
        payload["after"], payload["head_commit"]["id"], payload["repository"]["clone_url"] = tag_object, commit, url
        return github(hooks, payload), "hooks-gh/hello-app"
    if provider == "gitlab":
        payload = fixture("gitlab-annotated-tag-push.json")
        payload["after"], payload["checkout_sha"] = tag_object, commit
        payload["project"]["git_http_url"] = payload["repository"]["git_http_url"] = url
        return gitlab(hooks, payload, event="Tag Push Hook"), "hooks-gl/platform-hello-app"
    payload = fixture("gitea-tag-push.json")
    payload["after"], payload["head_commit"]["id"], payload["repository"]["clone_url"] = tag_object, commit, url
    return gitea(hooks, payload), "hooks-gt/hello-app"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_annotated_tag_push_builds_the_tagged_commit_named_by_the_tag(hooks, tag_server, services, provider):
    url, tag_object, commit = tag_server
    response, repository = annotated_tag_delivery(hooks, provider, url, tag_object, commit)
    assert response.status_code == 202, response.text
    assert response.json()["commit"] == commit
    record = hooks.wait(response.json()["job"])
    assert record["status"] == "succeeded", record["error"]
    assert record["request"]["context"]["ref"] == "refs/tags/v2.0.0" and record["request"]["context"]["commit"] == commit
    assert record["request"]["labels"]["org.opencontainers.image.revision"] == commit
    image = f"{services['RUNNER_DEV_REGISTRY']}/{repository}"
    refs = [i["ref"] for i in record["images"]]
    assert f"{image}:v2.0.0" in refs and tag_object[:7] not in " ".join(refs)
    if provider != "gitea":  # its repository's other template names a branch
        assert f"{image}:{commit[:7]}" in refs
    assert run_image(f"{image}:v2.0.0", "cat", "/message.txt") == "released 2.0.0\n"


# -- mapping rules without a server -----------------------------------------------------------------
def push(ref: str, default_branch: str | None = "main") -> Push:
    return Push("github", "Acme/Hello-App", "Acme", "Hello-App", ref, "3f786850e387550fdab836ed7e6dc881de23001b",
                None, default_branch, False)


def test_templates_and_patterns():
    templates = ["r.example.com/{owner}/{repo}:{short_sha}", "r.example.com/{owner}/{repo}:{branch}", "r.example.com/x:{tag}"]
    assert render_images(templates, push("refs/heads/feature/Login")) == [
        "r.example.com/acme/hello-app:3f78685", "r.example.com/acme/hello-app:feature-Login"]
    assert render_images(templates, push("refs/tags/v1.2.3")) == ["r.example.com/acme/hello-app:3f78685", "r.example.com/x:v1.2.3"]
    assert tag_safe("..-weird/ref name") == "weird-ref-name"
    repo = RepositoryHook(images=templates)
    assert why_not(push("refs/heads/main"), repo) is None
    assert "does not build" in why_not(push("refs/heads/dev"), repo)
    assert "does not build" in why_not(push("refs/heads/master", default_branch=None), repo)
    assert why_not(push("refs/tags/v1"), RepositoryHook(images=templates, tags=["v*"])) is None
    with pytest.raises(ValueError, match="known"):
        RepositoryHook(images=["r.example.com/{nope}"])


def test_a_repositorys_platforms_reach_its_jobs():
    from runner.config.settings import Settings
    from runner.entry.webhooks import build_request

    hooked = push("refs/heads/main")
    hooked.clone_url = "https://github.com/acme/hello-app.git"
    repo = RepositoryHook(images=["127.0.0.1:5000/x/{repo}:{short_sha}"], platforms=["linux/amd64", "aarch64"])
    request = build_request(hooked, repo, "delivery-9", Settings())
    assert request.platforms == ["linux/amd64", "linux/arm64"] and request.multi_platform
    assert build_request(hooked, RepositoryHook(images=repo.images), "delivery-10", Settings()).platforms == []


def test_clone_url_override_and_its_scheme_check(harness):
    from runner.config.sections import GitConfig
    from runner.entry.webhooks import build_request

    settings = harness.settings.model_copy(update={"git": GitConfig(allowed_schemes=["https", "file"])})
    repo = RepositoryHook(images=["127.0.0.1:5000/x/{repo}:{short_sha}"], clone_url="file:///srv/mirror/hello-app")
    hooked = push("refs/heads/main")
    hooked.clone_url = "https://github.com/acme/hello-app.git"
    request = build_request(hooked, repo, "delivery-1", settings)
    assert request.context.url == "file:///srv/mirror/hello-app" and request.context.commit == hooked.sha
    assert request.id == build_request(hooked, repo, "delivery-1", settings).id, "same delivery, same job id"
    assert request.context.keep_git_dir is False  # .git stays out of the context unless the repository asks
    keeping = RepositoryHook(images=repo.images, clone_url=repo.clone_url, keep_git_dir=True)
    assert build_request(hooked, keeping, "delivery-2", settings).context.keep_git_dir is True
    with pytest.raises(WebhookError, match="git.allowed_schemes") as info:
        build_request(hooked, repo, "delivery-1", harness.settings)
    assert info.value.status == 422
    with pytest.raises(ValueError, match="git.credentials"):
        RepositoryHook(images=["r.example.com/a"], clone_url="https://ci:secret@git.example.com/a.git")


@pytest.mark.parametrize("provider, name", [("github", "github-tag-push.json"), ("gitea", "gitea-tag-push.json"),
                                            ("gitlab", "gitlab-annotated-tag-push.json")])
def test_annotated_tag_payloads_name_the_commit_not_the_tag_object(provider, name):
    data = fixture(name)
    push = parse_push(provider, data)
    commit = data["checkout_sha"] if provider == "gitlab" else data["head_commit"]["id"]
    assert push.sha == commit != data["after"] and push.tag == "v2.0.0"
    if provider != "gitlab":  # a host that names no commit: `after` is built (git peels the tag)
        data["head_commit"] = None
        assert parse_push(provider, data).sha == data["after"]
        branch = dict(fixture(name), ref="refs/heads/main")  # on a branch, `after` is the commit, as always
        assert parse_push(provider, branch).sha == branch["after"]
    bad = dict(fixture(name), **({"checkout_sha": "v2.0.0"} if provider == "gitlab" else {}))
    if provider != "gitlab":
        bad["head_commit"] = {"id": "not-a-sha"}
    with pytest.raises(WebhookError, match="'(checkout_sha|head_commit.id)' .* is not a commit id"):
        parse_push(provider, bad)


def test_form_payload_is_the_field_byte_for_byte():
    text = '{"message": "Grüße ✓ a&b=c+d 100%"}'
    assert form_payload(urlencode({"x": "1", "payload": text}).encode()) == text.encode()
    assert form_payload(b"payload=%7B%7D+%2B") == b"{} +"
