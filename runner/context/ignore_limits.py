"""The limits a .dockerignore (and the context's size) are held to, as plain values: the CLI packs
a context with them without loading the settings models (runner.context.limits.ContextLimits
takes its defaults from here, so there is one number for each)."""

from __future__ import annotations

from runner.core.frozen import Frozen

MAX_IGNORE_FILE_BYTES = 1024**2
MAX_IGNORE_PATTERNS = 50_000
MAX_CONTEXT_BYTES = 512 * 1024**2


class IgnoreLimits(Frozen):
    max_ignore_file_bytes: int = MAX_IGNORE_FILE_BYTES
    max_ignore_patterns: int = MAX_IGNORE_PATTERNS
