//! A fake, in-process target for unit-testing a populator without ssh or a krops binary: it
//! records every capability call and answers from handlers the test sets, so a test checks what
//! a populator *asks for* (scripts, rsync options, secret trees) and feeds it the answers.
//!
//! ```
//! use krops_core::testing::FakeTarget;
//! let target = FakeTarget::new("/var/src").answer("run_script", |_, _| Ok(b"present\n".to_vec()));
//! let out = target.with(|t| t.run_script("echo present", &[], b"")).unwrap();
//! assert_eq!(out, b"present\n");
//! assert_eq!(target.calls()[0].capability, "run_script");
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::abi::{TargetHandle, TargetHandle_TO};
use crate::plugin::Target;
use crate::wire::{capability, TargetInfo, UNSUPPORTED};

/// One capability call as the populator made it.
#[derive(Debug, Clone)]
pub struct Call {
    pub capability: String,
    pub request: serde_json::Value,
    pub input: Vec<u8>,
}

type Handler = Box<dyn Fn(&serde_json::Value, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// See the module documentation. Capabilities without a handler answer empty output, except
/// `rsync`, which answers an empty report.
pub struct FakeTarget {
    info: TargetInfo,
    handlers: BTreeMap<String, Handler>,
    calls: Mutex<Vec<Call>>,
    logs: Mutex<Vec<(u8, String)>>,
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
        }
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

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

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
        match (self.handlers.get(capability), capability) {
            (Some(handler), _) => handler(&request, input),
            (None, capability::RSYNC) => Ok(br#"{"itemized": []}"#.to_vec()),
            (None, _) => Ok(Vec::new()),
        }
    }
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

/// The files of a secret tree as [`Target::install_secrets`] sent it (a tar stream on stdin):
/// `(path, mode, contents)` of every regular file, so a test can check names and modes.
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
