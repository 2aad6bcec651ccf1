//! Configuration in Nix: evaluates a `.nix` file with the user's own nix, through krops's Nix
//! library (`nix/` in this repository, embedded here), into the same JSON document a
//! `krops.json` holds. While evaluating, the library is on the search path as `<krops>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

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

/// What a configuration in Nix holds, as far as it was evaluated.
#[derive(Debug, Default)]
pub struct Evaluated {
    /// `{"deployments": {…}}`, as a `krops.json` holds them.
    pub document: String,
    /// Names that select several deployments: a list of deployments, a script that runs some
    /// (`writeScript "all" "${a}\n${b}"`), a set of them (`servers` for `servers.web`, …).
    pub groups: BTreeMap<String, Vec<String>>,
    /// Attributes left out because they failed to evaluate, with nix's message when it is
    /// known (see [`explain`]).
    pub failed: BTreeMap<String, Option<String>>,
}

/// Evaluates `file` as `nix-build FILE -A NAME` would: when every one of `names` is a plain
/// name, only the attributes they name; otherwise (or when one of them names no attribute)
/// every attribute that holds deployments, one that fails to evaluate left out and remembered
/// in [`Evaluated::failed`]. The error is nix's own message.
pub fn evaluate(file: &Path, options: &Options, names: &[String]) -> Result<Evaluated, String> {
    let evaluator = Evaluator::new(file, options)?;
    // Tags, globs and expressions (`@eu&!web-*`) need every deployment.
    let plain = |name: &String| !name.contains(['@', '*', '?', '[', ']', ',', '&', '!']);
    // The named attributes alone, when that works; when it does not (a name that is no
    // attribute path, an attribute that fails), the whole file, so that the failure is told
    // apart from its neighbours and explained as the selected attribute's.
    if !names.is_empty() && names.iter().all(plain) {
        if let Ok(answer) = evaluator.run(&json!({ "select": names })) {
            let found: Found = serde_json::from_value(answer)
                .map_err(|e| format!("krops's Nix library answered in an unexpected shape: {e}"))?;
            // A script's members are known by their writers' names only, and a list's may be
            // deployments of their own elsewhere: finding them takes the whole file.
            let by_writer = found.groups.values().any(|g| matches!(g, Group::Writers { .. }))
                || !found.from_lists.is_empty();
            if found.missing.is_empty() && !by_writer {
                return found.finish(BTreeMap::new());
            }
        }
    }
    let mut found = Found::default();
    let mut failed = BTreeMap::new();
    evaluator.discover(&mut Vec::new(), &mut found, &mut failed)?;
    found.finish(failed)
}

/// Why attribute `name` of `file` does not evaluate: nix's message when it is selected alone.
pub fn explain(file: &Path, options: &Options, name: &str) -> String {
    let attempt = Evaluator::new(file, options).and_then(|e| e.run(&json!({ "select": [name] })));
    match attempt {
        Err(message) => message,
        Ok(_) => format!("attribute {name:?} evaluates when selected alone"),
    }
}

/// One evaluation's answer (eval.nix's `document`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Found {
    deployments: serde_json::Map<String, Value>,
    /// Deployment name → the name its writer gave it.
    writers: BTreeMap<String, String>,
    /// Deployments found in lists, named LIST.WRITER.
    #[serde(rename = "fromLists")]
    from_lists: Vec<String>,
    groups: BTreeMap<String, Group>,
    failed: Vec<String>,
    missing: Vec<String>,
    duplicates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Group {
    /// Deployments by their names.
    Members { members: Vec<String> },
    /// Deployments by their writers' names (a script that runs them).
    Writers { writers: Vec<String> },
}

impl Found {
    fn merge(&mut self, other: Found) {
        for (name, deployment) in other.deployments {
            if self.deployments.insert(name.clone(), deployment).is_some() {
                self.duplicates.push(name);
            }
        }
        self.writers.extend(other.writers);
        self.from_lists.extend(other.from_lists);
        self.groups.extend(other.groups);
        self.failed.extend(other.failed);
        self.duplicates.extend(other.duplicates);
    }

