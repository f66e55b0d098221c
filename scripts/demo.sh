#!/usr/bin/env bash
# Runs the sample report jobs end to end on embedded defaults (nothing to
# install but Python) and prints the path of the last email as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The exact versions of requirements.lock (README, "Dependencies and the lock").
.venv/bin/python -m pip install -q --constraint requirements.lock -e '.[embedded]' >/dev/null
exec .venv/bin/adxflow demo "$@"
