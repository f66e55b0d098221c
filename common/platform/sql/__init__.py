"""The operator's databases (PostgreSQL, MariaDB, MySQL): query results copied into their tables,
and their rows read for ingestion into Kusto.

`SqlDatabase` and `CopyRequest` (`copies`) are the API; `types` maps Kusto types to
SQL and converts wire values; `schema` checks a request and a table; `writers`
holds each database's bulk path and statements; `ledger` makes a copy happen once;
`reads` reads a query's rows a batch at a time, with Kusto types.
"""

from common.platform.sql.copies import Batch, CopyRequest, SqlDatabase

__all__ = ["Batch", "CopyRequest", "SqlDatabase"]
