//! The `file` source type: rsync of a local file or directory (a directory's *contents*) to
//! `<path>/<name>`, with krops's flags and filter semantics.

use std::path::{Path, PathBuf};

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{resolve_path, Fingerprint};
use krops_core::wire::{
    Change, ChangeKind, Diff, PopulateRequest, PrepareRequest, RsyncRequest, ValidateRequest,
};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct File;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Attrs {
    path: PathBuf,
    /// Compare contents, not size and mtime; defaults to true for Nix store paths, whose
    /// mtimes are all the epoch.
    #[serde(default)]
    use_checksum: Option<bool>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    delete_excluded: Option<bool>,
    /// Deprecated: exclude patterns, applied before `filters`. Normalised into `filters`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclude: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Without a type, a filter excludes, as in the original.
    #[serde(rename = "type", default = "FilterKind::exclude")]
    kind: FilterKind,
    pattern: String,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FilterKind {
    Include,
    Exclude,
}

impl FilterKind {
    fn exclude() -> FilterKind {
        FilterKind::Exclude
    }
}

impl PopulatorPlugin for File {
    const TYPE: &'static str = "file";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits =
        TypeTraits { shorthand: Some("path"), program: Some("rsync"), ..TypeTraits::NONE };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let attrs = request.attrs;
        let path = resolve_path(&request.config_dir, &attrs.path.to_string_lossy());
        if std::fs::metadata(&path).is_err() {
            return Err(format!("file path {} does not exist", path.display()));
        }
        let mut filters: Vec<Filter> =
            attrs.exclude.into_iter().map(|pattern| Filter { kind: FilterKind::Exclude, pattern }).collect();
        filters.extend(attrs.filters);
        Ok(Attrs {
            use_checksum: Some(attrs.use_checksum.unwrap_or_else(|| path.starts_with("/nix/store"))),
            delete_excluded: Some(attrs.delete_excluded.unwrap_or(true)),
            path,
            filters,
            exclude: Vec::new(),
        })
    }

    /// The attributes and the tree as rsync compares it (names, kinds, sizes, mtimes, modes).
    /// With `useChecksum`, rsync compares contents, which a state of sizes and mtimes cannot
    /// stand in for: such a source is always populated.
    fn fingerprint(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Option<String>, String> {
        if request.attrs.use_checksum == Some(true) {
            return Ok(None);
        }
        let attrs = serde_json::to_string(&request.attrs).map_err(|e| e.to_string())?;
        Ok(Some(Fingerprint::default().add(attrs).add_tree(&request.attrs.path)?.finish()))
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let attrs = &request.attrs;
        let destination = request.destination();
        let kind = if attrs.path.is_dir() { "-d" } else { "-f" };
        target.run_script(CLEAR_THE_WAY, &[&destination, kind], b"")?;
        let report = target.rsync(&RsyncRequest {
            source: rsync_source(&attrs.path),
            destination,
            options: rsync_options(attrs),
        })?;
        let changes = report.itemized.iter().filter(|line| is_change(line)).count();
        Ok(serde_json::json!({ "changes": changes }))
    }

    /// rsync's own answer, from a `--dry-run` with populate's options; what would make way
    /// first (see [`CLEAR_THE_WAY`]) is reported instead, as rsync would look through it.
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let attrs = &request.attrs;
        let destination = request.destination();
        let (kind, becomes) = if attrs.path.is_dir() { ("-d", "a directory") } else { ("-f", "a file") };
        let standing = target.run_script(WHAT_MAKES_WAY, &[&destination, kind], b"")?;
        let standing = String::from_utf8_lossy(&standing).trim().to_owned();
        if !standing.is_empty() {
            return Ok(Diff {
                changes: vec![Change::whole("replaced", Some(standing), Some(becomes.into()))],
            });
        }
        let mut options = rsync_options(attrs);
        options.push("--dry-run".to_owned());
        let report =
            target.rsync(&RsyncRequest { source: rsync_source(&attrs.path), destination, options })?;
        let single_file = !attrs.path.is_dir();
        let changes = report
            .itemized
            .iter()
            .filter_map(|line| itemized_change(line))
            .map(|change| if single_file { Change { path: String::new(), ..change } } else { change })
            .collect();
        Ok(Diff { changes })
    }
}

/// What [`CLEAR_THE_WAY`] would remove, said in words (nothing: rsync writes into it).
const WHAT_MAKES_WAY: &str = include_str!("sh/what_makes_way.sh");

/// One line of `rsync --itemize-changes` as a change: a creation is an addition, `*deleting`
/// a deletion, a transfer or changed attribute of anything but a directory a change. A
/// directory whose times or modes alone change is no change worth telling.
fn itemized_change(line: &str) -> Option<Change> {
    if let Some(path) = line.strip_prefix("*deleting") {
        return Some(Change::new(ChangeKind::Deleted, unescape(path.trim().trim_end_matches('/'))));
    }
    let bytes = line.as_bytes();
    if bytes.len() < 13 || bytes[11] != b' ' || !b"<>ch.".contains(&bytes[0]) {
        return None;
    }
    let mut path = &line[12..];
    if bytes[1] == b'L' {
        path = path.split_once(" -> ").map_or(path, |(name, _)| name);
    }
    let path = path.trim_end_matches('/');
    if path == "." || path.is_empty() {
        return None;
    }
    let flags = &bytes[2..11];
    let kind = if flags.iter().all(|c| *c == b'+') {
        ChangeKind::Added
    } else if bytes[1] == b'd' || (bytes[0] == b'.' && flags.iter().all(|c| *c == b'.' || *c == b' ')) {
        return None;
    } else {
        ChangeKind::Changed
    };
    Some(Change::new(kind, unescape(path)))
}

