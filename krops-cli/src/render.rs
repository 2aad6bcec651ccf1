//! Turns pipeline events into what the user sees. Three forms:
//! - on a terminal, a live line per deployment with its current stage, ending as ✓/✗; it is
//!   hidden whenever a child may talk to the user (an ssh master connecting), so that a host
//!   key question or a passphrase prompt is never overwritten;
//! - otherwise (and with -v or -q) plain lines on stderr, each prefixed with its deployment;
//! - with `--json`, one JSON object per line on stdout (schema in the README, `"v": 1`).
//!
//! Every line passes through `redact::credentials` (JSON: `redact::json`, string by string),
//! and what came from outside krops is made [`printable`] (JSON escapes it anyway). Also
//! prints the final summary.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use krops::events::{DeployError, Event, Level, Stage};
use krops::pipeline::Outcomes;
use krops::redact::{self, credentials};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// The version of the `--json` schema, on every line.
const JSON_VERSION: u32 = 1;

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

/// How output looks, decided once from the flags and the terminal.
#[derive(Clone, Copy)]
pub struct Style {
    pub verbosity: Verbosity,
    pub json: bool,
    pub color: bool,
}

/// `--color`: colours on a terminal unless `NO_COLOR` is set, or as forced.
pub fn colors(choice: &str) -> bool {
    match choice {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// krops's own diagnostics (plugin search and the like) go through tracing, to stderr.
pub fn init_tracing(verbose: u8, quiet: bool, color: bool) {
    console::set_colors_enabled_stderr(color);
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
        .with_ansi(color)
        .without_time()
        .with_target(false)
        .init();
}

/// What each deployment is doing, kept for the summary of an interrupted run.
#[derive(Clone, Default)]
pub struct Progress {
    states: Arc<Mutex<BTreeMap<String, State>>>,
    /// Whether a diff showed a change (or could not tell) or a status a source not as
    /// recorded: `--exit-code`'s answer.
    differences: Arc<std::sync::atomic::AtomicBool>,
    /// Each deployment's (last) remote host, for `-v`'s table.
    hosts: Arc<Mutex<BTreeMap<String, String>>>,
}

#[derive(Clone)]
enum State {
    Waiting,
    /// With what an interruption leaves behind on a target: an armed watchdog's deadline.
    Running(Option<String>),
    Done(Result<u128, DeployError>),
}

impl Progress {
    pub fn new(names: &[String]) -> Progress {
        Progress {
            states: Arc::new(Mutex::new(names.iter().map(|n| (n.clone(), State::Waiting)).collect())),
            differences: Arc::default(),
            hosts: Arc::default(),
        }
    }

    /// Whether `diff` or `status` found the targets other than configured.
    pub fn found_differences(&self) -> bool {
        self.differences.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note(&self, event: &Event) {
        let differs = match event {
            Event::Diff { changes, .. } => changes.as_ref().is_none_or(|c| !c.is_empty()),
            Event::Status { deployed, sources, .. } => {
                !deployed || sources.iter().any(|s| s.verdict != "as recorded")
            }
            _ => false,
        };
        if differs {
            self.differences.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let (Event::StageStarted { deployment, host: Some(host), .. }, Ok(mut hosts)) =
            (event, self.hosts.lock())
        {
            hosts.insert(deployment.clone(), host.clone());
        }
        let Ok(mut states) = self.states.lock() else { return };
        match event {
            Event::StageStarted { deployment, .. } => {
                if let Some(state @ State::Waiting) = states.get_mut(deployment) {
                    *state = State::Running(None);
                }
            }
            Event::WatchdogArmed { deployment, fires_at, .. } => {
                let note = format!("not confirmed: the target rolls itself back at {fires_at}");
                states.insert(deployment.clone(), State::Running(Some(note)));
            }
            Event::DeploymentFinished { deployment, millis, error } => {
                let result = error.clone().map_or(Ok(*millis), Err);
                states.insert(deployment.clone(), State::Done(result));
            }
            _ => {}
        }
    }
}

/// Renders until the pipeline drops its senders. `terminal_free` says whether krops owns the
/// terminal (not so for `run`, whose command writes to it).
pub async fn render(events: UnboundedReceiver<Event>, style: Style, terminal_free: bool, progress: Progress) {
    let live = !style.json
        && terminal_free
        && !style.verbosity.quiet
        && style.verbosity.level == Level::Info
        && std::io::stderr().is_terminal();
    match (style.json, live) {
        (true, _) => render_json(events, style.verbosity, progress).await,
        (false, true) => render_live(events, style, progress).await,
        (false, false) => render_lines(events, style.verbosity, style.color, progress).await,
    }
}

async fn render_lines(
    mut events: UnboundedReceiver<Event>,
    verbosity: Verbosity,
    color: bool,
    progress: Progress,
) {
    let terminal = std::io::stderr().is_terminal();
    while let Some(event) = events.recv().await {
        progress.note(&event);
        // Whatever ssh asks next on the terminal (a passphrase, a host key) is for this one,
        // also with -q.
        if let (true, Event::Connecting { deployment, host, done: false }) = (terminal, &event) {
            eprintln!("{}", shown(&format!("→ {deployment}: connecting to {host} (ssh may ask below)")));
        }
        let result = result_lines(&event);
        if !result.is_empty() {
            print_result(&result);
        } else if let Some(line) = line_for(&event, verbosity) {
            let line = shown(&line);
            // Colour (a terminal, or `--color always`): errors red, finished deployments green.
            let failed = matches!(event, Event::DeploymentFinished { error: Some(_), .. });
            let finished = matches!(event, Event::DeploymentFinished { error: None, .. });
            match (color, failed, finished) {
                (true, true, _) => eprintln!("{RED}{line}{RESET}"),
                (true, _, true) => eprintln!("{GREEN}{line}{RESET}"),
                _ => eprintln!("{line}"),
            }
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// Text from outside krops (a child's output, a plugin's or a target's message, a name) as it
/// may reach a terminal or a log: every control character (ESC, BEL, `\r`, C1, DEL…) is shown
/// escaped (`\u{1b}`), never sent, so nothing printed can retitle or clear a terminal, move
/// its cursor, or hide what came before it. Tabs and line breaks stay, and so does nothing of
/// a `\r` that ends a line (`\r\n`, as ssh writes), which hides nothing.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' | '\n' => out.push(c),
            '\r' if chars.peek().is_none_or(|&next| next == '\n') => {}
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A line for people: credentials hidden, control characters escaped.
pub fn shown(text: &str) -> String {
    printable(&credentials(text))
}

/// `--log-dir`: every event also as a line of its deployment's log file, `DIR/NAME.log` (`/`
/// and `%` in NAME percent-encoded), at `-v`'s detail and with the whole error at the end;
/// the events go on to the display unchanged. A file that cannot be written is said once.
pub fn logged(mut events: UnboundedReceiver<Event>, dir: PathBuf) -> UnboundedReceiver<Event> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut files: HashMap<String, Option<std::fs::File>> = HashMap::new();
        let everything = Verbosity { quiet: false, level: Level::Debug };
        while let Some(event) = events.recv().await {
            let deployment = event.deployment().to_owned();
            let mut lines: Vec<String> = result_lines(&event);
            if let Some(line) = line_for(&event, everything) {
                lines.push(line);
            }
            if let Event::DeploymentFinished { error: Some(error), .. } = &event {
                lines.extend(error.output.iter().cloned());
                lines.extend(error.hint.iter().map(|hint| format!("hint: {hint}")));
            }
            let file = files.entry(deployment.clone()).or_insert_with(|| {
                let path = dir.join(format!("{}.log", log_file_name(&deployment)));
                let opened = std::fs::create_dir_all(&dir).and_then(|()| open_log(&path));
                opened.map_err(|e| eprintln!("krops: cannot write {}: {e}", path.display())).ok()
            });
            if let Some(file) = file {
                let when = humantime::format_rfc3339_millis(SystemTime::now());
                for line in &lines {
                    let _ = writeln!(file, "{when} {}", credentials(line));
                }
            }
            let _ = sender.send(event);
        }
    });
    receiver
}

/// A deployment's name as a file name: `%` and `/` percent-encoded, so that two names never
/// share a file.
fn log_file_name(deployment: &str) -> String {
    deployment.replace('%', "%25").replace('/', "%2F")
}

/// Opens a log file to append to, never through a symbolic link and never anything but a
/// regular file (a FIFO planted there would block krops; a link, send its lines anywhere).
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or_default())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// One JSON line per event; `log` events as `-v`/`-vv` choose (none with `-q`), `connecting`
/// once per connection.
async fn render_json(mut events: UnboundedReceiver<Event>, verbosity: Verbosity, progress: Progress) {
    while let Some(event) = events.recv().await {
        progress.note(&event);
        let shown = match &event {
            Event::Log { level, .. } => !verbosity.quiet && *level <= verbosity.level,
            Event::Connecting { done, .. } => !done,
            _ => true,
        };
        if shown {
            print_json(json_of(&event));
        }
    }
}

/// One `--json` line on stdout: the object with `v` and `time` added, credentials hidden in
/// each string.
pub fn print_json(mut object: Value) {
    if let Some(fields) = object.as_object_mut() {
        fields.insert("v".into(), json!(JSON_VERSION));
        fields.insert("time".into(), json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()));
    }
    let line = redact::json(object).to_string();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn json_of(event: &Event) -> Value {
    match event {
        Event::StageStarted { deployment, host, stage } => {
            json!({ "event": "stage_started", "deployment": deployment, "host": host, "stage": stage })
        }
        Event::StageFinished { deployment, host, stage, millis } => json!({
            "event": "stage_finished", "deployment": deployment, "host": host, "stage": stage,
            "duration_ms": millis,
        }),
        Event::SourcePopulated { deployment, host, source, source_type, millis, report } => json!({
            "event": "source_populated", "deployment": deployment, "host": host, "stage": Stage::Populate,
            "source": source, "type": source_type, "duration_ms": millis, "report": report,
        }),
        Event::Output { deployment, host, stage, line } => json!({
            "event": "output", "deployment": deployment, "host": host, "stage": stage, "line": line,
        }),
        Event::Log { deployment, host, level, message } => json!({
            "event": "log", "deployment": deployment, "host": host, "level": level, "message": message,
        }),
        Event::Connecting { deployment, host, .. } => {
            json!({ "event": "connecting", "deployment": deployment, "host": host })
        }
        Event::WatchdogArmed { deployment, host, fires_at } => json!({
            "event": "watchdog_armed", "deployment": deployment, "host": host, "fires_at": fires_at,
        }),
        Event::Status { deployment, host, deployed, record, sources } => {
            let sources: serde_json::Map<String, Value> = sources
                .iter()
                .map(|s| {
                    let entry = json!({ "status": s.verdict, "type": s.source_type, "commit": s.commit });
                    (s.name.clone(), entry)
                })
                .collect();
            json!({
                "event": "status", "deployment": deployment, "host": host, "deployed": deployed,
                "record": record_json(record), "sources": sources,
            })
        }
        Event::Diff { deployment, host, source, source_type, changes } => json!({
            "event": "diff", "deployment": deployment, "host": host, "source": source,
            "type": source_type, "known": changes.is_some(),
            "unchanged": changes.as_ref().is_some_and(Vec::is_empty), "changes": changes,
        }),
        Event::DeploymentFinished { deployment, millis, error } => json!({
            "event": "deployment_finished", "deployment": deployment, "duration_ms": millis,
            "status": if error.is_some() { "failed" } else { "ok" },
            "error": error.as_ref().map(error_json),
        }),
    }
}

/// The record's lines as an object: `by`, `when`, `krops`, and the last `activation`
/// (`operation`, `result`: ok, failed, rolled-back…, `time`), null where the record says nothing.
fn record_json(lines: &[String]) -> Value {
    let field = |key: &str| lines.iter().find_map(|l| l.strip_prefix(key)).map(str::to_owned);
    let activation = field("activation ").map(|a| {
        let parts: Vec<&str> = a.split(' ').collect();
        json!({ "operation": parts.first(), "result": parts.get(1), "time": parts.get(2) })
    });
    json!({ "by": field("by "), "when": field("when "), "krops": field("krops "), "activation": activation })
}

fn error_json(error: &DeployError) -> Value {
    let detail = match &error.output {
        Some(output) => format!("{}\n{}", error.message, output.trim_end()),
        None => error.message.clone(),
    };
    // The failing program's last words: its stderr, else the message that holds it.
    let stderr = error.output.as_deref().unwrap_or(&error.message);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let stderr_tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    json!({
        "message": error.headline, "detail": detail, "program": error.program,
        "exit_status": error.exit_status, "stderr_tail": stderr_tail, "hint": error.hint,
        "host": error.host, "stage": error.stage, "source": error.source_name,
        "rollback": error.rollback,
    })
}

/// How much of a failing program's stderr `--json` errors carry in `stderr_tail`.
const STDERR_TAIL_LINES: usize = 20;

/// The `error` of a deployment a signal cut short.
fn interrupted_json(signal: &str, rollback: Option<&str>) -> Value {
    json!({
        "message": format!("interrupted by {signal}"), "detail": null, "program": null,
        "exit_status": null, "stderr_tail": null, "hint": null,
        "host": null, "stage": null, "source": null, "rollback": rollback,
    })
}

/// One spinner per deployment showing where it is; activation output and warnings scroll
/// above the spinners; each spinner ends with the deployment's outcome.
async fn render_live(mut events: UnboundedReceiver<Event>, style: Style, progress: Progress) {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let template =
        if style.color { "{spinner} {prefix:.bold} {wide_msg}" } else { "{spinner} {prefix} {wide_msg}" };
    let spinner = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut by_deployment: HashMap<String, ProgressBar> = HashMap::new();
    let mut bar_for = |deployment: &str| {
        by_deployment
            .entry(deployment.to_owned())
            .or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner().with_style(spinner.clone()));
                bar.set_prefix(shown(deployment));
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            })
            .clone()
    };
    // Masters authenticating right now: while any is, the display stays off the terminal, and
    // the lines it would print wait in `held` (a hidden display drops what it is given).
    let mut connecting = 0usize;
    let mut held: Vec<String> = Vec::new();
    let println = |held: &mut Vec<String>, connecting: usize, line: String| {
        if connecting > 0 {
            held.push(line);
        } else {
            let _ = bars.println(line);
        }
    };
    while let Some(event) = events.recv().await {
        progress.note(&event);
        match &event {
            Event::Connecting { deployment, host, done } => {
                if *done {
                    connecting = connecting.saturating_sub(1);
                    if connecting == 0 {
                        bars.set_draw_target(ProgressDrawTarget::stderr());
                        for line in held.drain(..) {
                            let _ = bars.println(line);
                        }
                    }
                } else {
                    bar_for(deployment).set_message(shown(&format!("connecting to {host}…")));
                    if connecting == 0 {
                        // Erase the spinners and stop drawing: ssh may ask on the terminal now.
                        let _ = bars.clear();
                        bars.set_draw_target(ProgressDrawTarget::hidden());
                    }
                    // Whatever ssh asks next (a passphrase, a host key) is for this one.
                    eprintln!(
                        "{}",
                        shown(&format!("→ {deployment}: connecting to {host} (ssh may ask below)"))
                    );
                    connecting += 1;
                }
            }
            Event::StageStarted { deployment, host, stage } => {
                let on = host.as_deref().map(|h| format!(" on {h}")).unwrap_or_default();
                bar_for(deployment).set_message(shown(&format!("{stage}{on}…")));
            }
            Event::SourcePopulated { deployment, source, source_type, report, .. } => {
                bar_for(deployment)
                    .set_message(shown(&format!("populate {source} ({source_type}){}", describe(report))));
            }
            Event::Output { deployment, host, line, .. } => {
                println(&mut held, connecting, shown(&format!("{} | {line}", at(deployment, host))));
            }
            Event::Status { .. } | Event::Diff { .. } => {
                for line in result_lines(&event) {
                    println(&mut held, connecting, shown(&line));
                }
            }
            Event::Log { deployment, host, level, message } if *level <= Level::Warn => {
                println(&mut held, connecting, shown(&format!("{} {message}", at(deployment, host))));
            }
            Event::DeploymentFinished { deployment, millis, error } => {
                // A finished deployment leaves its spinner for a permanent line above the
                // ones still running; with the last one gone the cursor rests on a clean line.
                bar_for(deployment).finish_and_clear();
                let (ok, failed) =
                    if style.color { ("\x1b[32m✓\x1b[0m", "\x1b[31m✗\x1b[0m") } else { ("✓", "✗") };
                // The mark's colour is krops's own; only what follows it is made printable.
                let line = match error {
                    None => format!("{ok} {}", shown(&format!("{deployment}: done in {}", human(*millis)))),
                    Some(error) => {
                        format!("{failed} {}", shown(&format!("{deployment}: {}", error.summary())))
                    }
                };
                println(&mut held, connecting, line);
            }
            _ => {}
        }
    }
    // The summary starts on a line of its own, whatever the spinners left; nothing held back
    // is lost.
    let _ = bars.clear();
    for line in held {
        eprintln!("{line}");
    }
}

