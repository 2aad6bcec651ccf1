//! The configuration model of SPEC and its loaders. TOML and JSON are read with serde; every
//! check that needs a location (source names, type keys, shorthands, plugin validation,
//! targets) runs *inside* deserialisation, so the parser attaches file, line and column to it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use krops_core::wire::Traits;

use crate::target::{Target, TargetSpec};

/// The files `krops` looks for, in order, when `-f` is not given.
pub const DEFAULT_FILES: [&str; 3] = ["krops.toml", "krops.nix", "krops.json"];

/// A whole configuration file, normalised.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub file: PathBuf,
    pub deployments: BTreeMap<String, Deployment>,
    /// Names that select several deployments (a configuration in Nix's group scripts, lists
    /// and sets of deployments).
    #[serde(skip)]
    pub groups: BTreeMap<String, Vec<String>>,
}

/// One deployment: where its sources go and how it is activated.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub target: Target,
    pub build_target: Option<Target>,
    pub operation: String,
    pub backup: bool,
    pub force: bool,
    pub cross_deploy: bool,
    pub use_nix_output_monitor: NomMode,
    pub trace: bool,
    pub command: Option<String>,
    #[serde(rename = "allocateTTY")]
    pub allocate_tty: bool,
    /// Selects the deployment with `@TAG`.
    pub tags: Vec<String>,
    /// The one command this deployment serves (`writeDeploy`/`writeTest`/`writeCommand` in the
    /// original); `None` serves every command.
    pub kind: Option<Kind>,
    /// `SOURCE#ATTR`: deploy the flake populated at `<path>/SOURCE` instead of NIX_PATH.
    pub flake: Option<String>,
    /// Run after a `switch` or `test` activation; a failing one fails the deployment.
    pub health_checks: Vec<HealthCheck>,
    /// On a failed activation or health check, `nixos-rebuild switch --rollback`.
    pub rollback: bool,
    /// Seconds (0: off) within which krops must confirm the new system over a new connection,
    /// else a watchdog armed on the target before activation rolls it back.
    pub confirm_timeout: u64,
    pub source: BTreeMap<String, Source>,
}

/// One health check: a command on the target, or an HTTP GET from the deploying machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: Probe,
    /// Seconds one attempt may take.
    pub timeout: u64,
    /// Attempts after the first failed one, a second apart.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Probe {
    /// Run with `/bin/sh -c` on the target (under sudo when the target uses it); exit 0 passes.
    Command { command: String },
    /// Fetched from the deploying machine; passes when the response has `status`.
    Url { url: String, status: u16 },
}

impl HealthCheck {
    /// How the check is named in messages: its command or URL.
    pub fn label(&self) -> String {
        match &self.probe {
            Probe::Command { command } => format!("`{command}`"),
            Probe::Url { url, .. } => crate::redact::credentials(url).into_owned(),
        }
    }
}

/// A health check as written: exactly one of `command` and `url`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    command: Option<String>,
    url: Option<String>,
    status: Option<u16>,
    timeout: Option<u64>,
    retries: Option<u32>,
}

/// Seconds a health check attempt may take unless it says otherwise.
const HEALTH_CHECK_TIMEOUT: u64 = 10;

impl TryFrom<RawHealthCheck> for HealthCheck {
    type Error = String;
    fn try_from(raw: RawHealthCheck) -> Result<HealthCheck, String> {
        let probe = match (raw.command, raw.url) {
            (Some(command), None) => {
                if raw.status.is_some() {
                    return Err("healthChecks: `status` goes with `url`, not `command`".to_owned());
                }
                if command.trim().is_empty() {
                    return Err("healthChecks: `command` is empty".to_owned());
                }
                if command.contains('\0') {
                    return Err("healthChecks: `command` contains a NUL byte".to_owned());
                }
                Probe::Command { command }
            }
            (None, Some(url)) => {
                check_url(&url)?;
                let status = raw.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(format!("healthChecks: status {status} is no HTTP status (100 to 599)"));
                }
                Probe::Url { url, status }
            }
            _ => return Err("healthChecks: each check has exactly one of `command` and `url`".to_owned()),
        };
        let timeout = raw.timeout.unwrap_or(HEALTH_CHECK_TIMEOUT);
        if timeout == 0 || timeout > MAX_SECONDS {
            return Err(format!("healthChecks: `timeout` must be 1 to {MAX_SECONDS} seconds, not {timeout}"));
        }
        let retries = raw.retries.unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(format!("healthChecks: `retries` must be at most {MAX_RETRIES}, not {retries}"));
        }
        Ok(HealthCheck { probe, timeout, retries })
    }
}

