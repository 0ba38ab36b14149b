"""`runner`'s argument parser builds only the chosen command's parser (building all twelve cost
~3 ms of every command), and what a user sees of the parser is unchanged: the command list in
`runner --help`, each command's own help, and the refusal of an unknown command or argument."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.entry import cli

NAMES = [name for name, _, _ in cli.COMMANDS] + ["keys", "config"]


def runner(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from runner.entry.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})


def commands_action(parser):
    [action] = [a for a in parser._actions if isinstance(a, cli._Commands)]
    return action


def test_only_the_chosen_commands_parser_is_built():
    parser = cli.build_parser()
    action = commands_action(parser)
    assert list(action.choices) == NAMES and all(p is None for p in action.choices.values())
    args = parser.parse_args(["status", "some-id", "--json"])
    assert (args.handler, args.job_id, args.as_json) == (cli.cmd_status, "some-id", True)
    assert [name for name, p in action.choices.items() if p is not None] == ["status"]
    assert list(action.choices) == NAMES  # the order `runner --help` and an unknown command's error show


def test_the_help_lists_every_command_with_its_summary():
    shown = runner("--help")
    assert shown.returncode == 0
    lines = shown.stdout.split("commands:\n")[1].splitlines()
    assert lines[0].strip() == "COMMAND"
    listed = [line.split(None, 1) for line in lines[1:] if line.strip()]
    summaries = {name: cli._summary(handler) for name, handler, _ in cli.COMMANDS}
    summaries.update(keys="Signing keys.", config="Inspect the configuration.")
    assert [name for name, _ in listed] == NAMES and all(summary == summaries[name] for name, summary in listed)
    assert runner().stderr == shown.stdout and runner().returncode == 2  # `runner` alone: the same help, exit 2


@pytest.mark.parametrize("name", NAMES)
def test_each_commands_own_help(name):
    shown = runner(name, "--help")
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: runner {name} [-h] [--config PATH]"), shown.stdout
    if name not in ("keys", "config"):
        handler = dict((n, h) for n, h, _ in cli.COMMANDS)[name]
        assert (handler.__doc__ or "").strip().split("\n")[0] in shown.stdout


def test_refusals_are_the_parsers():
    unknown = runner("stat", "x")
    assert unknown.returncode == 2 and unknown.stderr.splitlines()[-1].endswith(
        "argument COMMAND: invalid choice: 'stat' (choose from " + ", ".join(f"'{n}'" for n in NAMES) + ")")
    missing = runner("status")
    assert missing.returncode == 2 and missing.stderr.startswith("usage: runner status [-h]")
    assert "the following arguments are required: ID" in missing.stderr
    bad = runner("list", "--limit", "x")
    assert bad.returncode == 2 and "argument --limit: invalid int value: 'x'" in bad.stderr
    nested = runner("keys", "generate")
    assert nested.returncode == 2 and nested.stderr.startswith("usage: runner keys generate [-h]")
    assert "the following arguments are required: --output" in nested.stderr
    group = runner("config", "bogus")
    assert group.returncode == 2 and "invalid choice: 'bogus' (choose from 'show', 'example')" in group.stderr
