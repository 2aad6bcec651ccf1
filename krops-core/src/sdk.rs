//! Helpers a populator author uses beside the trait: secret trees packed for
//! [`Target::install_secrets`](crate::plugin::Target::install_secrets), walking a secret store,
//! resolving user-written paths, and bounded fan-out for independent per-file work.

use std::path::{Path, PathBuf};

pub use crate::plugin::at;
pub use crate::tree::{check_tree_path, SecretFile, TreeFile, PRIVATE_DIR_FUNCTIONS};

/// `$1` the secrets' directory, `$2` a salt: `HASH<TAB>NAME<NUL>` per file below it, HASH being
/// SHA-256 of the salt followed by the file's content; `absent` when no directory is there
/// (a symlink counts as none: installing replaces it).
const SECRET_HASHES_SCRIPT: &str = include_str!("sh/secret_hashes_script.sh");

/// What installing `files` at `destination` would change, by name (`ignored` names, such as
/// bookkeeping files, left out on both sides). Contents are compared through SHA-256 hashes
/// salted afresh for each call, computed on each side: no plaintext, nor a hash that could be
/// matched against a guess made elsewhere, leaves either machine.
pub fn secrets_diff(
    target: &crate::plugin::Target<'_>,
    destination: &str,
    files: &[SecretFile],
    ignored: &[&str],
) -> Result<crate::wire::Diff, String> {
    use crate::wire::{Change, ChangeKind, Diff};
    use sha2::Digest;
    let salt = salt();
    let hash = |contents: &[u8]| {
        let mut hasher = sha2::Sha256::new();
        hasher.update(salt.as_bytes());
        hasher.update(contents);
        format!("{:x}", hasher.finalize())
    };
    let answer = target.run_script(SECRET_HASHES_SCRIPT, &[destination, &salt], b"")?;
    let answer = String::from_utf8_lossy(&answer);
    let there: std::collections::BTreeMap<&str, &str> = answer
        .split('\0')
        .filter_map(|entry| entry.split_once('\t'))
        .map(|(hash, name)| (name, hash))
        .filter(|(name, _)| !ignored.contains(name))
        .collect();
    let mut changes = Vec::new();
    let mut wanted = std::collections::BTreeSet::new();
    for file in files.iter().filter(|f| !ignored.contains(&f.path.as_str())) {
        wanted.insert(file.path.as_str());
        match there.get(file.path.as_str()) {
            None => changes.push(Change::new(ChangeKind::Added, &file.path)),
            Some(theirs) if *theirs != hash(&file.contents) => {
                changes.push(Change::new(ChangeKind::Changed, &file.path))
            }
            Some(_) => {}
        }
    }
    changes.extend(
        there
            .keys()
            .filter(|name| !wanted.contains(*name))
            .map(|name| Change::new(ChangeKind::Deleted, *name)),
    );
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Diff { changes })
}

/// SHA-256 of `bytes` in hex, as `sha256sum` prints it: for comparing non-secret content with
/// a file on the target.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// A salt no one can know in advance: the time and this process's randomly keyed hasher.
fn salt() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}{:08x}", hasher.finish(), nanos as u32)
}

