#!/usr/bin/env bash
# loadgen/ext.sh — benchmarks of the protocol §8 extensions, each next to its plain baseline
# measured in the same run (interleaved: baseline, extension, baseline, extension, …), medians
# of RUNS. Loopback only; broker pinned to BROKER_CPUS with one shard, generator to
# LOADGEN_CPUS; a fresh broker for every measurement.
#
#   wildcard  §8.3  publishes/broker CPU-s with 10,000 non-matching patterns vs none
#                   (two pattern shapes: `mixed` and `residual`, see loadgen/src/ext.rs)
#   history   §8.1  broker CPU per delivery, fan-out on `hist/fan` (history) vs `fan`
#   resume    §8.1  subscribe-with-since -> 1,000th replayed message, p99 over REPS; the same
#                   burst delivered live in the same run is the baseline
#   retain    §8.1  RSS growth and ringcast_history_bytes per retained message vs frame size
#                   (a plain-channel phase of the same publications is the baseline)
#   group     §8.2  100 members at 50,000 pub/s: loss and extra deliveries, vs one plain
#                   subscriber at the same rate
#
# Usage: loadgen/ext.sh [results-dir]                 (default target/ext/<date>)
# Env: RUNS (3), SCENARIOS ("wildcard history resume retain group"), BROKER (target/release/
#      ringcast), LG (target/release/ringcast-loadgen), BROKER_CPUS (0), LOADGEN_CPUS (the
#      other cores), BENCH_MD (BENCHMARKS.md; `none` to skip), STEP_SECS (5), WC_RATES
#      (20000,60000), WC_PATTERNS (10000), HF_SUBS (1000), HF_RATES (50), HF2_SUBS (10),
#      HF2_RATES (20000), HF_PAIRS (2), RESUME_REPS (1000), RETAIN_MSGS (100000), RETAIN_PAYLOAD (120),
#      GROUP_MEMBERS (100), GROUP_RATE (50000).
# History scenarios need a broker with `[[apps.history]]` (src/config.rs knows
# `history_max_bytes`); the group scenario needs queue groups. Without them those scenarios
# are skipped (history) or report what the broker did (group: every member gets everything).
# Every generator call is bounded by `timeout` and --max-secs. ~10 minutes with RUNS=3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
OUT=${1:-$ROOT/target/ext/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-wildcard history resume retain group}
STEP_SECS=${STEP_SECS:-5}
WC_RATES=${WC_RATES:-20000,60000}; WC_PATTERNS=${WC_PATTERNS:-10000}
HF_SUBS=${HF_SUBS:-1000}; HF_RATES=${HF_RATES:-50}
HF2_SUBS=${HF2_SUBS:-10}; HF2_RATES=${HF2_RATES:-20000}; HF_PAIRS=${HF_PAIRS:-2}
RESUME_REPS=${RESUME_REPS:-1000}
RETAIN_MSGS=${RETAIN_MSGS:-100000}; RETAIN_PAYLOAD=${RETAIN_PAYLOAD:-120}
GROUP_MEMBERS=${GROUP_MEMBERS:-100}; GROUP_RATE=${GROUP_RATE:-50000}
NCPU=$(nproc); BROKER_CPUS=${BROKER_CPUS:-0}
if [ "$NCPU" -gt 1 ]; then LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}; else LOADGEN_CPUS=${LOADGEN_CPUS:-0}; fi
BENCH_MD=${BENCH_MD:-$ROOT/BENCHMARKS.md}
BROKER=${BROKER:-target/release/ringcast}
LG=${LG:-target/release/ringcast-loadgen}
[ -x "$BROKER" ] && [ -x "$LG" ] || cargo build --release -p ringcast -p ringcast-loadgen --quiet
LGC="taskset -c $LOADGEN_CPUS $LG"
WS_PORT=${WS_PORT:-18080}; REST_PORT=${REST_PORT:-18081}
ulimit -n "$(ulimit -Hn)" || true
log() { echo "ext: [$(($(date +%s) - T0))s] $*" >&2; }

# The broker config: the benchmark app, plus history channels when the broker knows them.
HIST=0
grep -q history_max_bytes src/config.rs && HIST=1
CONF=$OUT/ringcast-ext.toml
{
  if [ $HIST = 1 ]; then echo "history_max_bytes = 1073741824"; fi
  cat tuning/ringcast-bench.toml
  if [ $HIST = 1 ]; then
    cat <<'EOF'
[[apps.history]]
channels = ["hist/**"]
size = 1000
ttl_secs = 600
[[apps.history]]
channels = ["retain/**"]
size = 100000
ttl_secs = 3600
EOF
  fi
} > "$CONF"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "ringcast: $(git rev-parse --short HEAD)$(git diff --quiet -- src Cargo.toml Cargo.lock || echo ' (src modified)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $NCPU"
  echo "placement: broker on CPU $BROKER_CPUS (--shards 1), generator on CPU $LOADGEN_CPUS"
  echo "runs: $RUNS; scenarios: $SCENARIOS; history config: $HIST"
  echo "load at start: $(uptime | sed 's/.*load average/load average/')"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

