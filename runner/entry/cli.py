"""The `runner` command: its argument parser and main(). Each subcommand turns its input into a
BuildRequest or a query and hands it on; no build logic lives here. The commands are in
runner.entry.cli_submit, cli_jobs and cli_admin; what they share (exit codes: 0 success,
1 build failed or cancelled or timed out, 2 invalid input with nothing queued, 3 infrastructure
unreachable) in cli_common.

Start-up time is felt on every CI step, so these modules import only the standard library:
each command imports what it needs when it runs (the read commands: the settings, the job
store or the API client; never Celery, docker-py or FastAPI).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from runner.entry.cli_admin import cmd_config_example, cmd_config_show, cmd_doctor, cmd_drain, cmd_keys_generate, cmd_serve, cmd_verify, cmd_worker
from runner.entry.cli_common import EXIT_INVALID, EXIT_OK, fail
from runner.entry.cli_jobs import cmd_cancel, cmd_list, cmd_logs, cmd_status
from runner.entry.cli_submit import cmd_submit

#: `typing` costs ~2 ms of every command and the light path needs none of it at run time; the
#: checker treats a constant named TYPE_CHECKING as typing's own
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


# -- the parser ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 (invalid input), like every other refusal of what the user typed."""

    _adding = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        fail(message, EXIT_INVALID)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        self._adding = True
        try:
            return super().add_argument(*args, **kwargs)
        finally:
            self._adding = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        """argparse makes a help formatter for every argument added, only to check its metavar,
        and a formatter asks the terminal its width (importing shutil: ~2 ms of every command).
        That check does not need the width: the help and usage messages still ask for it."""
        if self._adding:
            return argparse.HelpFormatter(self.prog, width=80)  # the check is HelpFormatter._format_args
        return super()._get_formatter()


class _Version(argparse.Action):
    """--version, looked up only when asked (reading the installed metadata costs start-up time)."""

    def __init__(self, option_strings: list[str], dest: str, **_: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        from runner.core.version import runner_version

        print(f"runner (ci-build-runner) {runner_version()}")
        raise SystemExit(EXIT_OK)


def _config_option() -> _Parser:
    """--config PATH, accepted before the command and after it."""
    holder = _Parser(add_help=False)
    holder.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="the config file (default: env RUNNER_CONFIG, else ~/.config/ci-build-runner/runner.yml, "
                        "else /etc/ci-build-runner/runner.yml; `runner config show` says which)")
    return holder


CONFIG_OPTION = _config_option()


def _summary(handler: Any) -> str:
    """A command's line in `runner --help`: the first line of its handler's docstring."""
    return _description(handler).split("\n")[0]


def _description(handler: Any) -> str:
    return (handler.__doc__ or "").strip()


#: how every command's parser is made (its description: its handler's docstring)
_COMMAND_OPTIONS: dict[str, Any] = {"allow_abbrev": False, "formatter_class": argparse.RawDescriptionHelpFormatter,
                                    "parents": [CONFIG_OPTION]}


def _command_parser(prog: str, handler: Any) -> _Parser:
    """A command's parser, made when the command is chosen."""
    parser = _Parser(prog=prog, description=_description(handler), **_COMMAND_OPTIONS)
    parser.set_defaults(handler=handler)
    return parser


def _command(subparsers: Any, name: str, handler: Any) -> argparse.ArgumentParser:
    """A command of a group (`keys generate`, `config show`), its parser made now."""
    parser = subparsers.add_parser(name, help=_summary(handler), description=_description(handler), **_COMMAND_OPTIONS)
    parser.set_defaults(handler=handler)
    return parser


