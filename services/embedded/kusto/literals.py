"""The strict reader of Kusto query parameter literals.

Kusto carries every parameter value as text (``"5"``, ``"long(5)"``,
``"datetime(2007-05-01)"``); the engine wants a number where a number is
declared. Values are read against the query's own declarations by a strict
literal reader, and a value that is not its declared type is a 400 naming
the parameter rather than a query run with something else.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import duckdb_kql
from duckdb_kql import KqlError
from duckdb_kql.params import as_datetime

from services.embedded.kusto.duckdb_kql_internals import parse_timespan

__all__ = ["NUMBER", "ParameterValueError", "RequestRefused", "parameter_value", "typed_parameters"]


class RequestRefused(ValueError):
    """A request this endpoint answers with 400 before the engine sees it."""


class ParameterValueError(RequestRefused):
    """A query parameter's value is not a literal of its declared type."""

    def __init__(self, name: str, kind: str, value: Any) -> None:
        super().__init__(
            f"query parameter {name!r} is declared {kind}, but {value!r:.80} is not a {kind} value"
        )
        self.name = name
        self.kind = kind
        self.value = value


#: Spellings of a typed literal's wrapper, `long(5)`, by the kind they make.
_WRAPPERS = {
    "bool": ("bool", "boolean"),
    "int": ("int", "long"),
    "long": ("long", "int"),
    "real": ("real", "double"),
    "decimal": ("decimal",),
    "datetime": ("datetime", "date"),
    "timespan": ("timespan", "time"),
    "guid": ("guid", "uuid", "uniqueid"),
    "dynamic": ("dynamic",),
}
_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_WRAPPED = re.compile(r"([A-Za-z]+)\s*\((.*)\)", re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
#: A plain KQL number, as `real` and `decimal` values and `render`'s ymin/ymax are read.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL_REALS = {"nan": float("nan"), "+inf": float("inf"), "inf": float("inf"), "-inf": float("-inf")}


def parameter_value(value: Any, kind: str, name: str) -> Any:
    """The value a Kusto client sent for parameter *name*, as duckdb-kql binds it.

    On the wire a string parameter is its raw text and every other type is a
    KQL literal in text form, bare (`5`, `2007-05-01`, `1d`) or wrapped
    (`long(5)`, `datetime(2007-05-01)`, `dynamic([1,2])`). The engine's binder
    wants a JSON bool or number for bool, int, long and real, and reads the
    other kinds from text itself; so those four are parsed here, and the rest
    are unwrapped and checked with the same readers the binder will use, so a
    bad value is refused here, by name, rather than deep in the engine.

    Anything not a string (a client that sent JSON numbers) passes through for
    the binder to judge. Never evaluated, never spliced into the query text.
    """
    if not isinstance(value, str) or kind == "string":
        return value
    text = value.strip()
    wrapped = _WRAPPED.fullmatch(text)
    if wrapped is not None:
        if wrapped.group(1).lower() not in _WRAPPERS.get(kind, ()):
            raise ParameterValueError(name, kind, value)
        text = wrapped.group(2).strip()
        if text == "null":
            return None
    parsed = _read(text, kind)
    if parsed is _INVALID:
        raise ParameterValueError(name, kind, value)
    return parsed


_INVALID = object()


def _read(text: str, kind: str) -> Any:
    if kind == "bool":
        return {"true": True, "false": False}.get(text.lower(), _INVALID)
    if kind in _RANGES:
        if _INTEGER.fullmatch(text):
            number = int(text)
        elif _HEX.fullmatch(text):
            number = int(text, 16)
        else:
            return _INVALID
        low, high = _RANGES[kind]
        return number if low <= number <= high else _INVALID
    if kind == "real":
        if NUMBER.fullmatch(text):
            return float(text)
        return _SPECIAL_REALS.get(text.lower(), _INVALID)
    if kind == "decimal":
        try:
            return text if NUMBER.fullmatch(text) and Decimal(text).is_finite() else _INVALID
        except InvalidOperation:
            return _INVALID
    if kind == "datetime":
        try:
            as_datetime(text, "value")
        except KqlError:
            return _INVALID
        return text
    if kind == "timespan":
        return text if parse_timespan(text) is not None else _INVALID
    if kind == "guid":
        try:
            uuid.UUID(text)
        except ValueError:
            return _INVALID
        return text
    if kind == "dynamic":
        try:
            json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            return _INVALID
        return text
    return _INVALID


def _refuse_constant(name: str) -> Any:
    # `NaN` and `Infinity` are Python's extension to JSON, not Kusto's dynamic.
    raise ValueError(f"{name} is not JSON")


def typed_parameters(csl: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """*parameters* with each one *csl* declares read as its declared type."""
    try:
        declared = {d.name: d.type for d in duckdb_kql.query_parameters(csl)}
    except KqlError:
        return parameters  # the engine reports the query's own error, better than we could
    # An undeclared name is left as sent: the engine refuses it as a likely typo.
    return {
        name: parameter_value(value, declared[name], name) if name in declared else value
        for name, value in parameters.items()
    }
