//! The host side of the plugin ABI: [`HostHandle`] implements [`TargetHandle`] on top of a
//! [`Transport`], so plugins reach the target only through krops's own command building.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::abi::TargetHandle;
use crate::events::{Level, Reporter};
use crate::exec::{self, Argv, Input, Output};
use crate::plugin::{panic_message, RsyncReport, RsyncRequest, WriteFileRequest};
use crate::transport::{Transport, Tty};

/// Writes stdin to `$1` so that it never exists with a wider mode than `$2`, and never
/// half-written: a temporary file (0600 under umask 077) is filled, chmodded and renamed.
const WRITE_FILE_SCRIPT: &str = r#"set -e
umask 077
mkdir -p -- "$(dirname -- "$1")"
tmp=$(mktemp -- "$1.krops-XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod "$2" -- "$tmp"
if [ -d "$1" ] && [ ! -L "$1" ]; then rm -rf -- "$1"; fi
mv -f -- "$tmp" "$1"
trap - EXIT"#;

pub struct HostHandle<'a> {
    pub transport: &'a Transport,
    pub reporter: &'a Reporter,
}

impl HostHandle<'_> {
    pub fn run_script(&self, script: &str, args: &[String], stdin: &[u8]) -> Result<Vec<u8>, String> {
        let argv = self.transport.shell(script, args, &[], Tty::No);
        self.run(&argv, Input::Bytes(stdin))
    }

    fn run(&self, argv: &Argv, input: Input<'_>) -> Result<Vec<u8>, String> {
        self.reporter.log(&self.transport.host_label(), Level::Trace, format!("running {}", argv.program()));
        exec::run(argv, &[], input, Output::Capture).map_err(|e| e.to_string())
    }

    fn rsync(&self, request: &str) -> Result<String, String> {
        let request: RsyncRequest = serde_json::from_str(request).map_err(|e| e.to_string())?;
        let argv = self.transport.rsync(&request.options, &request.source, &request.destination);
        let stdout = self.run(&argv, Input::Null)?;
        let report =
            RsyncReport { itemized: String::from_utf8_lossy(&stdout).lines().map(str::to_owned).collect() };
        serde_json::to_string(&report).map_err(|e| e.to_string())
    }

    fn write_file(&self, request: &str, contents: &[u8]) -> Result<(), String> {
        let request: WriteFileRequest = serde_json::from_str(request).map_err(|e| e.to_string())?;
        if !request.path.starts_with('/') {
            return Err(format!("write_file needs an absolute path, not {:?}", request.path));
        }
        let args = [request.path, format!("{:o}", request.mode & 0o7777)];
        self.run_script(WRITE_FILE_SCRIPT, &args, contents).map(drop)
    }
}

fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(message)) => RResult::RErr(message.into()),
        Err(payload) => RResult::RErr(format!("krops host {}", panic_message(&*payload)).into()),
    }
}

impl TargetHandle for HostHandle<'_> {
    fn describe(&self) -> RString {
        let target = &self.transport.target;
        serde_json::json!({
            "host": target.host,
            "path": target.path,
            "local": self.transport.local,
            "sudo": target.sudo,
        })
        .to_string()
        .into()
    }

    fn run_script(
        &self,
        script: RStr<'_>,
        args: RSlice<'_, RString>,
        stdin: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, RString> {
        guarded(|| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            HostHandle::run_script(self, script.as_str(), &args, stdin.as_slice()).map(RVec::from)
        })
    }

    fn run_local(&self, command: RStr<'_>) -> RResult<RVec<u8>, RString> {
        guarded(|| {
            let argv = Argv(vec!["/bin/sh".into(), "-c".into(), command.to_string()]);
            self.run(&argv, Input::Null).map(RVec::from)
        })
    }

    fn rsync(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guarded(|| HostHandle::rsync(self, request.as_str()).map(RString::from))
    }

    fn write_file(&self, request: RStr<'_>, contents: RSlice<'_, u8>) -> RResult<(), RString> {
        guarded(|| HostHandle::write_file(self, request.as_str(), contents.as_slice()))
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        self.reporter.log(&self.transport.host_label(), Level::from_abi(level), message.to_string());
    }
}
