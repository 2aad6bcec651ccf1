set -e
umask 077
mkdir -p -- "$(dirname -- "$1")"
enter_private_dir "$1.krops-XXXXXX" || exit 1
trap leave_private_dir EXIT
cat > file
chmod "$2" file
name=${1##*/}
if [ -d "../$name" ] && [ ! -L "../$name" ]; then rm -rf -- "../$name"; fi
mv -fT -- file "../$name"
