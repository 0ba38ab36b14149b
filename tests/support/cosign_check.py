"""The tests' own reading of signatures and attestations, written from the specifications and
sharing no code with runner.supply: the registry read with httpx (distribution's HTTP API,
basic auth), DSSE's PAE ("DSSEv1" SP len(type) SP type SP len(body) SP body), ECDSA P-256 over
SHA-256 with DER signatures (cryptography), cosign's tags and media types as its spec names them
(sigstore/cosign specs/SIGNATURE_SPEC.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"])


def pae(payload_type: str, body: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 " + str(len(kind)).encode() + b" " + kind + b" " + str(len(body)).encode() + b" " + body


def ecdsa_verifies(public_pem: bytes, signature: bytes, data: bytes) -> bool:
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


@dataclass
class Registry:
    """A registry read over its HTTP API (plain HTTP on loopback, basic auth)."""

    host: str
    user: str
    password: str

    def _get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"http://{self.host}/v2/{path}", auth=(self.user, self.password), headers=headers, timeout=30)

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """(the manifest's bytes, its digest) under a tag or digest, None when absent."""
        response = self._get(f"{repository}/manifests/{reference}", Accept=ACCEPT)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.content, "sha256:" + hashlib.sha256(response.content).hexdigest()

    def blob(self, repository: str, digest: str) -> bytes:
        response = self._get(f"{repository}/blobs/{digest}")
        response.raise_for_status()
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
        return response.content

    def tags(self, repository: str) -> list[str]:
        response = self._get(f"{repository}/tags/list")
        response.raise_for_status()
        return response.json().get("tags") or []

    def attached(self, repository: str, digest: str, suffix: str) -> list[tuple[dict, bytes]]:
        """The layers (descriptor, bytes) of the manifest cosign keeps under sha256-<hex>.<suffix>."""
        found = self.manifest(repository, digest.replace(":", "-") + "." + suffix)
        assert found is not None, f"no {suffix} tag for {repository}@{digest}"
        manifest = json.loads(found[0])
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        self.blob(repository, manifest["config"]["digest"])  # the config is there
        return [(layer, self.blob(repository, layer["digest"])) for layer in manifest["layers"]]


def verified_signatures(layers: list[tuple[dict, bytes]], public_pem: bytes) -> list[dict]:
    """The simple-signing payloads (parsed) whose annotation's signature the key verifies."""
    found = []
    for descriptor, data in layers:
        if descriptor["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json":
            continue
        signature = base64.b64decode(descriptor["annotations"]["dev.cosignproject.cosign/signature"])
        if ecdsa_verifies(public_pem, signature, data):
            found.append(json.loads(data))
    return found


def verified_statements(layers: list[tuple[dict, bytes]], public_pem: bytes) -> list[dict]:
    """The in-toto statements (parsed) of DSSE envelopes whose signature the key verifies over their PAE."""
    found = []
    for descriptor, data in layers:
        if descriptor["mediaType"] != "application/vnd.dsse.envelope.v1+json":
            continue
        assert descriptor["annotations"]["predicateType"] == "https://slsa.dev/provenance/v1"
        envelope = json.loads(data)
        body = base64.b64decode(envelope["payload"])
        if any(ecdsa_verifies(public_pem, base64.b64decode(s["sig"]), pae(envelope["payloadType"], body))
               for s in envelope["signatures"]):
            found.append(json.loads(body))
    return found
