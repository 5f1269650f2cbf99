#!/usr/bin/env bash
# loadgen/compare.sh — ringcast vs nats-server (WebSocket) vs mosquitto (WebSocket), one
# generator, one payload, same machine, loopback only.
#
# STATUS: SKELETON, INCOMPLETE. What works: installing the peers with apt, building, starting
# the three brokers pinned with configs from tuning/, running every scenario RUNS times per
# broker, medians and ratios into a markdown table written to results/compare.md. What is NOT
# done yet: REST publish scenario (needs the REST endpoint; ringcast only), churn runs,
# splicing the table into BENCHMARKS.md automatically (it is printed; paste it), and the
# nats/mosquitto adapters have only been smoke-tested (see BENCHMARKS.md).
#
# Usage: loadgen/compare.sh [results-dir]
# Env: RUNS (3), SUBS (10000), FANOUT_RATES (10,50,100,200), STEP_SECS (5), IDLE_CONNS (19000),
#      BROKER_CPUS (0), LOADGEN_CPUS (1-$(nproc)-1 or 0 on one core), SHARDS (cores in BROKER_CPUS),
#      TARGETS ("ringcast nats mosquitto").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}
SUBS=${SUBS:-10000}
FANOUT_RATES=${FANOUT_RATES:-10,50,100,200}
STEP_SECS=${STEP_SECS:-5}
IDLE_CONNS=${IDLE_CONNS:-19000}
NCPU=$(nproc)
BROKER_CPUS=${BROKER_CPUS:-0}
if [ "$NCPU" -gt 1 ]; then LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}; else LOADGEN_CPUS=${LOADGEN_CPUS:-0}; fi
SHARDS=${SHARDS:-$(taskset -c "$BROKER_CPUS" nproc)}
TARGETS=${TARGETS:-ringcast nats mosquitto}
LG="taskset -c $LOADGEN_CPUS $ROOT/target/release/ringcast-loadgen"

log() { echo "compare: $*" >&2; }

# 1. Peers from Debian packages.
need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v mosquitto >/dev/null || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# The Debian package starts a system mosquitto on 1883; it does not touch our ports.

# 2. Build, tune (best effort), record the machine.
cargo build --release -p ringcast -p ringcast-loadgen
bash tuning/apply.sh > "$OUT/tuning.txt" 2>&1 || true
ulimit -n "$(ulimit -Hn)" || true
{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $NCPU"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "ringcast: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
  echo "nats-server: $(nats-server --version 2>&1 | head -1)"
  echo "mosquitto: $(mosquitto -h 2>&1 | head -1)"
  echo "rustc: $(rustc --version)"
  echo "broker cpus: $BROKER_CPUS (shards $SHARDS), loadgen cpus: $LOADGEN_CPUS"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

BPID=
start_broker() {
  case $1 in
    ringcast)
      taskset -c "$BROKER_CPUS" target/release/ringcast --config tuning/ringcast-bench.toml \
        --listen 127.0.0.1:18080 --shards "$SHARDS" --rate-limit-per-sec 1000000 \
        --rate-limit-burst 1000000 --upgrades-per-ip 0 --max-outbound-bytes 4194304 \
        > "$OUT/ringcast.log" 2>&1 &
      ADDR=127.0.0.1:18080 ;;
    nats)
      GOMAXPROCS=$SHARDS taskset -c "$BROKER_CPUS" nats-server -c tuning/nats.conf > "$OUT/nats.log" 2>&1 &
      ADDR=127.0.0.1:8222 ;;
    mosquitto)
      taskset -c "$BROKER_CPUS" mosquitto -c tuning/mosquitto.conf > "$OUT/mosquitto.log" 2>&1 &
      ADDR=127.0.0.1:9001 ;;
  esac
  BPID=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/${ADDR%:*}/${ADDR#*:}) 2>/dev/null && return 0
    sleep 0.1
  done
  log "$1 did not start"; cat "$OUT/$1.log" >&2; return 1
}
stop_broker() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null && wait "$BPID" 2>/dev/null; BPID=; sleep 1; }
trap stop_broker EXIT

