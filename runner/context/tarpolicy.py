"""What a build-context member may be, decided lexically: never by resolving a path on disk.

Shared by the worker's spool check (runner.context.spool) and the extractor (runner.context.extract), so
both refuse the same members with the same words. The rules, and why they are enough:

- a name is normalised (`.`, empty and inner `..` components folded); an absolute name or
  one whose `..` climbs above the root is refused;
- a member below a path the archive made a symlink is refused (the spool check tracks the
  symlinks; the extractor opens every parent with O_NOFOLLOW), so every symlink lives in a
  real directory at its lexical depth;
- a symlink target must be relative, may start with `..` only as far up as the link's depth,
  and may not climb (`..`) after a name: `a/..` means "the parent of wherever `a` points",
  which text cannot know (the CVE-2025-4517 chains rely on exactly that). With these, every
  link resolves inside the root, whatever other links it passes through;
- a hard link names a member inside the root, reached without passing a symlink, that is
  a regular file (never a symlink or a folder).
"""

from __future__ import annotations

from runner.context.tarstream import Member, shown
from runner.core.errors import InvalidJob

ONLY = "only files, folders and links are allowed"


def member_parts(name: str) -> tuple[str, ...]:
    """The normalised components of a member name ((), the root itself, for `.` or `./`)."""
    if "\0" in name:
        raise InvalidJob(f"context tar member {shown(name)} has a NUL byte in its name")
    if name.startswith("/"):
        raise InvalidJob(f"context tar member {shown(name)} has an absolute path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidJob(f"context tar member {shown(name)} leaves the context ('..')")
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def symlink_target(member: Member, parts: tuple[str, ...]) -> str:
    """The link's target, normalised; refused unless it resolves inside the root (see above)."""
    target = member.linkname
    what = f"context tar member {shown(member.name)} is a symlink"
    if not target or "\0" in target:
        raise InvalidJob(f"{what} with an empty or invalid target")
    if target.startswith("/"):
        raise InvalidJob(f"{what} pointing outside the context (absolute target {shown(target)})")
    components = [c for c in target.split("/") if c not in ("", ".")]
    climbs = 0
    while climbs < len(components) and components[climbs] == "..":
        climbs += 1
    if ".." in components[climbs:]:
        raise InvalidJob(f"{what} whose target {shown(target)} climbs ('..') after a name, which can lead "
                         "outside the context through other links; write the target without it")
    if climbs > len(parts) - 1:
        raise InvalidJob(f"{what} pointing outside the context ({shown(target)})")
    return "/".join(components) or "."


def hardlink_target(member: Member, parts: tuple[str, ...]) -> tuple[str, ...]:
    """The normalised components of a hard link's target, which must stay inside the root."""
    what = f"context tar member {shown(member.name)} is a hard link"
    try:
        target = member_parts(member.linkname)
    except InvalidJob:
        raise InvalidJob(f"{what} pointing outside the context ({shown(member.linkname)})") from None
    if not target or target == parts:
        raise InvalidJob(f"{what} to {'itself' if target else 'the context root'}")
    return target
