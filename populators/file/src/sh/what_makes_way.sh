if [ -L "$1" ]; then echo "a symlink"
elif [ -e "$1" ] && ! test "$2" "$1"; then
  if [ -d "$1" ]; then echo "a directory"; else echo "a file"; fi
fi
