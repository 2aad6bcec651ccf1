//! Configuration in Nix: evaluates a `.nix` file with the user's own nix, through krops's Nix
//! library (`nix/` in this repository, embedded here), into the same JSON document a
//! `krops.json` holds. While evaluating, the library is on the search path as `<krops>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::exec::{self, Argv, Input, Output};

/// The library files, as `(path below the library root, contents)`.
const LIBRARY: [(&str, &str); 8] = [
    ("lib/default.nix", include_str!("../../nix/lib/default.nix")),
    ("lib/stand-ins.nix", include_str!("../../nix/lib/stand-ins.nix")),
    ("pkgs/default.nix", include_str!("../../nix/pkgs/default.nix")),
    ("pkgs/krops.nix", include_str!("../../nix/pkgs/krops.nix")),
    ("pkgs/writers.nix", include_str!("../../nix/pkgs/writers.nix")),
    ("eval.nix", include_str!("../../nix/eval.nix")),
    ("identity.nix", include_str!("../../nix/identity.nix")),
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
/// name, only the attributes they name; otherwise (or when one of them names no attribute, or
/// a group whose members live elsewhere) every attribute that holds deployments. An attribute
/// that fails to evaluate is left out and remembered in [`Evaluated::failed`]. The error is
/// nix's own message.
pub fn evaluate(file: &Path, options: &Options, names: &[String]) -> Result<Evaluated, String> {
    let evaluator = Evaluator::new(file, options)?;
    // Tags, globs and expressions (`@eu&!web-*`) need every deployment.
    let plain = |name: &String| !name.contains(['@', '*', '?', '[', ']', ',', '&', '!']);
    if !names.is_empty() && names.iter().all(plain) {
        // The named attributes in one evaluation, when they evaluate.
        if let Ok(answer) = evaluator.run(&json!({ "select": names })) {
            let found = Found::from(answer)?;
            if let Some(name) = found.empty.first() {
                return Err(format!(
                    "attribute {name:?} holds no deployment (a writeDeploy, writeTest, writeCommand or populate result, or a list, set or script of them)"
                ));
            }
            if found.missing.is_empty() && found.self_contained() {
                return found.finish(BTreeMap::new());
            }
        }
        // Else each named attribute on its own, its failing parts told apart.
        let paths: Vec<Option<Vec<String>>> =
            serde_json::from_value(evaluator.run(&json!({ "resolve": names }))?["paths"].take())
                .map_err(|e| format!("krops's Nix library answered in an unexpected shape: {e}"))?;
        if paths.iter().all(Option::is_some) {
            let (mut found, mut failed) = (Found::default(), BTreeMap::new());
            for mut path in paths.into_iter().flatten() {
                evaluator.discover(&mut path, &mut found, &mut failed)?;
            }
            if found.self_contained() {
                return found.finish(failed);
            }
        }
    }
    let (mut found, mut failed) = (Found::default(), BTreeMap::new());
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
    /// Deployment name → its token (see identity.nix).
    tokens: BTreeMap<String, String>,
    /// Deployments found in lists, named LIST.WRITER.
    #[serde(rename = "fromLists")]
    from_lists: Vec<String>,
    groups: BTreeMap<String, Group>,
    failed: Vec<String>,
    missing: Vec<String>,
    empty: Vec<String>,
    duplicates: Vec<String>,
}

/// A name that selects several deployments: by their names (a list, a set), their tokens (a
/// script that runs them) and other groups' scripts' store paths.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Group {
    members: Vec<String>,
    tokens: Vec<String>,
    paths: Vec<String>,
    /// A script's store path, by which other groups' scripts run it.
    #[serde(rename = "script")]
    out_path: Option<String>,
}

impl Found {
    fn from(answer: Value) -> Result<Found, String> {
        serde_json::from_value(answer)
            .map_err(|e| format!("krops's Nix library answered in an unexpected shape: {e}"))
    }

    fn merge(&mut self, other: Found) {
        for (name, deployment) in other.deployments {
            if self.deployments.insert(name.clone(), deployment).is_some() {
                self.duplicates.push(name);
            }
        }
        self.tokens.extend(other.tokens);
        self.from_lists.extend(other.from_lists);
        self.groups.extend(other.groups);
        self.failed.extend(other.failed);
        self.duplicates.extend(other.duplicates);
    }

    /// Whether every group's members are among what was found: a list's deployments may be
    /// defined by a name of their own elsewhere, and a script's are known by tokens.
    fn self_contained(&self) -> bool {
        let tokens: BTreeSet<&String> = self.tokens.values().collect();
        let scripts: BTreeSet<&String> = self.groups.values().filter_map(|g| g.out_path.as_ref()).collect();
        self.from_lists.is_empty()
            && self.groups.values().all(|g| {
                g.tokens.iter().all(|t| tokens.contains(t)) && g.paths.iter().all(|p| scripts.contains(p))
            })
    }

