"""What a flow must satisfy on this server, beyond its own structure.

The flow document checks itself (ids, actions, references, templates); this
checks it against the operator's configuration: connections that exist,
schedules within the minimum interval, parameters a schedule can fill,
webhook targets the policy allows and email recipients in the allowed domains.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator, Sequence

from common.contracts.actions import (
    COMMAND_STEPS,
    KUSTO_STEPS,
    CopyToDatabase,
    ForEach,
    IngestToKusto,
    KustoStep,
    PostWebhook,
    SendEmail,
)
from common.contracts.errors import DatabaseError, UnknownConnection
from common.contracts.flows import Flow
from common.contracts.operators import describe, refused_operators
from common.platform.connections import Connections
from common.platform.sql.reads import bound_names
from common.platform.sql.schema import check_request
from common.platform.webhooks import WebhookPolicy, WebhookRefused
from services.trigger.schedule import Schedule, ScheduleError

#: A field of the flow and what is wrong with it here.
Problem = tuple[str, str]


class FlowInvalid(ValueError):
    """Problems that keep a flow from being saved, each naming its field."""

    def __init__(self, problems: list[Problem]) -> None:
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
    maximum_concurrency: int | None = None,
    maximum_items: int | None = None,
    ingest_urls: WebhookPolicy | None = None,
) -> None:
    """Raise FlowInvalid listing everything wrong with *flow* here.

    *allowed_domains* are those email may go to (none: any). *followed_by* maps
    each saved flow to the flow it runs after, to refuse a chain that would loop.
    """
    problems: list[Problem] = []
    if flow.connection not in connections:
        problems.append(("connection", f"{flow.connection!r} is not a configured connection"))
    for place in flow.places.values():
        step, where = place.spec, place.where
        if isinstance(step, ForEach):
            problems.extend(_scope_problems(step, where, maximum_concurrency, maximum_items))
        if isinstance(step, KUSTO_STEPS):
            problems.extend(_connection_problems(step, where, connections))
            problems.extend(_limit_problems(step, where, maximum_timeout, maximum_rows, maximum_bytes))
            problems.extend(_operator_problems(step, where, allowed_operators))
            problems.extend(_mute_window_problems(step, where, connections))
        if isinstance(step, PostWebhook):
            problems.extend(_webhook_problems(step, where, policy))
        if isinstance(step, CopyToDatabase):
            problems.extend(_copy_problems(step, where, connections))
            if step.query is not None:
                problems.extend(_connection_problems(step, where, connections))
                problems.extend(_limit_problems(step, where, maximum_timeout, maximum_rows, maximum_bytes))
                problems.extend(_operator_problems(step, where, allowed_operators))
        if isinstance(step, IngestToKusto):
            problems.extend(_ingest_problems(flow, step, where, connections, ingest_urls))
        if isinstance(step, SendEmail):
            problems.extend(_recipient_problems(step, where, allowed_domains))
    problems.extend(_schedule_problems(flow, minimum_interval))
    problems.extend(_parameter_problems(flow))
    problems.extend(_chain_problems(flow, followed_by or {}))
    if problems:
        raise FlowInvalid(problems)


def _connection_problems(
    step: KustoStep | CopyToDatabase, where: str, connections: Connections
) -> Iterator[Problem]:
    if step.connection and step.connection not in connections:
        yield f"{where}.connection", f"{step.connection!r} is not a configured connection"


def _mute_window_problems(step: KustoStep, where: str, connections: Connections) -> Iterator[Problem]:
    for index, name in enumerate(step.alert.mute_windows if step.alert else []):
        if name not in connections.mute_windows:
            known = ", ".join(sorted(connections.mute_windows)) or "none are configured"
            yield (
                f"{where}.alert.mute_windows[{index}]",
                f"{name!r} is not a configured mute window (known: {known})",
            )


def _copy_problems(step: CopyToDatabase, where: str, connections: Connections) -> Iterator[Problem]:
    """A copy into a database the operator did not configure, or a table its allowlist does not admit."""
    try:
        config = connections.database(step.database)
    except UnknownConnection as exc:
        yield (f"{where}.database", exc.message)
        return
    try:
        check_request(step.database, config, step.table, step.mode, step.key_columns)
    except DatabaseError as exc:
        yield (f"{where}.table", exc.message)


def _ingest_problems(
    flow: Flow, step: IngestToKusto, where: str, connections: Connections, urls: WebhookPolicy | None
) -> Iterator[Problem]:
    """An ingestion from a database the operator does not let flows read, with a query binding a
    parameter nobody gives, from a URL off the ingestion allowlist, or into a connection that is not
    configured."""
    if step.connection and step.connection not in connections:
        yield f"{where}.connection", f"{step.connection!r} is not a configured connection"
    if step.from_file is not None and step.from_file.url is not None and "{" not in step.from_file.url:
        # A URL with a template is checked when it is rendered, before anything is fetched.
        policy = urls or WebhookPolicy(named={}, allowed_hosts=[], allowlist="ingestion allowlist")
        try:
            policy.allowed(step.from_file.url, f"{where}.from_file.url")
        except WebhookRefused as exc:
            field, _, problem = str(exc).partition(": ")
            yield field, problem
    source = step.from_sql
    if source is None:
        return
    try:
        config = connections.database(source.database)
    except UnknownConnection as exc:
        yield (f"{where}.from_sql.database", exc.message)
    else:
        if not config.reads:
            yield (
                f"{where}.from_sql.database",
                f"database {source.database!r} is not one flows may read (the operator allows it "
                "with 'reads: true')",
            )
    given = set(flow.parameters) | set(source.parameters)
    for name in bound_names(source.query):
        if name not in given:
            yield (
                f"{where}.from_sql.query",
                f"the query binds :{name}, which is neither a parameter of the flow nor of from_sql",
            )


def _limit_problems(
    step: KustoStep | CopyToDatabase,
    where: str,
    maximum_timeout: float,
    maximum_rows: int | None,
    maximum_bytes: int | None,
) -> Iterator[Problem]:
    """A timeout or a result cap above what this server allows."""
    if step.timeout_seconds and step.timeout_seconds > maximum_timeout:
        yield f"{where}.timeout_seconds", f"at most {maximum_timeout:g} s on this server"
    caps = [("max_rows", step.max_rows, maximum_rows), ("max_bytes", step.max_bytes, maximum_bytes)]
    for name, asked, ceiling in caps:
        if asked is not None and ceiling is not None and asked > ceiling:
            yield f"{where}.{name}", f"at most {ceiling:,} on this server"


def _scope_problems(
    step: ForEach, where: str, maximum_concurrency: int | None, maximum_items: int | None
) -> Iterator[Problem]:
    """A for_each asking for more iterations at once, or more rows, than this server allows."""
    limits = [
        ("concurrency", step.concurrency, maximum_concurrency),
        ("max_items", step.max_items, maximum_items),
    ]
    for name, asked, ceiling in limits:
        if ceiling is not None and asked > ceiling:
            yield f"{where}.{name}", f"at most {ceiling:,} on this server"


def _operator_problems(
    step: KustoStep | CopyToDatabase, where: str, allowed_operators: Collection[str]
) -> Iterator[Problem]:
    text_field = "command" if isinstance(step, COMMAND_STEPS) else "query"
    uses = refused_operators(getattr(step, text_field), allowed=allowed_operators)
    if uses:
        yield f"{where}.{text_field}", describe(uses)


def _webhook_problems(step: PostWebhook, where: str, policy: WebhookPolicy) -> Iterator[Problem]:
    try:
        policy.resolve(webhook=step.webhook, url=step.url, field=where)
    except WebhookRefused as exc:
        field, _, problem = str(exc).partition(": ")
        yield field, problem


def _recipient_problems(step: SendEmail, where: str, allowed_domains: Sequence[str]) -> Iterator[Problem]:
    for field, address in step.recipients_outside(allowed_domains):
        yield (
            f"{where}.{field}",
            f"{address!r} is outside the domains this server sends to ({', '.join(allowed_domains)})",
        )


def _schedule_problems(flow: Flow, minimum_interval: dt.timedelta) -> Iterator[Problem]:
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
            yield exc.field, exc.problem


def _parameter_problems(flow: Flow) -> Iterator[Problem]:
    """Parameters without a default, which only a person starting the run can supply."""
    kind = flow.trigger.kind
    if kind in ("cron", "every", "after"):
        for name, spec in flow.parameters.items():
            if spec.default is None:
                yield f"parameters.{name}", f"a {kind} trigger cannot supply it; give it a default"


def _chain_problems(flow: Flow, followed_by: dict[str, str | None]) -> Iterator[Problem]:
    """A flow that would, through the flows it runs after, end up running after itself."""
    if flow.trigger.after is None:
        return
    chain: list[str] = [flow.name]
    parent: str | None = flow.trigger.after.flow
    while parent is not None:
        if parent in chain:
            loop = " → ".join([*chain, parent])
            yield "trigger.after.flow", f"the chain would loop: {loop}"
            return
        chain.append(parent)
        parent = followed_by.get(parent)
