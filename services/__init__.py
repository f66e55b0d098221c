"""The five services, the launcher that starts them, and the stand-ins of embedded mode.

A service imports only ``common``; only the launcher (and the stand-ins) import services."""
