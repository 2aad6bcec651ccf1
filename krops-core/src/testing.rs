//! A fake, in-process target for unit-testing a populator without ssh or a krops binary: it
//! records every capability call and answers from handlers the test sets, so a test checks what
//! a populator *asks for* (scripts, rsync options, secret trees) and feeds it the answers. It
//! can pose as a remote host, a sudo login or an older host offering fewer capabilities, and
//! [`FakeTarget::in_temp_dir`] really runs the scripts a populator sends, with `/bin/sh`, in a
//! temporary directory that stands for the target.
//!
//! ```
//! use krops_core::testing::FakeTarget;
//! let target = FakeTarget::new("/var/src").answer("run_script", |_, _| Ok(b"present\n".to_vec()));
//! let out = target.with(|t| t.run_script("echo present", &[], b"")).unwrap();
//! assert_eq!(out, b"present\n");
//! assert_eq!(target.calls()[0].capability, "run_script");
//!
//! // An older remote host, logged in to through sudo, that offers nothing but run_script,
//! // and runs it for real.
//! let target = FakeTarget::in_temp_dir().remote("db").sudo().offering(&["run_script"]);
//! let out = target.with(|t| t.run_script("echo \"$1\" > \"$2/x\"; cat \"$2/x\"", &["hi", &target.path()], b""));
//! assert_eq!(out.unwrap(), b"hi\n");
//! assert!(target.with(|t| t.write_file(&format!("{}/y", target.path()), 0o600, b"")).is_err());
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::abi::{TargetHandle, TargetHandle_TO};
use crate::plugin::Target;
use crate::wire::{capability, RunScriptRequest, TargetInfo, WriteFileRequest, UNSUPPORTED};

/// One capability call as the populator made it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The capability's name (see [`crate::wire::capability`]).
    pub capability: String,
    /// The request, as the populator sent it.
    pub request: serde_json::Value,
    /// The input bytes (stdin, a file's contents, a tar stream).
    pub input: Vec<u8>,
}

