set -e
p=$1 holder=$3 wait=$4
# force: the sentinel is made where nothing stands (a dangling symlink makes way), and never
# through a name someone could point elsewhere meanwhile: a file is hard-linked into place from
# a fresh one (`ln` fails on whatever stands there; mkdir, too).
if [ -n "$2" ]; then
  mkdir -p -- "$p"
  if [ -L "$p/.populate" ] && [ ! -e "$p/.populate" ]; then rm -f -- "$p/.populate"; fi
  case $2 in
    empty)
      if [ ! -e "$p/.populate" ]; then
        made=$(mktemp -- "$p/.krops-sentinel.XXXXXX")
        ln -T -- "$made" "$p/.populate" 2> /dev/null || true
        rm -f -- "$made"
      fi ;;
    dir) [ -e "$p/.populate" ] || mkdir -- "$p/.populate" 2> /dev/null || true ;;
  esac
fi
if [ ! -e "$p/.populate" ]; then echo missing; exit 0; fi
enter_own_dir "$p" create
exec 9< .
# Who holds it: a line krops wrote in its own directory, bounded and printable; unless the
# kernel names a live holder that is no krops run (a krops lock's holder is its run's shell or
# the `flock` that took it and is gone), which is then named by uid and PID.
held_by() {
  # shellcheck disable=SC2013 # PIDs are words
  for pid in $(awk -v ino="$(stat -c %i .)" '$2 == "FLOCK" { n = split($6, f, ":"); if (f[n] == ino) print $5 }' /proc/locks 2> /dev/null); do
    case $({ tr '\0' ' ' < "/proc/$pid/cmdline"; } 2> /dev/null) in
      ''|*krops-run-*) ;;
      *) printf 'foreign uid %s PID %s' "$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2> /dev/null)" "$pid"; return ;;
    esac
  done
  h=$(head -c 300 holder 2> /dev/null | head -n 1 | tr -cd '[:print:]')
  printf '%s' "${h:-unknown}"
}
if [ -n "$wait" ]; then how="-w $wait"; else how=-n; fi
# shellcheck disable=SC2086 # $how is an option and its argument
if ! flock $how 9; then echo "busy $(held_by)"; exit 0; fi
# A confirm watchdog an earlier run armed (see recovery.rs) may still roll back the system it
# guards: while it lives (armed, or rolling back), the target is as good as locked by that run,
# even when the run itself is gone. Its PID heads the armed file, and the log it fires into;
# only a live process of this user named krops-watchdog counts (a PID may be reused, and anyone
# can name a process so).
me=$(id -u)
watchdog_lives() {
  for f in watchdog watchdog.fired; do
    [ -f "$f" ] || continue
    pid=$(head -n 1 -- "$f" 2> /dev/null) || continue
    case $pid in ''|0*|*[!0-9]*) continue ;; esac
    [ "$(stat -c %u "/proc/$pid" 2> /dev/null)" = "$me" ] || continue
    case $({ tr '\0' ' ' < "/proc/$pid/cmdline"; } 2> /dev/null) in *" krops-watchdog "*) return 0 ;; esac
  done
  return 1
}
waited=0
while watchdog_lives; do
  if [ -z "$wait" ] || [ "$waited" -ge "$wait" ]; then
    echo "busy $(held_by), whose confirm watchdog is armed"; exit 0
  fi
  sleep 1; waited=$((waited + 1))
