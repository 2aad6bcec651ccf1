if ! { cd -- "$1/.populate" 2> /dev/null &&
  [ "$(stat -c %d:%i ..)" = "$(stat -L -c %d:%i -- "$1")" ] && [ "$(stat -c %u .)" = "$(id -u)" ] &&
  case $(stat -c %A .) in ?????w????|????????w?) false ;; esac; }; then
  echo "error: backup needs $1/.populate to be a directory that only $(id -un) can write" >&2; exit 1
fi
if [ -L backup ] || { [ -e backup ] && [ ! -d backup ]; }; then rm -f -- backup; fi
mkdir -p backup
# The excludes come first: a `.rsync-filter` among the sources (read through -F) must not
# bring the backup (or krops's own directory) into the backup.
rsync --exclude /.populate --exclude '/.krops*' -aAXF --delete --link-dest="$1" "$1/" ./backup/
