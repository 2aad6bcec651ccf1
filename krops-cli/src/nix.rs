//! Configuration in Nix: evaluates a `.nix` file with the user's own nix, through krops's Nix
//! library (`nix/` in this repository, embedded here), into the same JSON document a
//! `krops.json` holds. While evaluating, the library is on the search path as `<krops>`.

use std::path::Path;

use crate::exec::{self, Argv, Input, Output};

/// The library files, as `(path below the library root, contents)`.
const LIBRARY: [(&str, &str); 3] = [
    ("lib/default.nix", include_str!("../../nix/lib/default.nix")),
    ("pkgs/default.nix", include_str!("../../nix/pkgs/default.nix")),
    ("eval.nix", include_str!("../../nix/eval.nix")),
];

/// Evaluates `file` and returns the configuration as JSON. The error is nix's own message.
pub fn evaluate(file: &Path) -> Result<String, String> {
    let library = tempfile::Builder::new()
        .prefix("krops-nix-")
        .tempdir()
        .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
    for (relative, contents) in LIBRARY {
        let path = library.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(library.path()))
            .and_then(|()| std::fs::write(&path, contents))
            .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
    }
    let argv = evaluation_argv(library.path(), file);
    let stdout = exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| match e {
        exec::ExecError::Failed { stderr, .. } => format!("nix evaluation failed:\n{}", stderr.trim_end()),
        exec::ExecError::Spawn { .. } => format!("{e} (configuration files in Nix need nix installed)"),
        other => other.to_string(),
    })?;
    let out = String::from_utf8_lossy(&stdout).lines().last().unwrap_or_default().trim().to_owned();
    std::fs::read_to_string(&out).map_err(|e| format!("cannot read the evaluated configuration {out}: {e}"))
}

/// `nix-build` of the library's `eval.nix` for `file`; paths travel as `--argstr`, so any
/// character in them is fine.
fn evaluation_argv(library: &Path, file: &Path) -> Argv {
    let mut argv: Vec<String> = vec!["nix-build".into(), "--no-out-link".into()];
    argv.extend(["-I".into(), format!("krops={}", library.display())]);
    argv.extend(["-E".into(), "{ eval, file }: import (/. + eval) { file = /. + file; }".into()]);
    argv.extend(["--argstr".into(), "eval".into(), library.join("eval.nix").display().to_string()]);
    argv.extend(["--argstr".into(), "file".into(), file.display().to_string()]);
    Argv(argv)
}