/// The longest a health check attempt or a confirm watchdog may wait: a day.
const MAX_SECONDS: u64 = 86_400;
const MAX_RETRIES: u32 = 1_000;

/// A health check's URL: `http://HOST[:PORT]/…`, parsed as the client will (https would need a
/// TLS stack krops does not carry; a command on the target can use curl).
fn check_url(url: &str) -> Result<(), String> {
    let shown = crate::redact::credentials(url);
    let bad = |why: &str| format!("healthChecks: url {shown:?} {why}");
    if !url.starts_with("http://") {
        return Err(bad(
            "must start with http:// (for https, check with a command such as curl on the target)",
        ));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("names no host"));
    };
    // After the user information and an IPv6 address's brackets, a `:` starts the port.
    let host_and_port = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, rest)| rest);
    let port = host_and_port.rsplit_once(']').map_or(host_and_port, |(_, rest)| rest).rsplit_once(':');
    match port {
        Some((_, port)) if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..)) => {
            Err(bad("has no valid port (1 to 65535)"))
        }
        _ => Ok(()),
    }
}

fn confirm_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let seconds = u64::deserialize(d)?;
    if seconds > MAX_SECONDS {
        return Err(de::Error::custom(format!(
            "confirmTimeout must be at most {MAX_SECONDS} seconds, not {seconds}"
        )));
    }
    Ok(seconds)
}

fn health_checks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HealthCheck>, D::Error> {
    Vec::<RawHealthCheck>::deserialize(d)?
        .into_iter()
        .map(|raw| HealthCheck::try_from(raw).map_err(de::Error::custom))
        .collect()
}

/// What a deployment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Deploy,
    Build,
    Run,
    /// The original's `pkgs.populate`: sources only, for `krops populate` (and diff, status).
    Populate,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Build => "build",
            Kind::Run => "run",
            Kind::Populate => "populate",
        }
    }
}

/// One source: its type key and the attributes the type's plugin normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub source_type: String,
    pub attrs: Value,
    /// What the type's plugin says about its sources (the defaults when no plugin validated
    /// it: see [`ShapeOnly`]).
    pub traits: Traits,
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = serde_json::Map::new();
        map.insert(self.source_type.clone(), self.attrs.clone());
        map.serialize(s)
    }
}

/// krops's `useNixOutputMonitor` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NomMode {
    /// Use `nom` if the build host has it.
    #[default]
    Opportunistic,
    /// Use `nom`, assuming it is there.
    Optimistic,
    /// Use `nom` through `nix-shell -p nix-output-monitor`.
    Pessimistic,
    /// `true`: `nom` if present, else through nix-shell.
    Always,
    /// `false`: plain output.
    Never,
}

impl Serialize for NomMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NomMode::Opportunistic => s.serialize_str("opportunistic"),
            NomMode::Optimistic => s.serialize_str("optimistic"),
            NomMode::Pessimistic => s.serialize_str("pessimistic"),
            NomMode::Always => s.serialize_bool(true),
            NomMode::Never => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for NomMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "\"opportunistic\", \"optimistic\", \"pessimistic\", true or false";
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(NomMode::Always),
            Value::Bool(false) => Ok(NomMode::Never),
            Value::String(s) => match s.as_str() {
                "opportunistic" => Ok(NomMode::Opportunistic),
                "optimistic" => Ok(NomMode::Optimistic),
                "pessimistic" => Ok(NomMode::Pessimistic),
                other => Err(de::Error::custom(format!(
                    "useNixOutputMonitor: unknown mode {other:?}, expected {EXPECTED}"
                ))),
            },
            other => Err(de::Error::custom(format!("useNixOutputMonitor: expected {EXPECTED}, got {other}"))),
        }
    }
}

/// Checks and normalises a source's attributes: the plugin registry, seen from the config.
pub trait SourceValidator: Send + Sync {
    /// What the plugin providing `source_type` says about its sources; `None` when no usable
    /// plugin provides it (then `validate` says why, before the value's shape is judged).
    fn traits(&self, source_type: &str) -> Option<Traits>;

