"""Which images a Dockerfile's build pulls: every FROM (and COPY --from / RUN --mount from=)
that names an image rather than an earlier stage or `scratch`, read as BuildKit reads it:
parser directives (`# escape=`), line continuations, comments, heredocs skipped; ARGs before
the first FROM with their defaults, overridden by the job's build args where the Dockerfile
declares them; the automatic platform args (TARGETPLATFORM, BUILDARCH, …); only the stages the
target stage needs; and the frontend image a `# syntax=` line names (frontend_image). Pure:
the digests are looked up by runner.supply.inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.context.dockerfile_lex import SubstitutionError, process_word
from runner.core.platforms import Platform

#: a parser directive line (`# key=value`; `// key=value` for later BuildKits' frontend lookup):
#: BuildKit's reDirective, whose \s is Go's (no Unicode blanks)
_DIRECTIVES = {prefix: re.compile(rf"^{prefix}[\t\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\f\r ]*=[\t\f\r ]*(.+?)[\t\f\r ]*$")
               for prefix in ("#", "//")}
#: the build arg that names the frontend, over the Dockerfile's `# syntax=` line
SYNTAX_ARG = "BUILDKIT_SYNTAX"
_HEREDOC = re.compile(r"<<(-?)\s*([\"']?)([a-zA-Z_][a-zA-Z0-9_]*)\2")
_MOUNT_FROM = re.compile(r"(?:^|,)from=([^,]+)")
SCRATCH = "scratch"


class DockerfileError(ValueError):
    """A Dockerfile this reading cannot follow (the build would refuse it too)."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    rest: str
    line: int


@dataclass(frozen=True)
class BaseRef:
    """An image the build pulls: as the Dockerfile names it (args substituted), and the
    platform its stage asks for (`FROM --platform=…`), None meaning the target platform."""

    ref: str
    platform: str | None = None


