set -eu
umask 077
dest=$1 name=${1##*/}
# A vanished reader of an error message must not end this shell before it cleans up.
trap '' PIPE
# Staging directories of installers that could not finish (a machine that lost power) go.
for stale in "$dest".krops-staging.*; do
  if [ -d "$stale" ] && [ ! -L "$stale" ] && [ "$(stat -c '%u %a' -- "$stale")" = "$(id -u) 700" ]; then
    # Best effort: what cannot be removed (an immutable file) must not stop this install.
    rm -rf -- "$stale" 2> /dev/null || true
  fi
done
entered=
trap '[ -z "$entered" ] || leave_private_dir' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
enter_private_dir "$dest.krops-staging.XXXXXX" || exit 1
entered=1
incomplete() {
  echo "error: the files for $dest arrived incomplete ($1); the old ones stay in place" >&2
  exit 1
}
if ! failed=$(tar -x -p --no-same-owner -f - 2>&1 > /dev/null); then
  why=$(printf '%s\n' "$failed" | grep -v 'Exiting with failure' | head -n 1)
  # tar says "Wrote only N of M bytes" of a full disk, not why: the file system tells.
  case $why in *"No space left"*) ;; *)
    free=$(df -Pk . 2> /dev/null | awk 'NR == 2 { print $4 }')
    if [ -n "$free" ] && [ "$free" -lt 64 ]; then why="No space left on device ($why)"; fi ;;
  esac
  echo "error: cannot unpack the files for $dest: $why" >&2
  exit 1
fi
# shellcheck disable=SC2015 # `incomplete` exits: it runs when either check fails
[ -d tree ] && [ -f manifest ] || incomplete "the stream ended early"
{ read -r format && read -r count && read -r digest; } < manifest || incomplete "no manifest"
[ "$format" = "krops-manifest 1" ] || incomplete "an unknown manifest"
[ "$(find tree ! -type d -printf x | wc -c)" = "$count" ] || incomplete "files missing"
[ "$(find tree ! -type d -print0 | LC_ALL=C sort -z | xargs -0 -r cat -- | sha256sum | cut -c1-64)" = "$digest" ] ||
  incomplete "contents differ"
trap '' HUP INT TERM
if [ -e "../$name" ] || [ -L "../$name" ]; then mv -fT -- "../$name" old; fi
mv -T -- tree "../$name"
