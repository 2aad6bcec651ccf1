//! Helpers a populator author uses beside the trait: secret trees packed for
//! [`Target::install_secrets`](crate::plugin::Target::install_secrets), walking a secret store,
//! resolving user-written paths, and bounded fan-out for independent per-file work.

use std::path::{Path, PathBuf};

/// One file of a secret tree.
pub struct SecretFile {
    /// Relative to the tree's root, `/`-separated, without `..`.
    pub path: String,
    pub contents: Vec<u8>,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// Shell functions for scripts that write below a target path that another account may write
/// to as well. Any name there can be renamed or replaced at any moment, so such a script never
/// writes through a name it does not own: it makes a fresh directory (`mktemp -d`: 0700, its
/// own), enters it, checks that what it entered is that directory (its own, 0700, its parent
/// the directory it was made in), and works by names relative to it from then on; results
/// leave by one `mv -T` to a name in the parent (`..`), which replaces whatever stands there
/// and never follows it. No one else can enter the directory, let alone add a link to it, and
/// moving it elsewhere than its parent takes write permission on it, which only its owner has.
///
/// `enter_private_dir TEMPLATE`: makes and enters the directory (`$private` its path) or
/// explains and fails; `leave_private_dir`: removes what it holds and the directory itself.
pub const PRIVATE_DIR_FUNCTIONS: &str = r#"private_here() {
  [ "$(stat -c '%u %a %F' .)" = "$(id -u) 700 directory" ] &&
  [ "$(stat -c %d:%i ..)" = "$(stat -L -c %d:%i -- "$1")" ] && [ -z "$(ls -A)" ]
}
enter_private_dir() {
  private=$(mktemp -d -- "$1") && cd -- "$private" && private_here "${1%/*}" || {
    echo "error: cannot make a private directory beside ${1%.krops-*} (does another account write there?)" >&2
    return 1
  }
}
leave_private_dir() {
  find . -mindepth 1 -delete 2> /dev/null || true
  cd .. && rmdir -- "${private##*/}" 2> /dev/null || true
}"#;

/// Installs a secret tree (`$1` its destination) from a tar stream on stdin, as
/// [`secret_archive`] packs it: the tree below `tree/`, then a manifest (the count of its
/// files and the SHA-256 of their contents in name order). Only a tree that matches its
/// manifest replaces the old one: a stream cut short between two members (tar alone calls
/// that success) or a full disk leave the old tree as it was, and every way out before the
/// swap (a failure, a signal, the connection dropping, which ends the stream) removes the
/// staging directory. Once the swap begins, nothing stops it halfway.
pub(crate) const INSTALL_SECRETS_SCRIPT: &str = r#"set -eu
umask 077
dest=$1 name=${1##*/}
# A vanished reader of an error message must not end this shell before it cleans up.
trap '' PIPE
# Staging directories of installers that could not finish (a machine that lost power) go.
for stale in "$dest".krops-staging.*; do
  if [ -d "$stale" ] && [ ! -L "$stale" ] && [ "$(stat -c '%u %a' -- "$stale")" = "$(id -u) 700" ]; then
    rm -rf -- "$stale"
  fi
done
entered=
trap '[ -z "$entered" ] || leave_private_dir' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
enter_private_dir "$dest.krops-staging.XXXXXX" || exit 1
entered=1
incomplete() {
  echo "error: the secrets for $dest arrived incomplete ($1); the old ones stay in place" >&2
  exit 1
}
if ! failed=$(tar -x -p --no-same-owner -f - 2>&1 > /dev/null); then
  why=$(printf '%s\n' "$failed" | grep -v 'Exiting with failure' | head -n 1)
  # tar says "Wrote only N of M bytes" of a full disk, not why: the file system tells.
  case $why in *"No space left"*) ;; *)
    free=$(df -Pk . 2> /dev/null | awk 'NR == 2 { print $4 }')
    if [ -n "$free" ] && [ "$free" -lt 64 ]; then why="No space left on device ($why)"; fi ;;
  esac
  echo "error: cannot unpack the secrets for $dest: $why" >&2
  exit 1
