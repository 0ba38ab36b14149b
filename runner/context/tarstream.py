"""A streaming tar reader for untrusted archives, over an iterable of byte chunks.

Written for hostile input rather than taken from `tarfile`: it detects and streams gzip
(multi-member too), bzip2, xz or plain tar; counts UNCOMPRESSED bytes; parses ustar, GNU and
v7 headers (checksum checked, base-256 numbers), PAX `x` records (path, linkpath, size, mtime;
others ignored; `g` headers ignored) and GNU `L`/`K` long names; and stops at the first
limit exceeded, before reading what is over it (a declared 1 GiB PAX header or 10 GiB member
is refused from its header). Memory does not grow with the member count, time is linear, and
a CancelToken is checked between members and every few MiB.
"""

from __future__ import annotations

import bz2
import lzma
import math
import re
import sys
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

BLOCK = 512
PIECE = 1024 * 1024  # most bytes a decompressor hands out at once
CANCEL_EVERY = 4 * 1024 * 1024

Kind = Literal["file", "dir", "symlink", "hardlink"]
LimitName = Literal["bytes", "upload", "members", "path", "link", "header"]

_TYPES: dict[bytes, Kind] = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink"}
_TYPE_NAMES = {b"3": "a character device", b"4": "a block device", b"6": "a fifo", b"S": "a sparse file",
               b"V": "a volume label", b"M": "a multi-volume continuation", b"D": "a GNU dump directory"}
_GZIP, _BZIP2, _XZ, _ZSTD = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"


class TarError(Exception):
    """The archive is malformed or refused; `message` is safe to show to the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TarLimitError(TarError):
    """A limit was exceeded; `limit` names which one (the caller maps it to its setting)."""

    def __init__(self, limit: LimitName, message: str):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class TarLimits:
    max_bytes: int = sys.maxsize  # uncompressed tar stream
    max_upload_bytes: int = sys.maxsize  # the bytes given (compressed or not)
    max_members: int = sys.maxsize
    max_path_bytes: int = sys.maxsize
    max_link_bytes: int = sys.maxsize
    max_header_bytes: int = sys.maxsize  # PAX / GNU long-name data before one member


@dataclass(frozen=True)
class Member:
    name: str  # as in the archive (undecodable bytes kept as surrogates)
    kind: Kind
    size: int
    mode: int  # permission bits, setuid/setgid/sticky included
    mtime: int | float
    linkname: str = ""
    index: int = 0  # 1-based position among real members


def shown(name: str, limit: int = 120) -> str:
    """A member name as quoted in messages: repr'd, long ones cut in the middle."""
    if len(name) > limit:
        name = f"{name[: limit // 2]}…{name[-limit // 2:]}"
    return repr(name)


def file_chunks(path: Path, size: int = PIECE) -> Generator[bytes, None, None]:
    """A file as chunks, for TarReader."""
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


# -- decompression ---------------------------------------------------------------------------
def _drain(decoder, data: bytes, name: str) -> Iterator[bytes]:
    """Feed `data`; yield output in pieces of at most PIECE bytes until the decoder wants more
    input or its stream ends. Never asks for unbounded output (zip bombs)."""
    zlib_style = not hasattr(decoder, "needs_input")
    try:
        out = decoder.decompress(data, PIECE)
        while True:
            if out:
                yield out
            if decoder.eof:
                return
            if zlib_style:
                if not decoder.unconsumed_tail and len(out) < PIECE:
                    return
                out = decoder.decompress(decoder.unconsumed_tail, PIECE)
            else:
                if decoder.needs_input:
                    return
                out = decoder.decompress(b"", PIECE)
    except (zlib.error, OSError, EOFError, lzma.LZMAError):  # bz2 reports bad data as OSError
        raise TarError(f"the build context's {name} data is corrupt") from None