fn at(deployment: &str, host: &Option<String>) -> String {
    match host {
        Some(host) => format!("[{deployment}@{host}]"),
        None => format!("[{deployment}]"),
    }
}

/// `42 ms`, `1.3 s`, `2 min 05 s`.
fn human(millis: u128) -> String {
    match millis {
        0..=999 => format!("{millis} ms"),
        1_000..=59_999 => format!("{:.1} s", millis as f64 / 1000.0),
        _ => format!("{} min {:02} s", millis / 60_000, millis % 60_000 / 1000),
    }
}

fn line_for(event: &Event, verbosity: Verbosity) -> Option<String> {
    let chatty = !verbosity.quiet;
    let detailed = chatty && verbosity.level >= Level::Debug;
    match event {
        Event::StageStarted { deployment, host, stage } if detailed => {
            Some(format!("{} {stage}: started", at(deployment, host)))
        }
        Event::Connecting { deployment, host, done: false } if detailed => {
            Some(format!("[{deployment}] connecting to {host}"))
        }
        Event::WatchdogArmed { deployment, host, fires_at } if chatty => Some(format!(
            "{} confirm watchdog armed: unless krops confirms by {fires_at}, the target rolls itself back",
            at(deployment, host)
        )),
        Event::StageFinished { deployment, host, stage, millis } if chatty => {
            Some(format!("{} {stage}: done in {}", at(deployment, host), human(*millis)))
        }
        Event::SourcePopulated { deployment, host, source, source_type, millis, report } if chatty => {
            Some(format!(
                "{} populate: {source} ({source_type}) in {}{}",
                at(deployment, host),
                human(*millis),
                describe(report)
            ))
        }
        // `exec`'s output is what it is run for: shown with -q too.
        Event::Output { deployment, host, line, stage } if chatty || *stage == Stage::Exec => {
            Some(format!("{} | {line}", at(deployment, host)))
        }
        Event::Log { deployment, host, level, message }
            if *level <= verbosity.level && (chatty || *level <= Level::Warn) =>
        {
            Some(format!("{} {message}", at(deployment, host)))
        }
        Event::DeploymentFinished { deployment, millis, error: None } if chatty => {
            Some(format!("[{deployment}] finished in {}", human(*millis)))
        }
        Event::DeploymentFinished { deployment, error: Some(error), .. } => {
            // Quiet runs showed no output as it came: the failed program's is shown now, below
            // a headline that does not point above.
            match (&error.output, verbosity.quiet && error.stage != Stage::Exec) {
                (Some(output), true) => Some(format!(
                    "[{deployment}] error: {} failed: {}\n{}",
                    error.place(),
                    error.message,
                    output.trim_end()
                )),
                _ => Some(format!("[{deployment}] error: {error}")),
            }
        }
        _ => None,
    }
}

