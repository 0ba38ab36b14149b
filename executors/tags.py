"""A job's tags from one push per registry, for every executor.

The first tag on each registry is pushed for real (by the executor: engine, buildah, img).
Every other tag on that registry gets the manifest the push stored, byte for byte, so the
same digest: a manifest PUT when it is the same repository, a blob mount from the pushed
repository and then the PUT when it is another one (runner.core.registry_client). Each tag's
digest is then read back from the registry (a HEAD), as after a push. Tags of different
repositories are put at once (each is a few round trips, mostly waiting on the registry);
tags of one repository one after the other, so its blobs are mounted once. The pushed
manifest is read once before that (a registry rewriting it for a same-repository tag may
answer a concurrent read with a 500). Where the
registry declines (no mount across repositories there, a refused manifest), that tag is
pushed for real instead, and the log says why.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.executor_metrics import NO_METRICS, PhaseClock
from runner.core.jobs import ImageRef, PushedImage
from runner.core.log_sink import LogSink
from runner.core.registry_client import Copies, Registries

#: pushes `ref` for real and returns the digest the registry confirmed for it
Push = Callable[[ImageRef], str]
REPOSITORIES_AT_ONCE = 4


def push_tags(refs: list[ImageRef], push: Push, registries: Registries, log: LogSink,
              cancel: CancelToken, phases: PhaseClock | None = None) -> list[PushedImage]:
    """Every ref with its registry digest, pushing once per registry. `phases` times the
    pushes as `push` and the further tags as `tags`."""
    phases = phases or PhaseClock(NO_METRICS, "")
    digests: dict[int, str] = {}
    pushed: dict[str, tuple[ImageRef, str]] = {}  # registry -> (the ref pushed there, its digest)
    for index, ref in enumerate(refs):
        if ref.registry not in pushed:
            cancel.raise_if_set()
            with phases("push"):
                digests[index] = push(ref)
            pushed[ref.registry] = (ref, digests[index])
    rest = [index for index in range(len(refs)) if index not in digests]
    by_repository: dict[tuple[str, str], list[int]] = {}
    for index in rest:
        by_repository.setdefault((refs[index].registry, refs[index].repository), []).append(index)
    copies = {registry: Copies() for registry in pushed}

    def put_all(indexes: list[int]) -> list[tuple[int, str | None, str]]:
        return [(i, *copy_tag(pushed[refs[i].registry], refs[i], registries, copies[refs[i].registry])) for i in indexes]

    cancel.raise_if_set()
    if by_repository:
        phases.switch("tags")
        for registry, (origin, pushed_digest) in pushed.items():
            try:
                registries.fetch_manifests(origin, pushed_digest, copies[registry])
            except InfrastructureError:
                pass  # each tag tries again, and falls back to a push
        with ThreadPoolExecutor(min(len(by_repository), REPOSITORIES_AT_ONCE)) as pool:
            done = [result for group in pool.map(put_all, by_repository.values()) for result in group]
        for index, digest, said in sorted(done):
            log.line(said)
            if digest is None:
                cancel.raise_if_set()
                digest = push(refs[index])
            digests[index] = digest
        phases.stop()
    return [PushedImage(ref=str(ref), digest=digests[index]) for index, ref in enumerate(refs)]


def copy_tag(source: tuple[ImageRef, str], ref: ImageRef, registries: Registries, copies: Copies) -> tuple[str | None, str]:
    """Put the image pushed as `source` under `ref`, confirmed: (its digest, the log line), or
    (None, why) when only a push will do. RegistryAuthFailed is raised: our credentials are
    refused there, and a push would be too."""
    origin, digest = source
    try:
        put = registries.copy_tag(origin, digest, ref, copies)
        registries.confirm_digest(ref, put)
    except InfrastructureError as exc:
        return None, f"[runner] could not tag {ref} without a push ({exc.message}); pushing it"
    how = "same repository" if origin.repository == ref.repository else f"blobs mounted from {origin.repository}"
    return put, f"[runner] tagged {ref} {put} (manifest put, {how}; no push)"
