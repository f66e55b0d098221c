"""Optimistic concurrency for flow edits: a flow's ETag and the ``If-Match`` precondition.

A flow's ETag is its version as a strong entity tag (RFC 9110, 8.8.3): ``"3"``.
``GET /v1/flows/{name}`` answers with it; a ``PUT`` or ``DELETE`` that sends it
back in ``If-Match`` changes the flow only if nobody saved it in between, and
is refused with 412, naming the version it is at now, otherwise. ``If-Match:
*`` asks only that the flow exist. Without ``If-Match`` the last writer wins,
as before. The comparison is made by the database, in the statement that
writes (see :class:`~services.trigger.store.FlowStore`), so of two writers
holding the same ETag exactly one wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.platform.routes import InvalidParameter

#: One entity tag of an If-Match list: optionally weak, then a quoted opaque tag.
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def etag(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class IfMatch:
    """What an ``If-Match`` header asks: any current flow (``*``), or one of these versions."""

    versions: frozenset[int] | None

    @property
    def any(self) -> bool:
        return self.versions is None

    def matches(self, version: int | None) -> bool:
        if version is None:
            return False
        return self.versions is None or version in self.versions

    @classmethod
    def of(cls, header: str | None) -> IfMatch | None:
        """The header's precondition, None without one; `InvalidParameter` naming it when malformed."""
        if header is None:
            return None
        if header.strip() == "*":
            return cls(None)
        versions: set[int] = set()
        position = 0
        while position < len(header):
            found = _TAG.match(header, position)
            if found is None or found.end() == position:
                raise InvalidParameter(
                    "If-Match", 'expected * or entity tags such as "3" (the ETag of GET /v1/flows/{name})'
                )
            position = found.end()
            weak, opaque = found.groups()
            # If-Match compares strongly: a weak tag never matches; a tag that is no version of
            # ours matches no flow either.
            if not weak and opaque.isdigit():
                versions.add(int(opaque))
        if not versions and not header.strip():
            raise InvalidParameter("If-Match", "empty; send * or an entity tag")
        return cls(frozenset(versions))


class PreconditionFailed(Exception):
    """A write whose If-Match did not match the flow as it is now (*current*: None if there is none)."""

    def __init__(self, name: str, current: int | None) -> None:
        if current is None:
            message = f"If-Match: flow {name!r} does not exist, so no ETag of it matches"
        else:
            message = (
                f"If-Match: flow {name!r} is at version {current} (ETag {etag(current)}) now; "
                "it changed since it was read: GET it again, and apply the change to that version"
            )
        super().__init__(message)
        self.name = name
        self.current = current
        self.message = message
