"""The query-worker: runs a step's KQL query or control command under its timeout and caps."""
