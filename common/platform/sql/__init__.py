"""Copies of query results into tables of the operator's databases (PostgreSQL, MariaDB, MySQL).

`SqlDatabase` and `CopyRequest` (`copies`) are the API; `types` maps Kusto types to
SQL and converts wire values; `schema` checks a request and a table; `writers`
holds each database's bulk path and statements; `ledger` makes a copy happen once.
"""

from common.platform.sql.copies import Batch, CopyRequest, SqlDatabase

__all__ = ["Batch", "CopyRequest", "SqlDatabase"]
