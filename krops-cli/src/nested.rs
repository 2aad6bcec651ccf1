//! Sources named with `/` (`"sources/nixpkgs"`), as the original allows: they land in
//! directories below the target path, which krops makes before populating. Only where nobody
//! else can change them: the target path must not be writable by others (unless sticky), and
//! each directory on the way must be a real directory of the target's user that others cannot
//! write; otherwise a writer racing names there could send a source outside the path.

use std::collections::BTreeSet;

use crate::config::Deployment;

/// The directories (relative to the target path, parents first) that `deployment`'s nested
/// sources need; empty when no name holds a `/`.
pub fn parents(deployment: &Deployment) -> Vec<String> {
    let mut parents = BTreeSet::new();
    for name in deployment.source.keys() {
        let mut parent = name.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parents.insert(up.to_owned());
            parent = up;
        }
    }
    parents.into_iter().collect()
}

/// `sh -c SCRIPT sh PATH PARENT…`: makes each PARENT below PATH, one component at a time, never
/// through a symbolic link, refusing what others could change.
pub const MAKE_PARENTS_SCRIPT: &str = r#"set -e
p=$1
shift
me=$(id -u)
# Writable by group or others, without the sticky bit.
open_to_others() { [ -n "$(find . -maxdepth 0 \( -perm -g+w -o -perm -o+w \) ! -perm -1000 -print)" ]; }
for parent do
  cd -P -- "$p"
  if open_to_others; then
    printf 'error: %s is writable by others; sources named with "/" need a target path only its owner can change\n' "$p" >&2
    exit 1
  fi
  rest=$parent at=$p
  while [ -n "$rest" ]; do
    c=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    at=$at/$c
    if [ -L "$c" ] || { [ -e "$c" ] && [ ! -d "$c" ]; }; then
      printf 'error: %s is in the way: not a directory\n' "$at" >&2
      exit 1
    fi
    [ -d "$c" ] || mkdir -m 0755 -- "$c"
    cd -P -- "$c"
    if [ "$(stat -c %u .)" != "$me" ] || open_to_others; then
      printf 'error: %s is not a directory of uid %s that only it can change\n' "$at" "$me" >&2
      exit 1
    fi
  done
done"#;
