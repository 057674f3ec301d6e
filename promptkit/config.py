"""Shared pydantic plumbing for user-facing configs: strict fields and one-line errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from promptkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo in a YAML key must not be silently ignored)."""

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_assignment=True,
        protected_namespaces=(),
    )


def validation_message(exc: ValidationError, what: str) -> str:
    """One readable line per bad field: location, problem, the value given."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"]) or what
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            model = exc.title
            message = f"unknown setting for {model}"
        value = error.get("input")
        shown = ""
        if value is not None and not isinstance(value, (dict, list)) and len(repr(value)) < 80:
            shown = f" (got {value!r})"
        parts.append(f"{location}: {message}{shown}")
    return f"Invalid {what}: " + "; ".join(parts)


def validate(model: type[M], data: dict[str, Any], what: str | None = None) -> M:
    """``model.model_validate(data)`` that raises :class:`ConfigError` with a readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message = validation_message(exc, what or model.__name__)
        extra = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
        if extra:
            import difflib

            for error in extra:
                close = difflib.get_close_matches(str(error["loc"][-1]), model.model_fields, n=1)
                if close:
                    message += f". Did you mean {close[0]!r} for {error['loc'][-1]!r}?"
            message += f" Allowed settings: {', '.join(sorted(model.model_fields))}."
        raise ConfigError(message) from exc