def _multistream(raw: Iterator[bytes], first: bytes, magic: bytes, new_decoder, name: str) -> Iterator[bytes]:
    """Decompress concatenated streams (`cat a.gz b.gz`), tolerating zero padding between them."""
    decoder = None
    pending = first
    for chunk in _prepend(pending, raw):
        data = chunk
        while data:
            if decoder is None:
                data = data.lstrip(b"\0")
                if not data:
                    break
                if len(data) < len(magic) and magic.startswith(data):
                    more = next(raw, None)
                    if more is None:
                        raise TarError(f"the {name} stream is truncated")
                    data += more
                    continue
                if not data.startswith(magic):
                    raise TarError(f"the build context has bytes after its {name} stream that are not {name}")
                decoder = new_decoder()
            yield from _drain(decoder, data, name)
            if decoder.eof:
                data, decoder = decoder.unused_data, None
            else:
                data = b""
    if decoder is not None:
        raise TarError(f"the {name} stream is truncated")


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


class _Input:
    """Uncompressed bytes of the archive, counted and capped, handed out block-wise."""

    def __init__(self, chunks: Iterable[bytes], limits: TarLimits, cancel: CancelToken | None):
        self.limits, self.cancel = limits, cancel
        self.raw_bytes = 0
        self.total = 0  # uncompressed bytes produced so far
        self.consumed = 0  # uncompressed bytes handed to the parser
        self._next_cancel_check = CANCEL_EVERY
        self._pieces = self._uncompressed(self._counted(iter(chunks)))
        self._buf = memoryview(b"")

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The input, counted and capped, in pieces of at most PIECE bytes: a decompressor
        copies its unconsumed input on every call, so a huge chunk would cost quadratic time."""
        for chunk in chunks:
            self.raw_bytes += len(chunk)
            if self.raw_bytes > self.limits.max_upload_bytes:
                raise TarLimitError("upload", f"the build context upload is over the limit of "
                                              f"{self.limits.max_upload_bytes:,} bytes")
            if len(chunk) <= PIECE:
                if chunk:
                    yield chunk
                continue
            view = memoryview(chunk)
            for start in range(0, len(chunk), PIECE):
                yield bytes(view[start:start + PIECE])

    def _uncompressed(self, raw: Iterator[bytes]) -> Iterator[bytes]:
        head = b""
        for chunk in raw:
            head += chunk
            if len(head) >= 6:
                break
        if head.startswith(_GZIP):
            stream = _multistream(raw, head, _GZIP, lambda: zlib.decompressobj(31), "gzip")
        elif head.startswith(_BZIP2):
            stream = _multistream(raw, head, _BZIP2, bz2.BZ2Decompressor, "bzip2")
        elif head.startswith(_XZ):
            stream = _multistream(raw, head, _XZ, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), "xz")
        elif head.startswith(_ZSTD):
            raise TarError("the build context is zstd-compressed; send it plain, gzip, bzip2 or xz")
        else:
            stream = _prepend(head, raw)
        for piece in stream:
            self.total += len(piece)
            if self.total > self.limits.max_bytes:
                raise TarLimitError("bytes", f"the build context is over the limit of {self.limits.max_bytes:,} "
                                             "bytes uncompressed")
            if self.total >= self._next_cancel_check:
                self._next_cancel_check = self.total + CANCEL_EVERY
                self.check_cancel()
            yield piece

    def check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_set()

    def _fill(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._buf = memoryview(piece)
                return True
        return False

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer only at the end of the archive."""
        if len(self._buf) >= size:
            out, self._buf = bytes(self._buf[:size]), self._buf[size:]
            self.consumed += size
            return out
        parts = []
        for part in self.pieces(size, allow_short=True):
            parts.append(bytes(part))
        return b"".join(parts)

    def pieces(self, size: int, allow_short: bool = False) -> Iterator[memoryview]:
        """Yield the next `size` bytes in pieces (views valid until the next call)."""
        left = size
        while left:
            if not self._buf and not self._fill():
                if allow_short:
                    return
                raise TarError("the build context tar is truncated")
            part, self._buf = self._buf[:left], self._buf[left:]
            left -= len(part)
            self.consumed += len(part)
            yield part

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass


