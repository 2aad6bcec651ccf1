//! Turns pipeline events into lines on stderr, each prefixed with its deployment so that
//! concurrent deployments stay readable, and prints the final summary.

use std::process::ExitCode;

use krops_core::events::{DeployError, Event, Level};
use krops_core::pipeline::Outcomes;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Clone, Copy)]
pub struct Verbosity {
    quiet: bool,
    level: Level,
}

impl Verbosity {
    pub fn new(verbose: u8, quiet: bool) -> Self {
        let level = match verbose {
            0 => Level::Info,
            1 => Level::Debug,
            _ => Level::Trace,
        };
        Verbosity { quiet, level }
    }
}

/// krops's own diagnostics (plugin search and the like) go through tracing, to stderr.
pub fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        (false, 2) => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

pub async fn render(mut events: UnboundedReceiver<Event>, verbosity: Verbosity) {
    while let Some(event) = events.recv().await {
        if let Some(line) = line_for(&event, verbosity) {
            eprintln!("{line}");
        }
    }
}

fn at(deployment: &str, host: &Option<String>) -> String {
    match host {
        Some(host) => format!("[{deployment}@{host}]"),
        None => format!("[{deployment}]"),
    }
}

fn line_for(event: &Event, verbosity: Verbosity) -> Option<String> {
    let chatty = !verbosity.quiet;
    let detailed = chatty && verbosity.level >= Level::Debug;
    match event {
        Event::StageStarted { deployment, host, stage } if detailed => {
            Some(format!("{} {stage}: started", at(deployment, host)))
        }
        Event::StageFinished { deployment, host, stage, millis } if chatty => {
            Some(format!("{} {stage}: done in {millis} ms", at(deployment, host)))
        }
        Event::SourcePopulated { deployment, host, source, source_type, millis, report } if chatty => {
            Some(format!(
                "{} populate: {source} ({source_type}) in {millis} ms{}",
                at(deployment, host),
                describe(report)
            ))
        }
        Event::Output { deployment, host, line } if chatty => {
            Some(format!("{} | {line}", at(deployment, host)))
        }
        Event::Log { deployment, host, level, message }
            if *level <= verbosity.level && (chatty || *level <= Level::Warn) =>
        {
            Some(format!("{} {message}", at(deployment, host)))
        }
        Event::DeploymentFinished { deployment, millis, error: None } if chatty => {
            Some(format!("[{deployment}] finished in {millis} ms"))
        }
        Event::DeploymentFinished { deployment, error: Some(error), .. } => {
            Some(format!("[{deployment}] error: {error}"))
        }
        _ => None,
    }
}

/// A source's report, compactly: `, changes: 3`.
fn describe(report: &serde_json::Value) -> String {
    match report.as_object() {
        Some(fields) if !fields.is_empty() => fields
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!(", {k}: {s}"),
                other => format!(", {k}: {other}"),
            })
            .collect(),
        _ => String::new(),
    }
}

/// Prints which deployments failed and why; exit status 1 if any did.
pub fn summary(outcomes: &Outcomes) -> ExitCode {
    let failed: Vec<(&String, &DeployError)> =
        outcomes.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| (name, e))).collect();
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("krops: {} of {} deployments failed:", failed.len(), outcomes.len());
    for (name, error) in failed {
        let first_line = error.to_string().lines().next().unwrap_or_default().to_owned();
        eprintln!("  {name}: {first_line}");
    }
    ExitCode::from(1)
}
