#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite `fuzzingclient` against ringcast's real
# WebSocket endpoint in the conformance (echo) profile, results diffed against
# autobahn/expected-results.json. See docs/hardening.md.
#
#   bash scripts/autobahn.sh [--install] [--subset] [--update]
#
#   --install  create .autobahn-venv (pyenv Python 2.7 + autobahntestsuite==0.8.2) if missing
#   --install-only  only that (exit 0 when the suite is installed, 3 when it cannot be)
#   --subset   run the CI subset (every case except the 9.* performance cases)
#   --update   rewrite autobahn/expected-results.json from this run instead of diffing
#
# Exit: 0 when every run case matches the expected file; 1 on any difference;
#       3 when the suite is not installed (and --install was not given or failed).
# Needs target/release/ringcast (or $RINGCAST_BIN).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.autobahn-venv"
EXPECTED="$ROOT/autobahn/expected-results.json"
BIN="${RINGCAST_BIN:-$ROOT/target/release/ringcast}"

install=0 subset=0 update=0 install_only=0
for a in "$@"; do
    case "$a" in
        --install) install=1 ;;
        --install-only) install=1 install_only=1 ;;
        --subset) subset=1 ;;
        --update) update=1 ;;
        *) echo "usage: $0 [--install|--install-only] [--subset] [--update]" >&2; exit 2 ;;
    esac
done

find_py27() {
    local c
    for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python python2.7 python2; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/wstest" ] && [ "$install" -eq 1 ]; then
    if py27="$(find_py27)"; then
        echo "==> installing autobahntestsuite==0.8.2 into .autobahn-venv ($py27)"
        (
            set -e
            "$py27" -m pip install --quiet --disable-pip-version-check 'virtualenv<20.16' </dev/null 2>/dev/null
            rm -rf "$VENV"
            "$py27" -m virtualenv -q "$VENV" </dev/null
            "$VENV/bin/pip" install --quiet --disable-pip-version-check 'autobahntestsuite==0.8.2' </dev/null 2>/dev/null
        ) || { rm -rf "$VENV"; echo "autobahn: install failed" >&2; }
    else
        echo "autobahn: no Python 2.7 interpreter found (pyenv 2.7.18 expected)" >&2
    fi
fi
if [ ! -x "$VENV/bin/wstest" ]; then
    echo "autobahn: .autobahn-venv/bin/wstest not found (run: bash scripts/autobahn.sh --install)" >&2
    exit 3
fi
[ "$install_only" -eq 1 ] && exit 0
[ -x "$BIN" ] || { echo "autobahn: broker binary $BIN not found (cargo build --release)" >&2; exit 2; }

work="$(mktemp -d)"
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The conformance profile: echo instead of the protocol, limits raised so the 16 MiB cases
# of groups 9 and 10 fit, no rate limit and no per-IP upgrade throttle.
"$BIN" --echo --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --shards 2 \
    --max-message-size 16777216 --max-outbound-bytes 67108864 \
    --rate-limit-per-sec 100000 --rate-limit-burst 100000 --upgrades-per-ip 0 \
    --read-buffer-size 65536 >"$work/broker.log" 2>&1 &
broker_pid=$!
port=""
for _ in $(seq 1 100); do
    port="$(sed -n 's#^ringcast: listening on ws://127\.0\.0\.1:\([0-9]*\)/v1.*#\1#p' "$work/broker.log")"
    [ -n "$port" ] && break
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "autobahn: broker did not start" >&2
    cat "$work/broker.log" >&2
    exit 1
fi

if [ "$subset" -eq 1 ]; then
    cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]'
else
    cases='["*"]'
fi
sed -e "s#@PORT@#$port#" -e "s#@OUTDIR@#$work/reports#" -e "s#@CASES@#$cases#" \
    autobahn/fuzzingclient.json >"$work/spec.json"

echo "==> autobahn fuzzingclient against ws://127.0.0.1:$port/v1 ($([ "$subset" -eq 1 ] && echo subset || echo 'all of 1-10'))"
t0=$(date +%s)
(cd "$work" && "$VENV/bin/wstest" -m fuzzingclient -s spec.json) >"$work/wstest.log" 2>&1 || {
    echo "autobahn: wstest failed" >&2
    tail -40 "$work/wstest.log" >&2
    exit 1
}
echo "==> wstest finished in $(( $(date +%s) - t0 )) s"
if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "autobahn: the broker died during the run" >&2
    tail -40 "$work/broker.log" >&2
    exit 1
fi

# Compact per-case map {"1.1.1": "OK", ...} (behavior, plus "/close:<behaviorClose>" when the
# closing behaviour is not OK), compared with the committed file over the cases that ran.
python3 - "$work/reports/index.json" "$EXPECTED" "$update" "$subset" <<'PY'
import json, sys

index_path, expected_path, update, subset = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
index = json.load(open(index_path))
(agent,) = index.keys()

def key(case):
    return tuple(int(p) for p in case.split("."))

got = {}
for case, r in index[agent].items():
    v = r["behavior"]
    if r.get("behaviorClose") not in (None, "OK", "INFORMATIONAL"):
        v += "/close:" + r["behaviorClose"]
    got[case] = v
got = dict(sorted(got.items(), key=lambda kv: key(kv[0])))

counts = {}
for v in got.values():
    counts[v] = counts.get(v, 0) + 1
summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
print(f"autobahn: {len(got)} cases: {summary}")

if update:
    with open(expected_path, "w") as f:
        json.dump(got, f, indent=1)
        f.write("\n")
    print(f"autobahn: wrote {expected_path}")
    sys.exit(0)

expected = json.load(open(expected_path))
if subset:
    expected = {c: v for c, v in expected.items() if not c.startswith("9.")}
diff = []
for case in sorted(set(expected) | set(got), key=key):
    e, g = expected.get(case, "(not run)"), got.get(case, "(not run)")
    if e != g:
        diff.append(f"  {case}: expected {e}, got {g}")
if diff:
    print("autobahn: results differ from autobahn/expected-results.json:")
    print("\n".join(diff))
    sys.exit(1)
print("autobahn: results match autobahn/expected-results.json")
PY
