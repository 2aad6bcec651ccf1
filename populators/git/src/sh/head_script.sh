dest=$1
git() { GIT_OPTIONAL_LOCKS=0 command git -c core.hooksPath=/dev/null -c core.fsmonitor=false "$@"; }
if [ ! -e "$dest" ] && [ ! -L "$dest" ]; then echo absent; exit 0; fi
top=$(git -C "$dest" rev-parse --show-toplevel 2>/dev/null || true)
if [ -L "$dest" ] || [ -L "$dest/.git" ] || [ ! -d "$dest/.git" ] || [ "$top" != "$(cd -- "$dest" && pwd -P)" ]; then
  echo replaced; exit 0
fi
neutralise_filters "$dest"
echo "head $(git -C "$dest" rev-parse -q --verify HEAD || echo none)"
if [ -n "$(git -C "$dest" status --porcelain --untracked-files=no 2>/dev/null)" ]; then echo modified; fi
