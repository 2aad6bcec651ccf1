# shellcheck disable=SC2154 # $p, the target path, is set by the script this is defined in
state() {
  if [ -e "$p/$2" ] || [ -L "$p/$2" ]; then
    h=$(cd -- "$p" && {
      find "./$2" -maxdepth 0 -printf '%P\t%y\t%s\t%T@\t%m\t%l\n' &&
      if [ "$1" = g ]; then
        find "./$2" -mindepth 1 -name .git -prune -o -printf '%P\t%y\t%s\t%T@\t%m\t%l\n' &&
        git -C "./$2" rev-parse HEAD
      else
        find "./$2" -mindepth 1 -printf '%P\t%y\t%s\t%T@\t%m\t%l\n'
      fi &&
      if [ "$1" = c ]; then find "./$2" -type f -size -16385k -exec timeout 10 sha256sum -- {} +; fi
    } 2>/dev/null | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
    case $h in
      ''|e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855) echo unknown ;;
      *) echo "$h" ;;
    esac
  else
    echo absent
  fi
}
