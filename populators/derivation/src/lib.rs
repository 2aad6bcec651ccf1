//! The `derivation` source type: a Nix expression built *on the target*
//! (`nix-build -E <text> -o <path>/<name>`), so `<path>/<name>` is a link to its output.

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::wire::{Change, Diff, PopulateRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Derivation;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    text: String,
}

impl PopulatorPlugin for Derivation {
    const TYPE: &'static str = "derivation";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits =
        TypeTraits { shorthand: Some("text"), program: Some("nix-build"), ..TypeTraits::NONE };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        if request.attrs.text.trim().is_empty() {
            return Err("derivation text must be a Nix expression".to_owned());
        }
        Ok(request.attrs)
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        // nix-build prints the output path; its errors (on stderr) become ours. The expression
        // goes in parentheses (on lines of their own, so a trailing comment cannot swallow the
        // closing one): nix-build must never read it as an option, whatever it begins with.
        // An out-link replaces an earlier out-link by itself; anything else at the path (a
        // symlink elsewhere, which nix-build refuses to replace, a file, a directory) makes way.
        let script = include_str!("sh/populate_script.sh");
        let expression = format!("(\n{}\n)", request.attrs.text);
        let output = target.run_script(script, &[&request.destination(), &expression], b"")?;
        let store_path = String::from_utf8_lossy(&output).lines().last().unwrap_or_default().to_owned();
        Ok(serde_json::json!({ "output": store_path }))
    }

    /// The output path the expression evaluates to on the target (`nix-instantiate --eval`
    /// computes it without building or writing to the store) against the out-link there.
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let script = include_str!("sh/diff_script.sh");
        let expression = format!("(\n{}\n).outPath", request.attrs.text);
        let answer = target.run_script(script, &[&request.destination(), &expression], b"")?;
        let answer = String::from_utf8_lossy(&answer);
        let mut lines = answer.lines();
        let there = lines.next().unwrap_or_default();
        let wanted: String = serde_json::from_str(lines.next().unwrap_or_default())
            .map_err(|_| "nix-instantiate did not print an output path".to_owned())?;
        let from = match there {
            "absent" => None,
            "other" => Some("not an out-link".to_owned()),
            link => match link.strip_prefix("link ") {
                Some(old) if old == wanted => return Ok(Diff::default()),
                Some(old) => Some(old.to_owned()),
                None => Some(link.to_owned()),
            },
        };
        Ok(Diff { changes: vec![Change::whole("output", from, Some(wanted))] })
    }
}

krops_core::export_populator!(Derivation);
