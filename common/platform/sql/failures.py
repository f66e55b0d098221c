"""A database's failure as a step error: retryable when the database was away or the line broke.

The message is the driver's own first line, never SQLAlchemy's, which appends the
statement and its parameters (the rows' values) to it.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from common.contracts.errors import DatabaseError
from common.contracts.messages import ErrorCode

#: SQLSTATE classes and codes of failures another try may get past: connection exceptions, a
#: server shutting down, resources short, serialization failures and deadlocks.
_POSTGRES_TRANSIENT_CLASSES = ("08", "53", "57P")
_POSTGRES_TRANSIENT = frozenset({"40001", "40P01"})
#: MySQL and MariaDB error numbers of the same: can't connect, server gone away, lost connection,
#: too many connections, lock wait timeout, deadlock, a table skipped during concurrent DDL.
_MYSQL_TRANSIENT = frozenset({1040, 1205, 1213, 1684, 2002, 2003, 2006, 2013, 2055})


#: What a database's failure is raised as: SQLAlchemy's wrapping of the driver's, the network's, and
#: asyncpg's own from the COPY path, which runs on the driver's connection.
DATABASE_FAILURES = (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def database_error(exc: BaseException, database: str, *, doing: str = "the copy") -> DatabaseError:
    if _transient(exc):
        return DatabaseError(
            f"database {database!r} could not be reached or the connection broke: {_reason(exc)}",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            retryable=True,
        )
    return DatabaseError(f"database {database!r} refused {doing}: {_reason(exc)}")


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return seen


def _transient(exc: BaseException) -> bool:
    for cause in _causes(exc):
        if isinstance(cause, OSError | TimeoutError):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and (
            state in _POSTGRES_TRANSIENT or state.startswith(_POSTGRES_TRANSIENT_CLASSES)
        ):
            return True
        args = getattr(cause, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT:
            return True
        if type(cause).__name__ in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return True
    return False


def _reason(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__
