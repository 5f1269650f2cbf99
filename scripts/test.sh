#!/usr/bin/env bash
# The one command that runs every test of ringcast, installing what the tests need.
#
#   bash scripts/test.sh [extra pytest args…]
#
# 1. cargo build --release (the integration tests drive target/release/ringcast; a
#    fault-injection variant is kept as target/release/ringcast-fault)
# 2. cargo test --workspace --all-targets (unit + property tests; benches run once each as a smoke test)
# 3. .venv (python3 -m venv) + pip install -r tests/requirements.txt ./clients/python (the
#    examples, run by tests/test_example*.py, use the client)
# 4. npm ci in tests/compat            (Metered's JS SDK + ws, pinned by the lockfile), if node exists
# 5. pytest -q                          (integration + SDK compatibility tests)
# 6. the clients' own tests: clients/python (pytest, the package installed into .venv) and
#    clients/js (node --test), both against the real binary
#
# Steps 2 and 5 both run even if the other fails; the script exits non-zero if either
# did. Idempotent: re-running reuses .venv, target/ and the npm cache.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

log() { printf '==> %s\n' "$*"; }

# A test-only variant with fault hooks (tests/test_hostile.py's panic-isolation test), copied
# aside before the normal build puts the production binary back in place.
log "cargo build --release --features fault-injection (-> target/release/ringcast-fault)"
cargo build --release -p ringcast --bin ringcast --features fault-injection --quiet
cp target/release/ringcast target/release/ringcast-fault

log "cargo build --release --workspace --bins"
cargo build --release --workspace --bins --quiet

log "cargo test --workspace --all-targets"
cargo_rc=0
cargo test --workspace --all-targets --quiet || cargo_rc=$?

log "python venv (.venv) + tests/requirements.txt + ./clients/python"
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt ./clients/python

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
export RINGCAST_FAULT_BIN="${RINGCAST_FAULT_BIN:-$ROOT/target/release/ringcast-fault}"
pytest_rc=0
.venv/bin/python -m pytest -q "$@" || pytest_rc=$?

log "clients/python: pip install ./clients/python + pytest clients/python/tests"
clients_rc=0
.venv/bin/python -m pip install --quiet --disable-pip-version-check ./clients/python \
    -r clients/python/requirements-test.txt
.venv/bin/python -m pytest -q -c clients/python/pyproject.toml --rootdir clients/python \
    clients/python/tests || clients_rc=$?

if command -v node >/dev/null 2>&1; then
    log "clients/js: node --test clients/js/test/"
    node_ws_flag=()
    node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || node_ws_flag=(--experimental-websocket)
    node "${node_ws_flag[@]}" --test clients/js/test/ || clients_rc=$?
else
    log "node not found: the JS client's tests are skipped"
fi

if [ "$cargo_rc" -ne 0 ] || [ "$pytest_rc" -ne 0 ] || [ "$clients_rc" -ne 0 ]; then
    printf 'scripts/test.sh: FAILED (cargo test exit %s, pytest exit %s, clients exit %s)\n' \
        "$cargo_rc" "$pytest_rc" "$clients_rc" >&2
    exit 1
fi
