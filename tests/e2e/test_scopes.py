"""Scope steps end to end: for_each over a query's rows, if with else, parallel branches.

Against the embedded system (in-process broker, SQLite) and the deployed column (RabbitMQ, and
PostgreSQL where the parameter says so), with the local Kusto endpoint and a real SMTP server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import System

DEADLY = "StormEvents | where DeathsDirect >= 3 | top 6 by EventId asc | project EventId, State, DeathsDirect"


def _per_row_flow(hook: str, **scope: Any) -> dict[str, Any]:
    return {
        "name": "per-incident",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "incidents", "action": "run_query", "query": DEADLY},
            {
                "id": "each",
                "for_each": "incidents",
                "concurrency": 2,
                **scope,
                "steps": [
                    {
                        "id": "check",
                        "if": "{{ row.DeathsDirect >= 5 }}",
                        "then": [
                            {
                                "id": "similar",
                                "action": "run_query",
                                "parameters": {"state": {"type": "string", "value": "{{ row.State }}"}},
                                "query": "StormEvents | where State == state | count",
                            },
                            {
                                "id": "post",
                                "action": "post_webhook",
                                "url": hook,
                                "body": (
                                    '{"event": {{ row.EventId }}, '
                                    '"similar": {{ steps.similar.first_row.Count }}}'
                                ),
                            },
                        ],
                        "else": [
                            {
                                "id": "small",
                                "action": "post_webhook",
                                "url": hook,
                                "body": '{"event": {{ row.EventId }}, "small": true}',
                            }
                        ],
                    }
                ],
            },
            {
                "id": "summary",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "{{ steps.each.succeeded }} of {{ steps.each.total }} incidents handled",
                "body_html": "<p>{{ steps.each.iterations | length }} listed</p>",
            },
        ],
    }


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_for_each_runs_its_steps_once_per_row_and_the_flow_goes_on_after_all(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    started = await system.start_flow("per-incident")
    run = await system.finished(started["run_id"], timeout=120)
    assert run["status"] == "succeeded", run

    bodies = [json.loads(body) for _, body in system.hooks.received]
    assert len(bodies) == 6
    assert len({body["event"] for body in bodies}) == 6
    big = [body for body in bodies if "similar" in body]
    assert big
    assert all(body["similar"] > 0 for body in big)
    mails = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert len(mails) == 1
    assert "6 of 6 incidents handled" in mails[0]
    each = next(step for step in run["steps"] if step["step_id"] == "each")
    assert each["status"] == "succeeded"
    assert (each["detail"]["total"], each["detail"]["succeeded"], each["detail"]["failed"]) == (6, 6, 0)


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_iterations_are_listed_under_their_step_and_not_among_the_flows_runs(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    started = await system.start_flow("per-incident")
    parent = await system.finished(started["run_id"], timeout=120)
    assert parent["status"] == "succeeded", parent

    listed = await system.get("/v1/runs?flow=per-incident")
    assert [run["run_id"] for run in listed["runs"]] == [parent["run_id"]]
    everything = await system.get("/v1/runs?flow=per-incident&children=true")
    assert len(everything["runs"]) == 7
    stats = await system.get("/v1/flows/per-incident/stats?window=1h")
    assert stats["runs"] == 1

    await all_recorded(system, f"/v1/runs/{parent['run_id']}/steps/each/iterations", 6)
    first = await system.get(f"/v1/runs/{parent['run_id']}/steps/each/iterations?limit=4")
    assert first["counts"] == {
        "total": 6,
        "waiting": 0,
        "running": 0,
        "succeeded": 6,
        "failed": 0,
        "skipped": 0,
    }
    assert [run["scope"]["index"] for run in first["iterations"]] == [0, 1, 2, 3]
    assert {run["scope"]["run_id"] for run in first["iterations"]} == {parent["run_id"]}
    rest = await system.get(
        f"/v1/runs/{parent['run_id']}/steps/each/iterations?limit=4&cursor={first['next_cursor']}"
    )
    assert [run["scope"]["index"] for run in rest["iterations"]] == [4, 5]
    assert rest["next_cursor"] is None
    failed = await system.get(f"/v1/runs/{parent['run_id']}/steps/each/iterations?status=failed")
    assert failed["iterations"] == []

    child = first["iterations"][0]
    child_run = await system.get(f"/v1/runs/{child['run_id']}")
    assert child_run["scope"] == {"run_id": parent["run_id"], "step_id": "each", "index": 0, "branch": None}
    async with system.session.get(f"{system.history_url}/ui/runs/{parent['run_id']}") as response:
        page = await response.text()
        assert response.status == 200, page
    assert 'data-iterations="each"' in page
    assert page.count(f'href="/ui/runs/{child["run_id"]}"') == 1
    assert "6 in all: 6 succeeded" in " ".join(page.split())
    async with system.session.get(f"{system.history_url}/ui/runs/{child['run_id']}") as response:
        child_page = await response.text()
    assert f'href="/ui/runs/{parent["run_id"]}#step-each" data-parent-run' in child_page
    assert "Iteration 0 of per-incident" in child_page

    async with system.session.get(
        f"{system.history_url}/v1/runs/{parent['run_id']}/steps/summary/iterations"
    ) as bad:
        assert bad.status == 400
        assert "not a for_each or parallel step" in (await bad.json())["error"]["message"]


async def all_recorded(system: System, iterations: str, expected: int) -> None:
    """Wait until history has ended every child run of the scope as succeeded (see below)."""

    async def recorded() -> bool:
        return bool((await system.get(iterations))["counts"]["succeeded"] == expected)

    await system.wait_until(recorded, timeout=30, what=f"{expected} succeeded iterations in history")


async def recorded_failures(system: System, iterations: str, expected: int) -> list[dict[str, Any]]:
    """The failed iterations, once history has recorded all *expected* of them.

    The parent can fail before history has ended its last failed child run: the join that tells the
    parent comes before the child's own record step.
    """
    found: list[dict[str, Any]] = []

    async def recorded() -> bool:
        found[:] = (await system.get(f"{iterations}?status=failed"))["iterations"]
        return len(found) >= expected

    await system.wait_until(recorded, timeout=30, what=f"{expected} failed iterations in history")
    assert len(found) == expected
    return found


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_re_run_of_a_failed_iteration_runs_only_it_and_the_parent_goes_on(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    # The else branch's deliveries are refused: those iterations fail, the others go on.
    system.hooks.refusing = {b"small"}
    started = await system.start_flow("per-incident")
    parent = await system.finished(started["run_id"], timeout=120)
    assert parent["status"] == "failed", parent
    assert (parent["failed_step"], parent["error"]["code"]) == ("each", "IterationsFailed")
    small = len(system.hooks.refused)
    assert 2 <= small < 6
    assert len(system.hooks.received) == 6 - small
    assert system.smtp.messages() == []
    base = f"/v1/runs/{parent['run_id']}/steps/each/iterations"
    failed = await recorded_failures(system, base, small)

    system.hooks.refusing = set()
    first, *others = failed
    status, queued = await system.post(f"/v1/runs/{first['run_id']}/rerun")
    assert status == 202, queued
    again = await system.finished(first["run_id"], timeout=60)
    assert again["status"] == "succeeded", again

    async def counted() -> bool:
        page = await system.get(base)
        return bool(page["counts"]["failed"] == small - 1 and page["counts"]["succeeded"] == 6 - small + 1)

    await system.wait_until(counted, timeout=30, what="the scope to count the re-run iteration")
    # Only that iteration ran again: one more delivery, and the parent is still failed.
    assert len(system.hooks.received) == 6 - small + 1
    assert (await system.finished(parent["run_id"]))["status"] == "failed"

    for other in others:
        status, queued = await system.post(f"/v1/runs/{other['run_id']}/rerun")
        assert status == 202, queued

    async def parent_succeeded() -> bool:
        run = await system.run(parent["run_id"])
        return run is not None and run["status"] == "succeeded"

    await system.wait_until(parent_succeeded, timeout=60, what="the parent to go on once every iteration did")
    assert len(system.hooks.received) == 6
    mails = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert len(mails) == 1
    assert "6 of 6 incidents handled" in mails[0]
    each = [step for step in (await system.finished(parent["run_id"]))["steps"] if step["step_id"] == "each"]
    assert [step["status"] for step in each] == ["failed", "succeeded"]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_re_run_of_the_parent_runs_again_only_the_iterations_that_failed(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    system.hooks.refusing = {b"small"}
    started = await system.start_flow("per-incident")
    parent = await system.finished(started["run_id"], timeout=120)
    assert (parent["status"], parent["failed_step"]) == ("failed", "each")
    small = len(system.hooks.refused)
    base = f"/v1/runs/{parent['run_id']}/steps/each/iterations"
    failed = {run["scope"]["index"] for run in await recorded_failures(system, base, small)}
    before = {run["scope"]["index"]: run["run_id"] for run in (await system.get(base))["iterations"]}

    system.hooks.refusing = set()
    status, queued = await system.post(f"/v1/runs/{parent['run_id']}/rerun")
    assert status == 202, queued
    assert queued["queued"]["step_id"] == "each"

    async def parent_succeeded() -> bool:
        run = await system.run(parent["run_id"])
        return run is not None and run["status"] == "succeeded"

    await system.wait_until(parent_succeeded, timeout=60, what="the re-run parent to succeed")
    await all_recorded(system, base, 6)
    after = {run["scope"]["index"]: run["run_id"] for run in (await system.get(base))["iterations"]}
    # The failed iterations ran again as new child runs; the ones that had succeeded did not.
    assert {index for index in after if after[index] != before[index]} == failed
    assert len(system.hooks.received) == 6
    page = await system.get(base)
    assert page["counts"]["succeeded"] == 6
    mails = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert len(mails) == 1
    assert "6 of 6 incidents handled" in mails[0]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_parallel_branches_run_as_child_runs_and_later_steps_see_each_branchs_outputs(
    system: System,
) -> None:
    await system.save_flow(
        {
            "name": "three-ways",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "all",
                    "parallel": [
                        {
                            "id": "states",
                            "steps": [
                                {"id": "s", "action": "run_query", "query": "StormEvents | distinct State"}
                            ],
                        },
                        {
                            "id": "types",
                            "steps": [
                                {
                                    "id": "t",
                                    "action": "run_query",
                                    "query": "StormEvents | distinct EventType",
                                }
                            ],
                        },
                        {
                            "id": "total",
                            "steps": [{"id": "n", "action": "run_query", "query": "StormEvents | count"}],
                        },
                    ],
                },
                {
                    "id": "big",
                    "if": "{{ steps.n.first_row.Count > 1000 }}",
                    "then": [],
                    "else": [],
                },
                {
                    "id": "mail",
                    "action": "send_email",
                    "to": ["team@example.com"],
                    "subject": "{{ steps.s.row_count }} states, {{ steps.t.row_count }} types",
                    "body_html": "<p>{{ steps.all.iterations | length }} branches</p>",
                },
            ],
        }
    )
    started = await system.start_flow("three-ways")
    run = await system.finished(started["run_id"], timeout=60)
    assert run["status"] == "succeeded", run
    await all_recorded(system, f"/v1/runs/{run['run_id']}/steps/all/iterations", 3)
    branches = (await system.get(f"/v1/runs/{run['run_id']}/steps/all/iterations"))["iterations"]
    assert [(b["scope"]["branch"], b["scope"]["index"], b["status"]) for b in branches] == [
        ("states", 0, "succeeded"),
        ("types", 1, "succeeded"),
        ("total", 2, "succeeded"),
    ]
    rows = {}
    for branch in branches:
        child = await system.get(f"/v1/runs/{branch['run_id']}")
        [query] = [step for step in child["steps"] if step["kind"] == "query"]
        rows[query["step_id"]] = query["row_count"]
    [mail] = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert "3 branches" in mail
    assert f"{rows['s']} states, {rows['t']} types" in mail
    assert rows["s"] > 1
    assert rows["t"] > 1
    big = next(step for step in run["steps"] if step["step_id"] == "big")
    assert big["detail"]["branch"] in ("then", "else")

    async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
        page = await response.text()
        assert response.status == 200, page
    assert 'aria-label="Branches of all, side by side"' in page
    assert [f'data-branch="{name}"' in page for name in ("states", "types", "total")] == [True] * 3
    assert f'data-branch-taken="{big["detail"]["branch"]}"' in page
    async with system.session.get(
        f"{system.history_url}/v1/runs/{run['run_id']}/steps/big/iterations"
    ) as bad:
        assert bad.status == 400
        assert "not a for_each or parallel step" in (await bad.json())["error"]["message"]


@pytest.mark.azurite
@pytest.mark.blob_backend("azure")
@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_for_each_streams_its_rows_from_azure_blob_storage(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    started = await system.start_flow("per-incident")
    run = await system.finished(started["run_id"], timeout=120)
    assert run["status"] == "succeeded", run
    assert len({json.loads(body)["event"] for _, body in system.hooks.received}) == 6