/// What `status` and `diff` found goes to standard output (it is what they are run for);
/// progress and errors stay on standard error.
fn print_result(lines: &[String]) {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(stdout, "{}", shown(line));
    }
    let _ = stdout.flush();
}

/// The lines of a result event (`status`, `diff`) for people; none for other events.
fn result_lines(event: &Event) -> Vec<String> {
    match event {
        Event::Status { .. } => status_lines(event),
        Event::Diff { .. } => diff_lines(event),
        _ => Vec::new(),
    }
}

/// `krops diff`, for people: `conf (file): 2 changes` and a line per change, or the one
/// change of a whole source on its line (`nixpkgs (git): commit A → B`).
fn diff_lines(event: &Event) -> Vec<String> {
    let Event::Diff { deployment, host, source, source_type, changes } = event else { return Vec::new() };
    let at = format!("{} {source} ({source_type})", at(deployment, host));
    let Some(changes) = changes else {
        return vec![format!("{at}: unknown (the {source_type} plugin cannot tell what would change)")];
    };
    match changes.as_slice() {
        [] => vec![format!("{at}: unchanged")],
        [only] if only.path.is_empty() => vec![format!("{at}: {}", change_text(only))],
        _ => {
            let count = changes.len();
            let mut lines = vec![format!("{at}: {count} change{}", if count == 1 { "" } else { "s" })];
            lines.extend(changes.iter().map(|change| format!("{at}   {}", change_text(change))));
            lines
        }
    }
}

