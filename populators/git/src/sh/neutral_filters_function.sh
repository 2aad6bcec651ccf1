neutralise_filters() {
  n=0
  while IFS= read -r section; do
    [ -n "$section" ] || continue
    for setting in clean=cat smudge=cat process= required=false; do
      export "GIT_CONFIG_KEY_$n=$section.${setting%%=*}" "GIT_CONFIG_VALUE_$n=${setting#*=}"
      n=$((n + 1))
    done
  done <<EOF
$(command git -C "$1" config --local --includes --name-only --get-regexp '^filter\.' 2> /dev/null | sed 's/\.[^.]*$//' | sort -u)
EOF
  # A submodule's `update = !command` would run that command.
  while IFS= read -r key; do
    [ -n "$key" ] || continue
    export "GIT_CONFIG_KEY_$n=$key" "GIT_CONFIG_VALUE_$n=checkout"
    n=$((n + 1))
  done <<EOF
$(command git -C "$1" config --local --includes --name-only --get-regexp '^submodule\..*\.update$' 2> /dev/null)
EOF
  export GIT_CONFIG_COUNT=$n
}
