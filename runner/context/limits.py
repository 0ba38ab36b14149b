"""The limits a build context is held to, the `limits:` settings the context code reads. The
settings' LimitsConfig is this plus the limits on logs, tags and timeouts, so the context code
needs no settings tree."""

from __future__ import annotations

from pydantic import Field

from runner.context.ignore_limits import MAX_CONTEXT_BYTES, MAX_IGNORE_FILE_BYTES, MAX_IGNORE_PATTERNS
from runner.core.models import Strict


class ContextLimits(Strict):
    max_context_bytes: int = Field(default=MAX_CONTEXT_BYTES, description="largest build context, uncompressed (uploaded tar or "
                                   "git checkout); also caps the upload itself")
    max_context_files: int = Field(default=500_000, ge=1, description="most members (files, folders, links) in a build context")
    max_context_path_bytes: int = Field(default=4096, ge=1, description="longest member path or link target in a build "
                                        "context, in bytes")
    max_context_header_bytes: int = Field(default=1024**2, ge=1, description="largest PAX / GNU long-name header data "
                                          "before one member of a context tar")
    max_ignore_file_bytes: int = Field(default=MAX_IGNORE_FILE_BYTES, ge=1, description="largest .dockerignore the runner reads (CLI and "
                                       "worker); a larger one refuses the job. Real files are a few KiB")
    max_ignore_patterns: int = Field(default=MAX_IGNORE_PATTERNS, ge=1, description="most patterns in a .dockerignore (CLI and worker); "
                                     "more refuse the job. Each costs ~2 KiB compiled")
