if [ -L "$1" ]; then printf 'link %s' "$(readlink -- "$1")"
elif [ -d "$1" ]; then echo directory
elif [ -e "$1" ]; then echo file
fi
