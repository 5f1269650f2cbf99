#!/usr/bin/env bash
# loadgen/ab.sh — two ringcast binaries side by side: fan-out deliveries per broker CPU-s and
# idle broker RSS per connection, interleaved (A, B, A, B, …) in one run, medians of RUNS.
# For a refactor that must not change speed or memory (e.g. "the new binary is within 10% of
# the old one").
#
# Usage: loadgen/ab.sh OLD_BIN NEW_BIN [results-dir]
# Env: RUNS (3), SUBS (10000), FANOUT_RATES (10,200), STEP_SECS (5), IDLE_CONNS (19000),
#      BROKER_CPUS (0), LOADGEN_CPUS (the other cores), LG (the loadgen binary; default
#      target/release/ringcast-loadgen, built if missing).
# Each generator call is bounded by `timeout` and the loadgen's own --max-secs; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN [results-dir]" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2")
OUT=${3:-target/ab/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}; SUBS=${SUBS:-10000}; FANOUT_RATES=${FANOUT_RATES:-10,200}
STEP_SECS=${STEP_SECS:-5}; IDLE_CONNS=${IDLE_CONNS:-19000}
NCPU=$(nproc); BROKER_CPUS=${BROKER_CPUS:-0}
if [ "$NCPU" -gt 1 ]; then LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}; else LOADGEN_CPUS=${LOADGEN_CPUS:-0}; fi
LG=${LG:-target/release/ringcast-loadgen}
[ -x "$LG" ] || cargo build --release -p ringcast-loadgen --quiet
WS_PORT=${WS_PORT:-18080}; REST_PORT=${REST_PORT:-18081}
BPID=
start() { # binary
  taskset -c "$BROKER_CPUS" "$1" --config tuning/ringcast-bench.toml \
    --listen 127.0.0.1:$WS_PORT --rest-listen 127.0.0.1:$REST_PORT --shards 1 \
    --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
    --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 \
    > "$OUT/broker.log" 2>&1 &
  BPID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "broker did not start" >&2; cat "$OUT/broker.log" >&2; return 1
}
stop() {
  kill "$BPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true; sleep 0.5
}
trap stop EXIT
run() { # label binary scenario run args...
  local label=$1 bin=$2 s=$3 r=$4; shift 4
  start "$bin"
  echo "ab: $label $s run $r" >&2
  timeout 300 taskset -c "$LOADGEN_CPUS" "$LG" "$s" --target ringcast --addr 127.0.0.1:$WS_PORT \
    --broker-pid "$BPID" --max-secs 240 --out "$OUT/$label-$s-$r.json" "$@" > "$OUT/$label-$s-$r.txt" 2>&1 ||
    echo "ab: $label $s run $r failed (see $OUT/$label-$s-$r.txt)" >&2
  stop
}
for r in $(seq "$RUNS"); do
  for label in old new; do
    bin=$A; [ $label = new ] && bin=$B
    run "$label" "$bin" fanout "$r" --subscribers "$SUBS" --rates "$FANOUT_RATES" --step-secs "$STEP_SECS"
    run "$label" "$bin" idle "$r" --connections "$IDLE_CONNS" --hold-secs 5
  done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def load(label, s, r):
    try:
        return json.load(open(f"{out}/{label}-{s}-{r}.json"))
    except (OSError, ValueError):
        return None
rows = []
fan = {l: [load(l, "fanout", r) for r in range(1, runs + 1)] for l in ("old", "new")}
steps = len(next(d for d in fan["old"] if d)["steps"])
for i in range(steps):
    vals = {l: [d["steps"][i]["deliveries_per_broker_cpu_sec"] for d in fan[l] if d] for l in fan}
    rate = next(d for d in fan["old"] if d)["steps"][i].get("rate", i)
    rows.append((f"fan-out {rate} pub/s: deliveries per broker CPU-s (higher is better)", vals))
idle = {l: [d["broker"]["rss_bytes_per_connection"] for d in (load(l, "idle", r) for r in range(1, runs + 1)) if d]
        for l in ("old", "new")}
rows.append(("idle: broker RSS bytes per connection (lower is better)", idle))
print("| figure | old (median, min..max) | new (median, min..max) | new / old |")
print("|---|---|---|---|")
for name, v in rows:
    mo, mn = statistics.median(v["old"]), statistics.median(v["new"])
    f = lambda xs: f"{statistics.median(xs):,.0f} ({min(xs):,.0f}..{max(xs):,.0f})"
    print(f"| {name} | {f(v['old'])} | {f(v['new'])} | {mn / mo:.3f} |")
PY
