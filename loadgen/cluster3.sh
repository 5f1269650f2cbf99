#!/usr/bin/env bash
# loadgen/cluster3.sh — three ringcast nodes joined through one nats-server against a
# three-node nats-server cluster (routes between them, a WebSocket listener on each), the same
# 64 B fan-out with the subscribers spread over the three nodes and the publisher on the
# first, interleaved in one run (ringcast3, nats3, ringcast3, …), medians of RUNS; then the
# 1 -> 1 latency across two ringcast nodes next to one ringcast node without `[cluster]`.
#
#   ringcast3   nats-server + ringcast A, B, C (1 shard each); SUBS subscribers round-robin
#               on A, B, C; the publisher on A
#   nats3       nats-server x3 with routes and WebSocket listeners; SUBS subscribers
#               round-robin on the three; the publisher on the first
#   lat-single  one ringcast node, no [cluster]: 1 subscriber, 1 publisher at LAT_RATE
#   lat-cross   the three-node ringcast cluster: the subscriber on B, the publisher on A
#
# Reported per mode: deliveries, deliveries per CPU-second summed over every broker process
# (nats-server included), publish -> subscriber p50/p99, deliveries missing.
#
# Usage: loadgen/cluster3.sh [results-dir]
# Env: RUNS (3), SUBS (900), RATES (500,1000), LAT_RATE (1000), STEP_SECS (5), PAYLOAD (64).
# Loopback only; every generator call is bounded by `timeout` and --max-secs. Needs
# nats-server (apt install nats-server). On a 2-core VM every broker and the generator share
# both cores: compare CPU-seconds, not throughput ceilings.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/cluster3/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}; SUBS=${SUBS:-900}; RATES=${RATES:-500,1000}; LAT_RATE=${LAT_RATE:-1000}
STEP_SECS=${STEP_SECS:-5}; PAYLOAD=${PAYLOAD:-64}
BROKER=${BROKER:-target/release/ringcast}; LG=${LG:-target/release/ringcast-loadgen}
[ -x "$BROKER" ] && [ -x "$LG" ] || cargo build --release -p ringcast -p ringcast-loadgen --quiet
command -v nats-server >/dev/null || { echo "cluster3.sh: nats-server is not installed" >&2; exit 2; }
NATS_PORT=14322
WS=(18580 18590 18600); REST=(18581 18591 18601)
N_CLIENT=(14331 14332 14333); N_WS=(18631 18632 18633); N_ROUTE=(16331 16332 16333); N_MON=(18731 18732 18733)
PIDS=(); BPIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sumticks() { local t=0; for p in "${BPIDS[@]}"; do t=$((t + $(cputicks "$p"))); done; echo $t; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ringcast_node() { # name ws rest [nats-url]
  local extra=(); [ -n "${4:-}" ] && extra=(--nats-url "$4" --node-id "bench-$1")
  "$BROKER" --config tuning/ringcast-bench.toml --listen 127.0.0.1:$2 --rest-listen 127.0.0.1:$3 \
    --shards 1 --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
    --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 \
    "${extra[@]}" > "$OUT/ringcast-$1.log" 2>&1 &
  PIDS+=($!); BPIDS+=($!)
  wait_port "$2"
}
start_ringcast3() {
  nats-server -a 127.0.0.1 -p $NATS_PORT > "$OUT/nats.log" 2>&1 & PIDS+=($!); BPIDS+=($!)
  wait_port $NATS_PORT
  for i in 0 1 2; do ringcast_node "n$i" "${WS[$i]}" "${REST[$i]}" "nats://127.0.0.1:$NATS_PORT"; done
  for _ in $(seq 100); do
    local all=1
    for i in 0 1 2; do curl -s "http://127.0.0.1:${REST[$i]}/healthz" | grep -q '"nodes":3' || all=0; done
    [ $all = 1 ] && return 0
    sleep 0.1
  done
  echo "cluster3.sh: ringcast nodes did not see each other" >&2; return 1
}
start_nats3() {
  local routes="" i
  for i in 0 1 2; do routes+="\"nats-route://127.0.0.1:${N_ROUTE[$i]}\","; done
  for i in 0 1 2; do
    cat > "$OUT/nats$i.conf" <<CONF
listen: "127.0.0.1:${N_CLIENT[$i]}"
http: "127.0.0.1:${N_MON[$i]}"
max_connections: 1000000
max_payload: 65536
max_pending: 4194304
websocket { listen: "127.0.0.1:${N_WS[$i]}", no_tls: true, compression: false }
cluster { name: "bench", listen: "127.0.0.1:${N_ROUTE[$i]}", routes: [${routes%,}] }
CONF
    nats-server -c "$OUT/nats$i.conf" > "$OUT/nats$i.log" 2>&1 & PIDS+=($!); BPIDS+=($!)
  done
  for i in 0 1 2; do wait_port "${N_WS[$i]}"; done
  for _ in $(seq 100); do
    local all=1
    for i in 0 1 2; do
      [ "$(curl -s "http://127.0.0.1:${N_MON[$i]}/routez" | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_routes"])' 2>/dev/null)" -ge 2 ] 2>/dev/null || all=0
    done
    [ $all = 1 ] && return 0
    sleep 0.1
  done
  echo "cluster3.sh: nats-servers did not form their routes" >&2; return 1
}
stop_all() { cleanup; PIDS=(); BPIDS=(); sleep 0.5; }
run_lg() { # mode run args...
  local mode=$1 r=$2; shift 2
  local c0; c0=$(sumticks)
  echo "cluster3.sh: $mode run $r (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  timeout 300 "$LG" fanout "$@" --step-secs "$STEP_SECS" --payload "$PAYLOAD" --max-secs 240 \
    --out "$OUT/$mode-$r.json" > "$OUT/$mode-$r.txt" 2>&1 ||
    echo "cluster3.sh: $mode run $r failed (see $OUT/$mode-$r.txt)" >&2
  echo "{\"ticks\": $(( $(sumticks) - c0 )), \"hz\": $(getconf CLK_TCK)}" > "$OUT/$mode-$r.cpu"
}
addrs() { local a="" p; for p in "$@"; do a+="127.0.0.1:$p,"; done; echo "${a%,}"; }
for r in $(seq "$RUNS"); do
  start_ringcast3
  run_lg ringcast3 "$r" --sub-addrs "$(addrs "${WS[@]}")" --addr 127.0.0.1:${WS[0]} --pub-addr 127.0.0.1:${WS[0]} \
    --subscribers "$SUBS" --rates "$RATES"
  run_lg lat-cross "$r" --addr 127.0.0.1:${WS[1]} --pub-addr 127.0.0.1:${WS[0]} --subscribers 1 --rates "$LAT_RATE" --channel lat
  stop_all
  start_nats3
  run_lg nats3 "$r" --target nats --sub-addrs "$(addrs "${N_WS[@]}")" --addr 127.0.0.1:${N_WS[0]} \
    --pub-addr 127.0.0.1:${N_WS[0]} --subscribers "$SUBS" --rates "$RATES"
  stop_all
  ringcast_node single "${WS[0]}" "${REST[0]}"
  run_lg lat-single "$r" --addr 127.0.0.1:${WS[0]} --subscribers 1 --rates "$LAT_RATE" --channel lat
  stop_all
done
python3 - "$OUT" "$RUNS" <<'PY' | tee "$OUT/cluster3.md"
import sys
sys.path.insert(0, "loadgen")
from medians import cell as f, load as load_run, med  # noqa: E402
out, runs = sys.argv[1], int(sys.argv[2])
def load(mode, r):
    return load_run(out, mode, r)
data = {m: [d for d in (load(m, r) for r in range(1, runs + 1)) if d] for m in ("ringcast3", "nats3", "lat-single", "lat-cross")}
def per_cpu(d, cpu):
    delivered = sum(s["delivered"] for s in d["steps"])
    return delivered / (cpu["ticks"] / cpu["hz"]) if cpu["ticks"] else None
print("| fan-out, subscribers on 3 nodes, publisher on the first | ringcast x3 + nats-server | nats-server x3 (routes) |")
print("|---|---|---|")
dp = {m: med([per_cpu(d, c) for d, c in data[m]]) for m in ("ringcast3", "nats3")}
print(f"| deliveries per CPU-second, every broker process summed (whole run) | {f(dp['ringcast3'], '{:,.0f}')} | {f(dp['nats3'], '{:,.0f}')} |")
if dp["ringcast3"] and dp["nats3"]:
    ratios = [per_cpu(*a) / per_cpu(*b) for a, b in zip(data["ringcast3"], data["nats3"]) if per_cpu(*a) and per_cpu(*b)]
    print(f"| ratio ringcast / nats (per run, median) | {f(med(ratios))} | goal >= 1.5 |")
steps = len(data["ringcast3"][0][0]["steps"]) if data["ringcast3"] else 0
for i in range(steps):
    rate = data["ringcast3"][0][0]["steps"][i]["rate"]
    for key, name, fmt in (("p50_ms", "p50 ms", "{:,.2f}"), ("p99_ms", "p99 ms", "{:,.2f}")):
        cells = [f(med([d["steps"][i]["latency"][key] for d, _ in data[m]]), fmt) if data[m] else "-" for m in ("ringcast3", "nats3")]
        print(f"| {rate:,.0f} pub/s: publish -> subscriber {name} | {cells[0]} | {cells[1]} |")
    lost = [f(med([d["steps"][i]["expected"] - d["steps"][i]["delivered"] for d, _ in data[m]]), "{:,.0f}") if data[m] else "-" for m in ("ringcast3", "nats3")]
    print(f"| {rate:,.0f} pub/s: deliveries missing | {lost[0]} | {lost[1]} |")
print()
print("| 1 -> 1 at the same rate | one node, no [cluster] | across two nodes over NATS |")
print("|---|---|---|")
for key in ("p50_ms", "p99_ms"):
    cells = [f(med([d["steps"][0]["latency"][key] for d, _ in data[m]])) if data[m] else "-" for m in ("lat-single", "lat-cross")]
    print(f"| publish -> subscriber {key.replace('_ms', '')} ms | {cells[0]} | {cells[1]} |")
if data["lat-single"] and data["lat-cross"]:
    ratios = [c[0]["steps"][0]["latency"]["p99_ms"] / s[0]["steps"][0]["latency"]["p99_ms"] for s, c in zip(data["lat-single"], data["lat-cross"])]
    print(f"| p99 ratio cross-node / single (per run, median) | {f(med(ratios))} | goal <= 2 |")
PY