done
# The installer of an interrupted run (detached, so that it never stops halfway: see
# krops-core's tree.rs) may still be unpacking or swapping a source in, its working directory
# a staging directory below the target path: until it is done, the sources' state is not what
# this run would compare or replace.
real=$(cd -- "$p" && pwd -P)
installing() {
  for cwd in /proc/[0-9]*/cwd; do
    case $(readlink -- "$cwd" 2> /dev/null) in "$real"/*.krops-staging.*) return 0 ;; esac
  done
  return 1
}
tries=0
while installing; do
  if [ "$tries" -ge 600 ]; then echo "busy $(held_by), whose interrupted install is still going on"; exit 0; fi
  sleep 0.2; tries=$((tries + 1))
done
# Who holds it, written beside and renamed into place: never half-written.
tmp=$(mktemp holder.XXXXXX)
printf '%s since %s\n' "$holder" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$tmp"
mv -fT -- "$tmp" holder
# What an interrupted earlier run left half-written (temporary files, made by mktemp) goes:
# only the lock's holder writes here.
rm -f -- record.?????? holder.??????
# The state of the sources krops asks about ($5…), and the last record, for skipping what is
# unchanged (see record.rs).
shift 4
for entry do
  kind=${entry%% *} name=${entry#* }
  printf 'state %s %s\n' "$(state "$kind" "$name")" "$name"
done
if [ -f record ]; then
  # Bounded: a record krops wrote is a few lines; garbage must not hold the lock for long.
  head -n 10000 record | cut -c1-4096 | while IFS= read -r line; do printf 'record %s\n' "$line"; done
fi
# The system generation before activation: a rollback only undoes a change of it.
printf 'profile %s\n' "$(readlink -- /nix/var/nix/profiles/system 2>/dev/null || true)"
echo locked
# Nothing more is said: once krops is gone, a write to its closed pipes (even an error message
# of the scan below) would end this shell with SIGPIPE, and the lock with it.
exec > /dev/null 2>&1
# Nor does a failure end it from here on (`set -e` would: a parent exiting during the walk
# below makes its `sed` fail), for that would let the lock go early.
set +e
# krops says `done` when it releases the lock. Without it (krops was killed, its connection
# dropped), work of this run may still be going on here (a nix-build, an activation): the lock
# is held until every process of the run, named by the run's marker ($0), has ended.
# Lines before `done` update the record, beside and renamed into place: `activation OP RESULT
# TIME` replaces the last activation; `populated BY TIME VERSION` (a run that changed nothing)
# renews who populated, when, with which krops.
line=
while IFS= read -r line; do
  case $line in
    done) break ;;
    "activation "*|"populated "*)
      if [ -f record ]; then
        tmp=$(mktemp record.XXXXXX)
        case $line in
          activation*) { grep -v '^activation ' record || true; printf '%s\n' "$line"; } > "$tmp" ;;
          *)
            set -f
            # shellcheck disable=SC2086 # split into the record line's fields, globbing off
            set -- $line
            set +f
            { printf '%s\n' "krops-record 2" "by $2" "when $3" "krops $4"
              grep -v -e '^krops-record ' -e '^by ' -e '^when ' -e '^krops ' record || true; } > "$tmp" ;;
        esac
        mv -fT -- "$tmp" record
      fi ;;
  esac
done
if [ "$line" != "done" ]; then
  # This shell's ancestors (sudo, a login shell) carry the marker too: they are not work. Nor
  # is a process of another account (anyone can put the marker in a command line): the run's
  # own are root's, this user's or sudo's invoking user's.
  # The real uid: a stranger's setuid program (sudo waiting for a password) runs as root.
  real_uid() { awk '/^Uid:/ { print $2 }' "$1/status" 2> /dev/null; }
  mine=" " p=$$ users=" 0 $me ${SUDO_UID:+$SUDO_UID }"
  while [ "${p:-0}" -gt 1 ]; do mine="$mine$p " p=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null); done
  while :; do
    busy=
    for d in /proc/[0-9]*; do
      case $mine in *" ${d#/proc/} "*) continue ;; esac
      case $({ tr '\0' ' ' < "$d/cmdline"; } 2>/dev/null) in *" $0 "*|*" $0") ;; *) continue ;; esac
      case $users in *" $(real_uid "$d") "*) busy=1; break ;; esac
    done
    [ -n "$busy" ] || break
    sleep 0.2
  done
fi
