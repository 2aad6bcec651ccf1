//! What a run reports while it happens. The pipeline only emits [`Event`]s; rendering them
//! (plain lines, a progress display, JSON) is the front end's business.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

/// The stages of SPEC, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Before any target is touched: plugins resolve what may fail (git refs).
    Prepare,
    Sentinel,
    Backup,
    Populate,
    Activate,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Prepare => "prepare",
            Stage::Sentinel => "sentinel",
            Stage::Backup => "backup",
            Stage::Populate => "populate",
            Stage::Activate => "activate",
        })
    }
}

/// Why a deployment failed: where (host, stage, source) and the underlying message, which
/// includes the failed child's stderr.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
pub struct DeployError {
    /// `None` for a local target.
    pub host: Option<String>,
    pub stage: Stage,
    #[serde(rename = "source")]
    pub source_name: Option<String>,
    pub message: String,
}

impl std::fmt::Display for DeployError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.stage)?;
        if let Some(source) = &self.source_name {
            write!(f, " of source {source:?}")?;
        }
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        write!(f, " failed: {}", self.message)
    }
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
    /// A line the activation command printed.
    Output {
        deployment: String,
        host: Option<String>,
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

    pub fn output(&self, host: &Option<String>, line: &str) {
        self.emit(Event::Output {
            deployment: self.deployment.clone(),
            host: host.clone(),
            line: line.to_owned(),
        });
    }
}
