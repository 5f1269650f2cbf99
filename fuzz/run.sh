#!/usr/bin/env bash
# Coverage-guided fuzzing of every target with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   bash fuzz/run.sh [seconds-per-target] [target…]     (default: 60 s, all five targets)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and `cargo install cargo-fuzz`.
# Runs on a scratch copy of the committed seed corpora (fuzz/corpus/ is not modified); crashes
# land in fuzz/artifacts/<target>/. Exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse_client_msg glob_match token_verify upgrade_parse ws_read)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo +nightly fuzz build -O
rc=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    cp corpus/"$t"/* "$work/$t"/
    echo "==> cargo fuzz run $t (${secs}s)"
    if ! cargo +nightly fuzz run -O "$t" "$work/$t" -- -max_total_time="$secs" -max_len=8192 \
        -print_final_stats=1 2>"$work/$t.log"; then
        rc=1
        tail -40 "$work/$t.log"
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" "$work/$t.log" | tr '\n' ' '
    echo " corpus: $(ls "$work/$t" | wc -l) inputs"
done
exit "$rc"
