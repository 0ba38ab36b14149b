"""Frozen records for the CLI's light path, without generated code: each dataclass is made by
generating and exec'ing its methods (~0.2-1 ms a class, `inspect.signature` too for one with
no docstring), on every `runner` command that imports it. A Frozen subclass is a plain class:
its fields are its annotations in order, its class attributes their defaults (`field(
default_factory=...)` for a fresh value each time, as dataclasses'); it compares and hashes by
value, orders by value with `order=True` (`class P(Frozen, order=True)`), shows itself as a
dataclass would (but for the fields named in `_hidden`) and refuses to be changed. mypy types
its constructor as a frozen dataclass's (dataclass_transform)."""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_: object) -> Callable[[type], type]:
        """typing's marker for the checker; at run time a no-op, as typing's own nearly is."""
        return lambda cls: cls


class _Factory:
    """A field's default made anew for each record (`field(default_factory=...)`)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """dataclasses.field(default_factory=...) for a Frozen record."""
    return _Factory(default_factory)  # type: ignore[return-value]  # read back by Frozen.__init__


def _ordering(compare: Callable[[tuple, tuple], bool]) -> Callable[[Frozen, object], bool]:
    def method(self: Frozen, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return compare(self._values(), other._values())  # same class: a Frozen

    return method


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Frozen:
    #: the fields, in order (a subclass's after its base's)
    _fields: ClassVar[tuple[str, ...]] = ()
    #: fields left out of repr() (secrets, a URL that may hold a password)
    _hidden: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, order: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name, kind in cls.__dict__.get("__annotations__", {}).items()
               if "ClassVar" not in str(kind).partition("[")[0]]
        cls._fields = tuple(dict.fromkeys((*cls._fields, *own)))
        if order:  # as dataclass(order=True): compared as the tuple of its fields, with its own class only
            for name, compare in (("__lt__", tuple.__lt__), ("__le__", tuple.__le__), ("__gt__", tuple.__gt__),
                                  ("__ge__", tuple.__ge__)):
                setattr(cls, name, _ordering(compare))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if len(args) > len(cls._fields):
            raise TypeError(f"{cls.__name__}() takes {len(cls._fields)} arguments, {len(args)} given")
        values = dict(zip(cls._fields, args, strict=False))  # fewer args than fields: the rest by name or default
        for name, value in kwargs.items():
            if name not in cls._fields or name in values:
                raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in cls._fields:
            if name not in values:
                if not hasattr(cls, name):
                    raise TypeError(f"{cls.__name__}() missing argument {name!r}")
                default = getattr(cls, name)
                values[name] = default.make() if isinstance(default, _Factory) else default
            object.__setattr__(self, name, values[name])

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
