"""Tagging without a push on a registry with token auth, as Docker Hub, GitLab and Harbor do
it: a real `docker-registry` (distribution) configured for bearer tokens, whose token service
is a small server made here (it signs ES256 tokens with a key made by openssl). It shows which
scopes the client asks for: a mount needs `pull` on the source repository and `push` on the
target, in one token; and that tokens are kept per scope. With an identity token (Docker's
`identitytoken`, an OAuth2 refresh token) instead of a password, our client, the engine's push
and BuildKit's pull each trade it at the token service (the refresh_token grant)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from executors.tags import push_tags
from runner.config.settings import Settings
from runner.core.cancel import CancelToken
from runner.core.jobs import BuildRequest, ImageRef
from runner.core.registry_client import Registries
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig
from tests.support import ListLog, executor_for, spooled_context, start_registry, wait_for_registry

pytestmark = pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("openssl") and shutil.which("skopeo")),
                                reason="needs docker-registry, openssl and skopeo (scripts/services.sh installs them)")

USER, PASSWORD = "tok-user", "tok-password"
#: an OAuth2 refresh token (Docker's `identitytoken`), as `docker login` to such a registry stores it
IDENTITY_TOKEN = "identity-" + uuid.uuid4().hex
SERVICE, ISSUER = "runner-test-registry", "runner-test-issuer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw(signature: bytes) -> bytes:
    """An ECDSA signature as openssl writes it (DER: SEQUENCE of r, s) as JOSE wants it (r || s)."""
    def integer(at: int) -> tuple[int, int]:
        assert signature[at] == 2
        length = signature[at + 1]
        return int.from_bytes(signature[at + 2:at + 2 + length], "big"), at + 2 + length

    r, after = integer(2)
    s, _ = integer(after)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def libtrust_key_id(public_der: bytes) -> str:
    """distribution's key id for a public key: base32 of the first 240 bits of its sha256, in fours."""
    encoded = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


class TokenService:
    """Issues tokens with every scope asked (after checking the login), and notes what was asked."""

    def __init__(self, directory: Path):
        self.key, self.cert = directory / "key.pem", directory / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(self.key), "-out", str(self.cert), "-days", "1", "-subj", "/CN=runner-test-token"],
                       check=True, capture_output=True)
        public = subprocess.run(["openssl", "pkey", "-in", str(self.key), "-pubout", "-outform", "DER"],
                                check=True, capture_output=True).stdout
        self.kid = libtrust_key_id(public)
        self.asked: list[list[str]] = []
        self.posted: list[dict] = []  # refresh_token grants: the scopes, client_id, any Authorization header
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                query = parse_qs(urlparse(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                service.asked.append(scopes)
                body = json.dumps({"token": service.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - the OAuth2 refresh_token grant, as Docker speaks it
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [IDENTITY_TOKEN]:
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = " ".join(form.get("scope", [])).split()
                service.posted.append({"scopes": scopes, "client_id": form.get("client_id", [""])[0],
                                       "authorization": self.headers.get("Authorization")})
                body = json.dumps({"access_token": service.token(scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                                   check=True, capture_output=True).stdout
        return f"{signing_input}.{b64url(der_to_raw(signature))}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def token_registry(tmp_path, services):
    """(host, token service): a registry on a loopback port of its own, with token auth."""
    tokens = TokenService(tmp_path)
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "version": 0.1, "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {"token": {"realm": tokens.url, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(tokens.cert)}},
    }))
    registry = start_registry(config, tmp_path / "registry.log")
    host = f"127.0.0.1:{port}"
    try:
        wait_for_registry(host, registry, log=tmp_path / "registry.log")
        yield host, tokens
    finally:
        registry.terminate()
        registry.wait(10)
        tokens.close()


def seed(services, host: str, repository: str) -> tuple[ImageRef, str]:
    """The base image pushed into the token registry by skopeo; (its ref, its digest)."""
    ref = ImageRef.parse(f"{host}/{repository}:seed")
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", creds,
                    "--dest-creds", f"{USER}:{PASSWORD}", f"docker://{services['RUNNER_DEV_BASE_IMAGE']}", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    digest = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                                        f"docker://{ref}"], check=True, capture_output=True, text=True).stdout)["Digest"]
    return ref, digest


