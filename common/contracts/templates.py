"""Dynamic content: the Jinja2 templates and conditions of a flow.

Every template runs in a sandbox. HTML templates autoescape (a value from a
query result can never become markup), text templates do not (a subject is
not HTML), and undefined names are errors rather than silent blanks, so a
typo in ``steps.by_sate.row_count`` fails the step with a message instead of
sending an email that says nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from common.contracts.errors import AdxflowError
from common.contracts.messages import ErrorCode, RunMessage, StepKind


class TemplateSyntaxProblem(ValueError):
    """A template that does not parse; found when the flow is saved."""


class TemplateError(AdxflowError):
    """A template that failed while rendering; fails the step that uses it."""

    code = ErrorCode.TEMPLATE_ERROR


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise TypeError(f"not a datetime: {value!r:.40}")


def date_filter(value: Any, fmt: str = "%Y-%m-%d %H:%M", tz: str | None = None) -> str:
    """``{{ run.scheduled_for | date('%Y-%m-%d', 'Europe/Berlin') }}``; UTC when no zone is given."""
    moment = _as_datetime(value)
    if tz:
        try:
            moment = moment.astimezone(ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise TypeError(f"unknown time zone {tz!r}") from None
    return moment.strftime(fmt)


def number_filter(value: Any, decimals: int = 0) -> str:
    """``{{ row.Damage | number }}`` → ``12,345``; ``number(2)`` → ``12,345.68``."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = Decimal(value)
    return f"{value:,.{decimals}f}"


def _environment(*, html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=html, undefined=jinja2.StrictUndefined)
    env.filters["date"] = date_filter
    env.filters["number"] = number_filter
    return env


_HTML = _environment(html=True)
_TEXT = _environment(html=False)


def check_template(text: str) -> None:
    try:
        _TEXT.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(f"template syntax error at line {exc.lineno}: {exc.message}") from None


def template_references(text: str) -> tuple[set[str], set[str]]:
    """The names a template reads (``run``, ``steps``, ``row``) and the step ids it reads (``steps.<id>``)."""
    try:
        tree = _TEXT.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    names = meta.find_undeclared_variables(tree)
    steps: set[str] = set()
    if "steps" not in names:
        return names, steps
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_steps(node.node):
            steps.add(node.attr)
        elif isinstance(node, nodes.Getitem) and _is_steps(node.node):
            key = node.arg
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                steps.add(key.value)
    return names, steps


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps"


def _render(env: SandboxedEnvironment, text: str, context: dict[str, Any], field: str) -> str:
    try:
        return env.from_string(text).render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{field}: {type(exc).__name__}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateError(f"{field}: {exc}") from None


def render_text(text: str, context: dict[str, Any], *, field: str) -> str:
    return _render(_TEXT, text, context, field)


def render_html(text: str, context: dict[str, Any], *, field: str) -> str:
    return _render(_HTML, text, context, field)


def markup(html: str) -> Any:
    """Mark HTML the project made itself (a rendered table) as safe to insert."""
    from markupsafe import Markup

    return Markup(html)


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", "", "none"}


def evaluate_condition(text: str, context: dict[str, Any], *, field: str) -> bool:
    """A ``when``: ``"{{ steps.q.row_count > 0 }}"`` renders to True or False."""
    rendered = render_text(text, context, field=field).strip().lower()
    if rendered in _TRUE:
        return True
    if rendered in _FALSE:
        return False
    raise TemplateError(f"{field}: a condition must render to true or false, got {rendered[:60]!r}")


def _slips(message: RunMessage) -> list[tuple[str, str, StepKind]]:
    """``(slip id, flow step, kind)`` of every step whose output the run holds.

    A child run holds its parent's outputs, and a parent the outputs of its ``parallel`` branches,
    besides those of its own itinerary: their kind is read off the id (``<step>.render``) and the
    output (a scope step's says ``scope``).
    """
    found = [(step.id, step.flow_step, step.kind) for step in message.itinerary if step.flow_step is not None]
    own = {step.id for step in message.itinerary}
    for slip_id, output in message.outputs.items():
        if slip_id in own:
            continue
        if slip_id.endswith(".render"):
            found.append((slip_id, slip_id.removesuffix(".render"), StepKind.RENDER))
        elif slip_id.endswith(".alert"):
            found.append((slip_id, slip_id.removesuffix(".alert"), StepKind.ALERT))
        elif "scope" in output.detail:
            found.append((slip_id, slip_id, StepKind.SCOPE))
        else:
            found.append((slip_id, slip_id, StepKind.QUERY))
    return [(slip_id, flow_step, kind) for slip_id, flow_step, kind in found if flow_step is not None]


def template_context(
    message: RunMessage, *, bodies: Mapping[str, str] | None = None, row: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a flow's templates can read: ``run``, ``steps.<id>``, per row ``row``, and after an alert's
    evaluation ``alert``.

    *bodies* holds the rendered HTML of each rendering step (the notifier
    loads them from the blob store); elsewhere ``body_html`` is empty.
    """
    context = message.context
    run = {
        "id": message.run_id,
        "flow": context.flow,
        "trigger": context.trigger.value,
        "scheduled_for": context.scheduled_for or message.submitted_at,
        "started_at": message.submitted_at,
        "parameters": context.parameters,
        "timezone": context.timezone,
        "parent_run_id": context.parent_run_id,
    }
    steps: dict[str, dict[str, Any]] = {}
    alert: dict[str, Any] | None = None
    for slip_id, flow_step, kind in _slips(message):
        output = message.outputs.get(slip_id)
        if output is None:
            continue
        view = steps.setdefault(flow_step, {"attachments": [], "body_html": markup("")})
        if kind is StepKind.ALERT:
            # The step's alert, as its evaluation left it; the latest one is also ``alert``.
            alert = view["alert"] = output.detail.get("alert")
            continue
        view["status"] = output.status.value
        view["error"] = output.error.message if output.error else None
        if kind is StepKind.RENDER:
            view["body_html"] = markup((bodies or {}).get(flow_step, ""))
            view["attachments"] = sorted(output.artifacts)
            continue
        if kind is StepKind.SCOPE:
            detail = output.detail
            view.update(
                row_count=output.row_count,
                branch=detail.get("branch"),
                iterations=output.preview,
                total=detail.get("total"),
                succeeded=detail.get("succeeded"),
                failed=detail.get("failed"),
                skipped=detail.get("skipped"),
                truncated=detail.get("truncated", False),
            )
            continue
        view.update(
            row_count=output.row_count,
            columns=output.columns,
            rows=output.preview,
            first_row=output.preview[0] if output.preview else None,
            operation=output.detail.get("operation"),
            deliveries=output.detail.get("deliveries"),
            # An export's file: name, url (in the history service), format, size.
            file=output.detail.get("file"),
        )
    if row is None and context.scope is not None:
        row = context.scope.row
    found: dict[str, Any] = {"run": run, "steps": steps}
    if alert is not None:
        found["alert"] = alert
    if row is not None:
        found["row"] = dict(row)
    return found
