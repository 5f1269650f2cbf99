#!/usr/bin/env bash
# loadgen/rpc.sh — the requests-and-replies benchmarks (protocol §8.4, issue 12), RUNS times
# each, a fresh broker per measurement, medians (min..max) printed as a markdown table:
#   1. rtt:      request -> final reply round trip vs send -> direct back, PAIRS pairs, RATES
#                round trips/s, A/B phases interleaved in one run (target: p99 ratio <= 1.5)
#   2. memory:   broker RSS per request in flight, MEM_REQUESTERS x MEM_PER requests that
#                nobody answers, same connections before and after (target: <= 256 B)
#   3. deadline: request_timeout arrival - (send + timeoutMs), timeoutMs spread over
#                100..2000 ms, with FAN_SUBS subscribers at FAN_RATE pub/s on the same shard,
#                and without (target: p99 <= 20 ms)
#
# Usage: loadgen/rpc.sh [results-dir]
# Env: RUNS (3), PAIRS (1000), RATES (10000,30000,50000), PHASE_SECS (2), ROUNDS (2),
#      MEM_REQUESTERS (200), MEM_PER (50), FAN_SUBS (1000), FAN_RATE (200), DL_RATE (300),
#      DL_SECS (6), BROKER (target/release/ringcast), LG (target/release/ringcast-loadgen),
#      BROKER_CPUS (0), LOADGEN_CPUS (the other cores). Built with cargo if missing.
# Every generator call is bounded by `timeout` and its own --max-secs; loopback only.
# ~4 minutes with the defaults on the 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/rpc/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=${RUNS:-3}; PAIRS=${PAIRS:-1000}; RATES=${RATES:-10000,30000,50000}
PHASE_SECS=${PHASE_SECS:-2}; ROUNDS=${ROUNDS:-2}
MEM_REQUESTERS=${MEM_REQUESTERS:-200}; MEM_PER=${MEM_PER:-50}
FAN_SUBS=${FAN_SUBS:-1000}; FAN_RATE=${FAN_RATE:-200}; DL_RATE=${DL_RATE:-300}; DL_SECS=${DL_SECS:-6}
NCPU=$(nproc); BROKER_CPUS=${BROKER_CPUS:-0}
if [ "$NCPU" -gt 1 ]; then LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}; else LOADGEN_CPUS=${LOADGEN_CPUS:-0}; fi
BROKER=${BROKER:-target/release/ringcast}
LG=${LG:-target/release/ringcast-loadgen}
[ -x "$BROKER" ] && [ -x "$LG" ] || cargo build --release -p ringcast -p ringcast-loadgen --quiet
WS_PORT=${WS_PORT:-18180}; REST_PORT=${REST_PORT:-18181}
BPID=
start() {
  taskset -c "$BROKER_CPUS" "$BROKER" --config tuning/ringcast-bench.toml \
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
  [ -n "$BPID" ] || return 0
  kill "$BPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true; BPID=; sleep 0.3
}
trap stop EXIT
run() { # name run args...
  local name=$1 r=$2; shift 2
  start
  echo "rpc: $name run $r (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  echo "$LG rpc $*" > "$OUT/$name-$r.cmd"
  timeout 120 taskset -c "$LOADGEN_CPUS" "$LG" rpc "$@" --addr 127.0.0.1:$WS_PORT \
    --rest-addr 127.0.0.1:$REST_PORT --broker-pid "$BPID" --max-secs 100 \
    --out "$OUT/$name-$r.json" > "$OUT/$name-$r.txt" 2>&1 ||
    echo "rpc: $name run $r failed (see $OUT/$name-$r.txt)" >&2
  stop
}
T0=$(date +%s)
for r in $(seq "$RUNS"); do
  run rtt "$r" rtt --pairs "$PAIRS" --rates "$RATES" --phase-secs "$PHASE_SECS" --rounds "$ROUNDS"
  run memory "$r" memory --requesters "$MEM_REQUESTERS" --per-requester "$MEM_PER"
  # The same at 4x the requests (400 x 100): is the per-request figure a slope or a step?
  run memory40k "$r" memory --requesters 400 --per-requester 100
  run deadline-fanout "$r" deadline --subscribers "$FAN_SUBS" --pub-rate "$FAN_RATE" \
    --req-rate "$DL_RATE" --secs "$DL_SECS"
  run deadline-quiet "$r" deadline --subscribers 0 --req-rate "$DL_RATE" --secs "$DL_SECS"