def test_a_mount_asks_one_token_for_pull_on_the_source_and_push_on_the_target(services, token_registry):
    host, tokens = token_registry
    source, digest = seed(services, host, f"team/src-{uuid.uuid4().hex[:6]}")
    registries = Registries([RegistryConfig(host=host, username=USER, password=PASSWORD)])
    tokens.asked.clear()
    same, other = ImageRef.parse(f"{host}/{source.repository}:v2"), ImageRef.parse(f"{host}/team/dst:v1")
    images = push_tags([source, same, other], lambda ref: digest, registries, ListLog(), CancelToken())
    assert [i.digest for i in images] == [digest] * 3
    asked = [sorted(scopes) for scopes in tokens.asked]
    assert sorted([f"repository:{other.repository}:pull,push", f"repository:{source.repository}:pull"]) in asked  # the mount
    assert [f"repository:{source.repository}:pull"] in asked  # the manifest read
    assert all(len(scopes) <= 2 for scopes in asked)
    for ref in (same, other):  # what the registry holds, read by skopeo
        held = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                                          f"docker://{ref}"], check=True, capture_output=True, text=True).stdout)
        assert held["Digest"] == digest
    before = len(tokens.asked)
    push_tags([source, ImageRef.parse(f"{host}/team/dst:v2")], lambda ref: digest, registries, ListLog(), CancelToken())
    assert len(tokens.asked) == before  # the tokens of each scope are kept: the next job asks for none


def identity_config(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "docker-config.json"
    path.write_text(json.dumps({"auths": {host: {"identitytoken": IDENTITY_TOKEN}}}))
    return path


def test_an_identity_token_from_a_docker_config_is_traded_at_the_token_service(services, token_registry, tmp_path):
    """`identitytoken` (or a helper answering `<token>`): our client asks the token service with
    the refresh_token grant (a POST, no password) for each scope set, and tags work with it."""
    host, tokens = token_registry
    source, digest = seed(services, host, f"team/id-{uuid.uuid4().hex[:6]}")
    registries = Registries([RegistryConfig(host=host)], RegistryAuthConfig(docker_config=[identity_config(tmp_path, host)]))
    tokens.asked.clear()
    other = ImageRef.parse(f"{host}/team/id-dst:v1")
    images = push_tags([source, other], lambda ref: digest, registries, ListLog(), CancelToken())
    assert [i.digest for i in images] == [digest, digest]
    assert tokens.posted and not tokens.asked  # every token by the grant, none by a login
    assert all(p["client_id"] == "ci-build-runner" and p["authorization"] is None for p in tokens.posted)
    assert sorted([f"repository:{other.repository}:pull,push", f"repository:{source.repository}:pull"]) in \
        [sorted(p["scopes"]) for p in tokens.posted]


def test_the_engine_and_buildkit_take_an_identity_token(services, token_registry, tmp_path):
    """The host engine pushes with `{"identitytoken"}` in X-Registry-Auth and its BuildKit pulls
    the FROM image with the session's ("", token) answer: both trade it at the token service
    themselves, as Docker's own login would have them."""
    host, tokens = token_registry
    base, _ = seed(services, host, f"team/base-{uuid.uuid4().hex[:6]}")
    settings = Settings(registries=[{"host": host}], executors={"socket": {"enabled": True}},
                        registry_auth={"docker_config": [str(identity_config(tmp_path, host))]},
                        worker={"workspace": str(tmp_path / "work")})
    image = f"{host}/team/id-app:{uuid.uuid4().hex[:8]}"
    job = BuildRequest(tags=[image], builder="buildkit")
    context = spooled_context(settings, job, tmp_path / "src", {"Dockerfile": f"FROM {base}\nRUN echo identity > /id\n"})
    tokens.posted.clear()
    executor = executor_for(settings, "socket")
    try:
        [pushed] = executor.run(job, context, ListLog(), CancelToken())
    finally:
        executor.cleanup(job.id)
    clients = {p["client_id"] for p in tokens.posted}
    # BuildKit pulled FROM with it, the engine pushed with it, and our client read the digest back
    assert clients == {"buildkit-client", "docker", "ci-build-runner"}, clients
    held = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                                      f"docker://{image}"], check=True, capture_output=True, text=True).stdout)
    assert held["Digest"] == pushed.digest
