"""A Kusto v2 query response, parsed as its bytes arrive.

The body is one JSON array of frames, and a DataTable frame's ``Rows`` can be
nearly all of it. Frames other than rows are parsed whole; rows are parsed one
at a time by the `json` module's C scanner over a buffer of the body that holds
little more than the rows being read, and handed over in batches with their
sizes (the UTF-8 bytes of each row's JSON as it arrived, so a byte cap costs
nothing to enforce) and their JSON text as it arrived, so they can be stored
without being encoded again.

A batch's rows are dropped once the reader has counted, stored and perhaps
kept a few of them: nothing here holds rows past their batch.
"""

from __future__ import annotations

import codecs
import enum
import json
import re
from collections.abc import AsyncGenerator, Callable
from json.scanner import make_scanner
from typing import Any, NamedTuple, cast

from aiohttp import StreamReader
from azure.kusto.data.exceptions import (
    KustoMultiApiError,
    KustoTokenParsingError,
    KustoUnsupportedApiError,
)

__all__ = ["Batch", "Oversized", "ResponseStream"]


class Batch(NamedTuple):
    """Rows parsed together, in the order they came."""

    rows: list[list[Any]]
    #: The UTF-8 bytes of each row's JSON as it arrived.
    sizes: list[int]
    #: The rows' JSON as it arrived, separated by commas, when a strict JSON reader reads it
    #: back as exactly *rows*; None where it holds, or may hold, what such a reader refuses
    #: or reads otherwise (the constants NaN and Infinity, UTF-16 surrogate escapes).
    text: str | None


#: The JSON texts of the constants the `json` module reads and strict JSON has not.
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_WHITESPACE = frozenset(" \t\n\r")
_space = re.compile(r"[ \t\n\r]*")
#: How near the end of the buffer a parse failure means "more bytes needed".
_TAIL = 8
_PROGRESSIVE = frozenset({"TableHeader", "TableFragment", "TableCompletion", "TableProgress"})


class Oversized(Exception):
    """A row longer than the stream's `ceiling` is still arriving."""


