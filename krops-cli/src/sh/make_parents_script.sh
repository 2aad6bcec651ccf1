set -e
p=$1
shift
me=$(id -u)
# Writable by group or others, without the sticky bit.
open_to_others() { [ -n "$(find . -maxdepth 0 \( -perm -g+w -o -perm -o+w \) ! -perm -1000 -print)" ]; }
for parent do
  cd -P -- "$p"
  if open_to_others; then
    printf 'error: %s is writable by others; sources named with "/" need a target path only its owner can change\n' "$p" >&2
    exit 1
  fi
  rest=$parent at=$p
  while [ -n "$rest" ]; do
    c=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    at=$at/$c
    if [ -L "$c" ] || { [ -e "$c" ] && [ ! -d "$c" ]; }; then
      printf 'error: %s is in the way: not a directory\n' "$at" >&2
      exit 1
    fi
    [ -d "$c" ] || mkdir -m 0755 -- "$c"
    cd -P -- "$c"
    if [ "$(stat -c %u .)" != "$me" ] || open_to_others; then
      printf 'error: %s is not a directory of uid %s that only it can change\n' "$at" "$me" >&2
      exit 1
    fi
  done
done
