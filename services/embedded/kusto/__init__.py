"""The local Kusto endpoint: duckdb-kql's REST server with the gaps azure-kusto-data meets filled in."""