class ResponseStream:
    """The frames of one v2 response body, read from *content* as they are needed."""

    def __init__(self, content: StreamReader, *, chunk_size: int = 2**18) -> None:
        self._content = content
        self._chunk_size = chunk_size
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._ascii = True
        self._eof = False
        #: The longest unfinished row the stream buffers before it raises `Oversized`.
        self.ceiling: int | None = None
        self._in_rows = False
        self._state = _State.OPEN
        #: Where the rows of the last `_parse` begin and end in the buffer.
        self._span = (0, 0)
        #: How many NaN and Infinity constants the scanner has read.
        self._constants = 0
        #: The C scanner: the JSON value at a position, and where it ends.
        self._scan: Callable[[str, int], tuple[Any, int]] = make_scanner(
            cast(Any, json.JSONDecoder(parse_constant=self._constant))
        )

    def _constant(self, name: str) -> float:
        self._constants += 1
        return _CONSTANTS[name]

    # -- the buffer

    async def _more(self, at_least: int = 1) -> None:
        """Read at least *at_least* more characters of the body, or to its end."""
        if self._eof:
            raise KustoTokenParsingError("Unexpected end of stream")
        parts = [self._text[self._pos :]]
        added = 0
        while added < at_least:
            data = await self._content.read(self._chunk_size)
            try:
                text = self._decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise KustoTokenParsingError(f"the response is not UTF-8: {exc}") from None
            parts.append(text)
            added += len(text)
            if not data:
                self._eof = True
                break
        self._text = "".join(parts)
        self._pos = 0
        self._ascii = self._text.isascii()

    async def _peek(self) -> str:
        """The next character that is not whitespace (the position moves to it)."""
        while True:
            self._pos = _space.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text):
                return self._text[self._pos]
            await self._more()

    async def _expect(self, character: str) -> None:
        found = await self._peek()
        if found != character:
            raise _malformed(f"expected {character!r}, found {found!r}")
        self._pos += 1

    async def _value(self) -> Any:
        """The JSON value at the position, parsed whole."""
        await self._peek()
        while True:
            text, start = self._text, self._pos
            try:
                value, end = self._scan(text, start)
            except (StopIteration, json.JSONDecodeError) as exc:
                if self._eof or not _incomplete(exc, len(text)):
                    raise _malformed(f"malformed JSON at character {start}: {exc}") from None
                await self._more(len(text) - start)
                continue
            if end >= len(text) and not self._eof:
                await self._more()  # a number at the buffer's end may go on
                continue
            self._pos = end
            return value

    # -- frames

    async def frames(self) -> AsyncGenerator[dict[str, Any]]:
        """Each frame as a dict; a DataTable's ``Rows`` is an async iterator of `Batch`.

        A table's rows are read as they are iterated; whatever of them is left
        unread when the next frame is asked for is read past.
        """
        await self._expect("[")
        if await self._peek() == "]":
            return
        while True:
            await self._expect("{")
            frame: dict[str, Any] = {}
            yielded = False
            while await self._peek() != "}":
                key = await self._value()
                await self._expect(":")
                if key == "Rows" and frame.get("FrameType") == "DataTable" and not yielded:
                    self._in_rows = True
                    self._state = _State.OPEN
                    frame["Rows"] = self._rows()
                    yielded = True
                    yield frame
                    while self._in_rows:
                        await self._batch()
                else:
                    frame[key] = await self._value()
                    _check_supported(frame)
                if await self._peek() != "}":
                    await self._expect(",")
            self._pos += 1
            if not yielded:
                yield frame
            if await self._peek() == "]":
                self._pos += 1
                return
            await self._expect(",")

    # -- rows

    async def _rows(self) -> AsyncGenerator[Batch]:
        while self._in_rows:
            batch = await self._batch()
            if batch.rows:
                yield batch

    async def _batch(self) -> Batch:
        """The rows complete in the buffer (reading more first if there are none)."""
        if self._state is _State.OPEN:
            await self._expect("[")
            self._state = _State.FIRST
        while True:
            rows: list[list[Any]] = []
            sizes: list[int] = []
            constants = self._constants
            error_next = self._parse(rows, sizes)
            if rows:
                return Batch(rows, sizes, self._text_of(constants))
            if error_next:
                # Kusto's errors in place of a row: the rows before them stand.
                raise KustoMultiApiError([await self._value()])
            if not self._in_rows:
                return Batch(rows, sizes, "")
            pending = len(self._text) - self._pos
            if self.ceiling is not None and pending > self.ceiling:
                raise Oversized(f"a row of more than {pending:,} characters")
            await self._more(max(pending, 1))

    def _text_of(self, constants: int) -> str | None:
        """The JSON of the rows `_parse` just read, if it reads back as exactly them."""
        if self._constants != constants:
            return None
        start, end = self._span
        text = self._text[start:end]
        return None if "\\ud" in text or "\\uD" in text else text

    def _parse(self, rows: list[list[Any]], sizes: list[int]) -> bool:
        """Parse the buffer's complete rows into *rows*; True if an error object comes next."""
        text, pos, ascii_text = self._text, self._pos, self._ascii
        scan, space, length = self._scan, _space.match, len(text)
        append, measure = rows.append, sizes.append
        state = self._state
        first = last = -1
        try:
            while True:
                if pos >= length:
                    return False
                character = text[pos]
                if character in _WHITESPACE:
                    pos = space(text, pos).end()  # type: ignore[union-attr]
                    continue
                if state is _State.AFTER or (state is _State.FIRST and character == "]"):
                    if character == "]":
                        pos += 1
                        self._in_rows = False
                        return False
                    if character != ",":
                        raise _malformed(f"expected ',' or ']' after a row, found {character!r}")
                    pos += 1
                    state = _State.ROW
                    continue
                if character == "{":
                    return True
                try:
                    row, end = scan(text, pos)
                except (StopIteration, json.JSONDecodeError) as exc:
                    if self._eof or not _incomplete(exc, length):
                        raise _malformed(f"malformed row at character {pos}: {exc}") from None
                    return False
                if type(row) is not list:
                    raise _malformed(f"a row is not a JSON array: {row!r:.80}")
                append(row)
                measure(end - pos if ascii_text else len(text[pos:end].encode("utf-8")))
                if first < 0:
                    first = pos
                pos = last = end
                state = _State.AFTER
        finally:
            self._pos = pos
            self._state = state
            self._span = (first, last)


class _State(enum.Enum):
    """Where a table's rows are read up to."""

    OPEN = "before the rows' ["
    FIRST = "before the first row or ]"
    ROW = "before a row"
    AFTER = "after a row"


def _incomplete(exc: StopIteration | json.JSONDecodeError, length: int) -> bool:
    """Whether a parse failure may be the buffer ending inside a value, not bad JSON."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg.startswith("Unterminated string") or exc.pos >= length - _TAIL
    position = exc.value if isinstance(exc.value, int) else 0
    return position >= length - _TAIL


def _malformed(message: str) -> KustoTokenParsingError:
    return KustoTokenParsingError(f"the response body is not a v2 data set: {message}")


def _check_supported(frame: dict[str, Any]) -> None:
    """The azure-kusto-data client's refusal of a progressive response."""
    if frame.get("FrameType") in _PROGRESSIVE or (
        frame.get("FrameType") == "DataSetHeader" and frame.get("IsProgressive")
    ):
        raise KustoUnsupportedApiError.progressive_api_unsupported()
