if [ -L "$1" ]; then echo "a symlink"
elif [ -f "$1" ]; then sha256sum < "$1" | cut -c1-64
elif [ -e "$1" ]; then echo "a directory"
fi
