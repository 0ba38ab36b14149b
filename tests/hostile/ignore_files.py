"""Hostile and huge `.dockerignore` files, for tests/hostile/test_ignore_file.py and
bench/bench_hostile.py: the issue's shapes, written the same way for both."""

from __future__ import annotations

import random

NESTED_LEVELS = 17
#: the issue's 3-line file: `a/**/**/…/**/z` (17 × `**/`), an exception, a plain glob
NESTED_DOUBLESTAR = ("a/" + "**/" * NESTED_LEVELS + "z\n!a/keep\n*.tmp\n").encode()
#: the issue's path: 20 levels below the context root, which the nested pattern does not match
DEEP_PATH = "/".join(["a", *(f"d{n}" for n in range(18)), "file.txt"])

_SHAPES = (
    "src/components/module{n}/build/*.o",
    "**/cache-{n}/tmp",
    "*.generated{n}",
    "docs/section{n}/drafts/**",
    "!keep/important-file{n}.txt",
    "tmp/[a-f]{n}??.log",
    "assets/images/photo-{n}.png",
    "**/node_modules{n}/**",
    "*secret{n}*",
    "build/output/[0-9]*/artifact{n}",
)


def many_patterns(count: int = 39_000, seed: int = 7) -> bytes:
    """`count` patterns of the kinds real files hold (paths, prefixes, suffixes, globs with
    stars, classes and `?`, exceptions), ~25 bytes a line: 39,000 make ~0.95 MiB, under the
    default cap of 1 MiB. Ends with `leave-out/*.bin` and `!leave-out/keep.bin`, for a test to
    check the answers."""
    rnd = random.Random(seed)
    lines = [rnd.choice(_SHAPES).format(n=n) for n in range(count - 2)]
    return ("\n".join([*lines, "leave-out/*.bin", "!leave-out/keep.bin"]) + "\n").encode()


def flip_flop(count: int = 50_000) -> bytes:
    """`**` and `!**` in turn: every pattern matches every path and Docker's loop takes each
    one (the exceptions keep every folder open): the most matching work a file within the
    default caps can ask for, ~15 ms a member here."""
    return b"**\n!**\n" * (count // 2)


def member_paths(count: int) -> list[str]:
    """`count` file paths in a few hundred folders, three and four levels deep."""
    return [f"src/components/module{n % 300}/lib{n % 7}/file{n}.c" for n in range(count)]