# 3. Scenarios. Each run gets a fresh broker so RSS and CPU start from zero.
run() { # target scenario run args...
  local t=$1 s=$2 r=$3; shift 3
  start_broker "$t"
  log "$t $s run $r"
  timeout 900 $LG "$s" --target "$t" --addr "$ADDR" --broker-pid "$BPID" \
    --out "$OUT/$t-$s-$r.json" "$@" > "$OUT/$t-$s-$r.txt" 2>&1 || log "$t $s run $r failed (see $OUT/$t-$s-$r.txt)"
  stop_broker
}
for r in $(seq "$RUNS"); do
  $LG pingpong --rate 10000 --secs "$STEP_SECS" --out "$OUT/tcp-pingpong-$r.json" > "$OUT/tcp-pingpong-$r.txt"
  for t in $TARGETS; do
    run "$t" fanout "$r" --subscribers 1 --rates 10000 --step-secs "$STEP_SECS"
    mv "$OUT/$t-fanout-$r.json" "$OUT/$t-latency-$r.json" 2>/dev/null || true
    run "$t" fanout "$r" --subscribers "$SUBS" --rates "$FANOUT_RATES" --step-secs "$STEP_SECS"
    run "$t" many-channels "$r" --channels 1000 --subscribers-per-channel 10 --rates 20000 --step-secs "$STEP_SECS"
    run "$t" direct "$r" --pairs 1000 --rates 100000 --step-secs "$STEP_SECS"
    run "$t" idle "$r" --connections "$IDLE_CONNS" --hold-secs 10
    run "$t" connect "$r" --connections 10000
  done
done

# 4. Medians and ratios.
python3 - "$OUT" "$TARGETS" > "$OUT/compare.md" <<'PY'
import json, glob, os, statistics, sys
out, targets = sys.argv[1], sys.argv[2].split()
def load(pat):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, pat)))]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def best_step(d, key):
    return max((s.get(key) or 0) for s in d["steps"]) if d.get("steps") else None
floor = med([d["round_trip"]["p99_ms"] for d in load("tcp-pingpong-*.json")])
metrics = [
    ("fan-out deliveries per broker CPU-s (best step)", "fanout", lambda d: best_step(d, "deliveries_per_broker_cpu_sec"), "higher"),
    ("fan-out deliveries/s (best step)", "fanout", lambda d: best_step(d, "deliveries_per_sec"), "higher"),
    ("fan-out publish -> last subscriber p99 ms", "fanout", lambda d: (d.get("publish_to_last_subscriber") or {}).get("p99_ms"), "lower"),
    ("fan-out lost + duplicated", "fanout", lambda d: d["deliveries"]["lost"] + d["deliveries"]["duplicated"], "lower"),
    ("1->1 @10k/s p99 ms", "latency", lambda d: d["steps"][0]["latency"]["p99_ms"] if d["steps"] else None, "lower"),
    ("many-channels deliveries/s", "many-channels", lambda d: best_step(d, "deliveries_per_sec"), "higher"),
    ("many-channels p99 ms", "many-channels", lambda d: d["steps"][0]["latency"]["p99_ms"] if d["steps"] else None, "lower"),
    ("direct relayed msg/s", "direct", lambda d: best_step(d, "deliveries_per_sec"), "higher"),
    ("idle: broker RSS bytes per connection", "idle", lambda d: d["broker"]["rss_bytes_per_connection"], "lower"),
    ("idle: connections held", "idle", lambda d: d["connections"]["ok"], "higher"),
    ("connection setup per s", "connect", lambda d: d["connections"]["per_sec"], "higher"),
]
print(f"TCP loopback ping-pong p99 (floor): {floor} ms\n")
hdr = "| metric | " + " | ".join(targets) + " | " + " | ".join(f"ringcast/{t}" for t in targets if t != "ringcast") + " |"
print(hdr); print("|" + "---|" * (hdr.count("|") - 1))
for name, scen, f, better in metrics:
    vals = {}
    for t in targets:
        try: vals[t] = med([f(d) for d in load(f"{t}-{scen}-*.json")])
        except Exception: vals[t] = None
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) and v < 100 else f"{v:,.0f}")
    ratios = []
    for t in targets:
        if t == "ringcast": continue
        a, b = vals.get("ringcast"), vals.get(t)
        ratios.append("-" if not a or not b else (f"{a/b:.2f}x" if better == "higher" else f"{b/a:.2f}x better" if a <= b else f"{a/b:.2f}x worse"))
    print(f"| {name} ({better} is better) | " + " | ".join(fmt(vals[t]) for t in targets) + " | " + " | ".join(ratios) + " |")
PY
cat "$OUT/machine.txt" "$OUT/compare.md"
log "results in $OUT (paste compare.md into BENCHMARKS.md)"
