"""cosign's formats, as sigstore/cosign writes them (specs/SIGNATURE_SPEC.md; pkg/oci/static,
pkg/types, cmd/cosign/cli/attest), and storing them next to an image:

- a signature: the simple-signing payload naming the repository and the manifest digest,
  ECDSA-signed, as a layer (`application/vnd.dev.cosign.simplesigning.v1+json`, the base64
  signature in the annotation `dev.cosignproject.cosign/signature`) of an OCI manifest tagged
  `sha256-<hex>.sig` in the image's repository;
- an attestation: a DSSE envelope (`application/vnd.in-toto+json` payload: an in-toto
  statement) as a layer (`application/vnd.dsse.envelope.v1+json`, annotation `predicateType`)
  of a manifest tagged `sha256-<hex>.att`.

Both tags hold every signature (attestation) made for the digest: a new one is appended to the
layers already there, as cosign does; a signature already there for the same payload and key is
not added again (cosign's dupe detection); attestations beyond MAX_ATTESTATIONS drop the oldest."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

from securesystemslib.dsse import Envelope

from runner.core.attestations import tag_for
from runner.core.errors import InfrastructureError
from runner.core.registry_client import Manifest, NotCopied, RegistryClient

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNATURE_TYPE = "cosign container image signature"
#: attestations kept per digest (a digest rebuilt every night would otherwise grow one a night)
MAX_ATTESTATIONS = 32
#: a signature or envelope is small; a layer larger than this is not one
MAX_ATTACHMENT_BYTES = 1024**2
#: how often a lost race with another job writing the same tag is tried again
WRITE_TRIES = 3


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def simple_signing_payload(repository: str, digest: str) -> bytes:
    """cosign's payload (sigstore's payload.Cosign, marshalled by Go: this field order, no blanks)."""
    return json.dumps({"critical": {"identity": {"docker-reference": repository},
                                    "image": {"docker-manifest-digest": digest}, "type": SIGNATURE_TYPE},
                       "optional": None}, separators=(",", ":")).encode()


def envelope(statement: bytes, signer=None) -> bytes:
    """The statement in a DSSE envelope, signed by `signer` (a securesystemslib Signer), or with
    no signature at all when there is no key."""
    made = Envelope(statement, IN_TOTO, {})
    if signer is not None:
        made.sign(signer)
    return json.dumps(made.to_dict(), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    """One attachment: its bytes, media type and annotations."""

    data: bytes
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)


def attachment_config(layers: list[Layer]) -> bytes:
    """The image config of a signature or attestation manifest (go-containerregistry's empty
    image with these layers appended, as cosign's)."""
    return json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z",
                       "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers], "os": "",
                       "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]}, "config": {}},
                      separators=(",", ":")).encode()


def attachment_manifest(layers: list[Layer], config: bytes) -> bytes:
    def descriptor(media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> dict:
        entry: dict = {"mediaType": media_type, "size": len(data), "digest": sha256_digest(data)}
        if annotations:
            entry["annotations"] = annotations
        return entry

    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(layer.media_type, layer.data, layer.annotations) for layer in layers]},
                      separators=(",", ":")).encode()


def layer_digests(manifest: Manifest) -> list[str]:
    try:
        entries = json.loads(manifest.body).get("layers") or []
    except (ValueError, AttributeError):
        return []
    return [entry["digest"] for entry in entries if isinstance(entry, dict) and "digest" in entry]


def read_layers(client: RegistryClient, repository: str, manifest: Manifest) -> list[Layer]:
    """The layers of a signature or attestation manifest, with their bytes."""
    try:
        document = json.loads(manifest.body)
        entries = document.get("layers") or []
    except (ValueError, AttributeError):
        raise InfrastructureError(f"{repository}@{manifest.digest} is not an image manifest") from None
    layers = []
    for entry in entries:
        if not isinstance(entry, dict) or "digest" not in entry:
            continue
        if int(entry.get("size") or 0) > MAX_ATTACHMENT_BYTES:
            continue
        data = client.blob(repository, entry["digest"], MAX_ATTACHMENT_BYTES)
        layers.append(Layer(data, str(entry.get("mediaType", "")), dict(entry.get("annotations") or {})))
    return layers


def fetch_attached(client: RegistryClient, repository: str, digest: str, suffix: str) -> list[Layer]:
    """What the `sha256-<hex>.<suffix>` tag of `repository` holds (none: no such tag)."""
    manifest = client.tagged_manifest(repository, tag_for(digest, suffix))
    return [] if manifest is None else read_layers(client, repository, manifest)


def attach(client: RegistryClient, repository: str, digest: str, suffix: str, layer: Layer,
           already_there=lambda existing: False, keep: int | None = None) -> str:
    """Add `layer` to the tag `sha256-<hex>.<suffix>` of `repository` (its blobs uploaded, the
    manifest put), unless `already_there` says a layer there makes it needless. `keep`: the
    most layers the tag holds (the oldest go). Read back after the write, and written again if
    another job's write replaced ours meanwhile, or the registry failed for a moment (a refusal
    is not asked again). Returns registry/path:tag. Jobs of one fleet writing the same tag take
    turns (runner.supply.attester's lock); this covers any other writer."""
    tag = tag_for(digest, suffix)
    where = f"{client.config.host}/{repository}:{tag}"
    failure = f"{repository}:{tag} kept being replaced by another writer"
    for attempt in range(WRITE_TRIES):
        if attempt:
            time.sleep(random.uniform(0.1, 0.5))  # another writer of the tag, or a registry in the middle of one
        try:
            manifest = client.tagged_manifest(repository, tag)
            existing = [] if manifest is None else read_layers(client, repository, manifest)
            if any(already_there(other) for other in existing):
                return where
            layers = [*existing, layer]
            if keep is not None:
                layers = layers[-keep:]
            for part in layers:
                client.upload_blob(repository, part.data)
            config = attachment_config(layers)
            client.upload_blob(repository, config)
            body = attachment_manifest(layers, config)
            client.put_manifest(repository, tag, Manifest(body, OCI_MANIFEST, sha256_digest(body)))
            written = client.tagged_manifest(repository, tag)
        except NotCopied:
            raise  # refused (a 4xx): asking again changes nothing
        except InfrastructureError as exc:  # e.g. distribution's 500 on a tag another writer is rewriting
            failure = exc.message
            continue
        if written is not None and layer.digest in layer_digests(written):
            return where
    raise InfrastructureError(f"{failure} ({WRITE_TRIES} tries)")


def signature_of(layer: Layer) -> bytes | None:
    """The DER signature a signature layer carries (None: not one)."""
    value = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None