BPID=
start() {
  taskset -c "$BROKER_CPUS" "$BROKER" --config "$CONF" \
    --listen 127.0.0.1:$WS_PORT --rest-listen 127.0.0.1:$REST_PORT --shards 1 \
    --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
    --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 \
    > "$OUT/broker.log" 2>&1 &
  BPID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$REST_PORT") 2>/dev/null; then
      return 0
    fi
    kill -0 "$BPID" 2>/dev/null || break
    sleep 0.1
  done
  log "broker did not start"; cat "$OUT/broker.log" >&2; return 1
}
stop() {
  if [ -n "$BPID" ]; then
    kill "$BPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true
  fi
  BPID=; sleep 0.5
}
trap stop EXIT
run() { # name run scenario args...  (a fresh broker; output $OUT/name-run.{json,txt})
  local name=$1 r=$2 s=$3; shift 3
  start || return 0
  echo "$name $r $(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/load.txt"
  log "$name run $r"
  local common=(--addr 127.0.0.1:$WS_PORT --broker-pid "$BPID" --max-secs 120 --out "$OUT/$name-$r.json")
  timeout 180 $LGC "$s" "${common[@]}" "$@" > "$OUT/$name-$r.txt" 2>&1 ||
    log "$name run $r failed (see $OUT/$name-$r.txt)"
  echo "$LG $s ${*}" > "$OUT/$name.cmd"
  stop
}
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
hist_ok() { [ $HIST = 1 ] || { log "skipping $1: this broker has no history config"; return 1; }; }

for r in $(seq "$RUNS"); do
  if has wildcard; then
    wc=(--rates "$WC_RATES" --step-secs "$STEP_SECS")
    run wc-none "$r" wildcard --patterns 0 "${wc[@]}"
    run wc-mixed "$r" wildcard --patterns "$WC_PATTERNS" --shape mixed "${wc[@]}"
    run wc-residual "$r" wildcard --patterns "$WC_PATTERNS" --shape residual "${wc[@]}"
  fi
  if has history && hist_ok history; then
    # HF_PAIRS plain/history pairs per run (CPU per delivery moves with the machine's load).
    for k in $(seq "$HF_PAIRS"); do
      for ch in fan hist/fan; do
        run "hf-${ch%%/*}" "$r$k" fanout --channel "$ch" --subscribers "$HF_SUBS" --rates "$HF_RATES" --step-secs "$STEP_SECS"
      done
      for ch in fan hist/fan; do
        run "hf2-${ch%%/*}" "$r$k" fanout --channel "$ch" --subscribers "$HF2_SUBS" --rates "$HF2_RATES" --step-secs "$STEP_SECS"
      done
    done
  fi
  if has resume && hist_ok resume; then
    run resume "$r" resume --reps "$RESUME_REPS" --missed 1000
  fi
  if has retain && hist_ok retain; then
    run retain "$r" retain --rest-addr 127.0.0.1:$REST_PORT --messages "$RETAIN_MSGS" --channels 10 --payload "$RETAIN_PAYLOAD"
    run retain1 "$r" retain --rest-addr 127.0.0.1:$REST_PORT --messages "$RETAIN_MSGS" --channels 1 --payload "$RETAIN_PAYLOAD"
  fi
  if has group; then
    g=(--rates "$GROUP_RATE" --publishers 10 --step-secs "$STEP_SECS")
    run group-plain "$r" group --plain --members 1 "${g[@]}"
    run group "$r" group --members "$GROUP_MEMBERS" "${g[@]}"
  fi
done
echo "load at end: $(uptime | sed 's/.*load average/load average/')" >> "$OUT/machine.txt"
echo "wall time: $(($(date +%s) - T0)) s" >> "$OUT/machine.txt"

python3 loadgen/ext_report.py "$OUT" > "$OUT/ext.md"
cat "$OUT/ext.md"
if [ "$BENCH_MD" != none ] && grep -q '<!-- ext:begin -->' "$BENCH_MD"; then
  python3 - "$BENCH_MD" "$OUT/ext.md" <<'PY'
import sys
md, table = sys.argv[1], open(sys.argv[2]).read()
s = open(md).read()
a, b = s.index("<!-- ext:begin -->"), s.index("<!-- ext:end -->")
open(md, "w").write(s[:a] + "<!-- ext:begin -->\n" + table + s[b:])
PY
  log "tables written into $BENCH_MD"
fi
log "results in $OUT"
