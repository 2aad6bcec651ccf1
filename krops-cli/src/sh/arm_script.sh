set -e
p=$1 seconds=$2 operation=$3
command -v setsid > /dev/null || { echo "setsid (util-linux) is missing: cannot arm the watchdog" >&2; exit 1; }
enter_own_dir "$p" create
rm -f -- watchdog watchdog.confirmed watchdog.fired
profile=$(readlink -- /nix/var/nix/profiles/system 2>/dev/null || true)
: > watchdog
# shellcheck disable=SC2016 # the watchdog script is single-quoted: it expands in its own shell
setsid /bin/sh -c '
seconds=$2 before=$3 operation=$4 system=/nix/var/nix/profiles/system
sleep "$seconds"
mv -T -- watchdog watchdog.fired 2>/dev/null || exit 0
exec >> watchdog.fired 2>&1
echo "not confirmed within $seconds s" >&2
if [ "$operation" = test ]; then
  # nixos-rebuild test made no generation: the current one is what to return to.
  if [ -e "$system" ] && "$system/bin/switch-to-configuration" test; then result=rolled-back; else result=rollback-failed; fi
elif [ -n "$before" ] && [ "$(readlink -- "$system" 2>/dev/null || true)" = "$before" ]; then
  echo "nothing to roll back: the system profile did not change" >&2; result=unchanged
elif nixos-rebuild switch --rollback; then result=rolled-back
else result=rollback-failed
fi
echo "$result"
if [ -f record ]; then
  tmp=$(mktemp record.XXXXXX)
  { grep -v "^activation " record || true
    printf "activation watchdog %s %s\n" "$result" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } > "$tmp"
  mv -fT -- "$tmp" record
fi
' krops-watchdog "$p" "$seconds" "$profile" "$operation" < /dev/null > /dev/null 2>&1 &
echo $! > watchdog
# Started, and not gone at once.
sleep 0.1
kill -0 "$(cat watchdog)" 2>/dev/null || { echo "the watchdog did not start" >&2; exit 1; }
cat watchdog
