set -e
if [ -L "$1" ]; then
  case $(readlink -- "$1") in /nix/store/*) ;; *) rm -f -- "$1" ;; esac
elif [ -e "$1" ]; then
  rm -rf -- "$1"
fi
nix-build -E "$2" -o "$1"
