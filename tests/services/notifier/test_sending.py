"""Who an email comes from and who it may go to, through the notifier and a real SMTP server."""

from __future__ import annotations

from typing import Any

import pytest

from common.contracts.errors import DeliveryError
from common.contracts.messages import ErrorCode
from tests.services.notifier.conftest import NotifierFactory, Rendered

ROWS = [["TEXAS", "12"]]


def mail_flow(**mail: Any) -> dict[str, Any]:
    return {
        "name": "storm-report",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "q", "action": "run_query", "query": "StormEvents | take 1"},
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms", **mail},
        ],
    }


async def test_the_display_name_is_the_steps_and_the_address_the_operators(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n:
        run = await n.run_until(
            mail_flow(from_name="Storm desk, Zürich"), "mail", {"q": Rendered(ROWS, ["State", "n"])}
        )
        await n.step.perform(run)
        received = await n.received_email()

    [sender] = received["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Storm desk, Zürich", "reports@adxflow.example")


async def test_without_a_display_name_the_operators_stays(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run = await n.run_until(mail_flow(), "mail", {"q": Rendered(ROWS, ["State", "n"])})
        await n.step.perform(run)
        received = await n.received_email()

    [sender] = received["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("adxflow", "reports@adxflow.example")


@pytest.mark.parametrize(
    ("recipients", "field"),
    [
        ({"to": ["team@example.com", "eve@evil.example"]}, "steps.mail.to[1]"),
        ({"cc": ["eve@badexample.com"]}, "steps.mail.cc[0]"),
        ({"bcc": ["eve@example.com.evil.net"]}, "steps.mail.bcc[0]"),
    ],
)
async def test_a_recipient_outside_the_allowed_domains_is_refused_before_sending(
    notifier: NotifierFactory, recipients: dict[str, list[str]], field: str
) -> None:
    async with notifier(email_allowed_domains=["example.com"]) as n:
        run = await n.run_until(mail_flow(**recipients), "mail", {"q": Rendered(ROWS, ["State", "n"])})
        with pytest.raises(DeliveryError) as caught:
            await n.step.perform(run)
        sent = n.outbox.messages()

    error = caught.value
    assert error.code is ErrorCode.RECIPIENT_NOT_ALLOWED
    assert error.retryable is False
    assert error.message.startswith(f"{field}: ")
    assert "outside the domains this server sends to (example.com)" in error.message
    assert sent == []


async def test_subdomains_of_an_allowed_domain_in_any_case_are_sent_to(notifier: NotifierFactory) -> None:
    recipients = {"to": ["Ana@Example.COM"], "cc": ["bo@reports.example.com"], "bcc": ["cy@EU.Example.com"]}

    async with notifier(email_allowed_domains=["example.com"]) as n:
        run = await n.run_until(mail_flow(**recipients), "mail", {"q": Rendered(ROWS, ["State", "n"])})
        output = await n.step.perform(run)
        received = await n.received_email()

    assert [a.addr_spec for a in received["To"].addresses] == ["Ana@example.com"]
    assert output.detail["recipients"] == ["Ana@example.com", "bo@reports.example.com", "cy@eu.example.com"]
