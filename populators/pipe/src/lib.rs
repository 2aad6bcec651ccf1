//! The `pipe` source type: a local command's standard output, as a file at `<path>/<name>`.
//! The command runs once per source and run, in `prepare`: a failing command fails the
//! deployment before anything is written on its target (a failure in `fingerprint` would only
//! mean "always populate", and `populate` would run it again beside sources already written).
//! Its output is fingerprinted (so an unchanged output is not sent again) and kept for
//! populating, so what is shipped is what was fingerprinted.

use std::collections::HashMap;
use std::sync::Mutex;

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{sha256_hex, Fingerprint};
use krops_core::wire::{
    Change, ChangeKind, Diff, PopulateRequest, PrepareRequest, StateKind, ValidateRequest,
};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Pipe {
    /// Output by (source name, command), from `prepare` for `fingerprint`, `populate` and
    /// `diff`.
    outputs: Mutex<HashMap<(String, String), Vec<u8>>>,
}

impl Pipe {
    /// The command's output: the one run this source already got in this run, else a new run.
    fn output(&self, target: &Target<'_>, name: &str, command: &str) -> Result<Vec<u8>, String> {
        let key = (name.to_owned(), command.to_owned());
        if let Some(output) = self.outputs.lock().ok().and_then(|o| o.get(&key).cloned()) {
            return Ok(output);
        }
        let output = target.run_local(&["/bin/sh", "-c", command], b"")?;
        match self.outputs.lock() {
            // Two deployments with this source may have run it at once: both keep the first
            // output, so that each ships what it fingerprinted.
            Ok(mut outputs) => Ok(outputs.entry(key).or_insert(output).clone()),
            Err(_) => Ok(output),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    /// A shell command run on the deploying machine.
    command: String,
}

impl PopulatorPlugin for Pipe {
    const TYPE: &'static str = "pipe";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits = TypeTraits {
        shorthand: Some("command"),
        state: StateKind::Content,
        program_attribute: Some("command"),
        ..TypeTraits::NONE
    };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        if request.attrs.command.trim().is_empty() {
            return Err("pipe command must not be empty".to_owned());
        }
        Ok(request.attrs)
    }

    /// Runs the command (see the module documentation).
    fn prepare(&self, target: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Attrs, String> {
        self.output(target, &request.name, &request.attrs.command)?;
        Ok(request.attrs)
    }

    fn fingerprint(
        &self,
        target: &Target<'_>,
        request: PrepareRequest<Attrs>,
    ) -> Result<Option<String>, String> {
        let output = self.output(target, &request.name, &request.attrs.command)?;
        Ok(Some(Fingerprint::default().add(&request.attrs.command).add(output).finish()))
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let output = self.output(target, &request.name, &request.attrs.command)?;
        // krops writes with `cat >`, i.e. the remote umask's usual 0644.
        target.write_file(&request.destination(), 0o644, &output)?;
        Ok(serde_json::json!({ "bytes": output.len() }))
    }

    /// The output compared with the file on the target by SHA-256 (a pipe's output is no
    /// secret; a secret belongs in pass or passage).
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let output = self.output(target, &request.name, &request.attrs.command)?;
        let script = include_str!("sh/diff_script.sh");
        let there = target.run_script(script, &[&request.destination()], b"")?;
        let there = String::from_utf8_lossy(&there).trim().to_owned();
        let ours = sha256_hex(&output);
        let change = match there.as_str() {
            "" => Change::new(ChangeKind::Added, ""),
            hash if hash == ours => return Ok(Diff::default()),
            hash if hash.len() == 64 => {
                Change { what: Some("output".into()), ..Change::new(ChangeKind::Changed, "") }
            }
            other => Change::whole("replaced", Some(other.to_owned()), Some("a file".into())),
        };
        Ok(Diff { changes: vec![change] })
    }
}

krops_core::export_populator!(Pipe);
