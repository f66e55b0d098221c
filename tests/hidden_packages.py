"""Subprocesses that cannot import some packages, as on a machine that never installed them.

A ``sitecustomize`` on ``PYTHONPATH`` puts a finder first on ``sys.meta_path``
that refuses the hidden packages the way Python refuses a missing one.
"""

from __future__ import annotations

import os
from pathlib import Path

#: What the 'embedded' extra installs beyond the deployed services' dependencies, by import name.
EMBEDDED_EXTRA = ("duckdb", "aiosmtpd")

_FINDER = '''

class _Hidden:
    """Refuses HIDDEN and their submodules as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hidden())
'''


def hiding(directory: Path, *packages: str) -> dict[str, str]:
    """This process's environment, for a subprocess in which *packages* cannot be imported."""
    directory.mkdir(parents=True, exist_ok=True)
    source = f"import sys\n\nHIDDEN = {frozenset(packages)!r}\n" + _FINDER
    (directory / "sitecustomize.py").write_text(source, encoding="utf-8")
    path = [str(directory), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
