"""Stand-ins for the outside world in embedded mode.

A local Kusto endpoint with its sample data, and an SMTP outbox. Installed with
the ``embedded`` extra (duckdb-kql, aiosmtpd); deployed services never import it.
"""
