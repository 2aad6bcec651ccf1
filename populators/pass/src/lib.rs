//! The `pass` source type: every secret below `dir/name` of a password store, decrypted by the
//! user's own gpg (so gpg-agent and smartcards keep working) straight into memory, and
//! installed on the target as 0600 files in 0700 directories. As in krops, mtimes are the
//! secrets' last git author dates, and a store whose git state for `name` is unchanged since
//! the last deploy (recorded in `.pass_info`) is not transferred again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{files_with_extension, mtime, resolve_path, secrets_diff, Fingerprint, SecretFile};
use krops_core::wire::{Diff, PopulateRequest, PrepareRequest, StateKind, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Pass;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    dir: PathBuf,
    name: String,
}

/// gpg processes at once: the agent serves them concurrently, so the per-process start-up
/// cost overlaps.
const GPG_AT_ONCE: usize = 8;

impl PopulatorPlugin for Pass {
    const TYPE: &'static str = "pass";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits =
        TypeTraits { state: StateKind::Content, program: Some("gpg"), ..TypeTraits::NONE };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let attrs = request.attrs;
        let dir = resolve_path(&request.config_dir, &attrs.dir.to_string_lossy());
        if attrs.name.is_empty()
            || attrs.name.split('/').any(|part| part == "..")
            || attrs.name.starts_with('/')
        {
            return Err(format!("pass name {:?} must be a sub-directory of the store", attrs.name));
        }
        if !dir.join(&attrs.name).is_dir() {
            return Err(format!("{} is not a directory", dir.join(&attrs.name).display()));
        }
        Ok(Attrs { dir, name: attrs.name })
    }

    /// The attributes, the store's encrypted files (names, sizes, mtimes) and its git history
    /// for `name`: no decryption.
    fn fingerprint(
        &self,
        target: &Target<'_>,
        request: PrepareRequest<Attrs>,
    ) -> Result<Option<String>, String> {
        let attrs = serde_json::to_string(&request.attrs).map_err(|e| e.to_string())?;
        let files = files_with_extension(&request.attrs.dir.join(&request.attrs.name), "gpg")?;
        let mut fingerprint = Fingerprint::default();
        fingerprint.add(attrs).add_files(&files)?;
        // populate ships the store's git state too (`.pass_info`, author dates as mtimes).
        if request.attrs.dir.join(".git").exists() {
            let dir = request.attrs.dir.to_string_lossy();
            let log = ["git", "-C", &dir, "log", "--format=%H %at", "--", &request.attrs.name];
            fingerprint.add(target.run_local(&log, b"")?);
        }
        Ok(Some(fingerprint.finish()))
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let destination = request.destination();
        let in_git = request.attrs.dir.join(".git").exists();
        let pass_info = pass_info(target, &request.attrs)?;
        if unchanged_since_deployed(target, &destination, pass_info.as_deref())? {
            return Ok(serde_json::json!({ "skipped": "unchanged since the last deploy" }));
        }
        let mut secrets = decrypt(target, &request.attrs, in_git)?;
        let count = secrets.len();
        if let Some(info) = pass_info {
            secrets.push(SecretFile {
                path: ".pass_info".into(),
                contents: format!("{info}\n").into_bytes(),
                mtime: 0,
            });
        }
        target.install_secrets(&destination, &secrets)?;
        Ok(serde_json::json!({ "secrets": count }))
    }

    /// The secrets by name (the `.pass_info` bookkeeping left aside).
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        if unchanged_since_deployed(
            target,
            &request.destination(),
            pass_info(target, &request.attrs)?.as_deref(),
        )? {
            return Ok(Diff::default());
        }
        let in_git = request.attrs.dir.join(".git").exists();
        let secrets = decrypt(target, &request.attrs, in_git)?;
        secrets_diff(target, &request.destination(), &secrets, &[".pass_info"])
    }
}

/// `NAME COMMIT`: the store's last commit touching `name`, as krops's `.pass_info` records it
/// (`None`: the store is no git repository).
fn pass_info(target: &Target<'_>, attrs: &Attrs) -> Result<Option<String>, String> {
    if !attrs.dir.join(".git").exists() {
        return Ok(None);
    }
    let dir = attrs.dir.to_string_lossy();
    let commit =
        target.run_local(&["git", "-C", &dir, "log", "-1", "--format=%H", "--", &attrs.name], b"")?;
    Ok(Some(format!("{} {}", attrs.name, String::from_utf8_lossy(&commit).trim())))
}

/// Whether the secrets at `destination` carry `pass_info`: populated from this git state
/// already, and skipped as krops skips them.
fn unchanged_since_deployed(
    target: &Target<'_>,
    destination: &str,
    pass_info: Option<&str>,
) -> Result<bool, String> {
    let Some(info) = pass_info else { return Ok(false) };
    let deployed = target.run_script(
        r#"[ -L "$1" ] || cat -- "$1/.pass_info" 2>/dev/null || true"#,
        &[destination],
        b"",
    )?;
    Ok(String::from_utf8_lossy(&deployed).trim() == info)
}

/// Every secret below `dir/name`, decrypted into memory, with its mtime (the last author date
/// when the store is a git repository).
fn decrypt(target: &Target<'_>, attrs: &Attrs, in_git: bool) -> Result<Vec<SecretFile>, String> {
    let Attrs { dir, name } = attrs;
    let root = dir.join(name);
    let files = files_with_extension(&root, "gpg")?;
    let dates = if in_git { author_dates(target, dir, name)? } else { HashMap::new() };
    let decrypted = decrypt_all(target, &files)?;
    let mut secrets = Vec::new();
    for ((path, relative), contents) in files.iter().zip(decrypted) {
        let in_store = path.strip_prefix(dir).map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let mtime = match dates.get(&in_store) {
            Some(date) => *date,
            None => mtime(path)?,
        };
        secrets.push(SecretFile { path: relative.clone(), contents, mtime });
    }
    Ok(secrets)
}

/// The last author date of every file below `name`, from one `git log`.
fn author_dates(target: &Target<'_>, dir: &Path, name: &str) -> Result<HashMap<String, u64>, String> {
    let dir = dir.to_string_lossy();
    let log =
        target.run_local(&["git", "-C", &dir, "log", "--format=@%at", "--name-only", "--", name], b"")?;
    let mut dates = HashMap::new();
    let mut current = 0;
    for line in String::from_utf8_lossy(&log).lines() {
        if let Some(date) = line.strip_prefix('@') {
            current = date.trim().parse().unwrap_or(0);
        } else if !line.is_empty() {
            // Newest first: the first date seen for a file is its last change.
            dates.entry(line.to_owned()).or_insert(current);
        }
    }
    Ok(dates)
}

/// Decrypts every file with gpg, a few processes at once; plaintext stays in memory.
fn decrypt_all(target: &Target<'_>, files: &[(PathBuf, String)]) -> Result<Vec<Vec<u8>>, String> {
    krops_core::sdk::parallel_map(files, GPG_AT_ONCE, |(path, _)| {
        target.run_local(&["gpg", "--batch", "--quiet", "--decrypt", "--", &path.to_string_lossy()], b"")
    })
    .into_iter()
    .collect()
}

krops_core::export_populator!(Pass);
