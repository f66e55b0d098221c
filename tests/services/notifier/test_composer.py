"""An email composed from the run's outputs: after a parallel step, the branches' too."""

from __future__ import annotations

from typing import Any

from tests.services.notifier.conftest import NotifierFactory, Rendered, png_of

COLUMNS = ["State", "Events"]
ROWS = [["TEXAS", "12"], ["KANSAS", "9"]]


def dashboard(**mail: Any) -> dict[str, Any]:
    """Two charts drawn in parallel branches, then one email."""
    return {
        "name": "dashboard",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "queries",
                "parallel": [
                    {
                        "id": f"lane_{name}",
                        "steps": [
                            {
                                "id": name,
                                "action": "run_query_and_render_chart",
                                "query": "StormEvents | summarize Events = count() by State",
                                "chart": "piechart",
                                "title": f"Chart {name}",
                            }
                        ],
                    }
                    for name in ("first", "second")
                ],
            },
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Charts", **mail},
        ],
    }


RENDERED = {name: Rendered(ROWS, COLUMNS, png=png_of(320, 200)) for name in ("first", "second")}


async def test_the_default_body_after_a_parallel_step_shows_every_branchs_chart(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n:
        run = await n.run_until(dashboard(attachments=["first", "second"]), "mail", RENDERED)
        await n.step.perform(run)
        received = await n.received_email()

    html = received.get_body(preferencelist=("html",))
    assert html is not None
    body = str(html.get_content())
    assert "Chart first" in body
    assert "Chart second" in body
    inline = [part for part in received.walk() if part["Content-ID"]]
    assert len(inline) == 2
    for part in inline:
        assert f"cid:{part['Content-ID'].strip('<>')}" in body
    attached = {part.get_filename() for part in received.iter_attachments()}
    assert attached == {"first.csv", "first.png", "second.csv", "second.png"}


async def test_a_body_template_after_a_parallel_step_reads_the_branches_bodies(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n:
        run = await n.run_until(dashboard(body_html="{{ steps.second.body_html }}"), "mail", RENDERED)
        await n.step.perform(run)
        received = await n.received_email()

    (chart,) = [part for part in received.walk() if part["Content-ID"]]
    assert chart["Content-ID"].strip("<>").startswith("chart.second.")