    /// `Err` is shown to the user after the file and line.
    fn validate(
        &self,
        name: &str,
        source_type: &str,
        attrs: Value,
        config_dir: &Path,
    ) -> Result<Value, String>;
}

/// Accepts every source as written: for reading a configuration's shape (names, kinds, tags)
/// before knowing which deployments will be validated.
pub struct ShapeOnly;

impl SourceValidator for ShapeOnly {
    /// Knows no type, so no shorthand is judged before a plugin can say what its type is.
    fn traits(&self, _: &str) -> Option<Traits> {
        None
    }

    fn validate(&self, _: &str, _: &str, attrs: Value, _: &Path) -> Result<Value, String> {
        Ok(attrs)
    }
}

/// A configuration error: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the syntax can tell.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The syntaxes SPEC allows, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Json,
    Nix,
}

impl Syntax {
    pub fn of(path: &Path) -> Option<Syntax> {
        match path.extension()?.to_str()? {
            "toml" => Some(Syntax::Toml),
            "json" => Some(Syntax::Json),
            "nix" => Some(Syntax::Nix),
            _ => None,
        }
    }
}

/// The default configuration file: the first of [`DEFAULT_FILES`] in `dir`, else in the
/// nearest directory above it that has one (as git finds its repository from a
/// subdirectory). Also the other default files beside it, which it wins over.
pub fn discover(dir: &Path) -> Option<(PathBuf, Vec<PathBuf>)> {
    dir.ancestors().find_map(|dir| {
        let mut present = DEFAULT_FILES.iter().map(|name| dir.join(name)).filter(|p| p.is_file());
        let first = present.next()?;
        Some((first, present.collect()))
    })
}

/// A configuration file's text, as read (TOML, JSON) or evaluated (Nix), with its absolute
/// path and syntax: parsed once to select deployments, then again to validate those.
pub struct Text {
    pub file: PathBuf,
    pub syntax: Syntax,
    pub text: String,
    /// Nix only: names that select several deployments.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Nix only: attributes left out because they failed to evaluate.
    pub failed: BTreeMap<String, Option<String>>,
}

impl Text {
    /// [`parse`]s the text, with the groups evaluation found.
    pub fn parse(
        &self,
        validator: Arc<dyn SourceValidator>,
        only: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<Config, ConfigError> {
        let mut config = parse(&self.file, self.syntax, &self.text, validator, only)?;
        config.groups = self.groups.clone();
        Ok(config)
    }
}

/// Reads and validates a configuration file, every deployment of it.
pub fn load(file: &Path, validator: Arc<dyn SourceValidator>) -> Result<Config, ConfigError> {
    let text = read(file, &crate::nix::Options::default(), &[])?;
    text.parse(validator, None)
}

/// Reads (or, for Nix, evaluates) a configuration file; of a file in Nix, only the attributes
/// `names` select (all when empty), as `nix-build -A` would.
pub fn read(file: &Path, nix: &crate::nix::Options, names: &[String]) -> Result<Text, ConfigError> {
    let error = |position, message: String| ConfigError { file: file.to_owned(), position, message };
    // Lexically normalised, as Nix does with paths: `a/../b.toml` names `b.toml` in messages
    // and resolves relative paths the same way in every syntax.
    let file = std::path::absolute(file)
        .map(|f| krops_core::sdk::normalise(&f))
        .map_err(|e| error(None, e.to_string()))?;
    let syntax = Syntax::of(&file).ok_or_else(|| {
        error(None, "unknown configuration syntax; use a .toml, .json or .nix file".to_owned())
    })?;
    let text = match syntax {
        Syntax::Nix => {
            let evaluated =
                crate::nix::evaluate(&file, nix, names).map_err(|message| error(None, message))?;
            let crate::nix::Evaluated { document, groups, mut failed } = evaluated;
            let document = without_misshapen(&file, document, &mut failed);
            return Ok(Text { file, syntax, text: document, groups, failed });
        }
        _ => {
            let bytes = std::fs::read(&file).map_err(|e| error(None, format!("cannot read: {e}")))?;
            String::from_utf8(bytes).map_err(|e| {
                let offset = e.utf8_error().valid_up_to();
                let valid = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
                error(Some(line_column(&valid, offset)), format!("not valid UTF-8 at byte {offset}"))
            })?
        }
    };
    Ok(Text { file, syntax, text, groups: BTreeMap::new(), failed: BTreeMap::new() })
}

/// A configuration in Nix without the deployments whose shape is wrong (a source without a
/// type key, an unknown attribute), which join the attributes that failed to evaluate: as in
/// Nix, a broken deployment stands in the way only when it is selected.
fn without_misshapen(file: &Path, document: String, failed: &mut BTreeMap<String, Option<String>>) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(&document) else { return document };
    let Some(deployments) = value.get_mut("deployments").and_then(Value::as_object_mut) else {
        return document;
    };
    let misshapen: Vec<(String, String)> = deployments
        .iter()
        .filter_map(|(name, deployment)| {
            let alone =
                serde_json::json!({ "deployments": { name.clone(): deployment.clone() } }).to_string();
            parse(file, Syntax::Nix, &alone, Arc::new(ShapeOnly), None)
                .err()
                .map(|e| (name.clone(), e.message))
        })
        .collect();
    if misshapen.is_empty() {
        return document;
    }
    for (name, message) in misshapen {
        deployments.remove(&name);
        failed.insert(name, Some(message));
    }
    value.to_string()
}

