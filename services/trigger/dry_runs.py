"""Test runs ("dry runs"): a run of a saved flow or of an unsaved draft that delivers nothing.

A test run's Kusto queries run for real and its steps render as in any run; its
deliveries and writes are composed and shown in the history, not made (each
service reads the mark, ``RunContext.dry_run``). "Send a test" sends its emails
to one address, which the operator allows for tests (``ADXFLOW_TEST_RECIPIENTS``).

A draft is checked exactly as a save would check it (the problems of ``POST
/v1/flows:validate``, placed in the text), then run under its own name, not saved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import EmailStr, TypeAdapter, ValidationError

from common.contracts.messages import RunContext, TriggerKind, new_id
from common.platform.config import Settings
from common.platform.http import YAML_TYPES, field_errors, read_document, read_text
from common.platform.routes import ErrorDetail, Refusal, Reply
from services.trigger.bodies import DraftTestRequest
from services.trigger.drafts import DraftProblem, DraftReport, Examined, examine

if TYPE_CHECKING:
    from services.trigger.api import TriggerApi

_ADDRESS: TypeAdapter[str] = TypeAdapter(EmailStr)


class DraftRefused(DraftReport):
    """A draft a test run was refused for: the problems of ``POST /v1/flows:validate``, placed in the
    text, and the error every refusal carries."""

    error: ErrorDetail


class TestSendRefused(ValueError):
    """A ``send_test_to`` this server does not send tests to; the message names the field."""


def test_address(settings: Settings, address: str | None, *, dry_run: bool) -> str | None:
    """The address a test run's emails go to, as asked (None: to nobody); TestSendRefused if not allowed."""
    if address is None:
        return None
    if not dry_run:
        raise TestSendRefused("send_test_to: only a test run sends a test (add dry_run: true)")
    try:
        address = _ADDRESS.validate_python(address.strip())
    except ValidationError:
        raise TestSendRefused(f"send_test_to: {address!r} is not an email address") from None
    if not settings.test_recipients:
        raise TestSendRefused(
            "send_test_to: this server sends no tests (the operator's ADXFLOW_TEST_RECIPIENTS is empty)"
        )
    if not settings.allows_test_recipient(address):
        raise TestSendRefused(
            f"send_test_to: {address!r} is not an address the operator allows for tests "
            "(ADXFLOW_TEST_RECIPIENTS)"
        )
    return address


async def run_draft(api: TriggerApi, request: web.Request) -> Reply:
    """``POST /v1/flows:test``: check a draft as a save would and start a test run of it, saving nothing."""
    examined, supplied, send_to = await _read_draft(request)
    await api._examined_here(examined)
    flow = examined.flow
    if flow is None or examined.problems:
        return _refused(examined)
    try:
        parameters = flow.bind_parameters(supplied)
        recipient = test_address(api.runtime.settings, send_to, dry_run=True)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        examined.problems.append(DraftProblem(field=field, message=problem))
        return _refused(examined)
    context = RunContext(
        flow=flow.name,
        trigger=TriggerKind.MANUAL,
        parameters=parameters,
        timezone=flow.trigger.timezone,
        dry_run=True,
        test_recipient=recipient,
    )
    run_id = new_id()
    await api._start(flow, context, run_id)
    return api._accepted(run_id)


def _refused(examined: Examined) -> Reply:
    report = examined.report(dt.datetime.now(dt.UTC))
    said = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in report.problems[:3])
    more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
    error = ErrorDetail(code="InvalidFlow", message=f"no test run: {said}{more}")
    return Reply(DraftRefused(**dict(report), error=error), status=400)


async def _read_draft(request: web.Request) -> tuple[Examined, dict[Any, Any], str | None]:
    """The draft examined on its own rules, the parameters and the test address the request gives."""
    if request.content_type in YAML_TYPES:
        text, _ = await read_text(request)
        return await asyncio.to_thread(examine, text, is_yaml=True), {}, None
    try:
        body = await read_document(request)
        asked = DraftTestRequest.model_validate(body)
    except Refusal as refusal:
        if refusal.status != 400:
            raise
        return _problem("", refusal.message), {}, None
    except ValidationError as exc:
        examined = Examined()
        for name, message, _ in field_errors(exc):
            examined.problems.append(DraftProblem(field=name, message=message))
        return examined, {}, None
    if isinstance(asked.flow, str):
        examined = await asyncio.to_thread(examine, asked.flow, is_yaml=True)
    else:
        # Laid out as a YAML document would be: the problems' lines count in this text.
        examined = await asyncio.to_thread(examine, json.dumps(asked.flow, indent=2), is_yaml=False)
    return examined, asked.parameters, asked.send_test_to


def _problem(field: str, message: str) -> Examined:
    examined = Examined()
    examined.problems.append(DraftProblem(field=field, message=message))
    return examined
