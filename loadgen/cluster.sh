#!/usr/bin/env bash
# loadgen/cluster.sh — fan-out across two ringcast nodes joined through a real nats-server
# (protocol §9, docs/cluster.md), next to the same fan-out on one node, interleaved in one run
# (single, cluster, single, cluster, …), medians of RUNS.
#
#   plain    publisher and SUBS subscribers on one node without `[cluster]`
#   single   the same on node B of a running cluster (B forwards each publication to NATS,
#            which has no other subscriber for it): the cost of `[cluster]` on one node
#   cluster  SUBS subscribers on node B, the publisher on node A: every publication crosses
#            NATS once (A -> nats-server -> B) and B fans it out
#
# Per step: deliveries/s, publish -> subscriber latency p50/p99, and CPU-seconds of node A,
# node B and nats-server per 1,000 publications (from /proc, over the whole run of the step's
# generator call), plus the bytes one publication puts on NATS.
#
# Usage: loadgen/cluster.sh [results-dir]
# Env: RUNS (3), SUBS (1000), RATES (1000,5000), STEP_SECS (5), PAYLOAD (64),
#      BROKER (target/release/ringcast), LG (target/release/ringcast-loadgen).
# Loopback only; every generator call is bounded by `timeout` and --max-secs. Needs
# nats-server (apt install nats-server). The two nodes have 1 shard each; on this 2-core VM
# the nodes, nats-server and the generator share both cores, so compare CPU-seconds per
# publication, not throughput ceilings.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/cluster/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}; SUBS=${SUBS:-1000}; RATES=${RATES:-1000,5000}; STEP_SECS=${STEP_SECS:-5}
PAYLOAD=${PAYLOAD:-64}
BROKER=${BROKER:-target/release/ringcast}; LG=${LG:-target/release/ringcast-loadgen}
[ -x "$BROKER" ] && [ -x "$LG" ] || cargo build --release -p ringcast -p ringcast-loadgen --quiet
command -v nats-server >/dev/null || { echo "cluster.sh: nats-server is not installed" >&2; exit 2; }
NATS_PORT=${NATS_PORT:-14222}
A_WS=18480; A_REST=18481; B_WS=18490; B_REST=18491
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start_all() { # mode
  if [ "$1" = plain ]; then
    "$BROKER" --config tuning/ringcast-bench.toml --listen 127.0.0.1:$B_WS --rest-listen 127.0.0.1:$B_REST \
      --shards 1 --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
      --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 \
      > "$OUT/nodeB.log" 2>&1 &
    BPID=$!; PIDS+=($BPID); APID=$BPID; NPID=$BPID
    wait_port $B_WS
    return 0
  fi
  nats-server -a 127.0.0.1 -p $NATS_PORT > "$OUT/nats.log" 2>&1 & NPID=$!; PIDS+=($NPID)
  wait_port $NATS_PORT
  for n in A B; do
    ws=$A_WS; rest=$A_REST; [ $n = B ] && { ws=$B_WS; rest=$B_REST; }
    "$BROKER" --config tuning/ringcast-bench.toml --listen 127.0.0.1:$ws --rest-listen 127.0.0.1:$rest \
      --shards 1 --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 \
      --pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304 \
      --nats-url nats://127.0.0.1:$NATS_PORT --node-id "bench-$n" > "$OUT/node$n.log" 2>&1 &
    PIDS+=($!)
    [ $n = A ] && APID=$! || BPID=$!
    wait_port $ws
  done
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$A_REST/healthz" | grep -q connected &&
      curl -s "http://127.0.0.1:$B_REST/healthz" | grep -q connected && return 0
    sleep 0.1
  done
  echo "cluster.sh: nodes did not connect to NATS" >&2; return 1
}
stop_all() { cleanup; PIDS=(); sleep 0.5; }
for r in $(seq "$RUNS"); do
  for mode in plain single cluster; do
    start_all $mode
    pub=127.0.0.1:$B_WS; [ $mode = cluster ] && pub=127.0.0.1:$A_WS
    a0=$(cputicks $APID); b0=$(cputicks $BPID); n0=$(cputicks $NPID)
    echo "cluster.sh: $mode run $r (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
    timeout 300 "$LG" fanout --addr 127.0.0.1:$B_WS --pub-addr "$pub" --subscribers "$SUBS" \
      --rates "$RATES" --step-secs "$STEP_SECS" --payload "$PAYLOAD" --max-secs 240 \
      --out "$OUT/$mode-$r.json" > "$OUT/$mode-$r.txt" 2>&1 ||
      echo "cluster.sh: $mode run $r failed (see $OUT/$mode-$r.txt)" >&2
    a1=$(cputicks $APID); b1=$(cputicks $BPID); n1=$(cputicks $NPID)
    if [ $mode = plain ]; then a1=$a0; n1=$n0; fi
    curl -s "http://127.0.0.1:$A_REST/metrics" | grep '^ringcast_cluster' > "$OUT/$mode-$r.metricsA" || true
    curl -s "http://127.0.0.1:$B_REST/metrics" | grep '^ringcast_cluster' > "$OUT/$mode-$r.metricsB" || true
    echo "{\"a\": $((a1 - a0)), \"b\": $((b1 - b0)), \"nats\": $((n1 - n0)), \"hz\": $(getconf CLK_TCK)}" > "$OUT/$mode-$r.cpu"
    stop_all
  done