/// Parses a configuration's text; `file` names it in errors and anchors relative paths. The
/// sources of the deployments in `only` (all, when `None`) are validated by `validator`; the
/// others are parsed for their shape only, so that a file missing on this machine for one
/// deployment never stands in the way of another.
pub fn parse(
    file: &Path,
    syntax: Syntax,
    text: &str,
    validator: Arc<dyn SourceValidator>,
    only: Option<&std::collections::BTreeSet<String>>,
) -> Result<Config, ConfigError> {
    let error = |position, message: String| ConfigError { file: file.to_owned(), position, message };
    let config_dir = file.parent().unwrap_or(Path::new("/")).to_owned();
    let raw = with_context(validator, config_dir, only.cloned(), || match syntax {
        Syntax::Toml => toml::from_str::<RawConfig>(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            let position = e.span().map(|span| line_column(text, at_unknown_key(text, &message, span.start)));
            error(position, message)
        }),
        Syntax::Json => serde_json::from_str::<RawConfig>(text).map_err(|e| {
            let message = e.to_string();
            // serde_json appends " at line L column C"; we show the position up front instead.
            let message = match message.rfind(" at line ") {
                Some(i) if e.line() > 0 => message[..i].to_owned(),
                _ => message,
            };
            let position = (e.line() > 0).then(|| {
                let offset = offset_of(text, e.line(), e.column());
                line_column(text, at_unknown_key(text, &message, offset))
            });
            error(position, message)
        }),
        Syntax::Nix => {
            // The JSON comes from nix, not from the user: its positions would mislead.
            serde_json::from_str::<RawConfig>(text).map_err(|e| {
                let message = e.to_string();
                let message = match message.rfind(" at line ") {
                    Some(i) => message[..i].to_owned(),
                    None => message,
                };
                error(None, message)
            })
        }
    })?;
    Ok(Config { file: file.to_owned(), deployments: raw.deployments.0, groups: BTreeMap::new() })
}

/// A source's attributes are checked as a whole (by its plugin), so the parser places an
/// unknown attribute at the source's table; the key itself is the better place to show: its
/// nearest occurrence as a key (`NAME =`, `"NAME":`), from `offset` on, else before it.
fn at_unknown_key(text: &str, message: &str, offset: usize) -> usize {
    let in_a_source = message.starts_with("source ");
    let name =
        message.split_once("unknown field `").and_then(|(_, rest)| rest.split_once('`')).map(|(n, _)| n);
    let Some(name) = name.filter(|_| in_a_source) else {
        return offset;
    };
    if name.is_empty() {
        return offset;
    }
    let is_key = |at: usize| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].trim_start_matches('"').trim_start();
        before.is_none_or(|c| c.is_whitespace() || ".{,\"".contains(c))
            && (after.starts_with('=') || after.starts_with(':'))
    };
    let keys: Vec<usize> = text.match_indices(name).map(|(at, _)| at).filter(|at| is_key(*at)).collect();
    keys.iter().find(|at| **at >= offset).or(keys.last()).copied().unwrap_or(offset)
}

