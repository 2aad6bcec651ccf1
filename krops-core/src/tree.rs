//! How a directory tree travels to a target, below the plugin API that offers it
//! ([`Target::install_dir`](crate::plugin::Target::install_dir), and
//! [`Target::install_secrets`](crate::plugin::Target::install_secrets) on top of it): its files,
//! their tar stream with a closing manifest, and the target-side scripts that unpack it in a
//! private staging directory and swap it in whole.

use std::path::Path;

/// One file of a secret tree.
pub struct SecretFile {
    /// Relative to the tree's root, `/`-separated, without `..`.
    pub path: String,
    /// The plaintext; it never leaves memory but on its way to the target, on stdin.
    pub contents: Vec<u8>,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// One file of a directory tree ([`Target::install_dir`](crate::plugin::Target::install_dir)).
pub struct TreeFile {
    /// Relative to the tree's root, `/`-separated, without `.`, `..` or empty parts.
    pub path: String,
    /// The file's contents.
    pub contents: Vec<u8>,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Permission bits (at most `0o777`: no setuid, setgid or sticky bit).
    pub mode: u32,
}

/// A file of a tree as the archive takes it: borrowed, so secrets are not copied for it.
pub(crate) struct Entry<'a> {
    pub path: &'a str,
    pub contents: &'a [u8],
    pub mtime: u64,
    pub mode: u32,
}

/// Whether `path` can name a file of a tree (see [`TreeFile::path`]); the error says why not.
pub fn check_tree_path(path: &str) -> Result<(), String> {
    if path.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        Err(format!("{path:?}: a path below the tree has no empty, `.` or `..` parts"))
    } else if path.contains('\0') {
        Err(format!("{path:?}: a path has no NUL"))
    } else {
        Ok(())
    }
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
pub const PRIVATE_DIR_FUNCTIONS: &str = include_str!("sh/private_dir_functions.sh");

/// Installs a tree (`$1` its destination) from a tar stream on stdin, as [`tree_archive`]
/// packs it: the tree below `tree/`, then a manifest (the count of its
/// files and the SHA-256 of their contents in name order). Only a tree that matches its
/// manifest replaces the old one: a stream cut short between two members (tar alone calls
/// that success) or a full disk leave the old tree as it was, and every way out before the
/// swap (a failure, a signal, the connection dropping, which ends the stream) removes the
/// staging directory. Once the swap begins, nothing stops it halfway.
pub(crate) const INSTALL_TREE_SCRIPT: &str = include_str!("sh/install_tree_script.sh");

/// Runs the installer (`$1`, a script) on `$2` in a session of its own, and waits for it: a
/// killed krops takes its local children along (and a signal, their process group), but never
/// the installer, which always gets to verify, swap and clean up. Its input ends with krops.
/// (`-f`: this shell leads its process group, and only a new process can start a session.)
pub(crate) const DETACHED_INSTALL_SCRIPT: &str = include_str!("sh/detached_install_script.sh");

/// A tar stream of `files` below `tree/` (directories `directory_mode`, each file its mode,
/// owned by root), then `manifest` (see [`INSTALL_TREE_SCRIPT`]): last, so that its arrival
/// means every member before it arrived whole.
pub(crate) fn tree_archive(directory_mode: u32, files: &[Entry<'_>]) -> std::io::Result<Vec<u8>> {
    use sha2::Digest;
    let mut builder = tar::Builder::new(Vec::new());
    let mut directories = std::collections::BTreeSet::new();
    let directory = |mtime: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(directory_mode);
        header.set_mtime(mtime);
        header.set_size(0);
        header
    };
    builder.append_data(&mut directory(0), "tree", std::io::empty())?;
    for file in files {
        let mut parent = Path::new(file.path).parent();
        let mut missing = Vec::new();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            if directories.insert(dir.to_owned()) {
                missing.push(dir.to_owned());
            }
            parent = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            builder.append_data(
                &mut directory(file.mtime),
                Path::new("tree").join(&dir),
                std::io::empty(),
            )?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(file.mode);
        header.set_mtime(file.mtime);
        header.set_size(file.contents.len() as u64);
        builder.append_data(&mut header, format!("tree/{}", file.path), file.contents)?;
    }
    // The target sorts `tree/NAME` byte-wise (`LC_ALL=C sort -z`); so does this.
    let mut sorted: Vec<&Entry<'_>> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut digest = sha2::Sha256::new();
    for file in sorted {
        digest.update(file.contents);
    }
    let manifest = format!("krops-manifest 1\n{}\n{:x}\n", files.len(), digest.finalize());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_size(manifest.len() as u64);
    builder.append_data(&mut header, "manifest", manifest.as_bytes())?;
    builder.into_inner()
}
