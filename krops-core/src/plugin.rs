//! What a populator plugin is written against: the [`PopulatorPlugin`] trait, a typed wrapper
//! around the host's target handle, and [`export_populator!`](crate::export_populator), which
//! turns an implementation into the stable-ABI root module the host loads.
//!
//! The JSON request types here are shared with the host, so both sides agree on the documents
//! that cross the ABI.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::abi::{log_level, Populator, PopulatorBox, Populator_TO, TargetHandleRef};

/// `describe`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "type")]
    pub source_type: String,
    pub version: String,
}

/// `validate`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateRequest<A = serde_json::Value> {
    pub name: String,
    pub attrs: A,
    /// The directory of the configuration file, for relative paths.
    pub config_dir: PathBuf,
}

/// `prepare`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest<A = serde_json::Value> {
    pub name: String,
    pub attrs: A,
}

/// `populate`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PopulateRequest<A = serde_json::Value> {
    pub name: String,
    pub attrs: A,
    /// The deployment's path on the target; the source goes to `<targetPath>/<name>`.
    pub target_path: String,
}

impl<A> PopulateRequest<A> {
    /// `<targetPath>/<name>`, where this source lands.
    pub fn destination(&self) -> String {
        format!("{}/{}", self.target_path.trim_end_matches('/'), self.name)
    }
}

/// The rsync callback's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RsyncRequest {
    pub source: PathBuf,
    pub destination: String,
    pub options: Vec<String>,
}

/// The rsync callback's answer: rsync's list of changed items (`--itemize-changes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RsyncReport {
    pub itemized: Vec<String>,
}

/// The write_file callback's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteFileRequest {
    pub path: String,
    pub mode: u32,
}

/// A source type implemented in Rust. `export_populator!(MyType)` makes it a plugin.
pub trait PopulatorPlugin: Default + Send + Sync + 'static {
    /// The type key users write in the configuration (`file`, `git`, …).
    const TYPE: &'static str;
    /// Shown by `krops plugins`.
    const VERSION: &'static str;
    /// The source's attributes; unknown keys should be rejected (`deny_unknown_fields`).
    type Attrs: DeserializeOwned + Serialize;

    /// Checks the attributes and returns them normalised: defaults filled in, paths absolute.
    fn validate(&self, request: ValidateRequest<Self::Attrs>) -> Result<Self::Attrs, String>;

    /// Runs before any target is touched; returns the attributes to populate with (by
    /// default, unchanged). Resolve anything that may fail or drift here, such as a branch.
    fn prepare(&self, request: PrepareRequest<Self::Attrs>) -> Result<Self::Attrs, String> {
        Ok(request.attrs)
    }

    /// Puts the source at `request.destination()` through `target`; returns a report.
    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Self::Attrs>,
    ) -> Result<serde_json::Value, String>;
}

/// The typed side of the host's target handle.
pub struct Target<'a> {
    handle: TargetHandleRef<'a>,
}

impl Target<'_> {
    /// Runs `/bin/sh -c script sh args...` on the target and returns its stdout.
    pub fn run_script(&self, script: &str, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
        let args: Vec<RString> = args.iter().map(|a| RString::from(*a)).collect();
        self.handle
            .run_script(RStr::from(script), RSlice::from(&args[..]), RSlice::from(stdin))
            .into_result()
            .map(|out| out.into_vec())
            .map_err(RString::into_string)
    }

    /// Runs a shell command on the deploying machine and returns its stdout.
    pub fn run_local(&self, command: &str) -> Result<Vec<u8>, String> {
        self.handle
            .run_local(RStr::from(command))
            .into_result()
            .map(|out| out.into_vec())
            .map_err(RString::into_string)
    }

    pub fn rsync(&self, request: &RsyncRequest) -> Result<RsyncReport, String> {
        let request = serde_json::to_string(request).map_err(|e| e.to_string())?;
        let answer =
            self.handle.rsync(RStr::from(request.as_str())).into_result().map_err(RString::into_string)?;
        serde_json::from_str(&answer).map_err(|e| format!("host sent a bad rsync report: {e}"))
    }

    pub fn write_file(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), String> {
        let request = serde_json::to_string(&WriteFileRequest { path: path.to_owned(), mode })
            .map_err(|e| e.to_string())?;
        self.handle
            .write_file(RStr::from(request.as_str()), RSlice::from(contents))
            .into_result()
            .map_err(RString::into_string)
    }

    /// Replaces `destination` on the target with a directory (0700) holding `files` (0600, with
    /// their mtimes). The files travel as one tar stream on stdin, never as arguments; they are
    /// unpacked into a staging directory under umask 077 (so no byte is ever readable by
    /// others) which then takes the old directory's place, so a failure never leaves a
    /// half-written tree.
    pub fn install_secrets(&self, destination: &str, files: &[SecretFile]) -> Result<(), String> {
        let archive = secret_archive(files).map_err(|e| format!("cannot pack secrets: {e}"))?;
        self.run_script(INSTALL_SECRETS_SCRIPT, &[destination], &archive).map(drop)
    }

    pub fn info(&self, message: &str) {
        self.handle.log(log_level::INFO, RStr::from(message));
    }

    pub fn debug(&self, message: &str) {
        self.handle.log(log_level::DEBUG, RStr::from(message));
    }
}