/// The byte offset of a 1-based line and column (in characters).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let rest = &text[start.min(text.len())..];
    start + rest.char_indices().nth(column.saturating_sub(1)).map_or(rest.len(), |(i, _)| i)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct ParseContext {
    validator: Arc<dyn SourceValidator>,
    config_dir: PathBuf,
    /// The deployments whose sources are validated (`None`: all).
    only: Option<std::collections::BTreeSet<String>>,
    /// The deployment being parsed.
    current: Option<String>,
}

thread_local! {
    // serde offers no way to hand state to nested Deserialize impls short of writing a
    // DeserializeSeed for every level; the context lives only for one `load` call.
    static CONTEXT: RefCell<Option<ParseContext>> = const { RefCell::new(None) };
}

fn with_context<T>(
    validator: Arc<dyn SourceValidator>,
    config_dir: PathBuf,
    only: Option<std::collections::BTreeSet<String>>,
    f: impl FnOnce() -> T,
) -> T {
    CONTEXT.with(|c| *c.borrow_mut() = Some(ParseContext { validator, config_dir, only, current: None }));
    let result = f();
    CONTEXT.with(|c| *c.borrow_mut() = None);
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    deployments: Deployments,
}

struct Deployments(BTreeMap<String, Deployment>);

impl<'de> Deserialize<'de> for Deployments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DeploymentsVisitor;
        impl<'de> Visitor<'de> for DeploymentsVisitor {
            type Value = Deployments;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of deployments")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Deployments, M::Error> {
                let mut deployments = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                        return Err(de::Error::custom(format!(
                            "deployment name {name:?} must be non-empty, without spaces or control characters"
                        )));
                    }
                    CONTEXT.with(|c| {
                        if let Some(c) = c.borrow_mut().as_mut() {
                            c.current = Some(name.clone());
                        }
                    });
                    let raw: RawDeployment = map.next_value()?;
                    if let Some(flake) = &raw.flake {
                        check_flake(flake, &raw.source.0).map_err(de::Error::custom)?;
                    }
                    if deployments.insert(name.clone(), raw.into()).is_some() {
                        return Err(de::Error::custom(format!("deployment {name:?} is defined twice")));
                    }
                }
                Ok(Deployments(deployments))
            }
        }
        d.deserialize_map(DeploymentsVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDeployment {
    target: TargetSpec,
    build_target: Option<TargetSpec>,
    #[serde(default, deserialize_with = "operation")]
    operation: Option<String>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    cross_deploy: bool,
    #[serde(default)]
    use_nix_output_monitor: NomMode,
    #[serde(default)]
    trace: bool,
    command: Option<String>,
    #[serde(default, rename = "allocateTTY")]
    allocate_tty: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    kind: Option<Kind>,
    flake: Option<String>,
    #[serde(default, deserialize_with = "health_checks")]
    health_checks: Vec<HealthCheck>,
    #[serde(default)]
    rollback: bool,
    #[serde(default, deserialize_with = "confirm_timeout")]
    confirm_timeout: u64,
    #[serde(default)]
    source: Sources,
}

impl From<RawDeployment> for Deployment {
    fn from(raw: RawDeployment) -> Deployment {
        let target = raw.target.0;
        // krops compares the build target with the target; the same host is no build host.
        let build_target = raw.build_target.map(|b| b.0).filter(|b| *b != target);
        Deployment {
            target,
            build_target,
            operation: raw.operation.unwrap_or_else(|| "switch".to_owned()),
            backup: raw.backup,
            force: raw.force,
            cross_deploy: raw.cross_deploy,
            use_nix_output_monitor: raw.use_nix_output_monitor,
            trace: raw.trace,
            command: raw.command,
            allocate_tty: raw.allocate_tty,
            tags: raw.tags,
            kind: raw.kind,
            flake: raw.flake,
            health_checks: raw.health_checks,
            rollback: raw.rollback,
            confirm_timeout: raw.confirm_timeout,
            source: raw.source.0,
        }
    }
}

/// nixos-rebuild actions are lowercase words joined by '-'; anything else (notably a leading
/// '-') would change nixos-rebuild's meaning.
pub fn check_operation(op: &str) -> Result<(), String> {
    if OPERATIONS.contains(&op) {
        Ok(())
    } else {
        Err(format!("operation {op:?} is not a nixos-rebuild action; use one of {}", OPERATIONS.join(", ")))
    }
}

/// `flake = "SOURCE#ATTR"` names one of the deployment's sources and an attribute.
fn check_flake(flake: &str, sources: &BTreeMap<String, Source>) -> Result<(), String> {
    match flake.split_once('#') {
        Some((source, attr))
            if sources.contains_key(source) && !attr.is_empty() && !attr.starts_with('-') =>
        {
            Ok(())
        }
        Some((source, _)) if !sources.contains_key(source) => {
            Err(format!("flake {flake:?}: {source:?} is not a source of this deployment"))
        }
        _ => Err(format!("flake {flake:?} must be SOURCE#ATTR, e.g. \"config#web\"")),
    }
}

/// nixos-rebuild's actions.
pub const OPERATIONS: [&str; 8] =
    ["switch", "boot", "test", "build", "dry-build", "dry-activate", "build-vm", "build-vm-with-bootloader"];

fn operation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let op = String::deserialize(d)?;
    check_operation(&op).map_err(de::Error::custom)?;
    Ok(Some(op))
}

