"""The config file read without PyYAML when it keeps to the plain part of YAML config files are
written in: importing PyYAML and its C parser cost ~15 ms of every `runner` command.

Taken: block mappings and lists (a list item may start a mapping: `- host: ...`), comments, and
scalars whose meaning is never in doubt: a word or words starting with a letter or `/` (a
string, unless YAML 1.1 makes it a boolean or null: yes, on, null...), a value with two dots or
more (an address: never a number, date or time), a plain integer or decimal, a string in quotes
without escapes, a one-line list of plain words or quoted strings ([a, "b"]) and `{}`. Anything
else (a tab, a non-ASCII character, other flow collections, anchors, tags, block or multi-line
scalars, a repeated key, 0x1f, 1_000, 12:30, 2024-01-01, ...): `read` returns None and PyYAML
reads the file, so the values (or the error) are PyYAML's either way. tests/test_plain_yaml.py
reads generated files both ways, and the runner's own example configs."""

from __future__ import annotations

import re

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any

#: what only PyYAML reads here: anything but printable ASCII and line feeds
_UNTAKEN = re.compile(r"[^\n\x20-\x7e]")
#: YAML 1.1's booleans and nulls (PyYAML's resolver), the plain words that are not strings
_CONSTANTS: dict[str, Any] = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("null", "Null", "NULL", "~"), None),
}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*:(?: |$)")
#: starting with a letter or /, no YAML 1.1 type but bool and null matches (those start with a
#: digit, a sign, a dot, <, = or ~)
_WORDS = re.compile(r"[A-Za-z/][A-Za-z0-9 _./:@%+=,()?&$~-]*")
#: with two dots or more, nothing but a string matches (a number, date or time has one at most)
_DOTTED = re.compile(r"[0-9][A-Za-z0-9_./:@%+-]*")
#: a plain scalar inside [...] (a number, a constant or a string)
_FLOW_WORD = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.-]*")
_INT = re.compile(r"0|-?[1-9][0-9]*")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")


class _Untaken(Exception):
    """Outside the plain part: PyYAML reads the file."""


def read(text: str) -> dict[str, Any] | None:
    """The mapping `text` holds, or None when PyYAML must read it (see the module's docstring)."""
    if _UNTAKEN.search(text):
        return None
    lines = []  # (indent, content) of each line that holds something
    for raw in text.split("\n"):
        content = raw.lstrip(" ")
        if content and not content.startswith("#"):
            lines.append((len(raw) - len(content), content.rstrip(" ")))
    if not lines:
        return None
    try:
        value, end = _block(lines, 0, lines[0][0])
    except _Untaken:
        return None
    return value if end == len(lines) and isinstance(value, dict) else None


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    content = lines[i][1]
    value, i = (_sequence if content == "-" or content.startswith("- ") else _mapping)(lines, i, indent)
    if i < len(lines) and lines[i][0] > indent:
        raise _Untaken
    return value, i


def _mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        key, colon, rest = lines[i][1].partition(":")
        if not colon or not _KEY.fullmatch(key) or key in _CONSTANTS or key in result or rest[:1] not in ("", " "):
            raise _Untaken
        rest, i = rest.lstrip(" "), i + 1
        if rest and not rest.startswith("#"):
            result[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and _is_item(lines[i][1]))):
            result[key], i = _block(lines, i, lines[i][0])
        else:
            result[key] = None
    return result, i


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    result: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
        content = lines[i][1]
        rest = content[1:].lstrip(" ")
        if _ENTRY.match(rest):  # `- key: ...`: a mapping whose keys stand where this one does
            lines[i] = (indent + len(content) - len(rest), rest)
            value, i = _mapping(lines, i, lines[i][0])
        elif rest and not rest.startswith("#"):
            value, i = _scalar(rest), i + 1
        elif i + 1 < len(lines) and lines[i + 1][0] > indent:
            value, i = _block(lines, i + 1, lines[i + 1][0])
        else:
            value, i = None, i + 1
        if i < len(lines) and lines[i][0] > indent:  # a scalar's next line, or a stray indent
            raise _Untaken
        result.append(value)
    return result, i


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _scalar(text: str) -> Any:
    if text[0] in "'\"":  # quoted, without escapes ('' or backslashes), then nothing or a comment
        end = text.find(text[0], 1)
        inner, after = text[1:end], text[end + 1:]
        if end < 0 or (text[0] == '"' and "\\" in inner) or (after and not (after.startswith(" ") and after.lstrip(" ").startswith("#"))):
            raise _Untaken
        return inner
    if text[0] == "[":  # a flow list of such scalars, on one line: no nesting, no quoted comma
        if "'" not in text and '"' not in text:
            text = text.partition(" #")[0].rstrip(" ")
        if not text.endswith("]") or any(text.count(c) != n for c, n in (("[", 1), ("]", 1), ("{", 0), ("}", 0), ("#", 0))):
            raise _Untaken
        inner = text[1:-1].strip(" ")
        items = [item.strip(" ") for item in inner.split(",")] if inner else []
        if not all(item and (item[0] in "'\"" or _FLOW_WORD.fullmatch(item)) for item in items):
            raise _Untaken  # flow context ends plain scalars at more characters (:, ?): only plain words here
        return [_scalar(item) for item in items]
    value = text.partition(" #")[0].rstrip(" ")
    if value in _CONSTANTS:
        return _CONSTANTS[value]
    if _INT.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    if value == "{}":
        return {}
    if value.endswith(":") or ": " in value:
        raise _Untaken
    if _WORDS.fullmatch(value) or (_DOTTED.fullmatch(value) and value.count(".") >= 2):
        return value
    raise _Untaken
