"""Multi-platform images at the registry, for every executor: the OCI image index the runner
puts together and PUTs itself (engine executors, whose engine pushes one image at a time),
and each platform's manifest digest read back from an index a tool pushed (buildah, img).

The index's manifests must already be in the repository it goes to (the engine pushed each
platform's image there): a registry refuses an index naming a manifest it does not hold.
Other tags then get the index as tags.py copies any manifest (its children first)."""

from __future__ import annotations

import hashlib
import json

from runner.core.errors import InfrastructureError
from runner.core.jobs import ImageRef, PlatformImage, PushedImage
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform, normalize_arch
from runner.core.registry_client import INDEX_TYPES, Manifest, Registries

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def index_manifest(children: list[tuple[Platform, Manifest]]) -> Manifest:
    """An OCI image index listing each platform's manifest (its media type kept: the engine's
    images are Docker v2 schema 2, which an OCI index may list)."""
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": child.media_type, "digest": child.digest, "size": len(child.body), "platform": platform.oci()}
        for platform, child in children]}
    body = json.dumps(document, indent=2).encode()
    return Manifest(body=body, media_type=OCI_INDEX, digest="sha256:" + hashlib.sha256(body).hexdigest())


def put_index(registries: Registries, ref: ImageRef, children: list[tuple[Platform, str]]) -> tuple[str, list[PlatformImage]]:
    """PUT an index of `children` (platform, manifest digest; each already in ref's repository)
    under ref's tag, confirmed by a HEAD; its digest and the platforms it lists."""
    client = registries.client(ref.registry)
    manifests = [(platform, client.manifest(ref.repository, digest)) for platform, digest in children]
    index = index_manifest(manifests)
    digest = client.put_manifest(ref.repository, ref.tag, index)
    if digest != index.digest:
        raise InfrastructureError(f"registry {ref.registry} stored the index for {ref} as {digest}, not {index.digest}")
    registries.confirm_digest(ref, digest)
    return digest, [PlatformImage(platform=str(platform), digest=child) for platform, child in children]


def platform_of(entry: dict) -> Platform | None:
    """The platform an index entry names, normalised (None for one that names none)."""
    platform = entry.get("platform")
    if not isinstance(platform, dict) or not platform.get("os") or not platform.get("architecture"):
        return None
    arch, variant = normalize_arch(str(platform["architecture"]), str(platform.get("variant") or ""))
    return Platform(str(platform["os"]), arch, variant)


def index_platforms(registries: Registries, ref: ImageRef, digest: str) -> list[PlatformImage]:
    """Each platform's manifest digest in the index `digest` of ref's repository, as the
    registry holds it. Raises InfrastructureError when `digest` is not an index."""
    manifest = registries.client(ref.registry).manifest(ref.repository, digest)
    if manifest.media_type not in INDEX_TYPES:
        raise InfrastructureError(f"{ref}@{digest} is a single image ({manifest.media_type}), not an index")
    try:
        entries = json.loads(manifest.body).get("manifests") or []
    except (ValueError, AttributeError):
        raise InfrastructureError(f"the index {ref}@{digest} is not JSON") from None
    found = []
    for entry in entries:
        if isinstance(entry, dict) and (platform := platform_of(entry)) is not None and "digest" in entry:
            found.append(PlatformImage(platform=str(platform), digest=str(entry["digest"])))
    return found


def pushed(registries: Registries, ref: ImageRef, digest: str, index: bool, log: LogSink) -> PushedImage:
    """A tool's finished push of `ref` (confirmed at `digest`), said in the log: an image, or an
    index with each platform's manifest digest as the registry lists them."""
    if not index:
        log.line(f"[runner] pushed {ref} {digest}")
        return PushedImage(ref=str(ref), digest=digest)
    platforms = index_platforms(registries, ref, digest)
    log.line(f"[runner] pushed index {ref} {digest} ({', '.join(p.platform for p in platforms)})")
    return PushedImage(ref=str(ref), digest=digest, platforms=platforms)