#[derive(Default)]
struct Sources(BTreeMap<String, Source>);

/// Source names become `<path>/<name>` on the target. As in the original, a `/` in a name
/// (`"sources/nixpkgs"`) nests the source in directories below `<path>`, which krops makes;
/// every component is a plain name (not empty, not `.` or `..`), so nothing lands outside
/// `<path>`. Names krops uses itself are reserved in every component: the sentinel
/// `.populate` (which holds the backups), and every name starting with `.krops` or holding
/// `.krops-` (krops's own directory and the temporary entries made beside a source while it
/// is replaced, `NAME.krops-…`).
pub fn check_source_name(name: &str) -> Result<(), String> {
    if name.chars().any(char::is_control) {
        return Err(format!("source name {name:?} contains a control character"));
    }
    for component in name.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!(
                "source name {name:?}: every part between '/' must be a name (not empty, not '.' or '..')"
            ));
        }
        if component == ".populate" || component.starts_with(".krops") || component.contains(".krops-") {
            return Err(format!(
                "source name {name:?} is reserved: krops keeps .populate, .krops* and *.krops-* beside the sources"
            ));
        }
    }
    Ok(())
}

/// Where source `name` goes below `path`: the directory that holds it, and its name there.
pub fn placement(path: &str, name: &str) -> (String, String) {
    let path = path.trim_end_matches('/');
    match name.rsplit_once('/') {
        Some((parent, leaf)) => (format!("{path}/{parent}"), leaf.to_owned()),
        None => (if path.is_empty() { "/".to_owned() } else { path.to_owned() }, name.to_owned()),
    }
}

/// A source nested in another (`a` and `a/b`) would be overwritten by it: an error.
fn check_nesting(sources: &BTreeMap<String, Source>) -> Result<(), String> {
    for name in sources.keys() {
        let mut parent = name.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            if sources.contains_key(up) {
                return Err(format!(
                    "source {name:?} lies inside source {up:?}; one would overwrite the other"
                ));
            }
            parent = up;
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourcesVisitor;
        impl<'de> Visitor<'de> for SourcesVisitor {
            type Value = Sources;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of sources")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Sources, M::Error> {
                let mut sources = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    check_source_name(&name).map_err(de::Error::custom)?;
                    let source = map.next_value_seed(SourceSeed { name: &name })?;
                    if sources.insert(name.clone(), source).is_some() {
                        return Err(de::Error::custom(format!("source {name:?} is defined twice")));
                    }
                }
                check_nesting(&sources).map_err(de::Error::custom)?;
                Ok(Sources(sources))
            }
        }
        d.deserialize_map(SourcesVisitor)
    }
}

