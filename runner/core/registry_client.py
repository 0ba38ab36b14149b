"""Talks to registries over the distribution HTTP API: which digest a tag holds, whether our
credentials work, and putting an image already on a registry under another tag there (a
manifest PUT, after mounting its blobs when the repository differs). Used by every executor
to confirm a push and to tag without pushing again, by `runner doctor`, to resolve a build's
base images to digests, and to store and read signatures and attestations (small blobs and
their manifests, runner.supply).

Auth: HTTP basic, or bearer tokens from the registry's token service, asked for the scopes
each request needs (a mount needs `pull` on the source repository and `push` on the target)
and kept per scope, so a job's HEAD, GET, mount and PUT do not each pay a token round trip.
The login comes from runner.core.registry_auth (config, password file, credential helper,
docker config); an identity token is traded at the token service (OAuth2 refresh_token grant).
A refused login that came from a kept helper answer has the helper asked again, once."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from runner.core.errors import InfrastructureError, RegistryAuthFailed
from runner.core.jobs import ImageRef
from runner.core.registry_auth import CredentialResolver, Credentials
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
IMAGE_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
MANIFEST_TYPES = ", ".join([*INDEX_TYPES, *IMAGE_TYPES])
TIMEOUT = 10
MOUNTS_AT_ONCE = 4
#: manifests are small; anything bigger is not one we pushed
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: who we are to a token service (OAuth2 client_id, asked for with an identity token)
CLIENT_ID = "ci-build-runner"


class NotCopied(InfrastructureError):
    """The registry would not take the image under the new tag without a push (it declined a
    blob mount, or refused the manifest); pushing the tag for real still works."""


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry holds it: the bytes are what its digest is of."""

    body: bytes
    media_type: str
    digest: str

    def _document(self) -> dict:
        try:
            document = json.loads(self.body)
        except ValueError:
            raise NotCopied(f"manifest {self.digest} is not JSON") from None
        return document if isinstance(document, dict) else {}

    def children(self) -> list[str]:
        """The manifests an index (a multi-platform image) lists."""
        if self.media_type not in INDEX_TYPES:
            return []
        return [m["digest"] for m in self._document().get("manifests") or [] if isinstance(m, dict) and "digest" in m]

    def platforms(self) -> dict[str, str]:
        """An index's manifests by platform (os/architecture[/variant]); the first listed wins."""
        if self.media_type not in INDEX_TYPES:
            return {}
        found: dict[str, str] = {}
        for entry in self._document().get("manifests") or []:
            platform = entry.get("platform") if isinstance(entry, dict) else None
            if not isinstance(platform, dict) or "digest" not in entry:
                continue
            name = "/".join(str(part) for part in (platform.get("os"), platform.get("architecture"), platform.get("variant"))
                            if part)
            found.setdefault(name, entry["digest"])
        return found

    def blobs(self) -> list[str]:
        """The config and layers an image manifest names."""
        if self.media_type in INDEX_TYPES:
            return []
        document = self._document()
        parts = [document.get("config") or {}, *(document.get("layers") or [])]
        return [p["digest"] for p in parts if isinstance(p, dict) and "digest" in p]


def _scope_key(scopes: Sequence[str]) -> str:
    return " ".join(sorted(scopes))


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


