"""Executor plugins (ExecutorRegistry): name -> the executor's class and its config class.

Built-ins are listed by module path, so loading the settings imports only their light config
modules, and a missing dependency of one executor never breaks the others. Third-party
packages add executors through the `runner.executors` entry-point group
(`[project.entry-points."runner.executors"] mine = "pkg.module:MyExecutor"`); their config is
the class's `Config`, validated and documented like a built-in's. Entry points are scanned
once per registry, and only when a name is not a built-in.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from executors.base import Executor, ExecutorConfig
from executors.builtin import BUILTIN

if TYPE_CHECKING:
    from executors.base import ExecutorEnv

ENTRY_POINT_GROUP = "runner.executors"


class UnknownExecutor(LookupError):
    pass


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class ExecutorRegistry:
    """Which executors exist in this installation, and how to make one."""

    def __init__(self, plugins: dict[str, EntryPoint] | None = None):
        self._plugins = plugins

    @property
    def plugins(self) -> dict[str, EntryPoint]:
        if self._plugins is None:  # scanning entry points costs ~8 ms: only when asked
            self._plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}
        return self._plugins

    def names(self) -> list[str]:
        return sorted({*BUILTIN, *self.plugins})

    def is_known(self, name: str) -> bool:
        return name in BUILTIN or name in self.plugins

    def executor_class(self, name: str) -> type[Executor]:
        try:
            cls = _load(BUILTIN[name][1]) if name in BUILTIN else self._plugin(name).load()
        except (ImportError, AttributeError) as exc:
            raise UnknownExecutor(f"executor {name!r} is not available in this installation: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Executor)):
            raise UnknownExecutor(f"executor {name!r} does not implement executors.base.Executor")
        return cls

    def config_class(self, name: str) -> type[ExecutorConfig]:
        if name in BUILTIN:
            return _load(BUILTIN[name][0])
        config = getattr(self.executor_class(name), "Config", ExecutorConfig)
        if not (isinstance(config, type) and issubclass(config, ExecutorConfig)):
            raise UnknownExecutor(f"executor {name!r}: its Config does not derive from executors.base.ExecutorConfig")
        return config

    def make(self, name: str, config: ExecutorConfig, env: ExecutorEnv) -> Executor:
        return self.executor_class(name)(config, env)

    def _plugin(self, name: str) -> EntryPoint:
        try:
            return self.plugins[name]
        except KeyError:
            raise UnknownExecutor(f"unknown executor {name!r}; known: {', '.join(self.names())}") from None
