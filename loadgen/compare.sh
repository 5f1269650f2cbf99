#!/usr/bin/env bash
# loadgen/compare.sh — ringcast vs nats-server (WebSocket) vs mosquitto (WebSocket): one
# generator, one payload, the same machine, loopback only, all three measured in one run.
#
# What it does:
#   1. installs nats-server and mosquitto with apt if they are missing;
#   2. builds ringcast and ringcast-loadgen (release) into $CARGO_TARGET_DIR (default
#      target/bench, so a parallel `cargo build --features ...` in target/ cannot swap the
#      binary under the benchmark);
#   3. for each of RUNS runs, for each scenario, starts each broker fresh (so RSS and CPU start
#      from zero) with its config from tuning/, pinned to BROKER_CPUS with one shard / one
#      thread (ringcast --shards 1, nats GOMAXPROCS=1, mosquitto is single-threaded), and runs
#      the generator pinned to LOADGEN_CPUS. Brokers are interleaved within each scenario, so
#      the three are measured minutes apart under the same machine load;
#   4. writes medians (and min..max) of the runs, broker CPU-seconds and the ratios into
#      $OUT/compare.md, and splices that into BENCHMARKS.md between the `compare:begin` and
#      `compare:end` markers (BENCH_MD=none to skip).
#
# Usage: loadgen/compare.sh [results-dir]          (default target/compare/<date>)
#        QUICK=1 RUNS=1 loadgen/compare.sh         (small sizes, ~5 minutes; RUNS=3: ~12)
# Env: RUNS (3), TARGETS ("ringcast nats mosquitto"), SCENARIOS (all: pingpong latency fanout
#      many-channels direct idle connect rest; `fanout` also runs the raw TCP fan-out floor,
#      `tcp-fanout` runs only that), SUBS, FANOUT_RATES, STEP_SECS, IDLE_CONNS,
#      CONNECT_CONNS, MC_CHANNELS, MC_SUBS, MC_RATE, DIRECT_PAIRS, DIRECT_RATES, DIRECT_BATCH_MS,
#      REST_SECS, BROKER_CPUS (0), LOADGEN_CPUS (the other cores), BENCH_MD (BENCHMARKS.md).
# Every generator call is bounded by `timeout` and by the loadgen's own --max-secs; the default
# set took 13–14 minutes on 2 cores before the TCP fan-out floor was added (~10 s more per run;
# QUICK=1: ~4.5 minutes per run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
OUT=${1:-$ROOT/target/compare/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}
if [ "${QUICK:-0}" = 1 ]; then
  SUBS=${SUBS:-2000}; FANOUT_RATES=${FANOUT_RATES:-10,100}; STEP_SECS=${STEP_SECS:-2}
  IDLE_CONNS=${IDLE_CONNS:-5000}; CONNECT_CONNS=${CONNECT_CONNS:-2000}
  MC_CHANNELS=${MC_CHANNELS:-100}; MC_SUBS=${MC_SUBS:-10}; MC_RATE=${MC_RATE:-5000}
  DIRECT_PAIRS=${DIRECT_PAIRS:-200}; DIRECT_RATES=${DIRECT_RATES:-50000}; REST_SECS=${REST_SECS:-2}
