"""Typed flow parameters: the types a flow declares and how a supplied value becomes one.

A run's parameters reach KQL as query parameters, never spliced into the text,
so each value is checked and made JSON-safe here, naming the field it came from.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, model_validator

from common.contracts.documents import Document

#: A name templates and KQL refer to: a parameter's or a step's.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class ParameterType(StrEnum):
    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOL = "bool"
    DATETIME = "datetime"
    TIMESPAN = "timespan"


class ParameterSpec(Document):
    type: ParameterType
    default: Any = None
    description: str | None = None

    @model_validator(mode="after")
    def _default_has_the_type(self) -> ParameterSpec:
        if self.default is not None:
            self.default = coerce_parameter(self.type, self.default, "default")
        return self


#: A timespan: ``30s``, ``1.5h``, ``2d`` or ``[d.]hh:mm[:ss[.f]]``; also an HTML input's ``pattern``.
TIMESPAN_PATTERN = r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$|^(\d+\.)?\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$"
_TIMESPAN = re.compile(TIMESPAN_PATTERN)


def coerce_parameter(kind: ParameterType, value: Any, field: str) -> Any:
    """*value* as a JSON-safe value of *kind*; ValueError naming *field* otherwise."""

    def wrong() -> ValueError:
        return ValueError(f"{field}: expected a {kind.value}, got {value!r:.60}")

    if kind is ParameterType.STRING:
        if not isinstance(value, str):
            raise wrong()
        return value
    if kind is ParameterType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise wrong()
    if kind in (ParameterType.INT, ParameterType.LONG):
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        bound = 2**31 if kind is ParameterType.INT else 2**63
        if not -bound <= value < bound:
            raise ValueError(f"{field}: {value} is out of range for {kind.value}")
        return value
    if kind is ParameterType.REAL:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        return float(value)
    if kind is ParameterType.DATETIME:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise wrong() from None
        else:
            raise wrong()
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and _TIMESPAN.match(value.strip()):
        return value.strip()
    raise wrong()