struct SourceSeed<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for SourceSeed<'_> {
    type Value = Source;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Source, D::Error> {
        let value = Value::deserialize(d)?;
        let (source_type, raw) = type_key(self.name, value).map_err(de::Error::custom)?;
        let (attrs, traits) = CONTEXT
            .with(|c| {
                let c = c.borrow();
                let c = c.as_ref().ok_or("configuration parsed outside config::load")?;
                let traits = c.validator.traits(&source_type);
                let attrs = match &traits {
                    Some(traits) => expand(&source_type, traits.shorthand.as_deref(), raw)?,
                    None => raw,
                };
                let traits = traits.unwrap_or_default();
                let selected = match (&c.only, &c.current) {
                    (Some(only), Some(current)) => only.contains(current),
                    _ => true,
                };
                if !selected {
                    return Ok((attrs, traits));
                }
                let attrs = c.validator.validate(self.name, &source_type, attrs, &c.config_dir)?;
                Ok((attrs, traits))
            })
            .map_err(|e: Box<str>| de::Error::custom(format!("source {:?}: {e}", self.name)))?;
        Ok(Source { source_type, attrs, traits })
    }
}

/// Picks the one type key of a source.
fn type_key(name: &str, value: Value) -> Result<(String, Value), String> {
    let Value::Object(mut map) = value else {
        return Err(format!("source {name:?} must be a table with one type key, such as file = \"./path\""));
    };
    // The original's evalSource says the type once more, as `type = "file"`: fine when it
    // names the type key beside it.
    if let Some(Value::String(stated)) = map.get("type").cloned() {
        if map.len() == 2 && map.contains_key(&stated) && stated != "type" {
            map.remove("type");
        } else if map.len() == 2 || !map.contains_key(&stated) {
            return Err(format!(
                "source {name:?} says type = {stated:?}, but its type key is not {stated:?}"
            ));
        }
    }
    let mut entries = map.into_iter();
    let (source_type, attrs) = match (entries.next(), entries.next()) {
        (Some(only), None) => only,
        (None, _) => {
            return Err(format!("source {name:?} has no type key (one per source, naming its plugin)"))
        }
        (Some((first, _)), Some((second, _))) => {
            let mut keys = vec![first, second];
            keys.extend(entries.map(|(k, _)| k));
            return Err(format!(
                "source {name:?} has {} type keys ({}); a source has exactly one",
                keys.len(),
                keys.join(", ")
            ));
        }
    };
    Ok((source_type, attrs))
}

