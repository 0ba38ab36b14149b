"""Executor registry: name -> class.

Built-ins load lazily (so a missing optional dependency of one executor never breaks the
others). Third-party packages add executors through the `runner.executors` entry-point
group: `[project.entry-points."runner.executors"] mine = "pkg.module:MyExecutor"`.
A plugin is enabled by `executors.plugins.NAME.enabled: true` in the config.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from executors.base import Executor

if TYPE_CHECKING:
    from runner.settings import Settings

BUILTIN = {
    "socket": "executors.socket:SocketExecutor",
    "buildah": "executors.buildah:BuildahExecutor",
    "img": "executors.img:ImgExecutor",
    "dind": "executors.dind:DindExecutor",
    "sysbox": "executors.sysbox:SysboxExecutor",
}
ENTRY_POINT_GROUP = "runner.executors"


class UnknownExecutor(LookupError):
    pass


@lru_cache(maxsize=1)
def _plugins() -> dict[str, object]:
    """Installed plugins; read once per process (scanning entry points costs ~8 ms)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def known_names() -> list[str]:
    return sorted({*BUILTIN, *_plugins()})


def executor_class(name: str) -> type[Executor]:
    if name in BUILTIN:
        module_name, _, attr = BUILTIN[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownExecutor(f"executor {name!r} is not available in this installation: {exc}") from None
    else:
        plugin = _plugins().get(name)
        if plugin is None:
            raise UnknownExecutor(f"unknown executor {name!r}; known: {', '.join(known_names())}")
        cls = plugin.load()
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise UnknownExecutor(f"executor {name!r} does not implement executors.base.Executor")
    return cls


def is_enabled(settings: Settings, name: str) -> bool:
    section = getattr(settings.executors, name, None) if name in BUILTIN else None
    if section is not None:
        return bool(section.enabled)
    return bool(settings.executors.plugins.get(name, {}).get("enabled", False))


def enabled_names(settings: Settings) -> list[str]:
    return [name for name in known_names() if is_enabled(settings, name)]


def create(settings: Settings, name: str, worker_id: str = "local") -> Executor:
    return executor_class(name)(settings, worker_id)