fi
[ -d tree ] && [ -f manifest ] || incomplete "the stream ended early"
{ read -r format && read -r count && read -r digest; } < manifest || incomplete "no manifest"
[ "$format" = "krops-manifest 1" ] || incomplete "an unknown manifest"
[ "$(find tree ! -type d -printf x | wc -c)" = "$count" ] || incomplete "files missing"
[ "$(find tree ! -type d -print0 | LC_ALL=C sort -z | xargs -0 -r cat -- | sha256sum | cut -c1-64)" = "$digest" ] ||
  incomplete "contents differ"
trap '' HUP INT TERM
if [ -e "../$name" ] || [ -L "../$name" ]; then mv -fT -- "../$name" old; fi
mv -T -- tree "../$name""#;

/// Runs the installer (`$1`, a script) on `$2` in a session of its own, and waits for it: a
/// killed krops takes its local children along (and a signal, their process group), but never
/// the installer, which always gets to verify, swap and clean up. Its input ends with krops.
/// (`-f`: this shell leads its process group, and only a new process can start a session.)
pub(crate) const DETACHED_INSTALL_SCRIPT: &str = r#"if command -v setsid > /dev/null; then exec setsid -f -w /bin/sh -c "$1" "$0" "$2"; fi
exec /bin/sh -c "$1" "$0" "$2""#;

/// `$1` the secrets' directory, `$2` a salt: `HASH<TAB>NAME<NUL>` per file below it, HASH being
/// SHA-256 of the salt followed by the file's content; `absent` when no directory is there
/// (a symlink counts as none: installing replaces it).
const SECRET_HASHES_SCRIPT: &str = r#"set -eu
if [ -L "$1" ] || [ ! -d "$1" ]; then echo absent; exit 0; fi
cd -- "$1"
find . -type f -exec /bin/sh -c '
salt=$1; shift
for f do
  h=$({ printf "%s" "$salt"; cat -- "$f"; } | sha256sum | cut -c1-64)
  printf "%s\t%s\0" "$h" "${f#./}"
done' sh "$2" {} +"#;

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

/// A tar stream of `files` below `tree/` (directories 0700, files 0600, owned by root), then
/// `manifest` (see [`INSTALL_SECRETS_SCRIPT`]): last, so that its arrival means every member
/// before it arrived whole.
pub(crate) fn secret_archive(files: &[SecretFile]) -> std::io::Result<Vec<u8>> {
    use sha2::Digest;
    let mut builder = tar::Builder::new(Vec::new());
    let mut directories = std::collections::BTreeSet::new();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o700);
    header.set_size(0);
    builder.append_data(&mut header, "tree", std::io::empty())?;
    for file in files {
        let mut parent = Path::new(&file.path).parent();
        let mut missing = Vec::new();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            if directories.insert(dir.to_owned()) {
                missing.push(dir.to_owned());
            }
            parent = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o700);
            header.set_mtime(file.mtime);
            header.set_size(0);
            builder.append_data(&mut header, Path::new("tree").join(&dir), std::io::empty())?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o600);
        header.set_mtime(file.mtime);
        header.set_size(file.contents.len() as u64);
        builder.append_data(&mut header, format!("tree/{}", file.path), &file.contents[..])?;
    }
    // The target sorts `tree/NAME` byte-wise (`LC_ALL=C sort -z`); so does this.
    let mut sorted: Vec<&SecretFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut digest = sha2::Sha256::new();
    for file in sorted {
        digest.update(&file.contents);
    }
    let manifest = format!("krops-manifest 1\n{}\n{:x}\n", files.len(), digest.finalize());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_size(manifest.len() as u64);
    builder.append_data(&mut header, "manifest", manifest.as_bytes())?;
    builder.into_inner()
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

    pub fn finish(&self) -> String {
        use sha2::Digest;
        self.0.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
