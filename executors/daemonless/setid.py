"""Keeping setuid and setgid bits through buildah's COPY, as `docker build` keeps them.

buildah strips the setuid and setgid bits of everything a COPY or ADD takes from the build
context (hard-coded in its stage executor), but keeps them for `COPY --from=<other context>`.
So when the unpacked context holds such a file, every `COPY` from the build context is
rewritten into `COPY --from=<name>` and `<name>` is given to buildah as a named build context
(`--build-context <name>=<the same folder>`): same sources, same folder, bits kept; owners are
the folder's (root's, as a plain COPY gives). Only COPY: `ADD --from` does not exist, so ADD
still drops the bits on buildah (docs/executors.md).

The rewrite is deliberately narrow: a Dockerfile it cannot read with certainty (a heredoc, an
unknown parser directive value, a very large file) is left as it is.
"""

from __future__ import annotations

import re

#: the named build context; another name is chosen if a stage already has it
CONTEXT_NAME = "runner-build-context"
MAX_DOCKERFILE_BYTES = 1024 * 1024
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*?)\s*$")
_STAGE = re.compile(r"\bAS\s+(\S+)\s*$", re.IGNORECASE)


def _logical_lines(lines: list[str], escape: str) -> list[tuple[int, str]] | None:
    """(index of its first physical line, joined text) of each instruction; None if there is a heredoc."""
    out: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        text = lines[index].rstrip("\r\n")
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start, parts = index, list[str]()
        while True:
            body = lines[index].rstrip("\r\n")
            index += 1
            if parts and (not body.strip() or body.lstrip().startswith("#")):
                continue  # an empty or comment line inside a continued instruction
            continued = body.rstrip().endswith(escape)
            parts.append(body.rstrip()[:-1] if continued else body)
            if not continued or index >= len(lines):
                break
        joined = " ".join(parts)
        if "<<" in joined:
            return None  # a heredoc (or something looking like one): not rewritten
        out.append((start, joined))
    return out


def copy_from_context(dockerfile: str, name: str = CONTEXT_NAME) -> tuple[str, str] | None:
    """(the Dockerfile with each COPY from the build context reading `--from=<name>`, the name
    used), or None when there is no such COPY or the Dockerfile is not rewritten (see above)."""
    if len(dockerfile.encode("utf-8", "surrogateescape")) > MAX_DOCKERFILE_BYTES:
        return None
    lines = dockerfile.splitlines(keepends=True)
    escape = "\\"
    for line in lines:  # parser directives: only at the very top
        match = _DIRECTIVE.match(line.rstrip("\r\n"))
        if not match:
            break
        if match[1].lower() == "escape":
            if match[2] not in ("\\", "`"):
                return None
            escape = match[2]
    instructions = _logical_lines(lines, escape)
    if instructions is None:
        return None
    stages = {m[1].lower() for _, text in instructions if text.split(None, 1)[0].upper() == "FROM"
              for m in [_STAGE.search(text)] if m}
    while name in stages:
        name += "-1"
    changed = False
    for start, text in instructions:
        words = text.split()
        if words[0].upper() != "COPY":
            continue
        flags = _leading_flags(words[1:])
        if any(flag == "--from" or flag.startswith("--from=") for flag in flags):
            continue
        line = lines[start]
        at = len(line) - len(line.lstrip()) + len(words[0])
        lines[start] = f"{line[:at]} --from={name}{line[at:]}"
        changed = True
    return ("".join(lines), name) if changed else None


def _leading_flags(words: list[str]) -> list[str]:
    flags = []
    for word in words:
        if not word.startswith("--"):
            break
        flags.append(word.lower())
    return flags