/// Expands a short form (`TYPE = "VALUE"`, `shorthand` naming the attribute it stands for)
/// into its table; checks that the value is a table.
fn expand(source_type: &str, shorthand: Option<&str>, attrs: Value) -> Result<Value, Box<str>> {
    let attrs = match (attrs, shorthand) {
        (Value::Object(attrs), _) => Value::Object(attrs),
        (Value::String(s), Some(attr)) => serde_json::json!({ attr: s }),
        (other, Some(attr)) => {
            return Err(format!(
                "{source_type} must be a string (shorthand for {source_type}.{attr}) or a table, not {}",
                kind_of(&other)
            )
            .into())
        }
        (other, None) => {
            return Err(format!("{source_type} must be a table of attributes, not {}", kind_of(&other)).into())
        }
    };
    Ok(attrs)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AcceptAll;
    impl SourceValidator for AcceptAll {
        /// The built-in types' short forms, as their plugins declare them.
        fn traits(&self, t: &str) -> Option<Traits> {
            let shorthand = [
                ("file", "path"),
                ("derivation", "text"),
                ("pipe", "command"),
                ("symlink", "target"),
                ("passage", "dir"),
            ]
            .iter()
            .find(|(type_key, _)| *type_key == t)
            .map(|(_, attribute)| (*attribute).to_owned());
            (t != "unknown").then(|| Traits { shorthand, ..Traits::default() })
        }

        fn validate(&self, _: &str, t: &str, attrs: Value, _: &Path) -> Result<Value, String> {
            if t == "unknown" {
                Err("unknown source type unknown".into())
            } else {
                Ok(attrs)
            }
        }
    }

    fn load_text(name: &str, text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        load(&file, Arc::new(AcceptAll))
    }

    #[test]
    fn shorthands_expand() {
        let c = load_text(
            "k.toml",
            "[deployments.a]\ntarget = \"/tmp/x\"\n[deployments.a.source]\ncfg.file = \"./c.nix\"\nl.symlink = \"cfg\"\n",
        )
        .unwrap();
        let d = &c.deployments["a"];
        assert_eq!(d.source["cfg"].attrs, serde_json::json!({"path": "./c.nix"}));
        assert_eq!(d.source["l"].source_type, "symlink");
        assert_eq!(d.operation, "switch");
        assert_eq!(d.use_nix_output_monitor, NomMode::Opportunistic);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = load_text("k.toml", "[deployments.a]\ntarget = \"/tmp/x\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        assert!(e.message.contains("bogus"), "{e}");

        let e = load_text("k.json", "{\"deployments\": {\"a\": {\n \"target\": \"/x\",\n \"source\": {\"s\": {\"file\": \"a\", \"pipe\": \"b\"}}}}}")
            .unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        assert!(e.message.contains("2 type keys"), "{e}");

        let e =
            load_text("k.toml", "[deployments.a]\ntarget = \"/tmp/x\"\nsource.s.unknown = {}\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
    }

    #[test]
    fn nested_source_names_land_below_the_path() {
        assert_eq!(placement("/var/src", "a/b/c"), ("/var/src/a/b".to_owned(), "c".to_owned()));
        assert_eq!(placement("/var/src", "a"), ("/var/src".to_owned(), "a".to_owned()));
        assert_eq!(placement("/", "a"), ("/".to_owned(), "a".to_owned()));
        assert_eq!(placement("/", "a/b"), ("/a".to_owned(), "b".to_owned()));
    }

    #[test]
    fn bad_names_and_shapes() {
        for (text, needle) in [
            ("source.\"..\".file = \"x\"", "every part between '/' must be a name"),
            ("source.\"a/../b\".file = \"x\"", "every part between '/' must be a name"),
            ("source.\"/etc\".file = \"x\"", "every part between '/' must be a name"),
            ("source.\"a/\".file = \"x\"", "every part between '/' must be a name"),
            ("source.\"a/.populate\".file = \"x\"", "is reserved"),
            ("source.a.file = \"x\"\nsource.\"a/b\".file = \"x\"", "lies inside source \"a\""),
            ("source.s.file = 3", "must be a string (shorthand for file.path) or a table"),
            ("source.s.git = \"x\"", "must be a table"),
            ("source.s = {}", "no type key"),
            ("operation = \"--flake\"", "not a nixos-rebuild action"),
            ("useNixOutputMonitor = \"sometimes\"", "unknown mode"),
            ("backup = \"yes\"", "invalid type"),
        ] {
            let e =
                load_text("k.toml", &format!("[deployments.a]\ntarget = \"/tmp/x\"\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn invalid_utf8_is_named_by_file_line_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, b"[deployments.a]\ntarget = \"/tmp/\xff\"\n").unwrap();
        let e = load(&file, Arc::new(AcceptAll)).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2:16: not valid UTF-8 at byte 31", file.display()));
    }

    /// Pieces that real configurations are made of, so that random documents get past the
    /// first character and into the deeper checks (names, type keys, targets, shorthands).
    fn fragment() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("[deployments.a]\n".to_owned()),
            Just("[deployments.a.source]\n".to_owned()),
            Just("target = ".to_owned()),
            Just("source.".to_owned()),
            Just(".file = ".to_owned()),
            Just(".git = { url = ".to_owned()),
            Just("buildTarget = { host = ".to_owned()),
            Just("port = ".to_owned()),
            Just("\"".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("\n".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(", ".to_owned()),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// Whatever the bytes, parsing answers Ok or an error naming the file: never a panic.
        #[test]
        fn configuration_parsing_never_panics(
            pieces in proptest::collection::vec(fragment(), 0..24),
            json in proptest::bool::ANY,
        ) {
            let text = pieces.concat();
            let (syntax, name) = if json { (Syntax::Json, "/x/k.json") } else { (Syntax::Toml, "/x/k.toml") };
            if let Err(e) = parse(Path::new(name), syntax, &text, Arc::new(AcceptAll), None) {
                proptest::prop_assert!(e.to_string().starts_with(name));
            }
        }

        #[test]
        fn target_parsing_never_panics(input in "\\PC{0,40}|[-@:/\\[\\]0-9a-z.]{0,24}") {
            let origin = crate::target::Origin { user: "alice".into(), host: "deployer".into() };
            let _ = crate::target::Target::parse(&input, &origin);
        }
    }

    #[test]
    fn build_target_equal_to_target_is_dropped() {
        let c = load_text("k.json", r#"{"deployments":{"a":{"target":"root@h","buildTarget":"root@h"}}}"#)
            .unwrap();
        assert!(c.deployments["a"].build_target.is_none());
    }
}