fi
SUBS=${SUBS:-10000}
FANOUT_RATES=${FANOUT_RATES:-10,50,100,200}
STEP_SECS=${STEP_SECS:-5}
IDLE_CONNS=${IDLE_CONNS:-19000}
CONNECT_CONNS=${CONNECT_CONNS:-10000}
MC_CHANNELS=${MC_CHANNELS:-1000}
MC_SUBS=${MC_SUBS:-10}
MC_RATE=${MC_RATE:-20000}
DIRECT_PAIRS=${DIRECT_PAIRS:-1000}
DIRECT_RATES=${DIRECT_RATES:-100000,200000,400000}
# Direct publishers write at most once per DIRECT_BATCH_MS, every frame due by then in one
# write (the latency still counts from each message's own send time); 0: a write per send time.
DIRECT_BATCH_MS=${DIRECT_BATCH_MS:-0}
REST_SECS=${REST_SECS:-5}
TARGETS=${TARGETS:-ringcast nats mosquitto}
SCENARIOS=${SCENARIOS:-pingpong latency fanout many-channels direct idle connect rest}
NCPU=$(nproc)
BROKER_CPUS=${BROKER_CPUS:-0}
if [ "$NCPU" -gt 1 ]; then LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}; else LOADGEN_CPUS=${LOADGEN_CPUS:-0}; fi
BENCH_MD=${BENCH_MD:-$ROOT/BENCHMARKS.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
BIN=$CARGO_TARGET_DIR/release
LG="taskset -c $LOADGEN_CPUS $BIN/ringcast-loadgen"
WS_PORT=18080; REST_PORT=18081

log() { echo "compare: [$(($(date +%s) - T0))s] $*" >&2; }

# 1. Peers from Debian packages.
need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v mosquitto >/dev/null || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# The Debian package may start a system mosquitto on 1883; our listeners are 9001 and 11883.

# 2. Build, tune (best effort), record the machine.
cargo build --release -p ringcast -p ringcast-loadgen
bash tuning/apply.sh > "$OUT/tuning.txt" 2>&1 || true
ulimit -n "$(ulimit -Hn)" || true
{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -sr)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $NCPU"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "ringcast: $(git rev-parse --short HEAD)$(git diff --quiet -- src Cargo.toml Cargo.lock || echo ' (src modified)')"
  echo "nats-server: $(nats-server --version 2>&1 | head -1)"
  echo "mosquitto: $(mosquitto -h 2>&1 | head -1)"
  echo "rustc: $(rustc --version)"
  echo "ulimit -n: $(ulimit -n)"
  echo "placement: brokers on CPU $BROKER_CPUS (ringcast --shards 1, nats GOMAXPROCS=1, mosquitto single-threaded); generator on CPU $LOADGEN_CPUS"
  echo "runs: $RUNS; scenarios: $SCENARIOS"
  echo "load at start: $(uptime | sed 's/.*load average/load average/')"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2
echo "$(cut -d' ' -f1 /proc/loadavg)" > "$OUT/load.txt"

BPID=
ADDR=
start_broker() {
  case $1 in
    ringcast)
      taskset -c "$BROKER_CPUS" "$BIN/ringcast" --config tuning/ringcast-bench.toml \
        --listen 127.0.0.1:$WS_PORT --rest-listen 127.0.0.1:$REST_PORT --shards 1 \
        --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
        --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 > "$OUT/ringcast.log" 2>&1 &
      ADDR=127.0.0.1:$WS_PORT ;;
    nats)
      GOMAXPROCS=1 taskset -c "$BROKER_CPUS" nats-server -c tuning/nats.conf > "$OUT/nats.log" 2>&1 &
      ADDR=127.0.0.1:8222 ;;
    mosquitto)
      taskset -c "$BROKER_CPUS" mosquitto -c tuning/mosquitto.conf > "$OUT/mosquitto.log" 2>&1 &
      ADDR=127.0.0.1:9001 ;;
  esac
  BPID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null; then
      [ "$1" != ringcast ] && return 0
      (exec 3<>"/dev/tcp/127.0.0.1/$REST_PORT") 2>/dev/null && return 0
    fi
    kill -0 "$BPID" 2>/dev/null || break
    sleep 0.1
  done
  log "$1 did not start"; cat "$OUT/$1.log" >&2; return 1
}
stop_broker() {
  if [ -n "$BPID" ]; then
    kill "$BPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
  fi
  BPID=
  sleep 0.5
}
trap stop_broker EXIT

