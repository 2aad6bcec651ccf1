timeout -k 2 "$1" /bin/sh -c "$2" &
check=$!
wait "$check" && status=0 || status=$?
kill -KILL "-$check" 2> /dev/null || true
exit "$status"
