"""The history service's web pages: runs, a run in detail, flows, and a login for token deployments."""