type Handler = Box<dyn Fn(&serde_json::Value, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// See the module documentation. Capabilities without a handler answer empty output, except
/// `rsync`, which answers an empty report, and, [`in_temp_dir`](FakeTarget::in_temp_dir),
/// `run_script` and `write_file`, which really run.
pub struct FakeTarget {
    info: TargetInfo,
    handlers: BTreeMap<String, Handler>,
    calls: Mutex<Vec<Call>>,
    logs: Mutex<Vec<(u8, String)>>,
    /// Where scripts really run (see [`FakeTarget::in_temp_dir`]); removed with the fake.
    scratch: Option<tempfile::TempDir>,
}

impl FakeTarget {
    /// A local target at `path` offering every capability of this crate's ABI.
    pub fn new(path: &str) -> FakeTarget {
        let capabilities =
            [capability::RUN_SCRIPT, capability::RUN_LOCAL, capability::RSYNC, capability::WRITE_FILE];
        FakeTarget {
            info: TargetInfo {
                host: None,
                path: Some(path.to_owned()),
                local: true,
                sudo: false,
                capabilities: capabilities.map(str::to_owned).to_vec(),
            },
            handlers: BTreeMap::new(),
            calls: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            scratch: None,
        }
    }

    /// A target in a fresh temporary directory (removed with the fake) whose `run_script`
    /// runs `/bin/sh -c SCRIPT sh ARGS…` there, with the input on stdin, and whose
    /// `write_file` writes (made with its mode, then moved into place), both as the user
    /// running the test; its path ([`FakeTarget::path`]) is `var/src` below that directory.
    /// Handlers set with [`FakeTarget::answer`] still take precedence.
    pub fn in_temp_dir() -> FakeTarget {
        let scratch =
            tempfile::Builder::new().prefix("krops-fake-target.").tempdir().expect("a temporary directory");
        let path = scratch.path().join("var/src");
        std::fs::create_dir_all(&path).expect("the fake target's path");
        FakeTarget { scratch: Some(scratch), ..FakeTarget::new(&path.display().to_string()) }
    }

    /// Poses as the remote host `host` (a populator sees `local: false`).
    pub fn remote(mut self, host: &str) -> FakeTarget {
        self.info.host = Some(host.to_owned());
        self.info.local = false;
        self
    }

    /// Poses as a target logged in to as a user who runs everything through sudo.
    pub fn sudo(mut self) -> FakeTarget {
        self.info.sudo = true;
        self
    }

    /// Offers only `capabilities`, as an older host would: calls of any other fail as
    /// unsupported (see [`crate::wire::UNSUPPORTED`]).
    pub fn offering(mut self, capabilities: &[&str]) -> FakeTarget {
        self.info.capabilities = capabilities.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// The target path (`TargetInfo::path`).
    pub fn path(&self) -> String {
        self.info.path.clone().unwrap_or_default()
    }

    /// The temporary directory of [`FakeTarget::in_temp_dir`].
    pub fn root(&self) -> Option<&Path> {
        self.scratch.as_ref().map(tempfile::TempDir::path)
    }

    /// Answers `capability` with `handler(request, input)`.
    pub fn answer(
        mut self,
        capability: &str,
        handler: impl Fn(&serde_json::Value, &[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> FakeTarget {
        self.handlers.insert(capability.to_owned(), Box::new(handler));
        self
    }

    /// Lends this fake as a [`Target`] to `f`, as the host lends its handle to a populator.
    pub fn with<T>(&self, f: impl FnOnce(&Target<'_>) -> T) -> T {
        f(&Target::new(TargetHandle_TO::from_ptr(self, TD_Opaque)))
    }

    /// Every capability call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Every log message so far: `(level, message)`, levels as in [`crate::abi::log_level`].
    pub fn logs(&self) -> Vec<(u8, String)> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn answer_call(&self, capability: &str, request: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        if !self.info.capabilities.iter().any(|c| c == capability) {
            return Err(format!("{UNSUPPORTED} the fake target offers no {capability:?}"));
        }
        let request: serde_json::Value = serde_json::from_str(request).map_err(|e| e.to_string())?;
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call {
                capability: capability.to_owned(),
                request: request.clone(),
                input: input.to_vec(),
            });
        }
        match (self.handlers.get(capability), capability, self.root()) {
            (Some(handler), _, _) => handler(&request, input),
            (None, capability::RUN_SCRIPT, Some(root)) => run_script(root, &request, input),
            (None, capability::WRITE_FILE, Some(_)) => write_file(&request, input),
            (None, capability::RSYNC, _) => Ok(br#"{"itemized": []}"#.to_vec()),
            (None, _, _) => Ok(Vec::new()),
        }
    }
}

/// `run_script` for real, in `root`; fails as a host does, with the shell's exit status and
/// stderr.
// The fake stands in for the host, whose business starting processes is; a populator using
// it in its tests still starts none itself.
#[allow(clippy::disallowed_methods)]
fn run_script(root: &Path, request: &serde_json::Value, input: &[u8]) -> Result<Vec<u8>, String> {
    let request: RunScriptRequest = serde_json::from_value(request.clone()).map_err(|e| e.to_string())?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&request.script)
        .arg("sh")
        .args(&request.args)
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("/bin/sh failed to start: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = input.to_vec();
    // Written beside the reading, so a script that answers before reading all never blocks.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "/bin/sh failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ))
    }
}

/// `write_file` for real: made with its mode before any byte is written, then moved into place.
fn write_file(request: &serde_json::Value, input: &[u8]) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let request: WriteFileRequest = serde_json::from_value(request.clone()).map_err(|e| e.to_string())?;
    let path = PathBuf::from(&request.path);
    let parent = path.parent().ok_or("write_file: a path without a parent")?;
    let staged =
        parent.join(format!(".{}.krops-new", path.file_name().unwrap_or_default().to_string_lossy()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(request.mode)
        .open(&staged)
        .map_err(|e| format!("write_file {}: {e}", staged.display()))?;
    file.write_all(input).map_err(|e| e.to_string())?;
    std::fs::rename(&staged, &path).map_err(|e| format!("write_file {}: {e}", path.display()))?;
    Ok(Vec::new())
}

impl TargetHandle for FakeTarget {
    fn describe(&self) -> RString {
        serde_json::to_string(&self.info).unwrap_or_default().into()
    }

    fn call(
        &self,
        capability: RStr<'_>,
        request: RStr<'_>,
        input: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, RString> {
        self.answer_call(capability.as_str(), request.as_str(), input.as_slice())
            .map(RVec::from)
            .map_err(RString::from)
            .into()
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.push((level, message.to_string()));
        }
    }
}

/// The files of a tree as [`Target::install_dir`](crate::plugin::Target::install_dir) or
/// [`Target::install_secrets`](crate::plugin::Target::install_secrets) sent it (a tar stream on
/// stdin): `(path, mode, contents)` of every regular file, so a test can check names and modes.
pub fn unpack_secrets(input: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut archive = tar::Archive::new(input);
    let mut files = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        // The tree is below `tree/`; the manifest after it is not one of its files.
        let Some(path) = path.strip_prefix("tree/").map(str::to_owned) else { continue };
        let mode = entry.header().mode().map_err(|e| e.to_string())?;
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).map_err(|e| e.to_string())?;
        files.push((path, mode, contents));
    }
    Ok(files)
}
