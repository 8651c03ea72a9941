#!/usr/bin/env bash
# The other CPythons the classifiers in pyproject.toml claim (3.11 runs the whole suite in .venv):
# for each one present on this machine (on PATH, or under pyenv), a fresh venv, a wheel install
# of the package with the vault and postgres extras, and a smoke run of the core unit tests
# (envelopes, the facade, the CLI end to end, the audit chain, settings). A Python that is not
# on the machine is reported and skipped, so the check never fails for lack of it.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=(tests/unit/test_envelope.py tests/unit/test_service.py tests/unit/test_cli.py
       tests/unit/test_audit_chain.py tests/unit/test_config.py tests/unit/test_local_provider.py)

find_python() {  # the interpreter for version $1 (e.g. 3.12), or nothing
  local candidate
  for candidate in "$(command -v "python$1" || true)" \
      $(ls -d "$HOME"/.pyenv/versions/"$1".*/bin/python 2>/dev/null | sort -V -r); do
    if [ -n "$candidate" ] && "$candidate" -c \
        "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" \
        2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

for version in 3.12 3.13; do
  python="$(find_python "$version")"
  if [ -z "$python" ]; then
    echo "other_pythons.sh: Python $version is not on this machine: skipped"
    continue
  fi
  venv="build/py$version"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet '.[vault,postgres]' pytest pycryptodome hypothesis jsonschema
  echo "other_pythons.sh: Python $version ($python): smoke tests on the installed wheel"
  # src/ is not on sys.path (src layout): the tests import the installed wheel.
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --rootdir "$PWD" "${SMOKE[@]}"
done
