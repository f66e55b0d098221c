"""Copies of a result into a table of an operator's database: how rows land, and what a copy did."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class CopyMode(StrEnum):
    """How a copy's rows land in the target table."""

    #: Added to the rows already there.
    APPEND = "append"
    #: The table's rows become the source's, at once: a reader sees the old rows or the new.
    REPLACE = "replace"
    #: A row whose key columns match an existing row's updates it; others are added.
    UPSERT = "upsert"
    #: An upsert that also deletes the rows whose keys the source does not have.
    MERGE = "merge"


class CopyOutcome(BaseModel):
    """What a copy wrote: the table, the mode, the rows, and whether an earlier try had written them."""

    database: str
    table: str
    mode: CopyMode
    rows: int
    #: The same run and step had copied already; nothing was written this time.
    repeated: bool = False