# -- headers ---------------------------------------------------------------------------------
_OCTAL = re.compile(rb"[0-7]*")


def _number(field: bytes, what: str, offset: int) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU): 0x80 positive, 0xff negative
        if field[0] not in (0x80, 0xFF):
            raise TarError(f"the build context tar has a bad {what} field at byte {offset:,}")
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if _OCTAL.fullmatch(text) is None:  # int() alone would take "0o7", "+7", "7_0"
        raise TarError(f"the build context tar has a bad {what} field at byte {offset:,}")
    return int(text, 8) if text else 0


def _text(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156], "checksum", 0)
    except TarError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored == signed


def _pax_records(data: bytes, offset: int) -> Iterator[tuple[bytes, bytes]]:
    """`LEN key=value\\n` records, parsed in one linear pass."""
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 21)
        if space <= pos or not data[pos:space].isdigit():
            raise TarError(f"the build context tar has a malformed PAX header at byte {offset:,}")
        length = int(data[pos:space])
        end = pos + length
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise TarError(f"the build context tar has a malformed PAX header at byte {offset:,}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise TarError(f"the build context tar has a malformed PAX header at byte {offset:,}")
        yield key, value
        pos = end


def _pax_mtime(value: bytes, offset: int) -> int | float:
    try:
        if len(value) > 40:
            raise ValueError
        mtime = float(value) if b"." in value else int(value)
    except ValueError:
        raise TarError(f"the build context tar has a bad PAX mtime at byte {offset:,}") from None
    if not math.isfinite(mtime) or abs(mtime) > 2**62 / 1e9:
        raise TarError(f"the build context tar has a bad PAX mtime at byte {offset:,}")
    return mtime


class TarReader:
    """Iterate `members()`; while a member is current, `data()` streams its bytes once.

    Unread data is skipped when the iteration moves on.
    """

    def __init__(self, chunks: Iterable[bytes], limits: TarLimits | None = None, cancel: CancelToken | None = None):
        self.limits = limits or TarLimits()
        self._in = _Input(chunks, self.limits, cancel)
        self._unread = 0  # data bytes of the current member not yet read
        self._padding = 0
        self.count = 0

    @property
    def bytes_read(self) -> int:
        """Uncompressed bytes produced so far."""
        return self._in.total

    @property
    def raw_bytes(self) -> int:
        """Bytes taken from `chunks` so far (compressed, if the archive is)."""
        return self._in.raw_bytes

    def data(self) -> Iterator[memoryview]:
        """The current member's data in pieces (each valid until the next one is asked for)."""
        for piece in self._in.pieces(self._unread):
            self._unread -= len(piece)
            yield piece
        self._in.skip(self._padding)
        self._padding = 0

    def members(self) -> Iterator[Member]:
        while True:
            self._in.skip(self._unread + self._padding)
            self._unread = self._padding = 0
            self._in.check_cancel()
            member = self._next_member()
            if member is None:
                return
            yield member

    def _next_member(self) -> Member | None:
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        header_bytes = 0
        while True:
            offset = self._in.consumed
            block = self._in.read(BLOCK)
            if not block:
                if pax or long_name is not None or long_link is not None:
                    raise TarError("the build context tar is truncated")
                return None  # no end-of-archive marker: accepted, as tar(1) does
            if len(block) < BLOCK:
                raise TarError("the build context tar is truncated")
            if block == bytes(BLOCK):
                return None  # end-of-archive marker: nothing after it is read
            if not _checksum_ok(block):
                raise TarError(f"the build context is not a valid tar (header checksum mismatch at byte {offset:,})")
            typeflag = block[156:157]
            size = _number(block[124:136], "size", offset)
            if size < 0:
                raise TarError(f"the build context tar has a negative size at byte {offset:,}")
            if typeflag in (b"x", b"g", b"L", b"K"):
                if typeflag != b"g":
                    header_bytes += size
                if max(size, header_bytes) > self.limits.max_header_bytes:
                    what = "PAX" if typeflag in (b"x", b"g") else "GNU long-name"
                    raise TarLimitError("header", f"the build context tar has {what} header data of "
                                                  f"{max(size, header_bytes):,} bytes (before member #{self.count + 1}), "
                                                  f"over the limit of {self.limits.max_header_bytes:,}")
                if typeflag == b"g":  # global PAX records: ignored
                    self._in.skip(size + -size % BLOCK)
                    continue
                data = self._in.read(size)
                if len(data) < size:
                    raise TarError("the build context tar is truncated")
                self._in.skip(-size % BLOCK)
                if typeflag == b"x":
                    for key, value in _pax_records(data, offset):
                        pax[key] = value
                elif typeflag == b"L":
                    long_name = _text(data)
                else:
                    long_link = _text(data)
                continue
            return self._member(block, offset, size, pax, long_name, long_link)

    def _member(self, block: bytes, offset: int, size: int, pax: dict[bytes, bytes], long_name: bytes | None,
                long_link: bytes | None) -> Member:
        limits = self.limits
        self.count += 1
        if self.count > limits.max_members:
            raise TarLimitError("members", f"the build context has more than {limits.max_members:,} members")
        raw_name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345:500].strip(b"\0"):  # POSIX prefix field
            raw_name = _text(block[345:500]) + b"/" + raw_name
        raw_name = pax.get(b"path", long_name if long_name is not None else raw_name)
        raw_link = pax.get(b"linkpath", long_link if long_link is not None else _text(block[157:257]))
        name = raw_name.decode("utf-8", "surrogateescape")
        if len(raw_name) > limits.max_path_bytes:
            raise TarLimitError("path", f"context tar member {shown(name)} has a path of {len(raw_name):,} bytes, "
                                        f"over the limit of {limits.max_path_bytes:,}")
        if len(raw_link) > limits.max_link_bytes:
            raise TarLimitError("link", f"context tar member {shown(name)} has a link target of {len(raw_link):,} "
                                        f"bytes, over the limit of {limits.max_link_bytes:,}")
        if any(key.startswith(b"GNU.sparse.") for key in pax):
            raise TarError(f"context tar member {shown(name)} is a sparse file; only files, folders and links are allowed")
        typeflag = block[156:157]
        kind = _TYPES.get(typeflag)
        if kind is None:
            what = _TYPE_NAMES.get(typeflag, f"of unknown type {typeflag!r}")
            raise TarError(f"context tar member {shown(name)} is {what}; only files, folders and links are allowed")
        if kind == "file" and typeflag in (b"\0", b"0") and raw_name.endswith(b"/"):
            kind = "dir"  # old tars mark folders with a trailing slash only
        if b"size" in pax:
            if not pax[b"size"].isdigit() or len(pax[b"size"]) > 20:
                raise TarError(f"the build context tar has a bad PAX size at byte {offset:,}")
            size = int(pax[b"size"])
        if kind != "file" and size:
            raise TarError(f"context tar member {shown(name)} is a {kind} but carries {size:,} bytes of data")
        if self._in.consumed + size > limits.max_bytes:
            raise TarLimitError("bytes", f"the build context is over the limit of {limits.max_bytes:,} bytes "
                                         f"uncompressed (member {shown(name)} alone declares {size:,})")
        mtime: int | float = _number(block[136:148], "mtime", offset)
        if b"mtime" in pax:
            mtime = _pax_mtime(pax[b"mtime"], offset)
        mode = _number(block[100:108], "mode", offset) & 0o7777
        self._unread, self._padding = size, -size % BLOCK
        return Member(name=name, kind=kind, size=size, mode=mode, mtime=mtime,
                      linkname=raw_link.decode("utf-8", "surrogateescape"), index=self.count)