    /// Groups resolved to deployment names. A deployment found in a list that is also found
    /// under a name of its own (`all = [ web db ];` beside `web` and `db`) counts once, by that
    /// name.
    fn finish(mut self, mut failed: BTreeMap<String, Option<String>>) -> Result<Evaluated, String> {
        if let Some(name) = self.duplicates.first() {
            return Err(format!(
                "two deployments are named {name:?}; give them distinct names or attribute paths"
            ));
        }
        let listed: BTreeSet<String> = self.from_lists.iter().cloned().collect();
        let named_by_writer = |writer: &str, deployments: &serde_json::Map<String, Value>| -> Vec<String> {
            self.writers
                .iter()
                .filter(|(name, w)| {
                    *w == writer && !listed.contains(*name) && deployments.contains_key(*name)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        let mut renamed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &listed {
            let writer = self.writers.get(name).cloned().unwrap_or_default();
            let own = named_by_writer(&writer, &self.deployments);
            if !own.is_empty() {
                self.deployments.remove(name);
                renamed.insert(name.clone(), own);
            }
        }
        let mut groups = BTreeMap::new();
        for (group, members) in &self.groups {
            let names: Vec<String> = match members {
                Group::Members { members } => members
                    .iter()
                    .flat_map(|m| renamed.get(m).cloned().unwrap_or_else(|| vec![m.clone()]))
                    .collect(),
                Group::Writers { writers } => writers
                    .iter()
                    .flat_map(|w| {
                        let own = named_by_writer(w, &self.deployments);
                        if own.is_empty() {
                            self.writers.iter().filter(|(_, x)| *x == w).map(|(n, _)| n.clone()).collect()
                        } else {
                            own
                        }
                    })
                    .collect(),
            };
            let mut unique: Vec<String> = Vec::new();
            for name in names {
                if self.deployments.contains_key(&name) && !unique.contains(&name) {
                    unique.push(name);
                }
            }
            if !unique.is_empty() && !self.deployments.contains_key(group) {
                groups.insert(group.clone(), unique);
            }
        }
        for name in self.failed {
            failed.entry(name).or_insert(None);
        }
        if self.deployments.is_empty() && failed.is_empty() {
            return Err("the file holds no deployment (writeDeploy, writeTest, writeCommand, populate), nor { deployments = { NAME = { ... }; }; }".to_owned());
        }
        let document = json!({ "deployments": self.deployments }).to_string();
        Ok(Evaluated { document, groups, failed })
    }
}

/// krops's Nix library and the command line's arguments in a scratch directory, for as many
/// evaluations of one file as it takes.
struct Evaluator {
    scratch: tempfile::TempDir,
    file: PathBuf,
    show_trace: bool,
}

impl Evaluator {
    fn new(file: &Path, options: &Options) -> Result<Evaluator, String> {
        let scratch = tempfile::Builder::new()
            .prefix("krops-nix-")
            .tempdir()
            .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
        // The library in a directory of a fixed name, so that `"${<krops>}/lib"` copies it into
        // the store under one path per library version, not one per run.
        let library = scratch.path().join("krops");
        let args = arguments_file(&options.args)?;
        let argstrs: serde_json::Map<String, Value> =
            options.argstrs.iter().map(|(name, value)| (name.clone(), value.clone().into())).collect();
        let argstrs = Value::Object(argstrs).to_string();
        let library_files =
            LIBRARY.into_iter().map(|(relative, contents)| (library.join(relative), contents));
        let generated = [
            (scratch.path().join("args.nix"), args.as_str()),
            (scratch.path().join("argstrs.json"), argstrs.as_str()),
        ];
        for (path, contents) in library_files.chain(generated) {
            std::fs::create_dir_all(path.parent().unwrap_or(scratch.path()))
                .and_then(|()| std::fs::write(&path, contents))
                .map_err(|e| format!("cannot write krops's Nix library: {e}"))?;
        }
        Ok(Evaluator { scratch, file: file.to_owned(), show_trace: options.show_trace })
    }

    /// eval.nix's answer to `request`; `Err` is nix's message.
    fn run(&self, request: &Value) -> Result<Value, String> {
        let request_file = self.scratch.path().join("request.json");
        std::fs::write(&request_file, request.to_string())
            .map_err(|e| format!("cannot write krops's Nix request: {e}"))?;
        let argv = evaluation_argv(self.scratch.path(), &self.file, self.show_trace);
        let stdout = exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| match e {
            exec::ExecError::Failed { stderr, .. } => {
                format!("nix evaluation failed:\n{}{}", stderr.trim_end(), hint(&stderr))
            }
            exec::ExecError::Spawn { .. } => format!("{e} (configuration files in Nix need nix installed)"),
            other => other.to_string(),
        })?;
        let out = String::from_utf8_lossy(&stdout).lines().last().unwrap_or_default().trim().to_owned();
        let text = std::fs::read_to_string(&out)
            .map_err(|e| format!("cannot read the evaluated configuration {out}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("the evaluated configuration {out} is no JSON: {e}"))
    }

    /// Every deployment at or below `path`. Where nix fails in a way `tryEval` cannot catch (a
    /// missing attribute, a type error, infinite recursion), each attribute of the set at
    /// `path` is evaluated on its own, so that one broken attribute leaves the others.
    fn discover(
        &self,
        path: &mut Vec<String>,
        found: &mut Found,
        failed: &mut BTreeMap<String, Option<String>>,
    ) -> Result<(), String> {
        let message = match self.run(&json!({ "under": path })) {
            Ok(answer) => {
                let answer: Found = serde_json::from_value(answer)
                    .map_err(|e| format!("krops's Nix library answered in an unexpected shape: {e}"))?;
                found.merge(answer);
                return Ok(());
            }
            Err(message) => message,
        };
        let children: Vec<String> = match self.run(&json!({ "children": path })) {
            Ok(answer) if path.len() < MAX_DEPTH => {
                serde_json::from_value(answer["children"].clone()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if children.is_empty() {
            if path.is_empty() {
                return Err(message);
            }
            failed.insert(path.join("."), Some(message));
            return Ok(());
        }
        for child in children {
            path.push(child);
            self.discover(path, found, failed)?;
            path.pop();
        }
        // The set names the deployments below it, as when it evaluates whole.
        if !path.is_empty() {
            let prefix = format!("{}.", path.join("."));
            let members: Vec<String> =
                found.deployments.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
            if !members.is_empty() {
                found.groups.insert(path.join("."), Group::Members { members });
            }
        }
        Ok(())
    }
}

/// How deep eval.nix looks for deployments.
const MAX_DEPTH: usize = 6;

/// What to do about the failures krops users meet most: `pkgs.coreutils` without nixpkgs.
fn hint(stderr: &str) -> &'static str {
    let nix_path = std::env::var("NIX_PATH").unwrap_or_default();
    let has_nixpkgs =
        nix_path.split(':').any(|e| e.starts_with("nixpkgs=") || Path::new(e).join("nixpkgs").exists());
    let missing = stderr.split_once("error: attribute '").and_then(|(_, rest)| rest.split_once("' missing"));
    match missing {
        Some((name, _)) if !has_nixpkgs && stderr.contains(&format!("pkgs.{name}")) => {
            "\nhint: there is no <nixpkgs> on the search path, so krops's pkgs has only writeText, writeScript, writeDash, writers, krops and populate; set NIX_PATH=nixpkgs=… for nixpkgs' packages"
        }
        _ => "",
    }
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
        "{ eval, file, args, argstrs, request }: import (/. + eval) { file = /. + file; args = /. + args; argstrs = /. + argstrs; request = /. + request; }"
            .into(),
    ]);
    let paths = [
        ("eval", library.join("eval.nix")),
        ("file", file.to_owned()),
        ("args", scratch.join("args.nix")),
        ("argstrs", scratch.join("argstrs.json")),
        ("request", scratch.join("request.json")),
    ];
    for (name, path) in paths {
        argv.extend(["--argstr".into(), name.into(), path.display().to_string()]);
    }
    Argv::new(argv)
}
