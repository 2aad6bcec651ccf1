if command -v setsid > /dev/null; then exec setsid -f -w /bin/sh -c "$1" "$0" "$2"; fi
exec /bin/sh -c "$1" "$0" "$2"
