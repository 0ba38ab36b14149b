"""Variable substitution in a Dockerfile word, as BuildKit's shell lexer does it
(moby/buildkit frontend/dockerfile/shell/lex.go, ported): quotes, the escape character,
`$NAME`, `${NAME}`, and the `${NAME:-word}`, `-`, `:+`, `+`, `:?`, `?`, `#`, `##`, `%`, `%%`,
`/` and `//` forms. Used to read FROM lines the way the build will (runner.context.dockerfile_bases).
Pure."""

from __future__ import annotations

import re

EOF = ""
_SPECIAL_PARAMS = "@*#?-$!0"


class SubstitutionError(ValueError):
    """A word the build would refuse to expand (a bad ${…}, a `${X:?}` whose X is unset)."""


class _Scanner:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else EOF

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch


class _Word:
    """One word being processed (lex.go's shellWord)."""

    def __init__(self, word: str, env: dict[str, str], escape: str):
        self.scanner = _Scanner(word)
        self.env, self.escape = env, escape
        self.raw_escapes = False

    def process_stop_on(self, stop: str, raw_escapes: bool) -> str:
        result: list[str] = []
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            while (ch := self.scanner.peek()) != EOF:
                if stop != EOF and ch == stop:
                    self.scanner.next()
                    return "".join(result)
                if ch == "$":
                    result.append(self.process_dollar())
                elif ch == "'":
                    result.append(self.process_single_quote())
                elif ch == '"':
                    result.append(self.process_double_quote())
                else:
                    ch = self.scanner.next()
                    if ch == self.escape:
                        if self.raw_escapes:
                            result.append(ch)
                        ch = self.scanner.next()  # the escape escapes, except at the end
                        if ch == EOF:
                            break
                    result.append(ch)
            if stop != EOF:
                raise SubstitutionError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result)
        finally:
            self.raw_escapes = saved

    def process_single_quote(self) -> str:
        self.scanner.next()
        result: list[str] = []
        while True:
            ch = self.scanner.next()
            if ch == EOF:
                raise SubstitutionError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(result)
            result.append(ch)

    def process_double_quote(self) -> str:
        self.scanner.next()
        result: list[str] = []
        while True:
            peeked = self.scanner.peek()
            if peeked == EOF:
                raise SubstitutionError("unexpected end of statement while looking for matching double-quote")
            if peeked == '"':
                self.scanner.next()
                return "".join(result)
            if peeked == "$":
                result.append(self.process_dollar())
                continue
            ch = self.scanner.next()
            if ch == self.escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.scanner.peek()
                if following == EOF:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.scanner.next()
            result.append(ch)

    def process_dollar(self) -> str:
        self.scanner.next()
        if self.scanner.peek() != "{":
            name = self.process_name()
            return self.env.get(name, "") if name else "$"
        self.scanner.next()
        if self.scanner.peek() == EOF:
            raise SubstitutionError("syntax error: missing '}'")
        if self.scanner.peek() in "{}:":
            raise SubstitutionError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.scanner.next()
        if ch == "}":
            return self.env.get(name, "")
        if ch in (":", "+", "-", "?", "#", "%"):
            null_is_unset = ch == ":"
            modifier = ch
            if null_is_unset:
                ch = self.scanner.next()
                modifier += ch
            try:
                word = self.process_stop_on("}", ch in "#%")
            except SubstitutionError:
                if self.scanner.peek() == EOF:
                    raise SubstitutionError("syntax error: missing '}'") from None
                raise
            value, is_set = self.env.get(name, ""), name in self.env
            empty = not is_set or (null_is_unset and value == "")
            if ch == "-":
                return word if empty else value
            if ch == "+":
                return "" if empty else word
            if ch == "?":
                if not is_set:
                    raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise SubstitutionError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            if ch in "#%":
                greedy = word[:1] == ch
                if greedy:
                    word = word[1:]
                return trim_suffix(word, value, greedy) if ch == "%" else trim_prefix(word, value, greedy)
            raise SubstitutionError(f"unsupported modifier ({modifier}) in substitution")
        if ch == "/":
            replace_all = self.scanner.peek() == "/"
            if replace_all:
                self.scanner.next()
            pattern = self._stop_on("/", "syntax error: missing '/' in ${}")
            replacement = self._stop_on("}", "syntax error: missing '}'")
            value = self.env.get(name, "")
            regex = shell_pattern(pattern, greedy=True, anchored=False)
            if replace_all:
                return regex.sub(lambda _: replacement, value)
            return regex.sub(lambda _: replacement, value, count=1)
        raise SubstitutionError(f"unsupported modifier ({ch}) in substitution")

    def _stop_on(self, stop: str, missing: str) -> str:
        try:
            return self.process_stop_on(stop, True)
        except SubstitutionError:
            if self.scanner.peek() == EOF:
                raise SubstitutionError(missing) from None
            raise

    def process_name(self) -> str:
        name: list[str] = []
        while (ch := self.scanner.peek()) != EOF:
            if not name and ch.isdigit():
                while self.scanner.peek() != EOF and self.scanner.peek().isdigit():
                    name.append(self.scanner.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return self.scanner.next()
            if not (ch.isalpha() or ch.isdigit() or ch == "_"):
                break
            name.append(self.scanner.next())
        return "".join(name)


def shell_pattern(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard (`?` one character, `*` the shortest, or with `greedy` the longest,
    run) as a regular expression (lex.go's convertShellPatternToRegex)."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    scanner = _Scanner(pattern)
    while (tok := scanner.next()) != EOF:
        if tok == "*":
            out.append(star)
            continue
        if tok == "?":
            out.append(".")
            continue
        if tok == "\\":
            if scanner.peek() in ("}", "/"):  # escaped only to get through ${…}: not part of the pattern
                continue
            out.append("\\")
            tok = scanner.next()
            if tok not in ("*", "?", "\\"):
                raise SubstitutionError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{tok}'")
        elif tok in "[]{}.+()|^$":
            out.append("\\")
        out.append(tok)
    return re.compile("".join(out))


def trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = shell_pattern(pattern, greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def reverse_pattern(pattern: str) -> str:
    """The pattern reversed, an escape kept before what it escapes (a\\*c -> c\\*a)."""
    out = [""] * len(pattern)
    last, i = len(pattern) - 1, 0
    while i <= last:
        at = last - i
        if pattern[i] == "\\" and i != last:
            out[at - 1], out[at] = "\\", pattern[i + 1]
            i += 2
        else:
            out[at] = pattern[i]
            i += 1
    return "".join(out)


def trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    """Shortest (longest with `greedy`) rightmost match removed: both reversed, then a prefix."""
    return trim_prefix(reverse_pattern(pattern), value[::-1], greedy)[::-1]


def process_word(word: str, env: dict[str, str], escape: str = "\\") -> str:
    """`word` with its quotes and escapes processed and its variables substituted from `env`
    (lex.go's ProcessWordWithMap); SubstitutionError when the build would refuse it."""
    return _Word(word, env, escape).process_stop_on(EOF, False)