/// `+ path`, `- path`, `~ path`, with what changed from what to what when the plugin says.
fn change_text(change: &krops_core::wire::Change) -> String {
    use krops_core::wire::ChangeKind;
    // A name may hold a newline or another control character: shown escaped, it can never
    // pass for a line of its own.
    let path: String = change
        .path
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect();
    let mut text = match (change.change, path.is_empty()) {
        (ChangeKind::Added, true) => "added".to_owned(),
        (ChangeKind::Changed, true) => "changed".to_owned(),
        (ChangeKind::Deleted, true) => "deleted".to_owned(),
        (ChangeKind::Added, false) => format!("+ {path}"),
        (ChangeKind::Changed, false) => format!("~ {path}"),
        (ChangeKind::Deleted, false) => format!("- {path}"),
    };
    if let Some(what) = &change.what {
        let value = match (&change.from, &change.to) {
            (Some(from), Some(to)) => format!("{from} → {to}"),
            (None, Some(to)) => format!("(none) → {to}"),
            (Some(from), None) => format!("{from} → (none)"),
            (None, None) => text.clone(),
        };
        text = if change.path.is_empty() {
            format!("{what} {value}")
        } else {
            format!("{text}: {what} {value}")
        };
    }
    text.trim_end().to_owned()
}

