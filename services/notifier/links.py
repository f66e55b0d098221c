"""The links a report carries beside its content: the run's page, each query in the web UI, and
the files the run exported."""

from __future__ import annotations

from collections.abc import Callable

from common.contracts.actions import KUSTO_STEPS, ExportToFile
from common.contracts.errors import UnknownConnection
from common.contracts.flows import Flow
from common.contracts.messages import BlobRef, RunMessage, StepStatus
from common.contracts.parameters import ParameterType
from common.platform.connections import Connections
from common.platform.deep_links import query_link
from services.notifier.email import Link


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


def exported_files(message: RunMessage, flow: Flow, artifact_url: Callable[[BlobRef], str]) -> list[Link]:
    """The file of each export step the run holds a succeeded outcome of, in the flow's order."""
    links = []
    for spec in flow.every_step():
        output = message.outputs.get(spec.id)
        if not isinstance(spec, ExportToFile) or output is None or output.status is not StepStatus.SUCCEEDED:
            continue
        ref = output.artifacts.get("file")
        if ref is not None:
            name = str((output.detail.get("file") or {}).get("name") or ref.key.rsplit("/", 1)[-1])
            links.append(Link(name, ref.size, artifact_url(ref)))
    return links
