#!/usr/bin/env bash
# Runs the sample report jobs end to end on embedded defaults (nothing to
# install but Python) and prints the path of the last email as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[embedded]' >/dev/null
exec .venv/bin/adxflow demo "$@"
