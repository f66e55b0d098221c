"""Links to a query in the Azure Data Explorer web UI, as a report carries them.

The UI's documented deep links (learn.microsoft.com, "UI deep links") are the cluster's
own URL with the database as the path and the query as ``query``: plain, or, as here,
``base64(gzip(text))`` so that a long query stays within the length browsers allow. The
link opens the query with the values the run used: the parameters are declared with them
as defaults (``declare query_parameters(state:string = "TEXAS");``), so it runs as it ran.
A connection may name another base (``ui_url``, a proxy or a sovereign cloud's UI) or
none (``query_links: false``); a local ``http://`` endpoint has no UI and gets no link.
"""

from __future__ import annotations

import base64
import gzip
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

#: A query parameter as a link declares it: its KQL type and the value the run used.
TypedValues = Mapping[str, tuple[str, Any]]


def query_link(base: str | None, database: str, text: str, parameters: TypedValues) -> str | None:
    """The web UI's link to *text* on *database* under *base* (None: no link)."""
    if base is None:
        return None
    declared = _declarations(text, parameters)
    packed = base64.b64encode(gzip.compress(declared.encode("utf-8"), mtime=0)).decode("ascii")
    return f"{base.rstrip('/')}/{quote(database, safe='')}?query={quote(packed, safe='')}"


def _declarations(text: str, parameters: TypedValues) -> str:
    if not parameters:
        return text
    declared = ", ".join(
        f"{name}:{kind} = {default_literal(kind, value)}" for name, (kind, value) in parameters.items()
    )
    return f"declare query_parameters({declared});\n{text}"


def default_literal(kind: str, value: Any) -> str:
    """*value* as a KQL literal of type *kind*, as a parameter's default is written."""
    if value is None:
        return f"{kind}(null)"
    if kind == "string":
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'"{escaped}"'
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("int", "long"):
        return f"{kind}({int(value)})"
    if kind == "real":
        number = float(value)
        if math.isnan(number):
            return "real(nan)"
        if math.isinf(number):
            return "real(+inf)" if number > 0 else "real(-inf)"
        return f"real({number!r})"
    if kind in ("datetime", "timespan"):
        return f"{kind}({value})"
    raise ValueError(f"unsupported parameter type {kind!r}")
