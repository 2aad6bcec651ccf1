if [ ! -e "$1" ]; then echo "error: no system profile ($1) to return to" >&2; exit 1; fi
exec "$1/bin/switch-to-configuration" test