/// Every file below `root` whose name ends in `.EXTENSION` (`.git` directories passed over),
/// sorted, each with its path relative to `root` without the extension: a secret store's
/// layout turned into the names of the files to install. Symlinked files and directories are
/// followed, as pass and passage (and the original krops) read a store; a link back to a
/// directory above it (a loop) is not. A dangling link named like a secret is an error.
pub fn files_with_extension(root: &Path, extension: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let canonical = |path: &Path| path.canonicalize().map_err(|e| format!("{}: {e}", path.display()));
    let mut found = Vec::new();
    // Each directory still to read, with the real directories it lies in (for loops).
    let mut pending = vec![(root.to_owned(), vec![canonical(root)?])];
    while let Some((current, ancestors)) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", current.display()))?;
            let path = entry.path();
            let wanted = path.extension().is_some_and(|e| e == extension);
            let is_dir = entry.file_type().map_err(|e| format!("{}: {e}", path.display()))?.is_dir();
            // A symlink is what it points to.
            let kind = match std::fs::metadata(&path) {
                Ok(metadata) => metadata.file_type(),
                Err(_) if !wanted && !is_dir => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            if kind.is_dir() && entry.file_name() != ".git" {
                let real = canonical(&path)?;
                if !ancestors.contains(&real) {
                    let mut inner = ancestors.clone();
                    inner.push(real);
                    pending.push((path, inner));
                }
            } else if kind.is_file() && wanted {
                let relative = path.strip_prefix(root).map_err(|e| e.to_string())?.with_extension("");
                found.push((path.clone(), relative.to_string_lossy().into_owned()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A local file's modification time, in seconds since the epoch.
pub fn mtime(path: &Path) -> Result<u64, String> {
    let modified =
        std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Resolves a user-written path: `~/` against `$HOME`, relative paths against `config_dir`.
pub fn resolve_path(config_dir: &Path, path: &str) -> PathBuf {
    let expanded = match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    };
    normalise(&if expanded.is_absolute() { expanded } else { config_dir.join(expanded) })
}

/// Drops `.` and resolves `..` lexically, as Nix does with paths, so that a path reads the
/// same in `krops eval` whichever syntax it was written in.
pub fn normalise(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Runs `work` on every item, at most `limit` at once, and returns the results in the items'
/// order.
pub fn parallel_map<I: Sync, T: Send>(items: &[I], limit: usize, work: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..limit.min(items.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(item) = items.get(index) else { break };
                        done.push((index, work(item)));
                    }
                    done
                })
            })
            .collect();
        // A panic in `work` is a krops bug; let it reach the deployment's task as one.
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// A SHA-256 over labelled parts, as hex: for [`PopulatorPlugin::fingerprint`](crate::plugin::PopulatorPlugin::fingerprint).
#[derive(Default)]
pub struct Fingerprint(sha2::Sha256);

impl Fingerprint {
    /// Adds one part; parts are length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn add(&mut self, part: impl AsRef<[u8]>) -> &mut Self {
        use sha2::Digest;
        let part = part.as_ref();
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part);
        self
    }

    /// Adds every file below (or at) `path` as rsync sees it: relative name, kind, size,
    /// modification time, mode, and a symlink's target. Contents are not read.
    pub fn add_tree(&mut self, path: &Path) -> Result<&mut Self, String> {
        use std::os::unix::fs::MetadataExt;
        // A directory is copied by its contents (rsync's `DIR/`), so a link to one is followed;
        // a link to a file is copied as a link.
        let resolved;
        let path = if path.is_dir() {
            resolved = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
            self.add(resolved.as_os_str().as_encoded_bytes());
            resolved.as_path()
        } else {
            path
        };
        let mut entries = Vec::new();
        let mut pending = vec![path.to_owned()];
        while let Some(current) = pending.pop() {
            let metadata =
                std::fs::symlink_metadata(&current).map_err(|e| format!("{}: {e}", current.display()))?;
            let link = if metadata.file_type().is_symlink() {
                std::fs::read_link(&current).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
            } else {
                String::new()
            };
            // Bytes, not lossy text: two names that differ only in invalid UTF-8 differ here.
            let mut entry =
                current.strip_prefix(path).unwrap_or(&current).as_os_str().as_encoded_bytes().to_vec();
            entry.extend(
                format!(
                    "\0{:o}\0{}\0{}.{}\0{}\0{link}",
                    metadata.mode(),
                    metadata.size(),
                    metadata.mtime(),
                    metadata.mtime_nsec(),
                    metadata.rdev()
                )
                .as_bytes(),
            );
            entries.push(entry);
            if metadata.is_dir() {
                for entry in std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))? {
                    pending.push(entry.map_err(|e| e.to_string())?.path());
                }
            }
        }
        entries.sort();
        for entry in entries {
            self.add(entry);
        }
        Ok(self)
    }

    /// Adds files found by [`files_with_extension`]: each name with the size and modification
    /// time of what it points to (a secret store's ciphertexts: never their plaintext).
    pub fn add_files(&mut self, files: &[(PathBuf, String)]) -> Result<&mut Self, String> {
        use std::os::unix::fs::MetadataExt;
        for (path, name) in files {
            let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            self.add(format!("{name}\0{}\0{}.{}", metadata.size(), metadata.mtime(), metadata.mtime_nsec()));
        }
        Ok(self)
    }

    /// The SHA-256 of every part added, as hex.
    pub fn finish(&self) -> String {
        use sha2::Digest;
        self.0.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
