"""Flow documents: strict where people write them, tolerant where a newer release wrote them.

A flow arrives from the HTTP API, a file or the CLI, and there an unknown key
is a mistake: it is refused, naming it. The same document is read back later
from the database and from every run message, and during a rolling upgrade a
newer replica may have saved it with a key this release does not know (a new
optional setting of a step, say). Read back with :data:`READ_BACK` as the
validation context, a document's unknown keys are left out rather than
refused: this release runs the flow as it understands it. Where the key
lives on is the run message: a run a newer trigger started carries the
document as it was written, and a service of this release forwards it
unchanged, so the newer services after it still see the key. A run this
release's trigger starts carries the flow as this release understands it,
without the key; and a flow read from this release's API and saved back
through it loses the key too (GET it from, and PUT it to, a newer replica).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

#: The validation context of a document read back from storage or a message.
READ_BACK: dict[str, Any] = {"read_back": True}


class Document(BaseModel):
    """A part of a flow document: unknown keys refused, but for a document read back."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _newer_keys_left_out(cls, data: Any, info: ValidationInfo) -> Any:
        if not (info.context or {}).get("read_back") or not isinstance(data, dict):
            return data
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        return {key: value for key, value in data.items() if key in known}


def known_zone(value: str) -> str:
    """*value* if it names an IANA time zone this machine knows; a ValueError saying so otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{value!r} is not an IANA time zone (such as Europe/Berlin)") from None
    if value == "localtime":
        raise ValueError("'localtime' depends on the server; name the zone, such as Europe/Berlin")
    return value
