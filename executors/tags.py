"""A job's tags from one push per registry, for every executor.

The first tag on each registry is pushed for real (by the executor: engine, buildah, img).
Every other tag on that registry gets the manifest the push stored, byte for byte, so the
same digest: a manifest PUT when it is the same repository, a blob mount from the pushed
repository and then the PUT when it is another one (runner.core.registries). Each tag's
digest is then read back from the registry (a HEAD), as after a push. Where the registry
declines (no mount across repositories there, a refused manifest), that tag is pushed for
real instead, and the log says why.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.core.build import LogSink
from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.jobs import ImageRef, PushedImage
from runner.core.registries import Manifest, Registries

#: pushes `ref` for real and returns the digest the registry confirmed for it
Push = Callable[[ImageRef], str]


def push_tags(refs: list[ImageRef], push: Push, registries: Registries, log: LogSink,
              cancel: CancelToken) -> list[PushedImage]:
    """Every ref with its registry digest, pushing once per registry."""
    pushed: dict[str, tuple[ImageRef, str]] = {}  # registry -> (the ref pushed there, its digest)
    seen: dict[str, Manifest] = {}
    images = []
    for ref in refs:
        cancel.raise_if_set()
        source = pushed.get(ref.registry)
        digest = copy_tag(source, ref, registries, log, seen) if source else None
        if digest is None:
            digest = push(ref)
            pushed.setdefault(ref.registry, (ref, digest))
        images.append(PushedImage(ref=str(ref), digest=digest))
    return images


def copy_tag(source: tuple[ImageRef, str], ref: ImageRef, registries: Registries, log: LogSink,
             seen: dict[str, Manifest]) -> str | None:
    """Put the image pushed as `source` under `ref`, confirmed; None when only a push will do."""
    origin, digest = source
    try:
        put = registries.copy_tag(origin, digest, ref, seen)
        registries.confirm_digest(ref, put)
    except InfrastructureError as exc:  # RegistryAuthFailed is not one: our credentials are refused, a push would be too
        log.line(f"[runner] could not tag {ref} without a push ({exc.message}); pushing it")
        return None
    how = "same repository" if origin.repository == ref.repository else f"blobs mounted from {origin.repository}"
    log.line(f"[runner] tagged {ref} {put} (manifest put, {how}; no push)")
    return put
