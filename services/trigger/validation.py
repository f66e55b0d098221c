"""What a flow must satisfy on this server, beyond its own structure.

The flow document checks itself (ids, actions, references, templates); this
checks it against the operator's configuration: connections that exist,
schedules within the minimum interval, parameters a schedule can fill,
webhook targets the policy allows and email recipients in the allowed domains.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from common.contracts.actions import COMMAND_STEPS, KUSTO_STEPS, PostWebhook, SendEmail
from common.contracts.flows import Flow
from common.contracts.operators import describe, refused_operators
from common.platform.connections import Connections
from common.platform.webhooks import WebhookPolicy, WebhookRefused
from services.trigger.schedule import Schedule, ScheduleError


class FlowInvalid(ValueError):
    """Problems that keep a flow from being saved, each naming its field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {problem}" for field, problem in problems))
        self.problems = problems


def check_flow(
    flow: Flow,
    *,
    connections: Connections,
    policy: WebhookPolicy,
    minimum_interval: dt.timedelta,
    maximum_timeout: float,
    maximum_rows: int | None = None,
    maximum_bytes: int | None = None,
    allowed_operators: Collection[str] = (),
    allowed_domains: Sequence[str] = (),
    followed_by: dict[str, str | None] | None = None,
) -> None:
    """Raise FlowInvalid listing everything wrong with *flow* here.

    *allowed_domains* are those email may go to (none: any). *followed_by* maps
    each saved flow to the flow it runs after, to refuse a chain that would loop.
    """
    problems: list[tuple[str, str]] = []
    if flow.connection not in connections:
        problems.append(("connection", f"{flow.connection!r} is not a configured connection"))
    for index, step in enumerate(flow.steps):
        if isinstance(step, KUSTO_STEPS) and step.connection and step.connection not in connections:
            problems.append(
                (f"steps[{index}].connection", f"{step.connection!r} is not a configured connection")
            )
        if isinstance(step, KUSTO_STEPS) and step.timeout_seconds and step.timeout_seconds > maximum_timeout:
            problems.append(
                (f"steps[{index}].timeout_seconds", f"at most {maximum_timeout:g} s on this server")
            )
        if isinstance(step, KUSTO_STEPS):
            caps = [("max_rows", step.max_rows, maximum_rows), ("max_bytes", step.max_bytes, maximum_bytes)]
            for name, asked, ceiling in caps:
                if asked is not None and ceiling is not None and asked > ceiling:
                    problems.append((f"steps[{index}].{name}", f"at most {ceiling:,} on this server"))
            text_field = "command" if isinstance(step, COMMAND_STEPS) else "query"
            uses = refused_operators(getattr(step, text_field), allowed=allowed_operators)
            if uses:
                problems.append((f"steps[{index}].{text_field}", describe(uses)))
        if isinstance(step, PostWebhook):
            try:
                policy.resolve(webhook=step.webhook, url=step.url, field=f"steps[{index}]")
            except WebhookRefused as exc:
                field, _, problem = str(exc).partition(": ")
                problems.append((field, problem))
        if isinstance(step, SendEmail):
            for field, address in step.recipients_outside(allowed_domains):
                problems.append(
                    (
                        f"steps[{index}].{field}",
                        f"{address!r} is outside the domains this server sends to "
                        f"({', '.join(allowed_domains)})",
                    )
                )
    trigger = flow.trigger
    if trigger.cron is not None or trigger.every is not None:
        try:
            Schedule.build(
                cron=trigger.cron,
                every=trigger.every,
                timezone=trigger.timezone,
                minimum_interval=minimum_interval,
            )
        except ScheduleError as exc:
            problems.append((exc.field, exc.problem))
    if trigger.kind in ("cron", "every", "after"):
        for name, spec in flow.parameters.items():
            if spec.default is None:
                problems.append(
                    (f"parameters.{name}", f"a {trigger.kind} trigger cannot supply it; give it a default")
                )
    if trigger.after is not None:
        chain: list[str] = [flow.name]
        parent: str | None = trigger.after.flow
        links = followed_by or {}
        while parent is not None:
            if parent in chain:
                loop = " → ".join([*chain, parent])
                problems.append(("trigger.after.flow", f"the chain would loop: {loop}"))
                break
            chain.append(parent)
            parent = links.get(parent)
    if problems:
        raise FlowInvalid(problems)
