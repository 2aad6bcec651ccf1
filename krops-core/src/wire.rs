//! The JSON documents that cross the ABI, shared by host and plugins so both sides agree on
//! them. Adding an optional field or a new method/capability name is compatible; changing the
//! meaning of an existing one bumps [`crate::abi::ABI_VERSION`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every error for a method or capability the other side does not know starts with this, so
/// a caller can tell "not offered" from "failed".
pub const UNSUPPORTED: &str = "unsupported:";

/// The methods a populator answers through [`crate::abi::Populator::call`].
pub mod method {
    /// [`super::ValidateRequest`] → the normalised attributes.
    pub const VALIDATE: &str = "validate";
    /// [`super::PrepareRequest`] → the attributes to populate with.
    pub const PREPARE: &str = "prepare";
    /// [`super::PopulateRequest`] → a report object.
    pub const POPULATE: &str = "populate";
    /// [`super::PrepareRequest`] (prepared attributes) → a string that changes whenever what
    /// `populate` would put on the target changes, or `null` (always populate). The host skips
    /// a source whose fingerprint and target-side state are those of its last populate.
    pub const FINGERPRINT: &str = "fingerprint";
    /// [`super::PopulateRequest`] (prepared attributes) → [`super::Diff`]: what `populate`
    /// would change on the target, found without changing anything there (`krops diff`).
    pub const DIFF: &str = "diff";
}

/// The capabilities a host offers through [`crate::abi::TargetHandle::call`].
pub mod capability {
    /// [`super::RunScriptRequest`], input = stdin → stdout.
    pub const RUN_SCRIPT: &str = "run_script";
    /// [`super::RunLocalRequest`], input = stdin → stdout.
    pub const RUN_LOCAL: &str = "run_local";
    /// [`super::RsyncRequest`] → [`super::RsyncReport`] as JSON.
    pub const RSYNC: &str = "rsync";
    /// [`super::WriteFileRequest`], input = contents → nothing.
    pub const WRITE_FILE: &str = "write_file";
}

/// `describe`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "type")]
    /// The type key the plugin serves.
    pub source_type: String,
    /// The plugin's own version, shown by `krops plugins`.
    pub version: String,
    /// The methods this plugin answers.
    #[serde(default)]
    pub methods: Vec<String>,
    /// What the host needs to know about the type's sources; absent (a plugin built before
    /// these existed): the defaults.
    #[serde(flatten)]
    pub traits: Traits,
}

/// What a type tells the host about its sources, so that the host treats every type alike
/// and knows none by name: the built-in types describe themselves exactly as a third party's
/// do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traits {
    /// The attribute a plain string stands for: with `path`, `file = "./x"` is
    /// `file = { path = "./x"; }`. `None`: the type's value must be a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shorthand: Option<String>,
    /// How the host tells whether a source changed on the target since it populated it.
    #[serde(default)]
    pub state: StateKind,
    /// The program a failure of this type is about, named in a failed deployment's summary
    /// when the failure came out of a script the host ran for the plugin (`ssh`, `sudo`,
    /// `/bin/sh`): `rsync`, `ln`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// The plugin does `program`'s work in-process as well (git's ref resolution): its errors
    /// that name no program are `program`'s too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub program_in_process: bool,
    /// An attribute whose value is the program instead: a user's command, named by its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_attribute: Option<String>,
    /// An attribute of the prepared source that says which version was populated (git's
    /// `commit`): recorded on the target and shown by `krops status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_attribute: Option<String>,
}

/// What the target-side state of a source is made of (see [`Traits::state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// The names, kinds, sizes, modification times and modes of everything below it.
    #[default]
    Tree,
    /// A git work tree: the tree without its `.git` directories, and the commit of its HEAD.
    Git,
    /// The tree and every file's SHA-256: content that is small and easily replaced by other
    /// content of the same size and mtime (secrets, a command's output).
    Content,
}

/// What the host says about the target it lends, and what it can do there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetInfo {
    /// `None` outside `populate` (validate, prepare): there is no target yet.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    /// The deployment's target path; `None` outside `populate`.
    pub path: Option<String>,
    #[serde(default)]
    /// Whether the target is this machine (no ssh).
    pub local: bool,
    #[serde(default)]
    /// Whether scripts run through sudo on the target.
    pub sudo: bool,
    /// The capability names this host offers for this call.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// `validate`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateRequest<A = serde_json::Value> {
    /// The source's name, where it lands below the target path.
    pub name: String,
    /// The source's attributes as the user wrote them (short form expanded).
    pub attrs: A,
    /// The directory of the configuration file, for relative paths.
    pub config_dir: PathBuf,
}

/// `prepare`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest<A = serde_json::Value> {
    /// The source's name.
    pub name: String,
    /// The attributes `validate` returned.
    pub attrs: A,
}

/// `populate`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PopulateRequest<A = serde_json::Value> {
    /// The source's name.
    pub name: String,
    /// The attributes `prepare` returned.
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

/// `diff`'s answer: what populating the source would change. No change: unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Every change, by path.
    pub changes: Vec<Change>,
}

/// One change `populate` would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Added, changed or deleted.
    pub change: ChangeKind,
    /// Below the source, `/`-separated; empty for the source as a whole.
    #[serde(default)]
    pub path: String,
    /// What changes when it is not the content: `commit`, `symlink target`, `replaced`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// The old and new value of `what` (a commit, a link target), never secret content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// See `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// What a [`Change`] does to its path.
pub enum ChangeKind {
    /// Not there yet.
    Added,
    /// There, and different.
    Changed,
    /// There, and going.
    Deleted,
}

impl Change {
    /// A change of the content at `path`.
    pub fn new(change: ChangeKind, path: impl Into<String>) -> Change {
        Change { change, path: path.into(), what: None, from: None, to: None }
    }

    /// The source as a whole changes `what`, from `from` (if it was there) to `to`.
    pub fn whole(what: &str, from: Option<String>, to: Option<String>) -> Change {
        let change = if from.is_some() { ChangeKind::Changed } else { ChangeKind::Added };
        Change { change, path: String::new(), what: Some(what.to_owned()), from, to }
    }
}

/// `run_script`: `/bin/sh -c SCRIPT sh ARGS...` on the target, under sudo for sudo targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunScriptRequest {
    /// The script's text, run as `/bin/sh -c SCRIPT sh ARGS…`.
    pub script: String,
    #[serde(default)]
    /// `$1`, `$2`…: values travel here, never formatted into the script.
    pub args: Vec<String>,
}

/// `run_local`: a program on the deploying machine, as argv (never a shell string).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLocalRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
}

/// `rsync`: copies a local path to the target; the host adds the transport options (`-e`,
/// `--rsync-path`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RsyncRequest {
    /// The local path; a directory is copied by its contents.
    pub source: PathBuf,
    /// The path on the target.
    pub destination: String,
    /// rsync options (filters, `--delete`, `--checksum`…).
    pub options: Vec<String>,
}

/// `rsync`'s answer: rsync's list of changed items (`--itemize-changes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RsyncReport {
    /// rsync's `--itemize-changes` lines.
    pub itemized: Vec<String>,
}

/// `write_file`: the file is created with `mode` before any byte is written, then moved into
/// place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteFileRequest {
    /// The file's path on the target.
    pub path: String,
    /// Its mode, set before any byte is written.
    pub mode: u32,
}