/// One file of a secret tree.
pub struct SecretFile {
    /// Relative to the tree's root, `/`-separated, without `..`.
    pub path: String,
    pub contents: Vec<u8>,
    /// Seconds since the epoch.
    pub mtime: u64,
}

const INSTALL_SECRETS_SCRIPT: &str = r#"set -eu
umask 077
dest=$1 staging="$1.krops-staging" old="$1.krops-old"
rm -rf -- "$staging" "$old"
mkdir -- "$staging"
tar -x -p --no-same-owner -f - -C "$staging"
chmod 700 -- "$staging"
if [ -e "$dest" ] || [ -L "$dest" ]; then mv -- "$dest" "$old"; fi
mv -- "$staging" "$dest"
rm -rf -- "$old""#;

/// A tar stream of `files`: directories 0700, files 0600, owned by root.
fn secret_archive(files: &[SecretFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut directories = std::collections::BTreeSet::new();
    for file in files {
        let mut parent = std::path::Path::new(&file.path).parent();
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
            builder.append_data(&mut header, &dir, std::io::empty())?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o600);
        header.set_mtime(file.mtime);
        header.set_size(file.contents.len() as u64);
        builder.append_data(&mut header, &file.path, &file.contents[..])?;
    }
    builder.into_inner()
}

/// Every file below `root` whose name ends in `.EXTENSION` (`.git` directories passed over),
/// sorted, each with its path relative to `root` without the extension: a secret store's
/// layout turned into the names of the files to install.
pub fn files_with_extension(root: &Path, extension: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", current.display()))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| format!("{}: {e}", path.display()))?;
            if kind.is_dir() && entry.file_name() != ".git" {
                pending.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == extension) {
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

/// Turns a panic payload into a message, so that a plugin bug fails one source instead of
/// aborting the whole process at the FFI boundary.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("panicked: {detail}")
}

fn guarded(f: impl FnOnce() -> Result<String, String>) -> RResult<RString, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(ok)) => RResult::ROk(ok.into()),
        Ok(Err(err)) => RResult::RErr(err.into()),
        Err(payload) => RResult::RErr(panic_message(&*payload).into()),
    }
}

/// The attributes in the plugin's own type; a mismatch is the user's error, named by type.
fn typed_attrs<P: PopulatorPlugin>(attrs: serde_json::Value) -> Result<P::Attrs, String> {
    serde_json::from_value(attrs).map_err(|e| format!("{} source: {e}", P::TYPE))
}

/// Bridges a [`PopulatorPlugin`] to the stable-ABI [`Populator`] trait.
pub struct Adapter<P>(P);

impl<P: PopulatorPlugin> Populator for Adapter<P> {
    fn describe(&self) -> RString {
        let description = Description { source_type: P::TYPE.to_owned(), version: P::VERSION.to_owned() };
        serde_json::to_string(&description).unwrap_or_default().into()
    }

    fn validate(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guarded(|| {
            let request: ValidateRequest<serde_json::Value> =
                serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
            let attrs = typed_attrs::<P>(request.attrs)?;
            let normalised = self.0.validate(ValidateRequest {
                name: request.name,
                attrs,
                config_dir: request.config_dir,
            })?;
            serde_json::to_string(&normalised).map_err(|e| e.to_string())
        })
    }

    fn prepare(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guarded(|| {
            let request: PrepareRequest<serde_json::Value> =
                serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
            let attrs = typed_attrs::<P>(request.attrs)?;
            let prepared = self.0.prepare(PrepareRequest { name: request.name, attrs })?;
            serde_json::to_string(&prepared).map_err(|e| e.to_string())
        })
    }

    fn populate(&self, target: TargetHandleRef<'_>, request: RStr<'_>) -> RResult<RString, RString> {
        guarded(move || {
            let request: PopulateRequest<serde_json::Value> =
                serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
            let attrs = typed_attrs::<P>(request.attrs)?;
            let request = PopulateRequest { name: request.name, attrs, target_path: request.target_path };
            let report = self.0.populate(&Target { handle: target }, request)?;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        })
    }
}

/// Used by [`export_populator!`](crate::export_populator).
pub fn boxed<P: PopulatorPlugin>() -> PopulatorBox {
    Populator_TO::from_value(Adapter(P::default()), abi_stable::sabi_trait::TD_Opaque)
}

/// Exports a [`PopulatorPlugin`] as a krops plugin library. The crate must be a `cdylib`
/// named `krops-populator-<something>` and depend on `abi_stable` directly.
#[macro_export]
macro_rules! export_populator {
    ($plugin:ty) => {
        #[allow(unsafe_code)]
        #[::abi_stable::export_root_module]
        pub fn krops_populator_root_module() -> $crate::abi::PopulatorModuleRef {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::PopulatorModule { new: krops_populator_new }.leak_into_prefix()
        }

        extern "C" fn krops_populator_new() -> $crate::abi::PopulatorBox {
            $crate::plugin::boxed::<$plugin>()
        }

        /// Checked by the host before abi_stable's layout check, for a clear message.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn krops_populator_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }
    };
}
