//! What a run reports while it happens. The pipeline only emits [`Event`]s; rendering them
//! (plain lines, a progress display, JSON) is the front end's business.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

/// The stages of SPEC, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reaching a remote target: its ssh master connects and authenticates.
    Connect,
    /// Before any target is touched: plugins resolve what may fail (git refs).
    Prepare,
    /// Taking the target's lock (another run, or another process, may hold it).
    Lock,
    Sentinel,
    Backup,
    Populate,
    /// `deploy`: nixos-rebuild.
    Activate,
    /// `build`: nix-build of the system.
    Build,
    /// `run`: the deployment's command.
    Run,
    /// `exec`: a command on the target, nothing populated.
    Exec,
    /// `deploy --reboot`: the target reboots into the new system and comes back.
    Reboot,
    /// After a `switch` or `test` activation (or a reboot): the deployment's `healthChecks`.
    HealthCheck,
    /// With `confirmTimeout`: confirming the new system over a new connection.
    Confirm,
    /// `krops status`: reading the record and the sources' states.
    Status,
    /// `krops diff`: asking each source what populate would change.
    Diff,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Prepare => "prepare",
            Stage::Lock => "lock",
            Stage::Sentinel => "sentinel",
            Stage::Backup => "backup",
            Stage::Populate => "populate",
            Stage::Activate => "activate",
            Stage::Build => "build",
            Stage::Run => "run",
            Stage::Exec => "exec",
            Stage::Reboot => "reboot",
            Stage::HealthCheck => "health check",
            Stage::Confirm => "confirm",
            Stage::Status => "status",
            Stage::Diff => "diff",
        })
    }
}

/// Why a deployment failed: where (host, stage, source), which program, and the message,
/// which includes the failed child's stderr unless that was already shown line by line.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
pub struct DeployError {
    /// `None` for a local target.
    pub host: Option<String>,
    pub stage: Stage,
    #[serde(rename = "source")]
    pub source_name: Option<String>,
    /// The program that failed (`nixos-rebuild`, `nix-build`, `rsync`, `git`, the user's
    /// command…), when one did.
    pub program: Option<String>,
    /// The one line that says why: the first `error:` line of the message, else its last line.
    pub headline: String,
    pub message: String,
    /// The exit status of the program, when it ran and failed (`run` exits with it).
    #[serde(skip)]
    pub exit_status: Option<i32>,
    /// The program's output when it was shown line by line as it came (and so is not part of
    /// `message`): for `-q`, which showed nothing, and for `--json`'s `detail`.
    #[serde(skip)]
    pub output: Option<String>,
    /// What `rollback = true` or the confirm watchdog did about it: `rolled back`, or why not.
    pub rollback: Option<String>,
    /// What to do about it, when the cause is a common one (see `hints.rs`).
    pub hint: Option<String>,
}

impl DeployError {
    pub fn new(
        host: Option<String>,
        stage: Stage,
        source_name: Option<String>,
        program: Option<String>,
        message: String,
    ) -> DeployError {
        let headline = headline(&message);
        DeployError {
            host,
            stage,
            source_name,
            program,
            headline,
            message,
            exit_status: None,
            output: None,
            rollback: None,
            hint: None,
        }
    }

    /// Where it failed, without the message: `activate on web1`.
    pub fn place(&self) -> String {
        let mut place = self.stage.to_string();
        if let Some(source) = &self.source_name {
            place.push_str(&format!(" of source {source:?}"));
        }
        if let Some(host) = &self.host {
            place.push_str(&format!(" on {host}"));
        }
        place
    }

    /// One line for summaries: `activate on web1 failed: nixos-rebuild: error: …`.
    pub fn summary(&self) -> String {
        let summary = match &self.program {
            Some(program) if !self.headline.starts_with(program.as_str()) => {
                format!("{} failed: {program}: {}", self.place(), self.headline)
            }
            _ => format!("{} failed: {}", self.place(), self.headline),
        };
        match &self.rollback {
            Some(rollback) => format!("{summary}; {rollback}"),
            None => summary,
        }
    }
}

impl std::fmt::Display for DeployError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.place(), self.message)?;
        if self.output.is_some() {
            write!(f, "; its output is above")?;
        }
        Ok(())
    }
}

