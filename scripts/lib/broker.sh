# Sourced by scripts/soak.sh and scripts/storm.sh: starts a test broker on loopback.
#
#   start_broker NAME [EXTRA FLAGS...]
#
# Expects `$work` (a temporary directory) and `$BIN`; writes the test app's config, starts
# `$BIN --config … --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --shards 2
# --upgrades-per-ip 0 --pending-handshakes-per-ip 0 EXTRA…` (every load comes from 127.0.0.1) with its output in `$work/broker.log`, and sets `bpid`, `port`
# (WebSocket) and `rest` (REST) once both listeners are up, or exits 1 after 10 s.
start_broker() {
    local name="$1"
    shift
    cat >"$work/rc.toml" <<'TOML'
[[apps]]
id = "test"
[[apps.secret_keys]]
id = "sk_id_test1"
secret = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
TOML
    "$BIN" --config "$work/rc.toml" --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --shards 2 \
        --upgrades-per-ip 0 --pending-handshakes-per-ip 0 "$@" >"$work/broker.log" 2>&1 &
    bpid=$!
    port="" rest=""
    for _ in $(seq 1 100); do
        port="$(sed -n 's#^ringcast: listening on ws://127\.0\.0\.1:\([0-9]*\)/v1.*#\1#p' "$work/broker.log")"
        rest="$(sed -n 's#^ringcast: rest on http://127\.0\.0\.1:\([0-9]*\)$#\1#p' "$work/broker.log")"
        [ -n "$port" ] && [ -n "$rest" ] && break
        sleep 0.1
    done
    [ -n "$port" ] && [ -n "$rest" ] || {
        echo "$name: broker did not start" >&2
        cat "$work/broker.log" >&2
        exit 1
    }
}