/// `krops status`, for people: what the record says, then each source's verdict.
fn status_lines(event: &Event) -> Vec<String> {
    let Event::Status { deployment, host, deployed, record, sources } = event else { return Vec::new() };
    let at = at(deployment, host);
    let field = |key: &str| record.iter().find_map(|l| l.strip_prefix(key));
    let mut lines = vec![if *deployed {
        let mut line = format!("{at} populated");
        if let Some(by) = field("by ") {
            line.push_str(&format!(" by {by}"));
        }
        if let Some(when) = field("when ") {
            line.push_str(&format!(" at {when}"));
        }
        if let Some(version) = field("krops ") {
            line.push_str(&format!(" (krops {version})"));
        }
        match field("activation ").map(|a| a.splitn(3, ' ').collect::<Vec<_>>()) {
            Some(parts) if parts.len() == 3 => {
                line.push_str(&format!("; last activation: {} {} at {}", parts[0], parts[1], parts[2]))
            }
            _ => line.push_str("; not activated since"),
        }
        line
    } else {
        format!("{at} never deployed by krops (no record)")
    }];
    lines.extend(sources.iter().map(|s| {
        let kind = match (&s.source_type, &s.commit) {
            (Some(kind), Some(commit)) => format!(" ({kind} {commit})"),
            (Some(kind), None) => format!(" ({kind})"),
            _ => String::new(),
        };
        format!("{at}   {}{kind}: {}", s.name, s.verdict)
    }));
    lines
}