@dataclass
class _Stage:
    name: str | None
    base: str  # an image reference, `scratch`, or an earlier stage's name
    base_platform: str | None
    env: dict[str, str]
    needs: list[str] = field(default_factory=list)  # COPY --from / RUN --mount from=: stage names, indexes or images


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuations joined, comments and heredoc bodies left out."""
    lines = text.splitlines()
    escape = "\\"
    index = 0
    while index < len(lines):  # parser directives: only at the very top
        match = _DIRECTIVES["#"].match(lines[index])
        if not match:
            break
        if match[1].lower() == "escape":
            if match[2] not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token {match[2]!r}: it must be \\ or `")
            escape = match[2]
        index += 1
    continuation = re.compile(rf"^(.*?){re.escape(escape)}[ \t]*$")
    found: list[Instruction] = []
    while index < len(lines):
        start, line = index, lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        parts = []
        while (match := continuation.match(line)) is not None:
            parts.append(match[1])
            line = ""
            while index < len(lines):
                candidate = lines[index].strip()
                index += 1
                if candidate and not candidate.startswith("#"):
                    line = candidate
                    break
            if not line:
                break
        parts.append(line)
        joined = "".join(parts)
        keyword, _, rest = joined.partition(" ") if " " in joined else joined.partition("\t")
        keyword = keyword.upper()
        found.append(Instruction(keyword, rest.strip(), start + 1))
        if keyword in ("RUN", "COPY", "ADD"):
            for dash, _, word in _HEREDOC.findall(rest):
                while index < len(lines):
                    body = lines[index].lstrip("\t") if dash else lines[index]
                    index += 1
                    if body == word:
                        break
    return found


def frontend_image(dockerfile: str, build_args: dict[str, str]) -> str | None:
    """The image a BuildKit build hands this Dockerfile to instead of its built-in frontend: the
    BUILDKIT_SYNTAX build arg's, else the `syntax` parser directive's (the first word of either);
    None: the built-in one. Read as Docker 20.10's BuildKit reads it (a directive is a `#key=value`
    line in the unbroken run of them at the very top, any key; a later `syntax` wins) and, wider,
    as later BuildKits do: past a byte-order mark and a `#!` line, and in `//` lines. Wider is
    the safe side: a frontend named here that a build does not use only keeps a reuse from
    matching once its tag moves, while one left out would let a reuse match after it moved."""
    if value := build_args.get(SYNTAX_ARG, "").strip():
        return value.split(" ", 1)[0]
    lines = [line.removesuffix("\r") for line in dockerfile.removeprefix("\ufeff").split("\n")]
    if lines[0].startswith("#!"):
        lines = lines[1:]
    for pattern in _DIRECTIVES.values():
        found = None
        for line in lines:
            if (match := pattern.match(line)) is None:
                break
            if match[1].lower() == "syntax":
                found = match[2]
        if found:
            return found.split(" ", 1)[0]
    return None


def _words(rest: str) -> list[str]:
    """Split on blanks outside quotes, quotes kept (the lexer processes them)."""
    words, current, quote = [], [], ""
    for ch in rest:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _flags(words: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    flags: dict[str, list[str]] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags.setdefault(name.lower(), []).append(value)
    return flags, words


def _declare(rest: str, env: dict[str, str], scope: dict[str, str], build_args: dict[str, str],
             inherited: dict[str, str] | None = None) -> None:
    """An ARG line: each NAME[=default] into `env`, the job's build arg winning over the
    default; in a stage, a bare NAME takes the global value (`inherited`)."""
    for word in _words(rest):
        name, sep, default = word.partition("=")
        if name in build_args:
            env[name] = build_args[name]
        elif sep:
            env[name] = process_word(default, scope)
        elif inherited is not None and name in inherited:
            env[name] = inherited[name]


def base_images(dockerfile: str, build_args: dict[str, str], target_stage: str | None,
                target: Platform, build: Platform) -> list[BaseRef]:
    """The images a build of `dockerfile` for `target` pulls, in stage order. Raises
    DockerfileError (a SubstitutionError is one) naming what it could not read."""
    automatic = target.build_args(build)  # the args BuildKit defines in the global scope
    meta: dict[str, str] = {}
    stages: list[_Stage] = []
    try:
        for instruction in instructions(dockerfile):
            where = f"line {instruction.line}"
            if instruction.keyword == "ARG":
                if stages:
                    stage = stages[-1]
                    _declare(instruction.rest, stage.env, {**stage.env}, build_args, {**automatic, **meta})
                else:
                    _declare(instruction.rest, meta, {**automatic, **meta}, build_args)
            elif instruction.keyword == "FROM":
                flags, words = _flags(_words(instruction.rest))
                if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
                    raise DockerfileError(f"{where}: FROM takes an image and optionally AS NAME")
                scope = {**automatic, **meta}
                image = process_word(words[0], scope)
                if not image:
                    raise DockerfileError(f"{where}: FROM {words[0]} names no image once its args are substituted")
                platform = process_word(flags["platform"][-1], scope) if flags.get("platform") else None
                stages.append(_Stage(words[2].lower() if len(words) == 3 else None, image, platform or None, {}))
            elif instruction.keyword in ("COPY", "ADD", "RUN") and stages:
                stage = stages[-1]
                flags, _ = _flags(_words(instruction.rest))
                scope = {**automatic, **stage.env}
                for value in flags.get("from", []):
                    stage.needs.append(process_word(value, scope))
                for mount in flags.get("mount", []):
                    stage.needs += [process_word(m, scope) for m in _MOUNT_FROM.findall(mount)]
    except SubstitutionError as exc:
        raise DockerfileError(str(exc)) from None
    if not stages:
        raise DockerfileError("the Dockerfile has no FROM")
    return _needed(stages, target_stage)


def _needed(stages: list[_Stage], target_stage: str | None) -> list[BaseRef]:
    names = {stage.name: i for i, stage in enumerate(stages) if stage.name}
    if target_stage is None:
        start = len(stages) - 1
    elif target_stage.lower() in names:
        start = names[target_stage.lower()]
    else:
        raise DockerfileError(f"target stage {target_stage!r} could not be found")

    def stage_of(name: str, before: int) -> int | None:
        """The earlier stage `name` (a stage name, or an index for COPY --from) refers to."""
        if name.lower() in names and names[name.lower()] < before:
            return names[name.lower()]
        if name.isdigit() and int(name) < before:
            return int(name)
        return None

    needed: set[int] = set()
    pending = [start]
    while pending:
        index = pending.pop()
        if index in needed:
            continue
        needed.add(index)
        stage = stages[index]
        pending += [i for i in (stage_of(name, index) for name in (stage.base, *stage.needs)) if i is not None]
    found: list[BaseRef] = []
    for index in sorted(needed):
        stage = stages[index]
        if stage_of(stage.base, index) is None and stage.base.lower() != SCRATCH:
            found.append(BaseRef(stage.base, stage.base_platform))
        found += [BaseRef(need) for need in stage.needs if stage_of(need, index) is None and need.lower() != SCRATCH]
    return list(dict.fromkeys(found))
