private_here() {
  [ "$(stat -c '%u %a %F' .)" = "$(id -u) 700 directory" ] &&
  [ "$(stat -c %d:%i ..)" = "$(stat -L -c %d:%i -- "$1")" ] && [ -z "$(ls -A)" ]
}
enter_private_dir() {
  # shellcheck disable=SC2015 # the block runs when any step fails; it returns
  private=$(mktemp -d -- "$1") && cd -- "$private" && private_here "${1%/*}" || {
    echo "error: cannot make a private directory beside ${1%.krops-*} (does another account write there?)" >&2
    return 1
  }
}
leave_private_dir() {
  find . -mindepth 1 -delete 2> /dev/null || true
  # shellcheck disable=SC2015 # best effort: nothing to do when either step fails
  cd .. && rmdir -- "${private##*/}" 2> /dev/null || true
}
