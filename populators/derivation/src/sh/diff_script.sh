if [ -L "$1" ]; then printf 'link %s\n' "$(readlink -- "$1")"
elif [ -e "$1" ]; then echo other
else echo absent
fi
nix-instantiate --eval --json -E "$2"