/// A name as rsync prints it, with the bytes it escapes (`\#012` for a newline, in octal)
/// restored.
fn unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 2..i + 5).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], bytes.get(i + 1), octal) {
            (b'\\', Some(b'#'), Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 5;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rsync writes *into* whatever stands at the destination: through a symlink (deleting, with
/// `--delete-excluded`, what the link's target holds), or a file into a directory standing there.
/// So anything that is not already what the source makes (`$2`: `-d` a directory, `-f` a file)
/// makes way first; a symlink always does, and is removed, not followed.
const CLEAR_THE_WAY: &str =
    r#"if [ -L "$1" ] || { [ -e "$1" ] && ! test "$2" "$1"; }; then rm -rf -- "$1"; fi"#;

/// A directory's contents go to the destination, as krops does with a trailing slash.
fn rsync_source(path: &Path) -> PathBuf {
    if path.is_dir() {
        let mut with_slash = path.as_os_str().to_owned();
        with_slash.push("/");
        PathBuf::from(with_slash)
    } else {
        path.to_owned()
    }
}

/// krops's rsync flags, in krops's order, plus `--itemize-changes` for the report.
fn rsync_options(attrs: &Attrs) -> Vec<String> {
    let mut options = Vec::new();
    if attrs.use_checksum == Some(true) {
        options.push("--checksum".to_owned());
    }
    for filter in &attrs.filters {
        let kind = match filter.kind {
            FilterKind::Include => "include",
            FilterKind::Exclude => "exclude",
        };
        options.push(format!("--{kind}={}", filter.pattern));
    }
    options.extend(["-vFrlptD".to_owned(), "--itemize-changes".to_owned()]);
    if attrs.delete_excluded != Some(false) {
        options.push("--delete-excluded".to_owned());
    }
    options
}

/// Lines of `rsync -i` output that stand for a change: `YXcstpoguax name` with a transfer
/// (`<`, `>`), a creation (`c`), a hard link (`h`) or a changed attribute, or a deletion.
fn is_change(line: &str) -> bool {
    let bytes = line.as_bytes();
    if line.starts_with("*deleting") {
        return true;
    }
    if bytes.len() < 12 || bytes[11] != b' ' || !b"<>ch.".contains(&bytes[0]) {
        return false;
    }
    bytes[0] != b'.' || bytes[2..11].iter().any(|c| *c != b'.' && *c != b' ')
}

krops_core::export_populator!(File);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_krops_order() {
        let attrs = Attrs {
            path: "/x".into(),
            use_checksum: Some(true),
            filters: vec![
                Filter { kind: FilterKind::Exclude, pattern: "/old".into() },
                Filter { kind: FilterKind::Include, pattern: "*.nix".into() },
            ],
            delete_excluded: Some(true),
            exclude: vec![],
        };
        assert_eq!(
            rsync_options(&attrs),
            [
                "--checksum",
                "--exclude=/old",
                "--include=*.nix",
                "-vFrlptD",
                "--itemize-changes",
                "--delete-excluded"
            ]
        );
    }

    #[test]
    fn itemized_lines_as_changes() {
        let change = |line| itemized_change(line).map(|c| (c.change, c.path));
        assert_eq!(change(">f+++++++++ dir/new.nix"), Some((ChangeKind::Added, "dir/new.nix".into())));
        assert_eq!(change("cd+++++++++ dir/"), Some((ChangeKind::Added, "dir".into())));
        assert_eq!(change("cL+++++++++ link -> elsewhere"), Some((ChangeKind::Added, "link".into())));
        assert_eq!(change(">f.st...... a b.nix"), Some((ChangeKind::Changed, "a b.nix".into())));
        assert_eq!(change(".f...p..... mode"), Some((ChangeKind::Changed, "mode".into())));
        assert_eq!(change("*deleting   old/"), Some((ChangeKind::Deleted, "old".into())));
        assert_eq!(change(".d..t...... ./"), None);
        assert_eq!(change(".d..t...... sub/"), None);
        assert_eq!(change(".f          same"), None);
        assert_eq!(change("sending incremental file list"), None);
        assert_eq!(change(">f+++++++++ new\\#012line"), Some((ChangeKind::Added, "new\nline".into())));
        assert_eq!(change("*deleting   tab\\#011x"), Some((ChangeKind::Deleted, "tab\tx".into())));
    }

    #[test]
    fn itemized_changes() {
        assert!(is_change(">f+++++++++ a"));
        assert!(is_change("cd+++++++++ dir/"));
        assert!(is_change("*deleting   old"));
        assert!(is_change(".f..t...... touched"));
        assert!(!is_change(".d          ./"));
        assert!(!is_change("sending incremental file list"));
        assert!(!is_change("sent 100 bytes  received 35 bytes  270.00 bytes/sec"));
    }
}