done
python3 - "$OUT" "$RUNS" "$PAYLOAD" <<'PY' | tee "$OUT/cluster.md"
import sys
sys.path.insert(0, "loadgen")
from medians import cell as f, load as load_run, med  # noqa: E402
out, runs, payload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(mode, r):
    return load_run(out, mode, r)
modes = ("plain", "single", "cluster")
data = {m: [d for d in (load(m, r) for r in range(1, runs + 1)) if d] for m in modes}
print("| figure | one node, no `[cluster]` | one node of a cluster (publisher and subscribers on it) | two nodes over NATS (publisher on A, subscribers on B) |")
print("|---|---|---|---|")
steps = len(data["single"][0][0]["steps"]) if data["single"] else 0
for i in range(steps):
    rate = data["single"][0][0]["steps"][i]["rate"]
    row = {}
    for m in data:
        row[m] = {
            "dps": med([d["steps"][i]["deliveries_per_sec"] for d, _ in data[m]]),
            "p50": med([d["steps"][i]["latency"]["p50_ms"] for d, _ in data[m]]),
            "p99": med([d["steps"][i]["latency"]["p99_ms"] for d, _ in data[m]]),
            "lost": med([d["steps"][i]["expected"] - d["steps"][i]["delivered"] for d, _ in data[m]]),
        }
    cells = lambda key, fmt="{:,.2f}": " | ".join(f(row[m][key], fmt) for m in modes)
    print(f"| {rate:,.0f} pub/s: deliveries/s | {cells('dps', '{:,.0f}')} |")
    print(f"| {rate:,.0f} pub/s: publish -> subscriber p50 ms | {cells('p50')} |")
    print(f"| {rate:,.0f} pub/s: publish -> subscriber p99 ms | {cells('p99')} |")
    print(f"| {rate:,.0f} pub/s: deliveries missing | {cells('lost', '{:,.0f}')} |")
per = {}
for m in modes:
    per[m] = []
    for d, cpu in data[m]:
        pubs = sum(s["sent"] for s in d["steps"])
        hz = cpu["hz"]
        per[m].append({k: cpu[k] / hz / pubs * 1000 * 1000 for k in ("a", "b", "nats")})
for k, name in (("b", "node B (subscribers' node)"), ("a", "node A (publisher's node, cluster run)"), ("nats", "nats-server")):
    print(f"| CPU ms per 1,000 publications (whole run), {name} | " + " | ".join(f(med([p[k] for p in per[m]])) if per[m] else "-" for m in modes) + " |")
# What one publication puts on NATS: the wire header + app + channel + the frame.
frame = 2 + len('{"type":"message","channel":"fan","from":"p0","data":') + payload + 1
wire = 2 + 16 + 2 + len("bench") + 2 + len("fan") + 4 + frame + 4
print(f"| bytes one publication puts on NATS (payload {payload} B; wire message, NATS adds the subject and a MSG line) | - | ~{wire} |")
PY
