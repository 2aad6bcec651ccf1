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
pub const MAKE_PARENTS_SCRIPT: &str = include_str!("sh/make_parents_script.sh");