/// The first line holding `error:` (nix's and most tools' way of saying why), else the last
/// non-empty line, else the first.
pub fn headline(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .find(|l| l.starts_with("error:") || l.contains(" error: ") || l.starts_with("fatal:"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// Severity of a [`Event::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub fn from_abi(level: u8) -> Level {
        match level {
            0 | 1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    StageStarted {
        deployment: String,
        host: Option<String>,
        stage: Stage,
    },
    StageFinished {
        deployment: String,
        host: Option<String>,
        stage: Stage,
        millis: u128,
    },
    SourcePopulated {
        deployment: String,
        host: Option<String>,
        source: String,
        source_type: String,
        millis: u128,
        report: serde_json::Value,
    },
    /// A line the activation (or `run`'s or `exec`'s command) printed, in `stage`.
    Output {
        deployment: String,
        host: Option<String>,
        stage: Stage,
        line: String,
    },
    Log {
        deployment: String,
        host: Option<String>,
        level: Level,
        message: String,
    },
    DeploymentFinished {
        deployment: String,
        millis: u128,
        error: Option<DeployError>,
    },
    /// `krops status`: the target's deploy record (its lines but the sources') and each
    /// configured source's verdict: as recorded, drifted, missing, not recorded.
    Status {
        deployment: String,
        host: Option<String>,
        deployed: bool,
        record: Vec<String>,
        sources: Vec<SourceStatus>,
    },
    /// `krops diff`: what populating `source` would change; `changes: None` when its plugin
    /// cannot tell.
    Diff {
        deployment: String,
        host: Option<String>,
        source: String,
        source_type: String,
        changes: Option<Vec<krops_core::wire::Change>>,
    },
    /// A confirm watchdog is armed on `host`: unless krops confirms by `fires_at` (RFC 3339),
    /// the target rolls itself back.
    WatchdogArmed {
        deployment: String,
        host: Option<String>,
        fires_at: String,
    },
    /// An ssh connection to `host` is being set up (`done: false`) or is up or failed (`done:
    /// true`). In between, ssh may ask the user something on the terminal.
    Connecting {
        deployment: String,
        host: String,
        done: bool,
    },
}

impl Event {
    /// The deployment the event is about (every event is about one).
    pub fn deployment(&self) -> &str {
        match self {
            Event::StageStarted { deployment, .. }
            | Event::StageFinished { deployment, .. }
            | Event::SourcePopulated { deployment, .. }
            | Event::Output { deployment, .. }
            | Event::Log { deployment, .. }
            | Event::DeploymentFinished { deployment, .. }
            | Event::Status { deployment, .. }
            | Event::Diff { deployment, .. }
            | Event::WatchdogArmed { deployment, .. }
            | Event::Connecting { deployment, .. } => deployment,
        }
    }
}

/// One configured source as `krops status` found it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    /// `as recorded`, `drifted` (changed on the target since), `missing`, `not recorded`.
    pub verdict: String,
    /// As recorded: the type, and the commit of a git source.
    pub source_type: Option<String>,
    pub commit: Option<String>,
}

/// Emits events on behalf of one deployment.
#[derive(Clone)]
pub struct Reporter {
    pub deployment: String,
    sender: UnboundedSender<Event>,
}

impl Reporter {
    pub fn new(deployment: String, sender: UnboundedSender<Event>) -> Self {
        Reporter { deployment, sender }
    }

    pub fn emit(&self, event: Event) {
        // The receiver only goes away when the front end is shutting down; nothing to tell.
        let _ = self.sender.send(event);
    }

    pub fn stage_started(&self, host: &Option<String>, stage: Stage) {
        self.emit(Event::StageStarted { deployment: self.deployment.clone(), host: host.clone(), stage });
    }

    pub fn stage_finished(&self, host: &Option<String>, stage: Stage, took: Duration) {
        self.emit(Event::StageFinished {
            deployment: self.deployment.clone(),
            host: host.clone(),
            stage,
            millis: took.as_millis(),
        });
    }

    pub fn log(&self, host: &Option<String>, level: Level, message: String) {
        self.emit(Event::Log { deployment: self.deployment.clone(), host: host.clone(), level, message });
    }

    pub fn output(&self, host: &Option<String>, stage: Stage, line: &str) {
        self.emit(Event::Output {
            deployment: self.deployment.clone(),
            host: host.clone(),
            stage,
            line: line.to_owned(),
        });
    }
}
