own_dir_here() {
  [ "$(stat -c '%u %a %F' .)" = "$(id -u) 700 directory" ] &&
  [ "$(stat -c %d:%i ..)" = "$(stat -L -c %d:%i -- "$1")" ] && [ -f own ]
}
enter_own_dir() {
  for _ in 1 2 3; do
    if cd -- "$1/.krops" 2> /dev/null && own_dir_here "$1"; then return 0; fi
    cd /
    [ "${2-}" = create ] || return 1
    if [ -e "$1/.krops" ] || [ -L "$1/.krops" ]; then rm -rf -- "$1/.krops"; fi
    # Made whole under another name, then renamed into place: a run racing this one never
    # sees it without its mark, which only krops can put there.
    made=$(mktemp -d -- "$1/.krops-new.XXXXXX") || break
    if (cd -- "$made" && private_here "$1" && : > own); then
      mv -T -- "$made" "$1/.krops" 2> /dev/null || rm -rf -- "$made"
    else
      rm -rf -- "$made"
    fi
  done
  echo "error: cannot make krops's own directory $1/.krops (does another account write to $1?)" >&2
  return 1
}
