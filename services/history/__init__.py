"""The history service: records every status event and serves the run history, as an API and as pages."""