class _Commands(argparse._SubParsersAction):
    """`runner`'s commands, each one's parser built only when it is chosen: building all of
    them cost ~3 ms of every command (argparse makes a help formatter for every argument it
    adds). `runner --help` lists them, and an unknown command is refused, exactly as before."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._builders: dict[str, Callable[[str], argparse.ArgumentParser]] = {}

    def add_command(self, name: str, summary: str, build: Callable[[str], argparse.ArgumentParser]) -> None:
        """`name`, listed with `summary`; `build(prog)` makes its parser when it is chosen."""
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), summary))
        self._name_parser_map[name] = None  # a choice now; its parser below, once chosen
        self._builders[name] = build

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        build = self._builders.pop(values[0], None)
        if build is not None:
            self._name_parser_map[values[0]] = build(f"{self._prog_prefix} {values[0]}")
        super().__call__(parser, namespace, values, option_string)


def _api_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", metavar="URL", default=os.environ.get("RUNNER_API_URL") or None,
                        help="use the runner HTTP API at URL instead of Redis (env RUNNER_API_URL; "
                        "token: env RUNNER_API_TOKEN or api.token)")


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help=what)


def _submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("directory", nargs="?", default=".", help="build context directory (default: .)")
    submit.add_argument("-t", "--tag", action="append", default=[], metavar="REF", help="full image reference; repeat for more")
    submit.add_argument("-f", "--file", default="Dockerfile", help="Dockerfile path inside the context (default: Dockerfile)")
    submit.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="build argument; repeat for more")
    submit.add_argument("--secret-build-arg", action="append", default=[], metavar="SPEC",
                        help="NAME (value from env var NAME), NAME=env:VAR or NAME=file:PATH; masked everywhere, "
                        "never on the command line")
    submit.add_argument("--secret", action="append", default=[], metavar="id=NAME", help="id=NAME of a build secret from config")
    submit.add_argument("--target", help="build stage to stop at")
    submit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="image label; repeat for more")
    submit.add_argument("--executor", help="executor name (config default if omitted)")
    submit.add_argument("--builder", help="auto | buildkit | classic (engine executors)")
    submit.add_argument("--platform", action="append", default=[], metavar="PLATFORM[,PLATFORM…]",
                        help="target platform(s), as buildx takes them: linux/amd64 (one) or linux/amd64,linux/arm64 (an "
                        "image per platform, an index under every tag); repeatable")
    submit.add_argument("--push", action=argparse.BooleanOptionalAction, default=True, help="push the image (default: yes)")
    submit.add_argument("--no-cache", action="store_true", help="build without the layer cache (never reuses an image)")
    submit.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="put the image an earlier job pushed from the same inputs under the tags instead of "
                        "building (default: yes); --no-reuse always builds")
    submit.add_argument("--timeout", type=int, metavar="SECONDS", help="seconds the build may take")
    submit.add_argument("--detach", action="store_true", help="print the job id and return")
    submit.add_argument("--wait", action="store_true", help="wait for the result (default)")
    submit.add_argument("--follow", action="store_true", help="stream the build log live")
    submit.add_argument("--id", dest="job_id", help="job id (default: random)")
    source = submit.add_argument_group("commit statuses", "the commit this build is for, which gets the job's statuses "
                                       "(pending, running, the result) when the config has a token for its host (statuses:)")
    source.add_argument("--source-host", choices=["github", "gitlab", "gitea"], help="the git host's kind (Forgejo: gitea)")
    source.add_argument("--source-repo", metavar="OWNER/REPO", help="the repository (GitLab: group/project or the project id)")
    source.add_argument("--source-sha", metavar="SHA", help="the full commit id")
    source.add_argument("--source-ref", metavar="REF", help="the branch or tag (refs/heads/main, or main)")
    source.add_argument("--source-api-url", metavar="URL", help="the host's API (default: statuses.<host>.api_url)")
    source.add_argument("--source-project-id", type=int, metavar="ID", help="GitLab: the numeric project id")
    _json_option(submit, "print the final job record as JSON")
    _api_option(submit)


def _status_arguments(status: argparse.ArgumentParser) -> None:
    status.add_argument("job_id", metavar="ID")
    _json_option(status, "print the record as JSON")
    _api_option(status)


def _logs_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    _api_option(logs)


def _list_arguments(listing: argparse.ArgumentParser) -> None:
    listing.add_argument("--status", metavar="STATUS", help="only jobs in this status (queued, running, succeeded, ...)")
    listing.add_argument("--limit", type=int, default=50, help="most jobs to show (default: 50)")
    _json_option(listing, "print the records as JSON")
    _api_option(listing)


def _cancel_arguments(cancel: argparse.ArgumentParser) -> None:
    cancel.add_argument("job_id", metavar="ID")
    _api_option(cancel)


def _worker_arguments(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("--queues", help="comma-separated queues (default: one per enabled executor)")
    worker.add_argument("--concurrency", type=int, help="builds at once (default: worker.concurrency)")
    worker.add_argument("--loglevel", help="DEBUG, INFO, WARNING or ERROR (default: log.level)")
    worker.add_argument("--max-jobs", type=int, metavar="N", help="run N builds, then drain and exit (default: "
                        "worker.max_jobs; 1: a pod per build)")
    worker.add_argument("--idle-exit", type=float, metavar="SECONDS", help="drain and exit after this long without a "
                        "build (default: worker.idle_exit)")


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", help="listen address (default: api.host)")
    serve.add_argument("--port", type=int, help="port (default: api.port)")


def _drain_arguments(drain: argparse.ArgumentParser) -> None:
    drain.add_argument("--port", type=int, help="the worker's HTTP port (default: worker.metrics_port)")
    drain.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: wait)")


def _verify_arguments(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("reference", metavar="REF", help="the image: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    verify.add_argument("--key", required=True, metavar="PUB", help="the PEM public key (PREFIX.pub of `runner keys generate`)")
    _json_option(verify, "print what was checked, and each statement, as JSON")


def _keys_parser(prog: str) -> argparse.ArgumentParser:
    keys = _Parser(prog=prog, description="Signing keys.", parents=[CONFIG_OPTION])
    keys.set_defaults(handler=None, parser=keys)
    keys_commands = keys.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    generate = _command(keys_commands, "generate", cmd_keys_generate)
    generate.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.key and PREFIX.pub")
    secret = generate.add_mutually_exclusive_group()
    secret.add_argument("--passphrase-file", metavar="FILE", help="the passphrase (its last newline dropped); default: asked for")
    secret.add_argument("--no-passphrase", action="store_true", help="leave the private key unencrypted")
    return keys


def _config_parser(prog: str) -> argparse.ArgumentParser:
    config = _Parser(prog=prog, description="Inspect the configuration.", parents=[CONFIG_OPTION])
    config.set_defaults(handler=None, parser=config)
    config_commands = config.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser, prog=config.prog)
    _command(config_commands, "show", cmd_config_show)
    _command(config_commands, "example", cmd_config_example)
    return config


def _with_arguments(handler: Any, arguments: Callable[[argparse.ArgumentParser], None] | None) -> Callable[[str], argparse.ArgumentParser]:
    def build(prog: str) -> argparse.ArgumentParser:
        parser = _command_parser(prog, handler)
        if arguments is not None:
            arguments(parser)
        return parser
    return build


#: `runner`'s commands in the order `runner --help` lists them: (name, handler, what adds its arguments)
COMMANDS: tuple[tuple[str, Any, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("submit", cmd_submit, _submit_arguments), ("status", cmd_status, _status_arguments), ("logs", cmd_logs, _logs_arguments),
    ("list", cmd_list, _list_arguments), ("cancel", cmd_cancel, _cancel_arguments), ("worker", cmd_worker, _worker_arguments),
    ("serve", cmd_serve, _serve_arguments), ("drain", cmd_drain, _drain_arguments), ("doctor", cmd_doctor, None),
    ("verify", cmd_verify, _verify_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="CI build runner: build and push container images.", allow_abbrev=False,
                     parents=[CONFIG_OPTION])
    parser.add_argument("--version", action=_Version)
    # prog given: argparse would otherwise build a help formatter (and import shutil) to work it out
    commands: _Commands = parser.add_subparsers(  # type: ignore[assignment]  # action=_Commands makes one
        title="commands", metavar="COMMAND", parser_class=_Parser, prog=parser.prog, action=_Commands)
    for name, handler, arguments in COMMANDS:
        commands.add_command(name, _summary(handler), _with_arguments(handler, arguments))
    commands.add_command("keys", "Signing keys.", _keys_parser)
    commands.add_command("config", "Inspect the configuration.", _config_parser)
    parser.set_defaults(handler=None, parser=parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    # The runner uses no pydantic plugin; without this, building the first model scans every
    # installed package's entry points for one (and loads what it finds): tens of ms per command.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
    args = build_parser().parse_args(argv)
    if args.handler is None:  # `runner` or `runner config` alone: what can follow
        args.parser.print_help(sys.stderr)
        raise SystemExit(EXIT_INVALID)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `runner logs ID | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)
