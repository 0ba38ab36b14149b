"""Image names as Docker reads them in a Dockerfile's FROM: `busybox`, `team/app:1`,
`registry:5000/app@sha256:…`, normalised the way distribution/reference's
ParseNormalizedNamed does (`busybox` is `docker.io/library/busybox:latest`). Pure.

Job tags need no normalising (runner.core.jobs.ImageRef: a registry host is required there);
base images do, since a Dockerfile names them in the familiar short form."""

from __future__ import annotations

import re
from dataclasses import dataclass

# distribution/reference's grammar (regexp.go), kept in its own terms
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_AND_PORT = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^((?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_NAME = re.compile(rf"^(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})$")
_IDENTIFIER = re.compile(r"^[a-f0-9]{64}$")
NAME_TOTAL_LENGTH_MAX = 255

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
#: where Docker Hub's registry API answers (docker.io is its name in references only)
DOCKER_HUB_API = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"


class InvalidReference(ValueError):
    """Not an image reference Docker would accept."""


@dataclass(frozen=True)
class NamedRef:
    """A normalised image reference: domain, path, and a tag or a digest (or both)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """domain/path: the repository, as a cosign payload and a provenance name it."""
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host whose registry API serves this repository."""
        return DOCKER_HUB_API if self.domain == DEFAULT_DOMAIN else self.domain

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def split_docker_domain(name: str) -> tuple[str, str]:
    """(domain, remote name) as distribution/reference's splitDockerDomain."""
    maybe_domain, slash, remainder = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if maybe_domain == "localhost" or (maybe_domain != LEGACY_DEFAULT_DOMAIN and (
            any(c in maybe_domain for c in ".:") or maybe_domain.lower() != maybe_domain)):
        domain, remote = maybe_domain, remainder
    elif maybe_domain == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, remainder
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_PREFIX + remote
    return domain, remote


def parse_normalized(text: str) -> NamedRef:
    """`text` as distribution/reference's ParseNormalizedNamed reads it (a tag, a digest, both or
    neither; no default tag added). Raises InvalidReference saying what is wrong."""
    if _IDENTIFIER.match(text):
        raise InvalidReference(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    domain, remainder = split_docker_domain(text)
    remote = remainder.split(":", 1)[0] if ":" in remainder else remainder
    if remote.lower() != remote:
        raise InvalidReference(f"invalid reference format: repository name ({remote}) must be lowercase")
    full = f"{domain}/{remainder}"
    match = _REFERENCE.match(full)
    if not match:
        raise InvalidReference(f"invalid reference format: {text!r}")
    name, tag, digest = match.groups()
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    parts = _NAME.match(name)
    if not parts:
        raise InvalidReference(f"invalid reference format: {text!r}")
    return NamedRef(domain=parts[1] or "", path=parts[2], tag=tag, digest=digest)


def parse_image(text: str) -> NamedRef:
    """A FROM image as Docker pulls it: normalised, with `latest` when it names neither a tag
    nor a digest (a tag beside a digest is kept; the digest is what is pulled)."""
    ref = parse_normalized(text)
    if ref.tag is None and ref.digest is None:
        return NamedRef(ref.domain, ref.path, DEFAULT_TAG)
    return ref
