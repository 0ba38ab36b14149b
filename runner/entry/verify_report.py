"""What `runner verify` prints of a verified statement: what was built, from what, by whom."""

from __future__ import annotations

from typing import Any


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values) if values else "—"


def report_lines(statement: dict) -> list[str]:
    """A few lines read from an in-toto statement with a SLSA v1 predicate (ours, or anyone's:
    a field that is not there is left out)."""
    predicate = statement.get("predicate") or {}
    definition = predicate.get("buildDefinition") or {}
    external = definition.get("externalParameters") or {}
    internal = definition.get("internalParameters") or {}
    details = predicate.get("runDetails") or {}
    builder = details.get("builder") or {}
    metadata = details.get("metadata") or {}
    lines = []
    version = ", ".join(f"{k} {v}" for k, v in (builder.get("version") or {}).items())
    lines.append(f"built by     {builder.get('id', '—')}" + (f" ({version})" if version else "")
                 + (f", job {metadata['invocationId']}" if metadata.get("invocationId") else ""))
    if internal:
        lines.append("             " + ", ".join(f"{k} {v}" for k, v in sorted(internal.items())))
    if metadata.get("startedOn") or metadata.get("finishedOn"):
        lines.append(f"when         {metadata.get('startedOn', '?')} -> {metadata.get('finishedOn', '?')}")
    source = external.get("source") or {}
    if source:
        where = source.get("url") or "/".join(filter(None, (source.get("host"), source.get("repository"))))
        lines.append("source       " + " ".join(filter(None, (where, source.get("ref"), "@", source.get("commit", "—")))))
    context = external.get("context") or {}
    if context:
        lines.append(f"context      {context.get('digest', '—')}" + (f" (path {context['path']})" if context.get("path") else ""))
    lines.append(f"dockerfile   {external.get('dockerfile', '—')}" + (f", target {external['target']}" if external.get("target") else "")
                 + (f", platforms {_join(external.get('platforms'))}" if external.get("platforms") else ""))
    args = [f"{k}={v}" for k, v in sorted((external.get("buildArgs") or {}).items())]
    args += [f"{name} (secret)" for name in external.get("secretBuildArgs") or []]
    if args:
        lines.append(f"build args   {_join(args)}")
    if external.get("secrets"):
        lines.append(f"secrets      {_join(external['secrets'])}")
    for dependency in definition.get("resolvedDependencies") or []:
        if dependency.get("name") in ("source", "context"):
            continue
        digest = ", ".join(f"{k}:{v}" for k, v in (dependency.get("digest") or {}).items()) or "not resolved"
        lines.append(f"base image   {dependency.get('name') or dependency.get('uri')} @ {digest}")
    return lines
