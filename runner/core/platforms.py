"""Target platforms (`linux/arm64`), read as buildx reads `--platform`: containerd's specifier
syntax (`<os>/<arch>[/<variant>]`, or an architecture alone) parsed and then normalised, so
`linux/aarch64`, `arm64` and `linux/arm64/v8` are all `linux/arm64`, and `linux/arm` is
`linux/arm/v7`. Stricter than containerd where a build could never work here: the operating
system must be linux (every executor builds Linux images), the architecture one containerd
knows, and a variant one that architecture has. Pure: no I/O.
"""

from __future__ import annotations

import re

from runner.core.frozen import Frozen

#: what one component of a specifier may hold (containerd's specifierRe)
_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
#: containerd's isKnownOS (from Go's list of GOOS values)
KNOWN_OS = frozenset({"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux", "nacl",
                      "netbsd", "openbsd", "plan9", "solaris", "windows", "zos"})
#: containerd's isKnownArch
KNOWN_ARCH = frozenset({"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64", "mips",
                        "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64", "s390", "s390x",
                        "sparc", "sparc64", "wasm"})
#: the variants an architecture has (after normalisation); an architecture not listed has none
VARIANTS = {
    "arm": frozenset({"v5", "v6", "v7", "v8"}),
    "arm64": frozenset({"v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9", "v9", "v9.1", "v9.2", "v9.3",
                        "v9.4", "v9.5"}),
    "amd64": frozenset({"v2", "v3", "v4"}),
}
#: the only operating system the executors build for
BUILD_OS = "linux"


class PlatformError(ValueError):
    """A platform that is malformed, unknown, or not one the runner builds; says which."""


class Platform(Frozen, order=True):
    """One target platform, normalised; ordered as the tuple (os, architecture, variant)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def oci(self) -> dict[str, str]:
        """The `platform` object of an OCI index entry."""
        return {"architecture": self.architecture, "os": self.os, **({"variant": self.variant} if self.variant else {})}

    def build_args(self, build: Platform) -> dict[str, str]:
        """The automatic platform args, as BuildKit and buildx define them for a build of this
        platform on a `build` host."""
        return {"TARGETPLATFORM": str(self), "TARGETOS": self.os, "TARGETARCH": self.architecture,
                "TARGETVARIANT": self.variant, "BUILDPLATFORM": str(build), "BUILDOS": build.os,
                "BUILDARCH": build.architecture, "BUILDVARIANT": build.variant}

    @property
    def slug(self) -> str:
        """A name part for tags and paths: linux-arm64, linux-arm-v7."""
        return str(self).replace("/", "-")


def normalize_os(os: str) -> str:
    """containerd's normalizeOS: lower case, macos is darwin."""
    os = os.lower()
    return "darwin" if os == "macos" else os


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's normalizeArch: the canonical name of an architecture and its variant."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant


def parse_platform(specifier: str) -> Platform:
    """One platform specifier, normalised (containerd's Parse, then Normalize, as buildx does).
    Raises PlatformError naming the value."""
    shown = repr(specifier[:100])
    if not specifier or len(specifier) > 100:
        raise PlatformError(f"{shown} is not a platform: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    parts = specifier.split("/")
    if len(parts) > 3 or not all(_COMPONENT.match(part) for part in parts):
        raise PlatformError(f"{shown} is not a platform: expected OS/ARCH[/VARIANT] (letters, digits, - and _), "
                            "e.g. linux/arm64")
    if len(parts) == 1:
        if normalize_os(parts[0]) in KNOWN_OS:  # containerd adds the host's architecture: whose host? Say it instead
            raise PlatformError(f"{shown} names an operating system without an architecture: give OS/ARCH, e.g. linux/arm64")
        os, (arch, variant) = BUILD_OS, normalize_arch(parts[0], "")
    else:
        os = normalize_os(parts[0])
        arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    if arch not in KNOWN_ARCH:
        raise PlatformError(f"{shown}: unknown architecture {arch!r}; known: {', '.join(sorted(KNOWN_ARCH))}")
    if os not in KNOWN_OS:
        raise PlatformError(f"{shown}: unknown operating system {os!r}")
    if os != BUILD_OS:
        raise PlatformError(f"{shown}: the executors build {BUILD_OS} images only")
    if variant and variant not in VARIANTS.get(arch, ()):
        known = ", ".join(sorted(VARIANTS.get(arch, ()))) or "none"
        raise PlatformError(f"{shown}: {arch} has no variant {variant!r} (its variants: {known})")
    return Platform(os, arch, variant)


def parse_platforms(specifiers: list[str]) -> list[Platform]:
    """Several platforms, in the order given; one named twice (also as another spelling of the
    same platform) is refused, naming it."""
    seen: dict[Platform, str] = {}
    for specifier in specifiers:
        platform = parse_platform(specifier)
        if platform in seen:
            also = "" if seen[platform] == specifier else f" (as {seen[platform]!r} and {specifier!r})"
            raise PlatformError(f"{str(platform)!r} is listed twice{also}")
        seen[platform] = specifier
    return list(seen)


def canonical(specifiers: list[str]) -> list[str]:
    """The platforms as stored: normalised, in the order given (PlatformError, a ValueError,
    names what is wrong: pydantic validators can return this as it is)."""
    return [str(platform) for platform in parse_platforms(specifiers)]


def split_specifiers(value: str) -> list[str]:
    """buildx's `--platform a,b` syntax: comma-separated (spaces around each ignored)."""
    return [part.strip() for part in value.split(",")]