/// A source's report, compactly: `, changes: 3`.
fn describe(report: &Value) -> String {
    match report.as_object() {
        Some(fields) if !fields.is_empty() => fields
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!(", {k}: {s}"),
                other => format!(", {k}: {other}"),
            })
            .collect(),
        _ => String::new(),
    }
}

/// The `--json` summary of a command that deploys nothing (`eval`, `plugins`) or ended before
/// any deployment started (a usage or configuration error, `exit_status` 2): SPEC's last line.
pub fn print_summary_of_no_deployments(exit_status: u8) {
    print_json(json!({ "event": "summary", "deployments": {}, "failed": 0, "exit_status": exit_status }));
}

/// The summary of a finished run: which deployments failed and why (the program and its
/// `error:` line); exit status 1 if any did. With `--json`, the summary line.
pub fn summary(outcomes: &Outcomes, style: Style, progress: &Progress) -> ExitCode {
    let failed: Vec<(&String, &DeployError)> =
        outcomes.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| (name, e))).collect();
    if style.json {
        let deployments: serde_json::Map<String, Value> = outcomes
            .iter()
            .map(|(name, result)| {
                let entry = match result {
                    Ok(()) => json!({ "status": "ok" }),
                    Err(error) => json!({
                        "status": "failed", "error": error_json(error),
                        "rolled_back": error.rollback.as_deref() == Some("rolled back"),
                    }),
                };
                (name.clone(), entry)
            })
            .collect();
        print_json(json!({ "event": "summary", "deployments": deployments, "failed": failed.len() }));
    } else if !failed.is_empty() {
        let (red, reset) = if style.color { (RED, RESET) } else { ("", "") };
        eprintln!("{red}krops: {} of {} deployments failed:{reset}", failed.len(), outcomes.len());
        for (name, error) in &failed {
            eprintln!("  {name}: {}", shown(&error.summary()));
            if let Some(hint) = &error.hint {
                eprintln!("    hint: {}", shown(hint));
            }
        }
    }
    if !style.json {
        if style.verbosity.level >= Level::Debug {
            table(outcomes, progress);
        }
        eprintln!("{}", shown(&tally(outcomes)));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The run's last line, also with `-q` and on success: `krops: 8 ok, 2 failed: db-03, web-04`.
fn tally(outcomes: &Outcomes) -> String {
    let failed: Vec<&str> =
        outcomes.iter().filter(|(_, r)| r.is_err()).map(|(name, _)| name.as_str()).collect();
    let ok = outcomes.len() - failed.len();
    match failed.len() {
        0 => format!("krops: {ok} ok"),
        _ => format!("krops: {ok} ok, {} failed: {}", failed.len(), failed.join(", ")),
    }
}

/// `-v`'s table of every deployment: where it went, how it ended, how long it took.
fn table(outcomes: &Outcomes, progress: &Progress) {
    let states = progress.states.lock().map(|s| s.clone()).unwrap_or_default();
    let hosts = progress.hosts.lock().map(|h| h.clone()).unwrap_or_default();
    let rows: Vec<[String; 4]> = outcomes
        .iter()
        .map(|(name, result)| {
            let host = hosts.get(name).cloned().unwrap_or_else(|| "(local)".to_owned());
            let ended = match result {
                Ok(()) => "ok".to_owned(),
                Err(error) => format!("failed ({})", error.stage),
            };
            let duration = match states.get(name) {
                Some(State::Done(Ok(millis))) => human(*millis),
                _ => "-".to_owned(),
            };
            [name.clone(), host, ended, duration]
        })
        .collect();
    let header = ["DEPLOYMENT", "HOST", "RESULT", "DURATION"].map(str::to_owned);
    let widths: Vec<usize> = (0..4)
        .map(|i| std::iter::once(&header).chain(&rows).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        eprintln!("{}", shown(cells.join("  ").trim_end()));
    }
}

/// The summary of a run ended by `signal`: finished deployments as they ended, running ones
/// failed (interrupted), waiting ones skipped.
pub fn interrupted(progress: &Progress, signal: &str, style: Style) {
    let states = progress.states.lock().map(|s| s.clone()).unwrap_or_default();
    if style.json {
        let deployments: serde_json::Map<String, Value> = states
            .iter()
            .map(|(name, state)| {
                let entry = match state {
                    State::Waiting => json!({ "status": "skipped" }),
                    State::Running(rollback) => {
                        json!({ "status": "failed", "error": interrupted_json(signal, rollback.as_deref()) })
                    }
                    State::Done(Ok(_)) => json!({ "status": "ok" }),
                    State::Done(Err(error)) => json!({ "status": "failed", "error": error_json(error) }),
                };
                (name.clone(), entry)
            })
            .collect();
        print_json(json!({ "event": "summary", "deployments": deployments, "interrupted": signal }));
        return;
    }
    // Every deployment's end, as the display would have shown it (the display may have held
    // lines back while ssh prompted), then the tally.
    let (mut ok, mut failed, mut cut) = (0, Vec::new(), Vec::new());
    for (name, state) in &states {
        let line = match state {
            State::Waiting => {
                cut.push(name.as_str());
                format!("- {name}: not started")
            }
            State::Running(None) => {
                cut.push(name.as_str());
                format!("✗ {name}: interrupted by {signal}")
            }
            State::Running(Some(rollback)) => {
                cut.push(name.as_str());
                format!("✗ {name}: interrupted by {signal}; {rollback}")
            }
            State::Done(Err(error)) => {
                failed.push(name.as_str());
                format!("✗ {name}: {}", error.summary())
            }
            State::Done(Ok(millis)) => {
                ok += 1;
                format!("✓ {name}: done in {}", human(*millis))
            }
        };
        eprintln!("{}", shown(&line));
    }
    let mut tally = format!("krops: {ok} ok");
    if !failed.is_empty() {
        tally.push_str(&format!(", {} failed: {}", failed.len(), failed.join(", ")));
    }
    if !cut.is_empty() {
        tally.push_str(&format!(", {} cut short by {signal}: {}", cut.len(), cut.join(", ")));
    }
    eprintln!("{}", shown(&tally));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_name_never_makes_a_line_of_its_own() {
        use krops_core::wire::{Change, ChangeKind};
        let change = Change::new(ChangeKind::Added, "evil\n~ forged.nix\t");
        assert_eq!(change_text(&change), "+ evil\\n~ forged.nix\\t");
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            shown("a\x1b]0;pwned\x07 \x1b[2J\r\u{9b}\x7f\tb\nhttps://u:p@h"),
            "a\\u{1b}]0;pwned\\u{7} \\u{1b}[2J\\r\\u{9b}\\u{7f}\tb\nhttps://***@h"
        );
        assert_eq!(shown("ünïcode ✓"), "ünïcode ✓");
        assert_eq!(shown("ssh: a\r\nb\r"), "ssh: a\nb");
    }

    #[test]
    fn durations_read_as_durations() {
        assert_eq!(human(42), "42 ms");
        assert_eq!(human(1_340), "1.3 s");
        assert_eq!(human(125_000), "2 min 05 s");
    }

    #[test]
    fn summaries_name_the_program_and_its_error_line() {
        let error = DeployError::new(
            Some("web1".into()),
            Stage::Activate,
            None,
            Some("nix-build".into()),
            "nix-build failed (exit status: 1):\nbuilding…\nerror: undefined variable 'foo'\n(use '--show-trace' to show detailed location information)\n".into(),
        );
        assert_eq!(error.summary(), "activate on web1 failed: nix-build: error: undefined variable 'foo'");
    }
}
