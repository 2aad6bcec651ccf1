//! The `pipe` source type: a local command's standard output, as a file at `<path>/<name>`.

use krops_core::plugin::{PopulatorPlugin, Target};
use krops_core::wire::{PopulateRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Pipe;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    /// A shell command run on the deploying machine.
    command: String,
}

impl PopulatorPlugin for Pipe {
    const TYPE: &'static str = "pipe";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        if request.attrs.command.trim().is_empty() {
            return Err("pipe command must not be empty".to_owned());
        }
        Ok(request.attrs)
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let output = target.run_local(&["/bin/sh", "-c", &request.attrs.command], b"")?;
        // krops writes with `cat >`, i.e. the remote umask's usual 0644.
        target.write_file(&request.destination(), 0o644, &output)?;
        Ok(serde_json::json!({ "bytes": output.len() }))
    }
}

krops_core::export_populator!(Pipe);