@dataclass
class Copies:
    """What one job's tagging already fetched and mounted, so its next tag repeats neither."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    mounted: set[tuple[str, str]] = field(default_factory=set)  # (repository, blob digest)


class RegistryClient:
    def __init__(self, config: RegistryConfig, credentials: CredentialResolver | None = None):
        self.config = config
        self.credentials = credentials or CredentialResolver([config])
        self.base = f"{'http' if config.plain_http else 'https'}://{config.host}"
        self.session = requests.Session()
        if config.ca_file:
            self.session.verify = str(config.ca_file)
        self._basic: str | None = None  # a registry with basic auth takes one header everywhere
        self._tokens: dict[str, str] = {}  # bearer tokens by the scopes they were asked for

    def _credentials(self) -> Credentials | None:
        return self.credentials.lookup(self.config.host)

    def _request(self, method: str, path: str, scopes: Sequence[str] = (), **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        key = _scope_key(scopes)

        def send() -> requests.Response:
            return self.session.request(method, self.base + path, headers=headers, timeout=TIMEOUT, **kwargs)

        try:
            if held := self._basic or self._tokens.get(key):
                headers["Authorization"] = held
            response = send()
            if response.status_code == 401:
                headers["Authorization"] = self._authenticate(response.headers.get("WWW-Authenticate", ""), scopes)
                response = send()
                if response.status_code == 401 and self.credentials.forget(self.config.host):  # a stale helper answer
                    headers["Authorization"] = self._authenticate(response.headers.get("WWW-Authenticate", ""), scopes)
                    response = send()
        except requests.RequestException as exc:
            raise InfrastructureError(f"registry {self.config.host} is unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise RegistryAuthFailed(f"registry {self.config.host} refused our credentials (401; they came from "
                                     f"{self.credentials.source(self.config.host)})")
        if response.status_code == 403:
            raise RegistryAuthFailed(f"registry {self.config.host} denied access (403) to {path.split('?')[0]}")
        return response

    def _authenticate(self, challenge: str, scopes: Sequence[str]) -> str:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            creds = self._credentials()
            if creds is None:
                raise RegistryAuthFailed(f"registry {self.config.host} needs credentials; none are configured")
            if creds.identity_token:
                raise RegistryAuthFailed(f"registry {self.config.host} asks for a password, but its login "
                                         f"({creds.source}) is an identity token, which needs a token service")
            self._basic = requests.auth._basic_auth_str(creds.username, creds.secret)
            return self._basic
        if scheme == "bearer":
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            token = self._token(params, scopes)
            if token.status_code in (401, 403) and self.credentials.forget(self.config.host):  # a stale helper answer
                token = self._token(params, scopes)
            if token.status_code in (401, 403):
                raise RegistryAuthFailed(f"registry {self.config.host} refused our credentials at its token service")
            try:
                body = token.json()
            except ValueError:
                raise InfrastructureError(f"registry {self.config.host}: its token service answered {token.status_code} "
                                          "without a token") from None
            header = "Bearer " + (body.get("token") or body.get("access_token", ""))
            self._tokens[_scope_key(scopes)] = header
            return header
        raise RegistryAuthFailed(f"registry {self.config.host} asks for unsupported auth {scheme!r}")

    def _token(self, params: dict[str, str], scopes: Sequence[str]) -> requests.Response:
        """Ask the token service for `scopes`: a GET with the login (or none), or, with an
        identity token, the OAuth2 refresh_token grant (a POST), as Docker does."""
        creds = self._credentials()
        try:
            if creds is not None and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.secret, "service": params.get("service", ""),
                        "client_id": CLIENT_ID, "scope": " ".join(scopes)}
                return self.session.post(params["realm"], data=form, timeout=TIMEOUT)
            query: dict[str, str | list[str]] = {"service": params.get("service", "")}
            if scopes:
                query["scope"] = list(scopes)  # one `scope=` parameter per scope
            auth = (creds.username, creds.secret) if creds is not None else None
            return self.session.get(params["realm"], params=query, auth=auth, timeout=TIMEOUT)
        except (KeyError, requests.RequestException):
            raise InfrastructureError(f"registry {self.config.host}: token service unreachable") from None

    def _failed(self, response: requests.Response, what: str) -> InfrastructureError:
        return InfrastructureError(f"registry {self.config.host} answered {response.status_code} {what}")

    def ping(self) -> None:
        """Raise unless /v2/ answers 200 with our credentials."""
        response = self._request("GET", "/v2/")
        if response.status_code != 200:
            raise InfrastructureError(f"registry {self.config.host} answered {response.status_code} at /v2/")

    def manifest_digest(self, ref: ImageRef) -> str | None:
        """The digest the registry holds for ref's tag, or None if the tag is absent."""
        response = self._request("HEAD", f"/v2/{ref.repository}/manifests/{ref.tag}", [pull_scope(ref.repository)],
                                 headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._failed(response, f"for {ref}")
        return response.headers.get("Docker-Content-Digest")

    def head_manifest(self, repository: str, reference: str) -> tuple[str, str] | None:
        """(digest, media type) the registry holds under `reference` (a tag or a digest), or
        None when it holds nothing there."""
        response = self._request("HEAD", f"/v2/{repository}/manifests/{reference}", [pull_scope(repository)],
                                 headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._failed(response, f"for {repository}:{reference}")
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise InfrastructureError(f"registry {self.config.host} named no digest for {repository}:{reference}")
        return digest, response.headers.get("Content-Type", "").split(";")[0].strip()

    def tagged_manifest(self, repository: str, tag: str) -> Manifest | None:
        """The manifest under `tag` as stored (its digest computed from its bytes), or None."""
        response = self._request("GET", f"/v2/{repository}/manifests/{tag}", [pull_scope(repository)],
                                 headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failed(response, f"for {repository}:{tag}")
        body = response.content
        if len(body) > MAX_MANIFEST_BYTES:
            raise InfrastructureError(f"registry {self.config.host}: the manifest of {repository}:{tag} is over "
                                      f"{MAX_MANIFEST_BYTES} bytes")
        return Manifest(body=body, media_type=response.headers.get("Content-Type", "").split(";")[0].strip(),
                        digest="sha256:" + hashlib.sha256(body).hexdigest())

    def blob(self, repository: str, digest: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
        """The blob `digest` of `repository` (a small one: a signature's payload, an envelope),
        checked against its digest."""
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", [pull_scope(repository)], stream=True)
        with response:
            if response.status_code != 200:
                raise self._failed(response, f"for blob {digest} of {repository}")
            body = response.raw.read(max_bytes + 1, decode_content=True)
        if len(body) > max_bytes:
            raise InfrastructureError(f"registry {self.config.host}: blob {digest} of {repository} is over {max_bytes} bytes")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise InfrastructureError(f"registry {self.config.host} sent a blob for {repository}@{digest} that is not that digest")
        return body

    def upload_blob(self, repository: str, data: bytes) -> str:
        """Store `data` as a blob of `repository` (one monolithic upload; nothing when the
        registry has it already); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        head = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", [push_scope(repository)])
        if head.status_code == 200:
            return digest
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/", [push_scope(repository)])
        location = started.headers.get("Location", "")
        if started.status_code != 202 or not location:
            raise self._failed(started, f"starting a blob upload to {repository}")
        parts = urlsplit(location)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        done = self._request("PUT", path + ("&" if parts.query else "?") + f"digest={digest}", [push_scope(repository)],
                             data=data, headers={"Content-Type": "application/octet-stream"})
        if done.status_code not in (201, 204):
            raise self._failed(done, f"uploading a blob to {repository}")
        return digest

    # -- tagging without a push -----------------------------------------------------------------
    def manifest(self, repository: str, digest: str) -> Manifest:
        """The manifest `digest` of `repository`, as stored (checked against its digest)."""
        response = self._request("GET", f"/v2/{repository}/manifests/{digest}", [pull_scope(repository)],
                                 headers={"Accept": MANIFEST_TYPES})
        if response.status_code != 200:
            raise self._failed(response, f"for manifest {digest} of {repository}")
        body = response.content
        if len(body) > MAX_MANIFEST_BYTES or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise NotCopied(f"registry {self.config.host} sent a manifest for {repository}@{digest} that is not that digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        manifest = Manifest(body=body, media_type=media_type, digest=digest)
        if media_type not in (*INDEX_TYPES, *IMAGE_TYPES):  # a registry that answers application/json
            manifest = Manifest(body=body, media_type=str(manifest._document().get("mediaType", "")), digest=digest)
        return manifest

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """Store `manifest` under `reference` (a tag, or its own digest); the digest stored."""
        response = self._request("PUT", f"/v2/{repository}/manifests/{reference}", [push_scope(repository)],
                                 data=manifest.body, headers={"Content-Type": manifest.media_type})
        if response.status_code in (400, 404):  # e.g. MANIFEST_BLOB_UNKNOWN: a push would upload them
            raise NotCopied(f"registry {self.config.host} refused the manifest for {repository}:{reference} "
                            f"({response.status_code})")
        if response.status_code not in (200, 201):
            raise self._failed(response, f"putting the manifest of {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest") or manifest.digest

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask the registry to link blob `digest` of repository `source` into `repository`
        (no bytes move). False when it declines and opens an upload instead (cancelled here)."""
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}",
                                 [push_scope(repository), pull_scope(source)])
        if response.status_code == 201:
            return True
        if response.status_code == 202:  # an upload session we do not want
            location = response.headers.get("Location", "")
            if location:
                try:
                    self._request("DELETE", location.removeprefix(self.base), [push_scope(repository)])
                except InfrastructureError:
                    pass  # the registry expires abandoned uploads itself
            return False
        raise self._failed(response, f"mounting {digest} from {source} into {repository}")


class Registries:
    """The registries jobs may push to, and one client per registry for this process, so its
    connection and auth header are reused from job to job (a fresh client pays a 401 round
    trip on every request). Made once per worker and shared by its executors."""

    def __init__(self, configs: Iterable[RegistryConfig] = (), auth: RegistryAuthConfig | None = None):
        self.configs = list(configs)
        #: where each registry's login comes from (runner.core.registry_auth), shared by every client
        self.credentials = CredentialResolver(self.configs, auth)
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[RegistryConfig]:
        return iter(self.configs)

    def configured(self, host: str) -> RegistryConfig | None:
        return next((r for r in self.configs if r.host == host), None)

    def config(self, host: str) -> RegistryConfig:
        """The configured registry, or an anonymous one for a host not configured."""
        return self.configured(host) or RegistryConfig(host=host)

    def client(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = RegistryClient(self.config(host), self.credentials)
            return self._clients[host]

    def confirm_digest(self, ref: ImageRef, digest: str) -> None:
        """Raise unless the registry holds exactly `digest` under ref's tag."""
        held = self.client(ref.registry).manifest_digest(ref)
        if held is None:
            raise InfrastructureError(f"push of {ref} reported success but the registry has no such tag")
        if held != digest:
            raise InfrastructureError(f"push of {ref} reported {digest} but the registry holds {held}")

    def copy_tag(self, source: ImageRef, digest: str, target: ImageRef, copies: Copies | None = None) -> str:
        """Put the image `digest`, which `source`'s repository holds, under `target` on the same
        registry without pushing it: the very same manifest bytes (so the same digest), after
        mounting its blobs (and an index's manifests) into target's repository when that is
        another one. `copies` keeps what this job fetched and mounted for its next tag. Raises
        NotCopied when the registry declines (a real push still works), RegistryAuthFailed
        when our credentials may not push there."""
        if source.registry != target.registry:
            raise ValueError("copy_tag works within one registry")
        client = self.client(target.registry)
        copies = Copies() if copies is None else copies
        manifest = self._fetch(client, source.repository, digest, copies)
        if target.repository != source.repository:
            self._mount_into(client, manifest, source.repository, target.repository, copies)
        return client.put_manifest(target.repository, target.tag, manifest)

    def fetch_manifests(self, source: ImageRef, digest: str, copies: Copies) -> None:
        """Read the image `digest` (an index with its manifests) from `source`'s repository into
        `copies` once, before tags are put at once: a registry that is rewriting a manifest's
        link file (a PUT of it under another tag) can answer a read of it with a 500
        (distribution 2.8: "invalid checksum digest format")."""
        client = self.client(source.registry)
        for child in self._fetch(client, source.repository, digest, copies).children():
            self.fetch_manifests(source, child, copies)

    def _fetch(self, client: RegistryClient, repository: str, digest: str, copies: Copies) -> Manifest:
        if digest not in copies.manifests:
            copies.manifests[digest] = client.manifest(repository, digest)
        return copies.manifests[digest]

    def _mount_into(self, client: RegistryClient, manifest: Manifest, source: str, target: str, copies: Copies) -> None:
        for child in manifest.children():
            child_manifest = self._fetch(client, source, child, copies)
            self._mount_into(client, child_manifest, source, target, copies)
            if (target, child) not in copies.mounted:
                client.put_manifest(target, child, child_manifest)
                copies.mounted.add((target, child))
        blobs = [blob for blob in dict.fromkeys(manifest.blobs()) if (target, blob) not in copies.mounted]
        if not blobs:
            return
        with ThreadPoolExecutor(min(len(blobs), MOUNTS_AT_ONCE)) as pool:  # one round trip each: at once
            mounted = dict(zip(blobs, pool.map(lambda blob: client.mount_blob(target, blob, source), blobs), strict=True))
        copies.mounted.update((target, blob) for blob, ok in mounted.items() if ok)
        if declined := [blob for blob, ok in mounted.items() if not ok]:
            raise NotCopied(f"registry {client.config.host} would not mount {declined[0][:19]} from {source} into {target}")
