"""A step's query parameters: the flow's, then the step's own, each rendered and typed.

A value reaches a query only as a typed parameter (Kusto's query parameters, a
database's bound parameters), never as text spliced into the query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.contracts.actions import QueryParameter
from common.contracts.flows import Flow
from common.contracts.messages import RunMessage
from common.contracts.parameters import ParameterType, coerce_parameter
from common.contracts.templates import TemplateError, render_text, template_context


def step_parameters(
    message: RunMessage, flow: Flow, declared: Mapping[str, QueryParameter], field: str
) -> dict[str, tuple[str, Any]]:
    """The flow's parameters, then *declared* (the step's own, at *field*): each rendered
    (``{{ row.State }}``), then typed."""
    found: dict[str, tuple[str, Any]] = {
        name: (flow.parameters[name].type.value, value)
        for name, value in message.context.parameters.items()
        if name in flow.parameters
    }
    if not declared:
        return found
    context = template_context(message)
    for name, spec in declared.items():
        where = f"{field}.{name}"
        text = render_text(spec.value, context, field=where)
        value: object = text
        if spec.type is not ParameterType.STRING:
            value = _parsed(text)
        try:
            found[name] = (spec.type.value, coerce_parameter(spec.type, value, where))
        except ValueError as exc:
            raise TemplateError(str(exc)) from None
    return found


def _parsed(text: str) -> object:
    """A rendered parameter's text as the value it spells: ``42``, ``true``, or the text itself."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            continue
    return stripped
