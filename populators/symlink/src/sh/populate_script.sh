set -e
if [ -d "$1" ] && [ ! -L "$1" ]; then
  echo "$1 is a directory; remove it or name the symlink source differently" >&2; exit 1
fi
rm -rf -- "$1.krops-new"
# -T: should anything appear at the name meanwhile, fail rather than make the link inside it.
ln -sT -- "$2" "$1.krops-new"
mv -fT -- "$1.krops-new" "$1"
