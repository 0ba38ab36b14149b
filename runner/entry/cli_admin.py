"""`runner verify` and `keys generate` (signatures and provenance), and the commands that run or
inspect the services: `worker`, `serve`, `drain`, `doctor`, `config show|example`. Each
imports what it runs when it runs. Standard library only at import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.entry.cli_common import EXIT_FAILED, EXIT_INFRA, EXIT_INVALID, EXIT_OK, config_path, dump, fail, note, settings, styled


# -- signatures and provenance -----------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> None:
    """Verify an image's cosign signature and SLSA provenance with a public key (offline, as
    `cosign verify --key` and `cosign verify-attestation --key --type slsaprovenance1`), and
    print what was built from what.

    REF is a tag (resolved to the digest it holds now) or REF@sha256:...; a multi-platform
    image's manifests are verified too. Exits 1 when a signature or the provenance is missing
    or does not verify."""
    from runner.core.errors import ExecutorError
    from runner.core.registry_client import Registries
    from runner.entry.verify_report import report_lines
    from runner.supply.keys import SigningKeyError, load_public_key
    from runner.supply.verify import Verifier

    try:
        public = load_public_key(Path(args.key))
    except SigningKeyError as exc:
        fail(str(exc), EXIT_INVALID)
    cfg = settings(args)
    try:
        checked = Verifier(Registries(cfg.registries, cfg.registry_auth), public).verify(args.reference)
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    except ExecutorError as exc:
        fail(exc.message, EXIT_INFRA)
    if args.as_json:
        dump([{"ref": c.ref, "digest": c.digest, "platform": c.platform, "verified": c.ok, "signature": c.signature,
               "problems": c.problems, "statement": c.statement} for c in checked])
    else:
        for check in checked:
            platform = f" ({check.platform})" if check.platform else ""
            if check.ok:
                print(f"{styled('verified', 'green')} {check.ref}{platform}: signature and SLSA provenance")
                for line in report_lines(check.statement or {}):
                    print(f"  {line}")
            else:
                note(f"{styled('NOT VERIFIED', 'bold red', sys.stderr)} {check.ref}{platform}: {'; '.join(check.problems)}")
    raise SystemExit(EXIT_OK if all(c.ok for c in checked) else EXIT_FAILED)


def cmd_keys_generate(args: argparse.Namespace) -> None:
    """Make an ECDSA P-256 key pair for signing: PREFIX.key (PKCS#8 PEM, encrypted with the
    passphrase; mode 0600) for signing.key_file, and PREFIX.pub for verifiers (cosign verify
    --key, runner verify --key, admission policies). The passphrase comes from
    --passphrase-file or is asked for twice on the terminal."""
    import getpass

    from runner.supply.keys import SigningKeyError, generate, read_passphrase

    passphrase: bytes | None
    if args.no_passphrase:
        passphrase = None
    elif args.passphrase_file:
        try:
            passphrase = read_passphrase(Path(args.passphrase_file))
        except SigningKeyError as exc:
            fail(str(exc), EXIT_INVALID)
        if not passphrase:
            fail(f"--passphrase-file {args.passphrase_file} is empty; give --no-passphrase for a key without one", EXIT_INVALID)
    elif sys.stdin.isatty():
        first = getpass.getpass("Passphrase for the new key: ")
        if first != getpass.getpass("Again: "):
            fail("the passphrases differ", EXIT_INVALID)
        passphrase = first.encode() or None
    else:
        fail("no terminal to ask for a passphrase on: give --passphrase-file FILE, or --no-passphrase", EXIT_INVALID)
    try:
        private, public = generate(Path(args.output), passphrase)
    except SigningKeyError as exc:
        fail(str(exc), EXIT_INVALID)
    except OSError as exc:
        fail(f"cannot write the key: {exc.strerror} ({exc.filename})", EXIT_INVALID)
    note(f"private key: {private} (signing.key_file{', with signing.passphrase_file' if passphrase else ''})")
    note(f"public key:  {public} (cosign verify --key, runner verify --key, signing.public_key_file)")


# -- services and configuration ----------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> None:
    """Run a worker: take jobs from the queues and build them."""
    from runner.worker.lifecycle import run_worker

    budget = {key: value for key, value in (("max_jobs", args.max_jobs), ("idle_exit", args.idle_exit)) if value is not None}
    cfg = settings(args, **({"worker": budget} if budget else {}))
    run_worker(cfg, args.queues.split(",") if args.queues else None, args.concurrency, args.loglevel)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the HTTP API (/v1/jobs) and the git-push webhooks (/v1/webhooks/github|gitlab|gitea)."""
    from runner.entry.api import serve as run_server

    run_server(settings(args), args.host, args.port)


def cmd_drain(args: argparse.Namespace) -> None:
    """Drain the worker on this host and wait until no build runs there (a preStop hook).

    It stops taking builds at once (as on SIGTERM); this returns when its running builds have
    finished or it has exited. Exits 0 then, 1 if --timeout passed first."""
    from runner.entry.drain_hook import drain_and_wait

    port = args.port or settings(args).worker.metrics_port
    if not port:
        fail("worker.metrics_port is 0: the worker serves no HTTP to ask; give --port", EXIT_INVALID)
    try:
        drained = drain_and_wait(port, args.timeout, note)
    except RuntimeError as exc:
        fail(str(exc), EXIT_INFRA)
    raise SystemExit(EXIT_OK if drained else EXIT_FAILED)


def cmd_doctor(args: argparse.Namespace) -> None:
    """Check Redis, the engine, registries and every executor; one line each.

    Exits 3 (infrastructure) if Redis or an enabled executor cannot work, 2 if the configuration
    is invalid; other failures are shown, not fatal, and warnings (WARN: a secret file readable
    by group or others, a Redis that may evict jobs) never fail it."""
    from runner.entry.doctor import run_checks

    ok = True
    for check in run_checks(settings(args)):
        if check.ok:
            mark = styled("WARN", "yellow") if check.warning else styled("ok  ", "green")
        else:
            mark = styled("FAIL", "red") if check.required or check.shown else styled("off ", "dim")
        print(f"{mark} {check.name}: {check.summary}", flush=True)
        ok = ok and (check.ok or not check.required)
    raise SystemExit(EXIT_OK if ok else EXIT_INFRA)


def cmd_config_show(args: argparse.Namespace) -> None:
    """Print the effective configuration with secrets redacted, after a comment naming the file
    it came from (--config, RUNNER_CONFIG or a default location) or saying there was none."""
    import yaml

    from runner.config.loader import config_source

    effective = settings(args)
    path, why = config_source(config_path(args))
    print(f"# config file: {path} ({why})" if path else f"# {why}: the defaults and RUNNER_* variables apply")
    print(yaml.safe_dump(effective.model_dump(mode="json"), sort_keys=False), end="")


def cmd_config_example(args: argparse.Namespace) -> None:
    """Print an example config with every option, its default and its meaning."""
    from runner.config.example import render_example

    print(render_example(), end="")
