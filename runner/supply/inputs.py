"""A job's BuildInputs (runner.core.build_inputs), computed once before the build: the
request's parameters without secrets, the context's digest and commit, and every base image
the Dockerfile pulls (runner.context.dockerfile_bases), with the frontend image a BuildKit
build hands it to (`# syntax=`), resolved to the digest its registry holds now, through the
worker's registry clients (and their logins)."""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor

from runner.context.build_context import BuildContext
from runner.context.dockerfile_bases import BaseRef, DockerfileError, base_images, frontend_image
from runner.context.tarpolicy import member_parts
from runner.core.build_inputs import BaseImage, BuildInputs, SourceInputs, without_credentials
from runner.core.errors import ExecutorError
from runner.core.host_platforms import native_platform
from runner.core.image_names import InvalidReference, NamedRef, parse_image
from runner.core.jobs import BuildRequest, GitContext
from runner.core.log_sink import LogSink
from runner.core.platforms import parse_platform
from runner.core.registry_client import INDEX_TYPES, Registries

MAX_DOCKERFILE_BYTES = 1024**2
RESOLVED_AT_ONCE = 4
MASK = "***"


def job_platforms(request: BuildRequest) -> list[str]:
    """The platforms the job builds for (a multi-platform job's every one); empty: the worker's own."""
    return list(request.platforms)


def source_inputs(request: BuildRequest, context: BuildContext) -> SourceInputs | None:
    """Where the context came from: the checkout (URL, ref, the commit checked out), and the
    commit the job names as its source (a webhook's push)."""
    git = request.context if isinstance(request.context, GitContext) else None
    named = request.source
    if git is None and named is None:
        return None
    return SourceInputs(url=without_credentials(git.url) if git else None, host=named.host if named else None,
                        repository=named.repository if named else None,
                        ref=(git.ref if git else None) or (named.ref if named else None),
                        commit=(context.commit or git.commit) if git else named.sha if named else None,
                        path=git.subdir if git else "", checked_out=bool(git and context.commit))


def dockerfile_text(context: BuildContext) -> str:
    """The Dockerfile as the build reads it: kept by the spool, else read from the canonical
    tar (ours, already checked) seeking over the other members."""
    content = context.dockerfile_content
    if content is None:
        name = "/".join(member_parts(context.dockerfile))
        with tarfile.open(context.tar_path, "r:") as tar:
            member = None
            for info in tar:
                if "/".join(member_parts(info.name)) == name:
                    member = info
            if member is not None and member.islnk():
                member = tar.getmember(member.linkname)
            if member is None or not member.isfile() or member.size > MAX_DOCKERFILE_BYTES:
                raise DockerfileError(f"the Dockerfile {context.dockerfile!r} could not be read (missing, not a file, "
                                      f"or over {MAX_DOCKERFILE_BYTES:,} bytes)")
            extracted = tar.extractfile(member)
            assert extracted is not None
            content = extracted.read()
    return content.decode("utf-8", "replace")


def masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class BaseResolver:
    """Looks up the digest a base image's tag holds (and, for an index, each platform's
    manifest in it) with the worker's registry clients."""

    def __init__(self, registries: Registries):
        self.registries = registries

    def resolve(self, ref: str, platforms: list[str], secrets: list[str]) -> BaseImage:
        shown = masked(ref, secrets)
        try:
            named = parse_image(ref)
        except InvalidReference as exc:
            return BaseImage(ref=shown, name=shown, error=masked(str(exc), secrets))
        image = BaseImage(ref=shown, name=masked(str(named), secrets))
        try:
            return self._resolved(image, named, platforms)
        except ExecutorError as exc:
            return image.model_copy(update={"error": masked(exc.message, secrets)})

    def _resolved(self, image: BaseImage, named: NamedRef, platforms: list[str]) -> BaseImage:
        client = self.registries.client(named.api_host)
        if named.digest:  # pinned: the digest is known; an index's platforms are looked up if it can be
            image = image.model_copy(update={"digest": named.digest})
            try:
                return image.model_copy(update={"platforms": self._platforms(named, named.digest, platforms)})
            except ExecutorError:
                return image
        held = client.head_manifest(named.path, named.tag or "latest")
        if held is None:
            return image.model_copy(update={"error": f"the registry has no {named}"})
        digest, media_type = held
        found = self._platforms(named, digest, platforms) if media_type in INDEX_TYPES else {}
        return image.model_copy(update={"digest": digest, "platforms": found})

    def _platforms(self, named: NamedRef, digest: str, platforms: list[str]) -> dict[str, str]:
        """The manifest each of `platforms` takes from `digest`, when it is an index."""
        children = self.registries.client(named.api_host).manifest(named.path, digest).platforms()
        return {p: children[p] for p in platforms if p in children}


