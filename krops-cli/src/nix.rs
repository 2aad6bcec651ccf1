//! Configuration in Nix: evaluates a `.nix` file with the user's own nix, through krops's Nix
//! library (`nix/` in this repository, embedded here), into the same JSON document a
//! `krops.json` holds. While evaluating, the library is on the search path as `<krops>`.

use std::path::Path;

use crate::exec::{self, Argv, Input, Output};

/// The library files, as `(path below the library root, contents)`.
const LIBRARY: [(&str, &str); 7] = [
    ("lib/default.nix", include_str!("../../nix/lib/default.nix")),
    ("lib/stand-ins.nix", include_str!("../../nix/lib/stand-ins.nix")),
    ("pkgs/default.nix", include_str!("../../nix/pkgs/default.nix")),
    ("pkgs/krops.nix", include_str!("../../nix/pkgs/krops.nix")),
    ("pkgs/writers.nix", include_str!("../../nix/pkgs/writers.nix")),
    ("eval.nix", include_str!("../../nix/eval.nix")),
    ("default.nix", "import ./lib\n"),
];

/// What the command line hands to a configuration in Nix.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--arg NAME EXPR`: Nix expressions for a configuration that is a function.
    pub args: Vec<(String, String)>,
    /// `--argstr NAME VALUE`: strings for it.
    pub argstrs: Vec<(String, String)>,
    /// `--show-trace`.
    pub show_trace: bool,
}

/// Evaluates `file` and returns the configuration as JSON. The error is nix's own message.
pub fn evaluate(file: &Path, options: &Options) -> Result<String, String> {
    let scratch = tempfile::Builder::new()
        .prefix("krops-nix-")
        .tempdir()
        .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
    // The library in a directory of a fixed name, so that `"${<krops>}/lib"` copies it into the
    // store under one path per library version, not one per run.
    let library = scratch.path().join("krops");
    let args = arguments_file(&options.args)?;
    let argstrs: serde_json::Map<String, serde_json::Value> =
        options.argstrs.iter().map(|(name, value)| (name.clone(), value.clone().into())).collect();
    let argstrs = serde_json::Value::Object(argstrs).to_string();
    let library_files = LIBRARY.into_iter().map(|(relative, contents)| (library.join(relative), contents));
    let generated = [
        (scratch.path().join("args.nix"), args.as_str()),
        (scratch.path().join("argstrs.json"), argstrs.as_str()),
    ];
    for (path, contents) in library_files.chain(generated) {
        std::fs::create_dir_all(path.parent().unwrap_or(scratch.path()))
            .and_then(|()| std::fs::write(&path, contents))
            .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
    }
    let argv = evaluation_argv(scratch.path(), file, options.show_trace);
    let stdout = exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| match e {
        exec::ExecError::Failed { stderr, .. } => format!("nix evaluation failed:\n{}", stderr.trim_end()),
        exec::ExecError::Spawn { .. } => format!("{e} (configuration files in Nix need nix installed)"),
        other => other.to_string(),
    })?;
    let out = String::from_utf8_lossy(&stdout).lines().last().unwrap_or_default().trim().to_owned();
    std::fs::read_to_string(&out).map_err(|e| format!("cannot read the evaluated configuration {out}: {e}"))
}

/// `{ "NAME" = (EXPR); … }` for the `--arg`s: the expressions are the user's Nix code, the
/// names are checked to be Nix identifiers.
fn arguments_file(args: &[(String, String)]) -> Result<String, String> {
    let mut text = String::from("{\n");
    for (name, expression) in args {
        let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c));
        if !identifier {
            return Err(format!("--arg {name:?}: not a Nix identifier"));
        }
        text.push_str(&format!("  {name} = (\n{expression}\n);\n"));
    }
    text.push_str("}\n");
    Ok(text)
}

/// `nix-build` of the library's `eval.nix` for `file`; paths travel as `--argstr`, so any
/// character in them is fine.
fn evaluation_argv(scratch: &Path, file: &Path, show_trace: bool) -> Argv {
    let mut argv: Vec<String> = vec!["nix-build".into(), "--no-out-link".into()];
    if show_trace {
        argv.push("--show-trace".into());
    }
    let library = scratch.join("krops");
    argv.extend(["-I".into(), format!("krops={}", library.display())]);
    argv.extend([
        "-E".into(),
        "{ eval, file, args, argstrs }: import (/. + eval) { file = /. + file; args = /. + args; argstrs = /. + argstrs; }"
            .into(),
    ]);
    let paths = [
        ("eval", library.join("eval.nix")),
        ("file", file.to_owned()),
        ("args", scratch.join("args.nix")),
        ("argstrs", scratch.join("argstrs.json")),
    ];
    for (name, path) in paths {
        argv.extend(["--argstr".into(), name.into(), path.display().to_string()]);
    }
    Argv::new(argv)
}
