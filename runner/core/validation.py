"""What pydantic found wrong, said the one way every door says it (settings, admission, the
API's 422, the CLI): the dotted path of the field and pydantic's message without its "Value
error, " prefix (what a validator's own ValueError said). Never the input value: it may be a
secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pydantic import ValidationError


class FieldError(NamedTuple):
    path: tuple[str, ...]  #: where, from the validated value's root; empty when the whole value is wrong
    message: str

    def field(self, whole: str) -> str:
        """The dotted path, or `whole` when the error is about the whole value."""
        return ".".join(self.path) or whole


def field_error(error: Mapping[str, Any]) -> FieldError:
    """One entry of `ValidationError.errors()` (or of FastAPI's RequestValidationError)."""
    return FieldError(tuple(str(part) for part in error.get("loc", ())),
                      str(error.get("msg", "invalid input")).removeprefix("Value error, "))


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [field_error(error) for error in exc.errors(include_url=False, include_input=False)]


def first_error(exc: ValidationError) -> FieldError:
    """The first thing wrong (a ValidationError always holds at least one)."""
    return field_errors(exc)[0]
