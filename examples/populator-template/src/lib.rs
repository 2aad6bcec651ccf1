//! A populator plugin template: type `greeting` writes a greeting for `name` to `<path>/<source
//! name>` on the target. `cargo build`, then `krops --plugin-dir target/debug`.

use krops_core::plugin::{PopulatorPlugin, Target};
use krops_core::wire::{PopulateRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Greeting;

/// What users write: `source.motd.greeting = { name = "world"; }`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    name: String,
}

impl PopulatorPlugin for Greeting {
    const TYPE: &'static str = "greeting";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        if request.attrs.name.is_empty() {
            return Err("greeting: name must not be empty".into());
        }
        Ok(request.attrs)
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let text = format!("hello, {}\n", request.attrs.name);
        target.write_file(&request.destination(), 0o644, text.as_bytes())?;
        Ok(serde_json::json!({ "bytes": text.len() }))
    }
}

krops_core::export_populator!(Greeting);

#[cfg(test)]
mod tests {
    use super::*;
    use krops_core::testing::FakeTarget;

    #[test]
    fn writes_the_greeting() {
        let target = FakeTarget::new("/var/src");
        let request = PopulateRequest {
            name: "motd".into(),
            attrs: Attrs { name: "world".into() },
            target_path: "/var/src".into(),
        };
        target.with(|t| Greeting.populate(t, request)).unwrap();
        let call = &target.calls()[0];
        assert_eq!((call.capability.as_str(), call.input.as_slice()), ("write_file", &b"hello, world\n"[..]));
    }
}
