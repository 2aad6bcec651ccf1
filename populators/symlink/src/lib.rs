//! The `symlink` source type: a symbolic link at `<path>/<name>`, usually to another source.

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::Fingerprint;
use krops_core::wire::{Change, Diff, PopulateRequest, PrepareRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Symlink;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    /// The link's content, as given (typically relative, naming another source).
    target: String,
}

impl PopulatorPlugin for Symlink {
    const TYPE: &'static str = "symlink";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits =
        TypeTraits { shorthand: Some("target"), program: Some("ln"), ..TypeTraits::NONE };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        if request.attrs.target.is_empty() || request.attrs.target.contains('\0') {
            return Err("symlink target must be a non-empty path".to_owned());
        }
        Ok(request.attrs)
    }

    fn fingerprint(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Option<String>, String> {
        Ok(Some(Fingerprint::default().add(&request.attrs.target).finish()))
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        // A file or an old link (wherever it points) makes way for the link; a directory is
        // refused, as krops's `ln -sfT` refuses it. The new link is made beside the old one and
        // renamed over it (`-T`: never into a directory it points to), so the name never dangles.
        let script = include_str!("sh/populate_script.sh");
        target.run_script(script, &[&request.destination(), &request.attrs.target], b"")?;
        Ok(serde_json::json!({ "target": request.attrs.target }))
    }

    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let script = include_str!("sh/diff_script.sh");
        let destination = request.destination();
        let there = target.run_script(script, &[&destination], b"")?;
        let there = String::from_utf8_lossy(&there);
        let wanted = &request.attrs.target;
        let from = match there.trim_end_matches('\n') {
            "" => None,
            "directory" => {
                return Err(format!("{destination} is a directory; populate would refuse to replace it"))
            }
            "file" => Some("a file".to_owned()),
            link => match link.strip_prefix("link ") {
                Some(old) if old == wanted => return Ok(Diff::default()),
                Some(old) => Some(old.to_owned()),
                None => Some(link.to_owned()),
            },
        };
        Ok(Diff { changes: vec![Change::whole("symlink target", from, Some(wanted.clone()))] })
    }
}

krops_core::export_populator!(Symlink);
