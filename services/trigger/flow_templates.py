"""The example flows adxflow ships, offered as templates to start a flow from.

They are this package's data (``services/trigger/examples/*.yaml``; the
repository's ``examples/`` is a link to that folder), so an installed package
or the container image serves the same files as a checkout. A template is
named after its file and keeps the text as written, its comments with it: the
header comment says what the example does and what the operator configures for
it; :attr:`FlowTemplate.needs` lists that configuration by name.
"""

from __future__ import annotations

import functools
import importlib.resources

import yaml
from pydantic import BaseModel, ConfigDict, Field

from common.contracts.actions import KUSTO_STEPS, CopyToDatabase, IngestToKusto, PostWebhook
from common.contracts.flows import Flow

_FOLDER = "examples"


class FlowTemplate(BaseModel):
    """One example flow as a template: its text, what it does and what it needs configured."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The template's name (its file's, without `.yaml`).")
    flow: str = Field(description="The name of the flow it saves as, unless renamed.")
    description: str
    about: str = Field(description="The header comment: what the flow does and how to set it up.")
    needs: list[str] = Field(
        description="What the operator configures before it can be saved here, beyond the "
        "connection it names: webhooks, databases, mute windows (none: it runs as it is)."
    )
    yaml: str = Field(description="The flow as YAML, comments included: edit it, then save it.")


class FlowTemplates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    templates: list[FlowTemplate]


@functools.cache
def flow_templates() -> dict[str, FlowTemplate]:
    """Every shipped example by template name, in name order."""
    folder = importlib.resources.files(__package__ or "services.trigger") / _FOLDER
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".yaml"):
            template = _template(entry.name.removesuffix(".yaml"), entry.read_text(encoding="utf-8"))
            found[template.name] = template
    return found


def _template(name: str, text: str) -> FlowTemplate:
    flow = Flow.model_validate(yaml.safe_load(text))
    return FlowTemplate(
        name=name,
        flow=flow.name,
        description=flow.description or "",
        about=_header(text),
        needs=needs_of(flow),
        yaml=text,
    )


def _header(text: str) -> str:
    """The comment lines a text starts with, without their ``#``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.removeprefix("#").removeprefix(" "))
    return "\n".join(lines).strip()


def needs_of(flow: Flow) -> list[str]:
    """The operator's configuration *flow* names besides its connections, each once, in step order."""
    needs: list[str] = []
    for place in flow.places.values():
        step = place.spec
        if isinstance(step, PostWebhook) and step.webhook is not None:
            needs.append(f"webhook {step.webhook!r} (webhooks: in the connections file)")
        if isinstance(step, CopyToDatabase):
            needs.append(
                f"database {step.database!r} with table {step.table!r} allowed "
                "(databases: in the connections file)"
            )
        if isinstance(step, IngestToKusto) and step.from_sql is not None:
            needs.append(
                f"database {step.from_sql.database!r} that flows may read "
                "(databases: in the connections file, reads: true)"
            )
        if isinstance(step, IngestToKusto) and step.from_file is not None and step.from_file.url:
            needs.append("the file's host on the ingestion allowlist")
        if isinstance(step, KUSTO_STEPS) and step.alert is not None:
            needs.extend(
                f"mute window {window!r} (mute_windows: in the connections file)"
                for window in step.alert.mute_windows
            )
    return list(dict.fromkeys(needs))