# 3. Scenarios. Each (run, scenario, target) gets a fresh broker.
run_lg() { # target name run scenario args...
  local t=$1 name=$2 r=$3 s=$4; shift 4
  start_broker "$t" || return 0
  cut -d' ' -f1 /proc/loadavg >> "$OUT/load.txt"
  log "$t $name run $r"
  if [ "$s" = rest ]; then
    timeout 120 $LG rest --addr 127.0.0.1:$REST_PORT --broker-pid "$BPID" \
      --out "$OUT/$t-$name-$r.json" "$@" > "$OUT/$t-$name-$r.txt" 2>&1 ||
      log "$t $name run $r failed (see $OUT/$t-$name-$r.txt)"
  else
    timeout 300 $LG "$s" --target "$t" --addr "$ADDR" --broker-pid "$BPID" --max-secs 240 \
      --out "$OUT/$t-$name-$r.json" "$@" > "$OUT/$t-$name-$r.txt" 2>&1 ||
      log "$t $name run $r failed (see $OUT/$t-$name-$r.txt)"
  fi
  stop_broker
}
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
for r in $(seq "$RUNS"); do
  if has pingpong; then
    log "tcp pingpong run $r"
    # Echo thread on the broker's core, client on the generator's: the same crossing as a
    # broker's publish -> deliver path.
    # --spin-timer: send times kept to a few µs (tokio's timer alone is 1 ms coarse), as in
    # the 1 -> 1 runs below, so both carry the same generator.
    timeout 60 $LG pingpong --rate 10000 --secs "$STEP_SECS" --echo-cpu "${BROKER_CPUS%%[-,]*}" --spin-timer \
      --out "$OUT/tcp-pingpong-$r.json" > "$OUT/tcp-pingpong-$r.txt" 2>&1 || log "pingpong failed"
  fi
  for t in $TARGETS; do
    # One worker process (publisher and subscriber in one runtime, so the yielding publisher
    # never keeps the subscriber off the core), precise send times.
    has latency && run_lg "$t" latency "$r" fanout --subscribers 1 --rates 10000 --step-secs "$STEP_SECS" \
      --workers 1 --spin-timer
  done
  if has fanout || has tcp-fanout; then
    # The floor under "publish -> last of SUBS subscribers": one sender thread on the broker's
    # core writing 64 B to each of SUBS loopback sockets per publish, at the first fan-out rate
    # (the step the goal is checked at); the receiving ends run on the generator's cores.
    log "tcp fan-out floor run $r"
    cut -d' ' -f1 /proc/loadavg >> "$OUT/load.txt"
    timeout 120 $LG tcp-fanout --sockets "$SUBS" --rate "${FANOUT_RATES%%,*}" --secs "$STEP_SECS" \
      --sender-cpu "${BROKER_CPUS%%[-,]*}" --out "$OUT/tcp-fanout-$r.json" > "$OUT/tcp-fanout-$r.txt" 2>&1 ||
      log "tcp fan-out floor failed (see $OUT/tcp-fanout-$r.txt)"
  fi
  for t in $TARGETS; do
    has fanout && run_lg "$t" fanout "$r" fanout --subscribers "$SUBS" --rates "$FANOUT_RATES" --step-secs "$STEP_SECS"
  done
  for t in $TARGETS; do
    has many-channels && run_lg "$t" many-channels "$r" many-channels --channels "$MC_CHANNELS" \
      --subscribers-per-channel "$MC_SUBS" --rates "$MC_RATE" --step-secs "$STEP_SECS"
  done
  for t in $TARGETS; do
    has direct && run_lg "$t" direct "$r" direct --pairs "$DIRECT_PAIRS" --rates "$DIRECT_RATES" --step-secs "$STEP_SECS" \
      --batch-ms "$DIRECT_BATCH_MS"
  done
  for t in $TARGETS; do
    has idle && run_lg "$t" idle "$r" idle --connections "$IDLE_CONNS" --hold-secs 5
  done
  for t in $TARGETS; do
    has connect && run_lg "$t" connect "$r" connect --connections "$CONNECT_CONNS"
  done
  # REST publish: ringcast only (nats-server and mosquitto have no HTTP publish endpoint).
  case " $TARGETS " in *" ringcast "*) has rest && run_lg ringcast rest "$r" rest --secs "$REST_SECS" ;; esac
done
cut -d' ' -f1 /proc/loadavg >> "$OUT/load.txt"
echo "load at end: $(uptime | sed 's/.*load average/load average/')" >> "$OUT/machine.txt"
echo "wall time: $(($(date +%s) - T0)) s" >> "$OUT/machine.txt"

# 4. Medians, ratios, goals.
python3 loadgen/report.py "$OUT" "$TARGETS" > "$OUT/compare.md"
cat "$OUT/compare.md"
if [ "$BENCH_MD" != none ] && grep -q '<!-- compare:begin -->' "$BENCH_MD"; then
  python3 - "$BENCH_MD" "$OUT/compare.md" <<'PY'
import sys
md, table = sys.argv[1], open(sys.argv[2]).read()
s = open(md).read()
a, b = s.index("<!-- compare:begin -->"), s.index("<!-- compare:end -->")
open(md, "w").write(s[:a] + "<!-- compare:begin -->\n" + table + s[b:])
PY
  log "table written into $BENCH_MD"
fi
log "results in $OUT"