    /// Groups resolved to deployment names. A deployment found in a list that is also found
    /// under a name of its own (`all = [ web db ];` beside `web` and `db`) counts once, by that
    /// name. A script that refers to a deployment that is no attribute of the file cannot be
    /// selected: it is failed, with the reason.
    fn finish(mut self, mut failed: BTreeMap<String, Option<String>>) -> Result<Evaluated, String> {
        if let Some(name) = self.duplicates.first() {
            return Err(format!(
                "two deployments are named {name:?}; give them distinct names or attribute paths"
            ));
        }
        let listed: BTreeSet<String> = self.from_lists.iter().cloned().collect();
        let with_token = |token: &str, from_lists: bool| -> Vec<String> {
            self.tokens
                .iter()
                .filter(|(name, t)| *t == token && listed.contains(*name) == from_lists)
                .map(|(name, _)| name.clone())
                .collect()
        };
        let mut renamed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &listed {
            let own = self.tokens.get(name).map(|t| with_token(t, false)).unwrap_or_default();
            if !own.is_empty() {
                renamed.insert(name.clone(), own);
            }
        }
        let scripts: BTreeMap<&String, &String> =
            self.groups.iter().filter_map(|(name, g)| g.out_path.as_ref().map(|p| (p, name))).collect();
        let mut groups = BTreeMap::new();
        for name in self.groups.keys() {
            match members(name, &self.groups, &scripts, &renamed, &with_token, &mut Vec::new()) {
                Ok(names) => {
                    let mut unique: Vec<String> = Vec::new();
                    for member in names {
                        if !renamed.contains_key(&member) && !unique.contains(&member) {
                            unique.push(member);
                        }
                    }
                    if !unique.is_empty() && !self.deployments.contains_key(name) {
                        groups.insert(name.clone(), unique);
                    }
                }
                Err(reason) => {
                    failed.insert(name.clone(), Some(reason));
                }
            }
        }
        for name in renamed.keys() {
            self.deployments.remove(name);
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

/// A group's deployments, in its order, through the groups its script or list runs.
fn members(
    name: &String,
    groups: &BTreeMap<String, Group>,
    scripts: &BTreeMap<&String, &String>,
    renamed: &BTreeMap<String, Vec<String>>,
    with_token: &dyn Fn(&str, bool) -> Vec<String>,
    visiting: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    if visiting.contains(name) {
        return Ok(Vec::new());
    }
    visiting.push(name.clone());
    let group = &groups[name];
    let mut names = Vec::new();
    for member in &group.members {
        names.extend(renamed.get(member).cloned().unwrap_or_else(|| vec![member.clone()]));
    }
    for token in &group.tokens {
        let own = with_token(token, false);
        let found = if own.is_empty() { with_token(token, true) } else { own };
        if found.is_empty() {
            return Err(format!(
                "the script {name:?} runs a deployment that is no attribute of the file; krops finds deployments by their attributes: give it one"
            ));
        }
        names.extend(found);
    }
    for path in &group.paths {
        if let Some(other) = scripts.get(path) {
            names.extend(members(other, groups, scripts, renamed, with_token, visiting)?);
        }
    }
    Ok(names)
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
    /// missing attribute, a type error, infinite recursion), the attributes of the set at
    /// `path` are evaluated in halves, and halves of those, down to the ones that fail alone:
    /// one broken attribute leaves the others, at a cost of a few evaluations per broken one.
    fn discover(
        &self,
        path: &mut Vec<String>,
        found: &mut Found,
        failed: &mut BTreeMap<String, Option<String>>,
    ) -> Result<(), String> {
        let message = match self.run(&json!({ "under": path })) {
            Ok(answer) => {
                found.merge(Found::from(answer)?);
                return Ok(());
            }
            Err(message) => message,
        };
        let children: Vec<String> = match self.run(&json!({ "children": path })) {
            Ok(mut answer) if path.len() < MAX_DEPTH => {
                serde_json::from_value(answer["children"].take()).unwrap_or_default()
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
        self.halves(path, &children, found, failed)?;
        // The set names the deployments below it, as when it evaluates whole.
        if !path.is_empty() {
            let prefix = format!("{}.", path.join("."));
            let members: Vec<String> =
                found.deployments.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
            if !members.is_empty() {
                found.groups.insert(path.join("."), Group { members, ..Group::default() });
            }
        }
        Ok(())
    }

    /// The attributes `names` of the set at `path`: together when they evaluate, else each
    /// half on its own.
    fn halves(
        &self,
        path: &mut Vec<String>,
        names: &[String],
        found: &mut Found,
        failed: &mut BTreeMap<String, Option<String>>,
    ) -> Result<(), String> {
        if let [name] = names {
            path.push(name.clone());
            let result = self.discover(path, found, failed);
            path.pop();
            return result;
        }
        if let Ok(answer) = self.run(&json!({ "under": path, "only": names })) {
            found.merge(Found::from(answer)?);
            return Ok(());
        }
        let (first, second) = names.split_at(names.len() / 2);
        self.halves(path, first, found, failed)?;
        self.halves(path, second, found, failed)
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
        "{ eval, configuration, args, argstrs, request }: import (/. + eval) { file = /. + configuration; args = /. + args; argstrs = /. + argstrs; request = /. + request; }"
            .into(),
    ]);
    let paths = [
        ("eval", library.join("eval.nix")),
        ("configuration", file.to_owned()),
        ("args", scratch.join("args.nix")),
        ("argstrs", scratch.join("argstrs.json")),
        ("request", scratch.join("request.json")),
    ];
    for (name, path) in paths {
        argv.extend(["--argstr".into(), name.into(), path.display().to_string()]);
    }
    Argv::new(argv)
}
