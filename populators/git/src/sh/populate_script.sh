set -efu
dest=$1 url=$2 commit=$3 shallow=$4 fetch_always=$5
shift 5
# Configuration found on the target never runs code or reaches elsewhere: no hooks, no
# fsmonitor, no ext:: transport, the standard upload-pack.
git() {
  command git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c protocol.ext.allow=never \
    -c remote.origin.uploadpack=git-upload-pack -c core.sshCommand=ssh "$@"
}
# Anything at the path that is not the top of a work tree of its own makes way, as in krops:
# its .git must be a real directory inside it (not a symlink or a `gitdir:` file, which would
# lead git to a repository elsewhere).
if [ -e "$dest" ] || [ -L "$dest" ]; then
  top=$(git -C "$dest" rev-parse --show-toplevel 2>/dev/null || true)
  if [ -L "$dest" ] || [ -L "$dest/.git" ] || [ ! -d "$dest/.git" ] || [ "$top" != "$(cd -- "$dest" && pwd -P)" ]; then
    rm -rf -- "$dest"
  fi
fi
if [ ! -e "$dest" ]; then
  if [ "$shallow" = 1 ]; then
    git init -q -- "$dest"
  else
    git clone -q --no-checkout -- "$url" "$dest"
  fi
fi
cd -- "$dest"
neutralise_filters .
if ! current=$(git config --get remote.origin.url); then
  git remote add origin "$url"
elif [ "$current" != "$url" ]; then
  git remote set-url origin "$url"
fi
if [ "$fetch_always" = 1 ] || ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  if [ "$shallow" = 1 ]; then
    git fetch -q --depth=1 origin "$commit"
  else
    git fetch -q origin "$commit"
  fi
fi
# A work tree already at the commit and unmodified is left alone, so that a redeploy changes
# nothing (not even git's index or reflog); status must not refresh the index either.
head=$(git rev-parse -q --verify HEAD || true)
if [ "$head" != "$commit" ] || [ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no)" ]; then
  git reset -q --hard "$commit"
  git submodule -q update --init --recursive
fi
count=$#
for pattern do set -- "$@" -e "$pattern"; done
shift "$count"
git clean -q -dfx "$@"
git rev-parse HEAD