def resolve_bases(needed: dict[BaseRef, list[str]], resolver: BaseResolver | None, secrets: list[str]) -> list[BaseImage]:
    """Each image resolved (a few at once), the platforms each takes from an index; with no
    resolver, listed unresolved."""
    refs: dict[str, list[str]] = {}
    for base, platforms in needed.items():
        refs.setdefault(base.ref, [])
        for platform in [base.platform] if base.platform else platforms:
            if platform not in refs[base.ref]:
                refs[base.ref].append(platform)
    if not refs:
        return []
    if resolver is None:
        return [BaseImage(ref=masked(ref, secrets), name=masked(ref, secrets), error="not looked up (the executor uses no registry)")
                for ref in refs]
    with ThreadPoolExecutor(min(len(refs), RESOLVED_AT_ONCE)) as pool:
        return list(pool.map(lambda item: resolver.resolve(item[0], item[1], secrets), refs.items()))


def compute_inputs(request: BuildRequest, context: BuildContext, executor: str, builder: str,
                   registries: Registries | None, log: LogSink, reads_frontend: bool = False) -> BuildInputs:
    """The job's BuildInputs (`builder`: the job's, else the config's), base images looked up in `registries` (None: not looked up), the
    `# syntax=` frontend among them when the build `reads_frontend` (BuildKit: it runs on the
    worker's own platform). A Dockerfile whose FROM lines cannot be read leaves the base images
    out (the build itself says what is wrong); a base that cannot be looked up keeps why."""
    secrets = [value for value in request.secret_values() if value]
    platforms = job_platforms(request)
    native = native_platform()
    needed: dict[BaseRef, list[str]] = {}
    unknown = None
    try:
        text = dockerfile_text(context)
        if reads_frontend and (frontend := frontend_image(text, request.build_args)):
            needed[BaseRef(frontend, str(native))] = []
        for target in [parse_platform(p) for p in platforms] or [native]:
            for base in base_images(text, request.build_args, request.target, target, native):
                needed.setdefault(base, []).append(str(target))
    except (DockerfileError, OSError, tarfile.TarError) as exc:
        unknown = masked(str(exc), secrets)
        log.line(f"[runner] provenance: the base images could not be read from the Dockerfile: {unknown}")
    bases = resolve_bases(needed, BaseResolver(registries) if registries is not None else None, secrets)
    for image in bases:
        if image.error:
            log.line(f"[runner] provenance: base image {image.ref} not resolved to a digest: {image.error}")
    return BuildInputs(
        context_digest=context.digest, context_files=context.files_digest, source=source_inputs(request, context), dockerfile=request.dockerfile,
        target=request.target, platforms=platforms,
        build_args={k: v for k, v in request.build_args.items() if k not in request.secret_build_args},
        secret_build_args=list(request.secret_build_args), secrets=list(request.secrets), labels=dict(request.labels),
        no_cache=request.no_cache, executor=executor, builder=builder, base_images=bases,
        bases_unknown=unknown)
