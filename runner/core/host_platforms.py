"""Which platforms this host can run, and so build: its own architecture natively, others
through the kernel's binfmt_misc handlers (Debian's qemu-user-static registers one per
architecture).

A handler is read from /proc/sys/fs/binfmt_misc/<name>: the ELF header it matches says which
architecture it runs (so any name works: qemu-aarch64, aarch64, a binfmt image's own). It
counts only when it is enabled and registered with the F (fix-binary) flag: then the kernel
opened the emulator when it was registered, and a RUN step inside a container (buildah's, an
engine's, a dind sidecar's nested one), whose root file system has no emulator, can still use
it. Without F the emulator's path is looked up inside the container, where it is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from runner.core.platforms import BUILD_OS, Platform, normalize_arch

BINFMT = Path("/proc/sys/fs/binfmt_misc")
#: ELF (class, byte order, e_machine) -> architecture: 1/2 = 32/64-bit, 1/2 = little/big endian
ELF_ARCH = {
    (2, 1, 0x3E): "amd64", (1, 1, 0x03): "386", (2, 1, 0xB7): "arm64", (1, 1, 0x28): "arm", (1, 2, 0x28): "armbe",
    (2, 1, 0x15): "ppc64le", (2, 2, 0x15): "ppc64", (1, 2, 0x14): "ppc", (2, 2, 0x16): "s390x", (2, 1, 0xF3): "riscv64",
    (2, 1, 0x08): "mips64le", (2, 2, 0x08): "mips64", (1, 1, 0x08): "mipsle", (1, 2, 0x08): "mips",
    (2, 1, 0x102): "loong64", (2, 2, 0x2B): "sparc64",
}
_ELF = b"\x7fELF"
#: architectures a host runs without emulation besides its own: an amd64 kernel runs i386
#: binaries itself (IA32 emulation, on in Debian's and the common distributions' kernels)
ALSO_NATIVE = {"amd64": ("386",)}


@dataclass(frozen=True)
class Handler:
    name: str
    architecture: str
    enabled: bool
    flags: str
    interpreter: str

    @property
    def usable(self) -> str | None:
        """None when containers can use it, else why not."""
        if not self.enabled:
            return f"binfmt handler {self.name} is disabled"
        if "F" not in self.flags:
            return (f"binfmt handler {self.name} is registered without the F flag, so a container cannot find its "
                    f"emulator {self.interpreter}; register it again with F (Debian's qemu-user-static does)")
        return None


@dataclass(frozen=True)
class HostPlatforms:
    """What a host can build: `native`, plus each architecture a usable handler emulates."""

    native: Platform
    handlers: tuple[Handler, ...] = ()
    #: why no handler could be read at all (binfmt_misc not mounted), if so
    problem: str | None = None
    #: where this answer comes from, for messages ("this host", "the engine at tcp://…")
    where: str = "this host"
    #: False: only the native platform is known (an engine on another host)
    sees_handlers: bool = True
    emulated: dict[str, Handler] = field(default_factory=dict, init=False, compare=False)

    def __post_init__(self) -> None:
        for handler in self.handlers:
            if handler.usable is None and handler.architecture not in self.native_architectures:
                self.emulated.setdefault(handler.architecture, handler)

    @property
    def native_architectures(self) -> tuple[str, ...]:
        return (self.native.architecture, *ALSO_NATIVE.get(self.native.architecture, ()))

    def why_not(self, platform: Platform) -> str | None:
        """None when `platform` can be built here, else why not (naming it)."""
        if platform.os != BUILD_OS:
            return f"{platform}: only {BUILD_OS} images are built"
        if platform.architecture in self.native_architectures or platform.architecture in self.emulated:
            return None
        if not self.sees_handlers:
            return (f"{platform} cannot be built on {self.where}: it is {self.native} and the runner cannot see its "
                    "emulators (binfmt handlers); route this job to an executor on a host that can build it")
        unusable = [h.usable for h in self.handlers if h.architecture == platform.architecture and h.usable]
        why = unusable[0] if unusable else self.problem or f"no binfmt handler for {platform.architecture} is registered"
        return (f"{platform} cannot be built on {self.where} ({self.native}): {why}; install qemu-user-static and register "
                "its binfmt handlers (docs/executors.md, \"Multi-platform images\"), or route the job to a native "
                f"{platform.architecture} worker")

    def describe(self) -> str:
        """One line: what runs natively, then what runs emulated (and through which handlers)."""
        text = "native: " + ", ".join(f"{BUILD_OS}/{arch}" if arch != self.native.architecture else str(self.native)
                                      for arch in self.native_architectures)
        if not self.sees_handlers:
            return f"{text}; emulators on {self.where} cannot be seen from here"
        if not self.emulated:
            return f"{text}; no emulation: {self.problem or 'no usable binfmt handler registered'}"
        arches = sorted(self.emulated)
        return (f"{text}; emulated: {', '.join(f'{BUILD_OS}/{arch}' for arch in arches)} "
                f"(binfmt handlers {', '.join(self.emulated[arch].name for arch in arches)})")


def native_platform(machine: str | None = None) -> Platform:
    """This host's platform from `uname -m` (x86_64 -> linux/amd64, aarch64 -> linux/arm64)."""
    arch, variant = normalize_arch(machine or os.uname().machine, "")
    arch = {"armv7l": "arm", "armv6l": "arm", "ppc64el": "ppc64le"}.get(arch, arch)
    if arch == "arm" and not variant:
        variant = "v7"
    return Platform(BUILD_OS, arch, variant if arch == "arm" else "")


def read_handler(path: Path) -> Handler | None:
    """One handler file, or None when it is not an ELF handler we can place."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    enabled = False
    for line in text.splitlines():
        if line in ("enabled", "disabled"):
            enabled = line == "enabled"
        elif " " in line:
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    try:
        magic = bytes.fromhex(fields.get("magic", ""))
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        offset = int(fields.get("offset", "0"))
    except ValueError:
        return None
    header = bytes(m & k for m, k in zip(magic, mask.ljust(len(magic), b"\xff"), strict=False))
    if offset != 0 or len(header) < 20 or header[:4] != _ELF:
        return None
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    architecture = ELF_ARCH.get((header[4], header[5], machine))
    if architecture is None:
        return None
    return Handler(path.name, architecture, enabled, fields.get("flags:", fields.get("flags", "")),
                   fields.get("interpreter", ""))


def host_platforms(root: Path = BINFMT, machine: str | None = None) -> HostPlatforms:
    """What this host can build now (read fresh: a handler registered after start counts)."""
    native = native_platform(machine)
    status = root / "status"
    try:
        state = status.read_text().strip()
    except OSError:
        return HostPlatforms(native, problem=f"binfmt_misc is not mounted at {root}")
    if state != "enabled":
        return HostPlatforms(native, problem=f"binfmt_misc is {state} ({status})")
    handlers = []
    try:
        names = sorted(p for p in root.iterdir() if p.name not in ("register", "status"))
    except OSError as exc:
        return HostPlatforms(native, problem=f"cannot list {root}: {exc.strerror}")
    for path in names:
        if (handler := read_handler(path)) is not None:
            handlers.append(handler)
    return HostPlatforms(native, tuple(handlers))
