//! The host side of the plugin ABI: [`HostHandle`] implements `TargetHandle` on top of a
//! [`Transport`], so plugins reach the target (and the deploying machine) only through krops's
//! own command building. Capabilities are answered by name; a new one is a new arm here and a
//! new name in [`HostHandle::capabilities`], never a new vtable method.

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use krops_core::abi::TargetHandle;
use krops_core::plugin::guarded;
use krops_core::wire::{
    capability, RsyncReport, RsyncRequest, RunLocalRequest, RunScriptRequest, TargetInfo, WriteFileRequest,
    UNSUPPORTED,
};
use serde::de::DeserializeOwned;

use crate::events::{Level, Reporter};
use crate::exec::{self, Argv, Input, Output};
use crate::transport::{Transport, Tty};

/// Writes stdin to `$1` so that it never exists with a wider mode than `$2`, and never
/// half-written: a file is filled and chmodded in a fresh private directory beside `$1`
/// (`sdk::PRIVATE_DIR_FUNCTIONS`: no one else can reach it), then renamed into place.
/// Whatever stood at `$1` is replaced, never followed: `mv -T` renames over a symlink (to a
/// directory, too) instead of moving into the directory it points to.
const WRITE_FILE_SCRIPT: &str = include_str!("sh/write_file_script.sh");

/// [`WRITE_FILE_SCRIPT`] with the functions it uses.
fn write_file_script() -> String {
    format!("{}\n{WRITE_FILE_SCRIPT}", krops_core::sdk::PRIVATE_DIR_FUNCTIONS)
}

/// What the host lends a plugin for one call: the deployment's target for `prepare` (to read
/// from) and `populate`; nothing for `validate`.
pub struct HostHandle<'a> {
    transport: Option<&'a Transport>,
    reporter: Option<&'a Reporter>,
}

impl<'a> HostHandle<'a> {
    pub fn for_target(transport: &'a Transport, reporter: &'a Reporter) -> Self {
        HostHandle { transport: Some(transport), reporter: Some(reporter) }
    }

    /// For `validate`, while the configuration loads: no target, and nothing to run.
    pub fn for_validation() -> Self {
        HostHandle { transport: None, reporter: None }
    }

    /// The capabilities this handle answers.
    fn capabilities(&self) -> Vec<&'static str> {
        let mut offered = Vec::new();
        if self.reporter.is_some() {
            offered.push(capability::RUN_LOCAL);
        }
        if self.transport.is_some() {
            offered.extend([capability::RUN_SCRIPT, capability::RSYNC, capability::WRITE_FILE]);
        }
        if cfg!(feature = "test-capability") {
            offered.push(TEST_CAPABILITY);
        }
        offered
    }

    fn answer(&self, capability: &str, request: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        if !self.capabilities().contains(&capability) {
            return Err(format!("{UNSUPPORTED} this krops offers no {capability:?} here"));
        }
        match (capability, self.transport) {
            (capability::RUN_LOCAL, _) => {
                let request: RunLocalRequest = parse(request)?;
                if request.argv.is_empty() {
                    return Err("run_local needs a program".to_owned());
                }
                self.run(&Argv::new(request.argv), Input::Bytes(input))
            }
            (capability::RUN_SCRIPT, Some(transport)) => {
                let request: RunScriptRequest = parse(request)?;
                self.run(&transport.shell(&request.script, &request.args, &[], Tty::No), Input::Bytes(input))
            }
            (capability::RSYNC, Some(transport)) => {
                let request: RsyncRequest = parse(request)?;
                let argv = transport.rsync(&request.options, &request.source, &request.destination);
                let stdout = self.run(&argv, Input::Null)?;
                let itemized = String::from_utf8_lossy(&stdout).lines().map(str::to_owned).collect();
                serde_json::to_vec(&RsyncReport { itemized }).map_err(|e| e.to_string())
            }
            (capability::WRITE_FILE, Some(transport)) => {
                let request: WriteFileRequest = parse(request)?;
                if !request.path.starts_with('/') {
                    return Err(format!("write_file needs an absolute path, not {:?}", request.path));
                }
                let args = [request.path, format!("{:o}", request.mode & 0o7777)];
                self.run(&transport.shell(&write_file_script(), &args, &[], Tty::No), Input::Bytes(input))
                    .map(drop)?;
                Ok(Vec::new())
            }
            (TEST_CAPABILITY, _) => Ok(input.iter().rev().copied().collect()),
            (other, _) => Err(format!("{UNSUPPORTED} this krops offers no {other:?} here")),
        }
    }

    fn run(&self, argv: &Argv, input: Input<'_>) -> Result<Vec<u8>, String> {
        if let Some(reporter) = self.reporter {
            reporter.log(&self.host_label(), Level::Trace, format!("running {}", argv.display()));
        }
        exec::run(argv, &[], input, Output::Capture).map_err(|e| e.to_string())
    }

    fn host_label(&self) -> Option<String> {
        self.transport.and_then(Transport::host_label)
    }
}

/// Offered only by test builds (feature `test-capability`): answers its input reversed. A
/// plugin built before it existed must keep loading in a host that has it.
const TEST_CAPABILITY: &str = "krops_test_reverse";

fn parse<T: DeserializeOwned>(request: &str) -> Result<T, String> {
    serde_json::from_str(request).map_err(|e| format!("malformed request from the plugin: {e}"))
}

impl TargetHandle for HostHandle<'_> {
    fn describe(&self) -> RString {
        let info = TargetInfo {
            host: self.transport.map(|t| t.target.host.clone()),
            path: self.transport.map(|t| t.target.path.clone()),
            local: self.transport.is_some_and(|t| t.local),
            sudo: self.transport.is_some_and(|t| t.target.sudo),
            capabilities: self.capabilities().into_iter().map(str::to_owned).collect(),
        };
        serde_json::to_string(&info).unwrap_or_default().into()
    }

    fn call(
        &self,
        capability: RStr<'_>,
        request: RStr<'_>,
        input: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, RString> {
        guarded(|| self.answer(capability.as_str(), request.as_str(), input.as_slice()))
            .map(RVec::from)
            .map_err(RString::from)
            .into()
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        match self.reporter {
            Some(reporter) => reporter.log(&self.host_label(), Level::from_abi(level), message.to_string()),
            None => tracing::debug!("{message}"),
        }
    }
}
