"""The config file's plain reading (runner.config.plain_yaml, which spares every command PyYAML's
import) gives what PyYAML gives, or leaves the file to PyYAML: over generated files that mix the
plain part with what YAML 1.1 reads otherwise (yes, 0x1f, 12:30, 2024-01-01, anchors, block
scalars...), over hand-picked traps, and over the runner's own example configs. PyYAML is the
reference: the test compares with it, never with our reading of the spec."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.config.example import render_example
from runner.config.plain_yaml import read

ROOT = Path(__file__).resolve().parent.parent

#: scalars the plain reading takes (as written in a file)
PLAIN = ["redis://127.0.0.1:6379/0", "127.0.0.1:5000", "registry.runner.test:5000", "ci-password", "socket", "/var/tmp/x",
         "0", "1", "42", "-7", "0.5", "10.25", "true", "false", "True", "no", "off", "ON", "null", "~", "'quoted # not a comment'",
         '"double"', "''", "a b c", "[]", "[a, \"b\", 1]", "{}", "1.2.3", "x:y", "http://h/p?q=1&r=2", "a,b", "f(x)"]
#: scalars YAML 1.1 reads as something else than they look, or that need the full parser
TRAPS = ["yes", "Yes", "y", "n", "0x1f", "0o17", "017", "1_000", "12:30", "-0", "+1", ".5", "1.", "1e5", "1.5e3", ".inf", "-.inf",
         ".nan", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "<<", "=", "&a x", "*a", "!!str 1", "!!int '3'", "|", ">",
         "'it''s'", '"esc\\ttab"', '"a\\"b"', "a: b", "a:", "a #b", "a#b", "-x", "- x", "? x", "%x", "@x", "`x", "[x, [y]]",
         "[x,]", "{a: 1}", "[a: b]", "'unterminated", "é", "a\tb", "1.2.3 # c", "[x] # c", "x y:", "'a' 'b'", "\"a\" #c",
         "[http://h/p?q=1]", "[a:b]", "[a b]", "[,]", "[x, ]", "1.2.3.", "1..2", "a?b", "=a", "x: y: z", "-", "a ,b", "~x"]
#: keys: the first ten plain, the rest traps
KEYS = ["redis_url", "worker", "api", "tokens", "name", "a", "b_2", "x-y", "registry.runner.test", "a.b-c_",
        "on", "yes", "null", "1", "'q'", "<<", "a b", "-k", "127.0.0.1", "a:b", "~", "y", "Null"]


def same(a, b) -> bool:
    """Equal and of the same types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check(text: str) -> bool:
    """The plain reading agrees with PyYAML; True when it took the text."""
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        assert read(text) is None, text
        return False
    got = read(text)
    if got is None:
        return False
    assert isinstance(expected, dict) and same(got, expected), (text, got, expected)
    return True


def render(rng: random.Random, scalars: list[str], keys: list[str], depth: int = 0, indent: int = 0, step: int = 2) -> list[str]:
    """A block mapping's lines, with nested mappings and lists (indented or not), comments and blank lines."""
    lines, used = [], set()
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(keys)
        if key in used and rng.random() < 0.9:
            continue
        used.add(key)
        pad = " " * indent
        if rng.random() < 0.15:
            lines.append(" " * rng.randint(0, 8) + "# a comment: with - things")
        if rng.random() < 0.1:
            lines.append("")
        kind = rng.random() if depth < 3 else 0
        if kind < 0.55:
            comment = " # trailing" if rng.random() < 0.2 else ""
            lines.append(f"{pad}{key}: {rng.choice(scalars)}{comment}")
        elif kind < 0.75:
            lines.append(f"{pad}{key}:")
            lines += render(rng, scalars, keys, depth + 1, indent + step, step)
        else:
            lines.append(f"{pad}{key}:")
            dash = indent + (step if rng.random() < 0.5 else 0)
            for _ in range(rng.randint(0, 3)):
                if rng.random() < 0.5:
                    lines.append(" " * dash + "- " + rng.choice(scalars))
                else:
                    inner = render(rng, scalars, keys, depth + 1, dash + 2, step)
                    lines.append(" " * dash + "- " + inner[0].lstrip(" ") if inner[0].strip() and not inner[0].lstrip().startswith("#")
                                 else " " * dash + "-")
                    lines += inner[1:] if inner[0].strip() and not inner[0].lstrip().startswith("#") else inner
            if rng.random() < 0.1:
                lines.append(f"{pad}  stray: indent")
    return lines


def test_generated_plain_files_are_read_as_pyyaml_reads_them():
    rng = random.Random(24)
    for _ in range(1500):
        text = "\n".join(render(rng, PLAIN, KEYS[:10], step=rng.choice((2, 4)))) + "\n"
        check(text)
    # and the plain part alone is taken (the point of the plain reading): keys and scalars all plain
    taken = sum(check("\n".join(render(rng, PLAIN, KEYS[:10], step=2)) + "\n") for _ in range(300))
    assert taken >= 240, taken  # a few fall back (a repeated key, a stray indent): PyYAML reads those


def test_generated_files_with_traps_are_read_as_pyyaml_reads_them_or_left_to_it():
    rng = random.Random(2024)
    for _ in range(3000):
        check("\n".join(render(rng, PLAIN + TRAPS, KEYS, step=rng.choice((2, 3, 4)))) + "\n")


@pytest.mark.parametrize("scalar", TRAPS)
def test_each_trap_is_left_to_pyyaml_or_read_alike(scalar):
    for text in (f"key: {scalar}\n", f"key:\n- {scalar}\n", f"key:\n  - a\n  - {scalar}\n", f"key: [{scalar}]\n"):
        check(text)


@pytest.mark.parametrize("text", [
    "", "# only a comment\n", "- a\n- b\n", "just a string\n", "a: 1\n---\nb: 2\n", "a: 1\n...\n", "%YAML 1.1\n---\na: 1\n",
    "a: 1\n a2: 2\n", "a:\n    b: 1\n  c: 2\n", "a:\n  b\n", "a: b\n  c\n", "a: 1\na: 2\n", "a:\r\n  b: 1\r\n", "\ufeffa: 1\n",
    "a:\n\t- b\n", "a: [b, {c: d}]\n", "a: 'x'# c\n", "a: x\n  # indented comment\nb: y\n", "- a: 1\n  b: 2\n",
    "a:\n- b\n- c: 1\n  d: [e]\n-\n  - f\n", "a:\n  -\n    b: 1\n", "a:\n  - - b\n", "a: - b\n", "k:v\n", "a : 1\n",
])
def test_hand_picked_documents(text):
    check(text)


@pytest.mark.parametrize("name", ["example", "config/runner.example.yml", "config/dev.yml", "deploy/runner.yml"])
def test_the_runners_own_configs_are_read_plainly(name):
    text = render_example() if name == "example" else (ROOT / name).read_text()
    assert check(text), f"{name} fell back to PyYAML"


def test_reading_a_plain_config_does_not_import_pyyaml(tmp_path):
    config = tmp_path / "runner.yml"
    config.write_text(yaml.safe_dump({"redis_url": "redis://127.0.0.1:6379/0", "worker": {"namespace": "n", "concurrency": 2},
                                      "registries": [{"host": "127.0.0.1:5000", "username": "ci", "password": "p"}]}))
    code = ("import sys; from runner.config.loader import read_config_file; "
            f"data = read_config_file({str(config)!r}); print(data['registries'][0]['host'], 'yaml' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == \
        ["127.0.0.1:5000", "False"]
