#!/usr/bin/env bash
# Soak (issue 5 item 6): fan-out at a steady rate for SECS seconds (default 1800; CI runs 60)
# with per-publisher sequence checks by the load generator, and the broker's RSS sampled.
#
#   bash scripts/soak.sh [SECS] [SUBSCRIBERS] [RATE]     (defaults: 1800 s, 1000, 100 msg/s)
#
# Passes when every delivery arrived exactly once and in order (0 lost, 0 duplicated,
# 0 reordered, no receiver dropped) and the RSS drift -- median RSS over the last fifth of the
# run against the median over the second fifth (after warm-up) -- is at most MAX_DRIFT_PCT
# (default 1). A 60 s run cannot hold 1%: the allocator still grows in steps of a few MiB
# (~7% of a 27 MiB broker) in the first minute, so CI's 60 s run uses MAX_DRIFT_PCT=15 and
# catches gross leaks only; the 1% bound is for the 30-minute run.
#
# "Half of peak": the defaults (1,000 subscribers x 100 publishes/s = 100,000 deliveries/s)
# are about half of what this 2-core machine sustains with the generator on the same cores
# and per-delivery p99 under a second; set SUBSCRIBERS and RATE from BENCHMARKS.md elsewhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-1800}"
subs="${2:-1000}"
rate="${3:-100}"
max_drift="${MAX_DRIFT_PCT:-1}"
BIN="${RINGCAST_BIN:-target/release/ringcast}"
LOADGEN="${RINGCAST_LOADGEN:-target/release/ringcast-loadgen}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work="$(mktemp -d)"
bpid="" spid=""
cleanup() {
    [ -n "$spid" ] && kill "$spid" 2>/dev/null
    [ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
. scripts/lib/broker.sh
start_broker soak --rate-limit-per-sec 100000 --rate-limit-burst 100000

# RSS sampler: "<unix seconds> <KiB>" every second.
(while kill -0 "$bpid" 2>/dev/null; do
    echo "$(date +%s.%N) $(awk '/^VmRSS:/ {print $2}' "/proc/$bpid/status")"
    sleep 1
done) >"$work/rss" 2>/dev/null &
spid=$!

echo "==> soak: $subs subscribers x $rate publishes/s for $secs s (broker pid $bpid)"
t_start=$(date +%s.%N)
out="$("$LOADGEN" fanout --addr "127.0.0.1:$port" --subscribers "$subs" --rates "$rate" \
    --step-secs "$secs" --broker-pid "$bpid" --max-secs $((secs + 300)) 2>&1)" || true
t_end=$(date +%s.%N)
echo "$out" | grep -E "^ *[0-9]|^deliveries|^connections" || true
kill "$spid" 2>/dev/null || true
spid=""
awk -v t0="$t_start" '{printf "%s%.0fs:%d", (NR>1?" ":""), $1-t0, $2} END {print ""}' "$work/rss" | fold -w 160 >"$work/rss.txt"
[ -n "${SOAK_VERBOSE:-}" ] && cat "$work/rss.txt"

python3 - "$work/rss" "$t_start" "$t_end" "$max_drift" <<'PY' || fail=1
import re, statistics, sys
path, t0, t1, max_drift = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
samples = [tuple(map(float, l.split())) for l in open(path) if len(l.split()) == 2]
span = t1 - t0
def window(a, b):
    return [r for t, r in samples if t0 + a * span <= t < t0 + b * span]
warm, last = window(0.2, 0.4), window(0.8, 1.0)
if len(warm) < 3 or len(last) < 3:
    print(f"soak: too few RSS samples ({len(warm)}, {len(last)})")
    sys.exit(1)
a, b = statistics.median(warm), statistics.median(last)
drift = (b - a) / a * 100
print(f"soak: RSS median {a:.0f} KiB (2nd fifth) -> {b:.0f} KiB (last fifth): drift {drift:+.2f}% (max +{max_drift}%)")
sys.exit(0 if drift <= max_drift else 1)
PY
fail="${fail:-0}"
d="$(grep -E "^deliveries:" <<<"$out" || true)"
if ! grep -qE "lost 0, duplicated 0, reordered 0; send errors 0; receivers dropped 0" <<<"$d"; then
    echo "soak: deliveries not exact: ${d:-no summary}" >&2
    echo "$out" | tail -20 >&2
    fail=1
fi
kill -0 "$bpid" || { echo "soak: broker died" >&2; fail=1; }
echo "soak: $([ "$fail" -eq 0 ] && echo PASS || echo FAIL)"
exit "$fail"
