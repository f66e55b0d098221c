"""The links a report carries beside its content: the run's page, and each query in the web UI."""

from __future__ import annotations

from common.contracts.actions import KUSTO_STEPS
from common.contracts.errors import UnknownConnection
from common.contracts.flows import Flow
from common.contracts.messages import RunMessage
from common.contracts.parameters import ParameterType
from common.platform.connections import Connections
from common.platform.deep_links import query_link


def run_page(history_url: str, run_id: str) -> str:
    """The run's page in the history UI (the API's JSON is one link further, from the page)."""
    return f"{history_url.rstrip('/')}/ui/runs/{run_id}"


def query_links(message: RunMessage, flow: Flow, connections: Connections) -> dict[str, str]:
    """Each Kusto step the run has an outcome of, by id: its query in the web UI, as it was sent.

    Only for a cluster whose connection has a web UI (see :mod:`common.platform.deep_links`).
    """
    links: dict[str, str] = {}
    for spec in flow.every_step():
        output = message.outputs.get(spec.id)
        if not isinstance(spec, KUSTO_STEPS) or output is None:
            continue
        text = output.detail.get("text")
        if not isinstance(text, str):
            continue
        try:
            config = connections.get(spec.connection or flow.connection)
        except UnknownConnection:
            continue
        types: dict[str, ParameterType] = {name: declared.type for name, declared in flow.parameters.items()}
        types.update({name: declared.type for name, declared in spec.parameters.items()})
        values = output.detail.get("parameters") or {}
        typed = {name: (types[name].value, value) for name, value in values.items() if name in types}
        link = query_link(config.ui_base, spec.database or flow.database, text, typed)
        if link is not None:
            links[spec.id] = link
    return links
