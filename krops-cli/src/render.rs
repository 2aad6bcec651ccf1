//! Turns pipeline events into what the user sees on stderr: on a terminal, a spinner line per
//! deployment with its current stage; otherwise (and with -v or -q) plain lines, each prefixed
//! with its deployment so that concurrent deployments stay readable. Prints the final summary.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use krops::events::{DeployError, Event, Level};
use krops::pipeline::Outcomes;
use krops::redact::credentials;
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

/// Renders until the pipeline drops its senders. `terminal_free` says whether krops owns the
/// terminal (not so for `run`, whose command writes to it).
pub async fn render(events: UnboundedReceiver<Event>, verbosity: Verbosity, terminal_free: bool) {
    let progress = terminal_free
        && !verbosity.quiet
        && verbosity.level == Level::Info
        && std::io::stderr().is_terminal();
    if progress {
        render_progress(events).await
    } else {
        render_lines(events, verbosity).await
    }
}

async fn render_lines(mut events: UnboundedReceiver<Event>, verbosity: Verbosity) {
    while let Some(event) = events.recv().await {
        if let Some(line) = line_for(&event, verbosity) {
            eprintln!("{}", credentials(&line));
        }
    }
}

/// One spinner per deployment showing where it is; activation output and warnings scroll
/// above the spinners; each spinner ends with the deployment's outcome.
async fn render_progress(mut events: UnboundedReceiver<Event>) {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut by_deployment: HashMap<String, ProgressBar> = HashMap::new();
    let mut bar_for = |deployment: &str| {
        by_deployment
            .entry(deployment.to_owned())
            .or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner().with_style(style.clone()));
                bar.set_prefix(deployment.to_owned());
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            })
            .clone()
    };
    while let Some(event) = events.recv().await {
        match &event {
            Event::StageStarted { deployment, host, stage } => {
                let on = host.as_deref().map(|h| format!(" on {h}")).unwrap_or_default();
                bar_for(deployment).set_message(credentials(&format!("{stage}{on}…")).into_owned());
            }
            Event::SourcePopulated { deployment, source, source_type, report, .. } => {
                bar_for(deployment).set_message(
                    credentials(&format!("populated {source} ({source_type}){}", describe(report)))
                        .into_owned(),
                );
            }
            Event::Output { deployment, host, line } => {
                let _ = bars.println(credentials(&format!("{} | {line}", at(deployment, host))));
            }
            Event::Log { deployment, host, level, message } if *level <= Level::Warn => {
                let _ = bars.println(credentials(&format!("{} {message}", at(deployment, host))));
            }
            Event::DeploymentFinished { deployment, millis, error } => {
                // A finished deployment leaves its spinner for a permanent line above the
                // ones still running; with the last one gone the cursor rests on a clean line.
                bar_for(deployment).finish_and_clear();
                let line = match error {
                    None => format!("✓ {deployment}: done in {millis} ms"),
                    Some(error) => format!("✗ [{deployment}] error: {error}"),
                };
                let _ = bars.println(credentials(&line));
            }
            _ => {}
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

/// One line for a possibly long error: its first line, and when that only announces a
/// child's stderr (ends with ':'), the stderr's last line, which usually says why.
fn headline(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or_default();
    match (first.ends_with(':'), lines.rfind(|l| !l.trim().is_empty())) {
        (true, Some(last)) => format!("{first} {}", last.trim()),
        _ => first.to_owned(),
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
        eprintln!("  {name}: {}", credentials(&headline(&error.to_string())));
    }
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::headline;

    #[test]
    fn headline_adds_the_last_stderr_line() {
        assert_eq!(
            headline("rsync failed (exit status: 23):\nsome detail\nthe reason\n"),
            "rsync failed (exit status: 23): the reason"
        );
        assert_eq!(headline("missing sentinel file: /x/.populate"), "missing sentinel file: /x/.populate");
        assert_eq!(headline("failed:"), "failed:");
    }
}
