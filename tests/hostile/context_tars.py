"""Hand-made context tars for the hostile-context tests and bench/bench_hostile.py: raw
headers (for archives tarfile would not write), the CVE-2025-4517 link chains, and bombs
made cheaply (a compressed piece made once and repeated as gzip members)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Iterator

BLOCK = 512
END = bytes(2 * BLOCK)
DOCKERFILE = b"FROM scratch\nCOPY . /ctx\n"
PATH_MAX = 4096
CHAIN_STEPS = "abcdefghijklmnop"  # 16 nested folder/symlink pairs, as in CPython's test


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def header(name: bytes | str, kind: bytes = b"0", size: int = 0, mode: int = 0o644, mtime: int = 0,
           link: bytes | str = b"", magic: bytes = b"ustar\x0000", prefix: bytes = b"",
           size_field: bytes | None = None, mtime_field: bytes | None = None, checksum: int | None = None) -> bytes:
    """One 512-byte header, every field settable (v7: magic=b"")."""
    name = name.encode() if isinstance(name, str) else name
    link = link.encode() if isinstance(link, str) else link
    block = bytearray(BLOCK)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = size_field if size_field is not None else _octal(size, 12)
    block[136:148] = mtime_field if mtime_field is not None else _octal(mtime, 12)
    block[156:157] = kind
    block[157:157 + len(link[:100])] = link[:100]
    block[257:257 + len(magic)] = magic
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    total = sum(block) if checksum is None else checksum
    block[148:156] = f"{total:06o}".encode() + b"\0 "
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def entry(name: bytes | str, data: bytes = b"", kind: bytes = b"0", **fields) -> bytes:
    return header(name, kind, size=len(data), **fields) + padded(data)


def pax_records(records: dict[str, bytes | str]) -> bytes:
    out = b""
    for key, value in records.items():
        value = value.encode() if isinstance(value, str) else value
        body = b" " + key.encode() + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out += str(length).encode() + body
    return out


def pax(records: dict[str, bytes | str], kind: bytes = b"x") -> bytes:
    return entry("././@PaxHeader", pax_records(records), kind=kind)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes] | tarfile.TarInfo], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar written by tarfile (writing is all it is trusted with), members as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            item, data = member if isinstance(member, tuple) else (member, b"")
            tar.addfile(item, io.BytesIO(data) if item.isreg() else None)
    return buffer.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644, size: int = 0,
         mtime: int | float = 1_700_000_000) -> tarfile.TarInfo:
    item = tarfile.TarInfo(name)
    item.type, item.linkname, item.mode, item.size, item.mtime = kind, link, mode, size, mtime
    return item


def file(name: str, data: bytes = b"x", mode: int = 0o644, **kw) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, tarfile.REGTYPE, mode=mode, size=len(data), **kw), data


def folder(name: str, mode: int = 0o755, **kw) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, tarfile.DIRTYPE, mode=mode, **kw), b""


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, tarfile.SYMTYPE, link=target, mode=0o777), b""


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, tarfile.LNKTYPE, link=target), b""


# -- CVE-2025-4517 ------------------------------------------------------------------------------
def cve_chain(dest_len: int, variant: str, marker: str, ups: int = 3, through_links: bool = True) -> bytes:
    """The PATH_MAX symlink chain of CVE-2025-4517 for an extraction folder whose path has
    `dest_len` characters: 16 nested folder/symlink pairs whose expanded path overflows
    PATH_MAX, a 254-character link, `escape -> <link>/..` repeated `ups` times, and then a
    write through `escape`. `variant`: "file" (escape/MARKER), "hardlink" (MARKER hard-linked
    to escape/flag, then overwritten), "symlink" (escape/MARKER a symlink to /).

    With `through_links` the long link is reached through the step symlinks (the CPython test);
    without, through the real folders, so the first refusable member is `escape` itself."""
    component = "d" * max(1, min(255, (PATH_MAX - dest_len - 1) // (len(CHAIN_STEPS) + 1)))
    members = [file("Dockerfile", DOCKERFILE)]
    path = ""
    for step in CHAIN_STEPS:
        members.append(folder(os.path.join(path, component), mode=0o777))
        members.append(symlink(os.path.join(path, step), component))
        path = os.path.join(path, component)
    via = os.path.join(*CHAIN_STEPS) if through_links else path
    link = os.path.join(via, "l" * 254)
    members.append(symlink(link, os.path.join(*[".."] * len(CHAIN_STEPS))))
    members.append(symlink("escape", os.path.join(link, *[".."] * ups)))
    if variant == "file":
        members.append(file(f"escape/{marker}", b"written outside the workspace\n"))
    elif variant == "hardlink":
        members.append(hardlink(marker, "escape/flag"))
        members.append(file(marker, b"overwritten through a hard link\n"))
        members.append(file(f"escape/{marker}-new", b"new file outside\n"))
    elif variant == "symlink":
        members.append(symlink(f"escape/{marker}", "/"))
    else:
        raise ValueError(variant)
    return tar_of(members)


# -- bombs ------------------------------------------------------------------------------------
_ZEROS_64M: bytes | None = None


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def zeros_64m_gz() -> bytes:
    """64 MiB of zeros as one gzip member, made once per process (~65 KB)."""
    global _ZEROS_64M
    if _ZEROS_64M is None:
        _ZEROS_64M = gz(bytes(64 * 1024 * 1024), 9)
    return _ZEROS_64M


def gzip_member_bomb(member_bytes: int = 10 * 1024**3) -> bytes:
    """A multi-member gzip: a Dockerfile, then one member of `member_bytes` zeros (a
    multiple of 64 MiB): ~10 MB of gzip for 10 GiB."""
    piece = 64 * 1024 * 1024
    assert member_bytes % piece == 0
    head = gz(entry("Dockerfile", DOCKERFILE) + header("zeros.bin", size=member_bytes))
    return head + zeros_64m_gz() * (member_bytes // piece) + gz(END)


def pax_header_bomb(header_bytes: int = 1024**3) -> bytes:
    """A Dockerfile, then a PAX header of `header_bytes` (a multiple of 64 MiB, one huge
    `comment` record), gzip-compressed in repeated members: ~1 MB for 1 GiB."""
    piece = 64 * 1024 * 1024
    assert header_bytes % piece == 0
    first = f"{header_bytes} comment=".encode()
    head = gz(entry("Dockerfile", DOCKERFILE) + header("././@PaxHeader", b"x", size=header_bytes) + first)
    filler = gz(b"a" * piece, 9)
    # the record's value fills the rest; its last byte is the newline
    body = filler * (header_bytes // piece - 1) + gz(b"a" * (piece - len(first) - 1) + b"\n")
    return head + body + gz(entry("after-the-header", b"x") + END)


def empty_members(count: int, per_block: int = 10_000) -> Iterator[bytes]:
    """A gzip stream (in chunks) of a Dockerfile and `count` empty files with distinct names."""
    template = bytearray(header("f" * 24))
    yield gz(entry("Dockerfile", DOCKERFILE))
    made = 0
    while made < count:
        n = min(per_block, count - made)
        block = bytearray()
        for i in range(made, made + n):
            h = bytearray(template)
            h[0:24] = f"f{i:023d}".encode()
            h[148:156] = b" " * 8
            h[148:156] = f"{sum(h):06o}".encode() + b"\0 "
            block += h
        made += n
        yield zlib.compress(bytes(block), 1, wbits=31)
    yield gz(END)


def chunked(data: bytes, size: int = 1024 * 1024) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def global_header_flood(count: int, per_block: int = 10_000) -> Iterator[bytes]:
    """A gzip stream (in chunks) of `count` global PAX headers of 1 KiB each, which the reader
    skips, then a Dockerfile: a long check that writes nothing to disk."""
    block = gz(pax({"comment": "g" * 400}, kind=b"g") * per_block, 9)
    for _ in range(count // per_block):
        yield block
    yield gz(entry("Dockerfile", DOCKERFILE) + END)