done
echo "rpc: all runs in $(( $(date +%s) - T0 ))s; results in $OUT" >&2
python3 - "$OUT" "$RUNS" <<'PY' | tee "$OUT/rpc.md"
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    res = []
    for r in range(1, runs + 1):
        try:
            res.append(json.load(open(f"{out}/{name}-{r}.json")))
        except (OSError, ValueError):
            pass
    return res
def f(xs, fmt="{:.2f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}..{fmt.format(max(xs))})"
def verdict(xs, ok):
    xs = [x for x in xs if x is not None]
    return "-" if not xs else ("PASS" if ok(statistics.median(xs)) else "FAIL")
print("| figure | median (min..max) over runs | target | |")
print("|---|---|---|---|")
rtt = load("rtt")
if rtt:
    for i, row in enumerate(rtt[0]["rates"]):
        rate = row["rate"]
        rs = [d["rates"][i] for d in rtt]
        for m in ("direct", "request"):
            print(f"| {rate:,.0f} rt/s, `{m}` round trip p50 / p99 ms | "
                  f"{f([x[m]['latency']['p50_ms'] for x in rs], '{:.3f}')} / "
                  f"{f([x[m]['latency']['p99_ms'] for x in rs], '{:.3f}')} | | |")
            print(f"| {rate:,.0f} rt/s, `{m}` broker CPU µs per round trip | "
                  f"{f([x[m]['broker_cpu_us_per_round_trip'] for x in rs])} | | |")
        ratios = [x["p99_ratio"] for x in rs]
        print(f"| {rate:,.0f} rt/s, request p99 / direct p99 | {f(ratios, '{:.3f}')} | <= 1.5 | "
              f"{verdict(ratios, lambda v: v <= 1.5)} |")
        incomplete = sum(1 for x in rs if not x["complete"])
        if incomplete:
            print(f"| {rate:,.0f} rt/s: runs with missing answers | {incomplete} | | |")
for mname in ("memory", "memory40k"):
  mem = load(mname)
  if mem:
    n = mem[0]['requests']
    b = [d["bytes_per_request"] for d in mem]
    print(f"| memory ({n:,} in flight): broker RSS bytes per request, warm baseline | "
          f"{f(b, '{:.0f}')} | <= 256 | {verdict(b, lambda v: v <= 256)} |")
    print(f"| memory ({n:,} in flight): the same from the cold baseline | "
          f"{f([d['bytes_per_request_cold'] for d in mem], '{:.0f}')} | | |")
    print(f"| memory ({n:,} in flight): ringcast_requests_in_flight after the fill | "
          f"{f([d['gauge_after'] for d in mem], '{:.0f}')} | | |")
for name, label in (("deadline-fanout", "with fan-out"), ("deadline-quiet", "no fan-out")):
    dl = load(name)
    if not dl:
        continue
    lat = [d["lateness"] for d in dl]
    p99 = [x["p99_ms"] for x in lat]
    print(f"| deadline {label}: lateness p50 / p99 / max ms | {f([x['p50_ms'] for x in lat])} / "
          f"{f(p99)} / {f([x['max_ms'] for x in lat])} | p99 <= 20 | {verdict(p99, lambda v: v <= 20)} |")
    print(f"| deadline {label}: timeouts received / requests sent | "
          f"{f([d['timeouts'] for d in dl], '{:.0f}')} / {f([d['sent'] for d in dl], '{:.0f}')} | | |")
    print(f"| deadline {label}: broker CPU share | {f([d['broker_cpu_share'] for d in dl])} | | |")
    fans = [d["fanout"] for d in dl if d.get("fanout")]
    if fans:
        print(f"| deadline {label}: fan-out reached, pub/s and deliveries/s | "
              f"{f([x['pub_per_sec'] for x in fans], '{:.0f}')} and "
              f"{f([x['deliveries_per_sec'] for x in fans], '{:,.0f}')} | | |")
        print(f"| deadline {label}: publish -> subscriber p99 ms | "
              f"{f([x['latency']['p99_ms'] for x in fans])} | | |")
PY
