"""The contracts: every message, status, error code, flow document and queue name the services share.

Pure data and rules; nothing here imports the rest of the project."""
