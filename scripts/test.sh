#!/usr/bin/env bash
# The one command that runs every test of ringcast, installing what the tests need.
#
#   bash scripts/test.sh [extra pytest args…]
#
# 1. cargo build --release (the integration tests drive target/release/ringcast)
# 2. cargo test --workspace            (unit + property tests)
# 3. .venv (python3 -m venv) + pip install -r tests/requirements.txt
# 4. npm ci in tests/compat            (Metered's JS SDK + ws, pinned by the lockfile), if node exists
# 5. pytest -q                          (integration + SDK compatibility tests)
#
# Steps 2 and 5 both run even if the other fails; the script exits non-zero if either
# did. Idempotent: re-running reuses .venv, target/ and the npm cache.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

log() { printf '==> %s\n' "$*"; }

log "cargo build --release --workspace --bins"
cargo build --release --workspace --bins --quiet

log "cargo test --workspace"
cargo_rc=0
cargo test --workspace --quiet || cargo_rc=$?

log "python venv (.venv) + tests/requirements.txt"
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    log "npm ci in tests/compat (node $(node --version))"
    (
        cd tests/compat
        if [ -f package-lock.json ]; then
            npm ci --no-audit --no-fund --loglevel=error
        else
            npm install --no-audit --no-fund --loglevel=error
        fi
    )
else
    log "node/npm not found: the JS SDK compatibility test will be skipped"
fi

log "pytest"
export RINGCAST_BIN="${RINGCAST_BIN:-$ROOT/target/release/ringcast}"
pytest_rc=0
.venv/bin/python -m pytest -q "$@" || pytest_rc=$?

if [ "$cargo_rc" -ne 0 ] || [ "$pytest_rc" -ne 0 ]; then
    printf 'scripts/test.sh: FAILED (cargo test exit %s, pytest exit %s)\n' "$cargo_rc" "$pytest_rc" >&2
    exit 1
fi
