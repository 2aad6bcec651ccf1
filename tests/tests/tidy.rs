//! Project rules checked as tests, so CI has nothing extra to remember: every module says
//! what it is for, formatting is `cargo fmt`'s, and the architecture's invariants about
//! process spawning hold.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Every `.rs` file below the workspace's source directories.
fn sources() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![workspace()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && name != ".git" {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace()).unwrap_or(path).display().to_string()
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let undocumented: Vec<String> = sources()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap_or_default().starts_with("//!"))
        .map(|p| relative(&p))
        .collect();
    assert!(undocumented.is_empty(), "add a `//!` line saying what these are for: {undocumented:?}");
}

#[test]
fn formatting_is_cargo_fmt() {
    let output = Command::new("cargo")
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(workspace())
        .output()
        .expect("cargo fmt runs");
    assert!(
        output.status.success(),
        "run `cargo fmt --all` and commit the result:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Populators never spawn processes (they act through the target handle), and krops-core
/// starts processes in exec.rs only.
#[test]
fn processes_are_started_in_one_place() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|p| {
            let path = relative(p);
            (path.starts_with("populators/")
                || path.starts_with("krops-core/")
                || path.starts_with("krops-cli/"))
                && path != "krops-core/src/exec.rs"
        })
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            code.contains("Command::new") || code.contains("process::Command")
        })
        .map(|p| relative(&p))
        .collect();
    assert!(
        offenders.is_empty(),
        "start processes through krops_core::exec (or the target handle): {offenders:?}"
    );
}
