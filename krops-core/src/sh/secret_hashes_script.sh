set -eu
if [ -L "$1" ] || [ ! -d "$1" ]; then echo absent; exit 0; fi
cd -- "$1"
# shellcheck disable=SC2016 # the hashing script is single-quoted: it expands in its own shell
find . -type f -exec /bin/sh -c '
salt=$1; shift
for f do
  h=$({ printf "%s" "$salt"; cat -- "$f"; } | sha256sum | cut -c1-64)
  printf "%s\t%s\0" "$h" "${f#./}"
done' sh "$2" {} +
