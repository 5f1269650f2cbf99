#!/usr/bin/env bash
# Applies tuning/sysctl.conf one key at a time and raises the fd limit of this shell.
# A container may refuse some keys (read-only /proc/sys, no CAP_SYS_ADMIN, per-netns keys):
# each refusal is reported and skipped, never fatal. Prints the value before and after so the
# change can be reverted (tuning/README.md, "Revert"). Usage: sudo tuning/apply.sh [--dry-run]
set -u
here=$(cd "$(dirname "$0")" && pwd)
dry=0; [ "${1:-}" = "--dry-run" ] && dry=1
saved="${TMPDIR:-/tmp}/ringcast-sysctl-before.conf"
: > "$saved"
ok=0; refused=0
while IFS= read -r line; do
  line="${line%%#*}"; [ -z "${line// }" ] && continue
  key=$(echo "${line%%=*}" | xargs); want=$(echo "${line#*=}" | xargs)
  path="/proc/sys/${key//.//}"
  if [ ! -e "$path" ]; then echo "skip    $key: not present in this kernel/namespace"; refused=$((refused+1)); continue; fi
  before=$(tr -s '\t ' ' ' < "$path")
  echo "$key = $before" >> "$saved"
  if [ $dry = 1 ]; then echo "would   $key: '$before' -> '$want'"; continue; fi
  if sysctl -q -w "$key=$want" >/dev/null 2>&1; then
    echo "set     $key: '$before' -> '$(tr -s '\t ' ' ' < "$path")'"; ok=$((ok+1))
  else
    echo "REFUSED $key (still '$before'): container or permissions"; refused=$((refused+1))
  fi
done < "$here/sysctl.conf"
echo "previous values saved to $saved (revert: sysctl -p $saved)"
# Open files: raise the soft limit to the hard limit for this shell and its children.
hard=$(ulimit -Hn)
if ulimit -n "$hard" 2>/dev/null; then echo "ulimit -n = $(ulimit -n) (hard $hard)"; else echo "REFUSED ulimit -n $hard"; fi
if [ "$hard" != unlimited ] && [ "$hard" -lt 1048576 ]; then
  echo "note: hard RLIMIT_NOFILE is $hard; raise it in /etc/security/limits.conf, systemd LimitNOFILE=,"
  echo "      or docker --ulimit nofile=1048576:1048576. ringcast-loadgen keeps each worker under 19,000 fds."
fi
echo "applied $ok, refused/skipped $refused"
exit 0
