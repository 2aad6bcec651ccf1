//! The stage pipeline: sentinel, backup, populate, activate, per SPEC. Deployments run
//! concurrently (bounded by `jobs`); within one, stages run in order and the first failure
//! stops it, so nothing is activated after a failed stage.

use std::sync::Arc;
use std::time::Instant;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use krops_core::sdk::parallel_map;
use tokio::sync::{mpsc::UnboundedSender, Semaphore};

use crate::activation;
use crate::config::Deployment;
use crate::events::{DeployError, Event, Level, Reporter, Stage};
use crate::exec::{self, Argv, Input, Output, Stream};
use crate::handle::HostHandle;
use crate::loader::Registry;
use crate::record;
use crate::recovery;
use crate::ssh::{self, Multiplexer};
use crate::target::Origin;
use crate::transport::{Transport, Tty};

/// What to do after populating.
#[derive(Debug, Clone)]
pub enum Action {
    Populate,
    /// Report what the target's deploy record says and what drifted since; changes nothing.
    Status,
    /// Report what populate would change on the target; changes nothing.
    Diff,
    Deploy {
        operation: Option<String>,
        /// `--reboot`: after the activation, reboot and wait this long for the new boot.
        reboot: Option<std::time::Duration>,
    },
    Build {
        trace: bool,
    },
    /// `interactive`: the command gets the user's terminal; otherwise (`--json`) its output
    /// is reported line by line like an activation's.
    Run {
        argv: Option<Vec<String>>,
        interactive: bool,
    },
    /// Run `argv` on each target, populating nothing and taking no lock.
    Exec {
        argv: Vec<String>,
    },
}

/// A whole run's inputs.
pub struct Run {
    pub action: Action,
    pub deployments: Vec<(String, Deployment)>,
    pub jobs: usize,
    /// `--wait-lock`: how long to wait for another run's lock on a target (None: fail at once).
    pub wait_lock: Option<u64>,
}

/// Each deployment's name and outcome, in the order given.
pub type Outcomes = Vec<(String, Result<(), DeployError>)>;

/// Runs every deployment, at most `jobs` at once, and waits for all of them.
pub async fn run(
    run: Run,
    registry: Arc<Registry>,
    ssh: Arc<Multiplexer>,
    events: UnboundedSender<Event>,
) -> Outcomes {
    let semaphore = Arc::new(Semaphore::new(run.jobs.max(1)));
    let origin = Arc::new(Origin::current());
    // Deployments of this run to one place take turns (each would find the other's lock).
    // The flag says whether an earlier deployment went there: its lock may take a moment to go.
    let mut places: HashMap<String, Arc<tokio::sync::Mutex<bool>>> = HashMap::new();
    // Deployments that lock hosts on one ssh connection take turns beyond
    // `ssh::DEPLOYMENTS_PER_CONNECTION` (see ssh.rs): each lock holds one of its sessions.
    let mut connections: HashMap<ssh::Key, Arc<Semaphore>> = HashMap::new();
    let mut tasks = Vec::new();
    for (name, deployment) in run.deployments {
        let place =
            places.entry(Transport::new(deployment.target.clone(), &origin).place()).or_default().clone();
        // In one order for every deployment (the map's), so that no two wait for each other.
        let admissions: Vec<(Arc<Semaphore>, u32)> = locked_connections(&deployment, &run.action, &origin)
            .into_iter()
            .map(|(key, locks)| {
                let connection = connections
                    .entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(ssh::DEPLOYMENTS_PER_CONNECTION)));
                (connection.clone(), locks)
            })
            .collect();
        let semaphore = semaphore.clone();
        let registry = registry.clone();
        let origin = origin.clone();
        let ssh = ssh.clone();
        let action = run.action.clone();
        let wait_lock = run.wait_lock;
        let reporter = Reporter::new(name.clone(), events.clone());
        let task = tokio::spawn(async move {
            let mut turn = place.lock_owned().await;
            let wait_lock = if *turn { Some(wait_lock.unwrap_or(0).max(SUCCESSOR_WAIT)) } else { wait_lock };
            *turn = true;
            // Held until the deployment ends, as its locks are.
            let mut admitted = Vec::new();
            for (connection, locks) in admissions {
                admitted.push(connection.acquire_many_owned(locks).await);
            }
            let _permit = semaphore.acquire_owned().await;
            let started = Instant::now();
            // Stages call plugins and wait for child processes: blocking work.
            let result = tokio::task::spawn_blocking({
                let reporter = reporter.clone();
                move || {
                    deploy_one(&deployment, &action, wait_lock, &registry, &origin, &ssh, &reporter)
                        .map_err(|error| crate::hints::added(error, &deployment))
                }
            })
            .await
            .unwrap_or_else(|join_error| Err(internal_error(join_error)));
            reporter.emit(Event::DeploymentFinished {
                deployment: reporter.deployment.clone(),
                millis: started.elapsed().as_millis(),
                error: result.as_ref().err().cloned(),
            });
            result
        });
        tasks.push((name, task));
    }
    let mut outcomes = Vec::new();
    for (name, task) in tasks {
        let result = task.await.unwrap_or_else(|join_error| Err(internal_error(join_error)));
        outcomes.push((name, result));
    }
    outcomes
}

/// The ssh connections whose sessions a deployment's target locks hold, with how many locks on
/// each: its target's, and a `deploy`'s build host's when it is elsewhere (as [`deploy_one`]
/// locks them). `status`, `diff` and `exec` lock nothing.
fn locked_connections(deployment: &Deployment, action: &Action, origin: &Origin) -> BTreeMap<ssh::Key, u32> {
    let target = Transport::new(deployment.target.clone(), origin);
    let mut hosts = vec![target.clone()];
    match (action, &deployment.build_target) {
        (Action::Status | Action::Diff | Action::Exec { .. }, _) => return BTreeMap::new(),
        (Action::Deploy { .. }, Some(build)) => {
            let build = Transport::new(build.clone(), origin);
            if !build.same_place(&target) {
                hosts.push(build);
            }
        }
        _ => {}
    }
    let mut connections = BTreeMap::new();
    for connection in hosts.iter().filter_map(ssh::connection) {
        *connections.entry(connection).or_default() += 1;
    }
    connections
}

/// How long a deployment waits for the lock an earlier deployment of the same run to the same
/// place has just let go of.
const SUCCESSOR_WAIT: u64 = 30;

/// A deployment whose task died (a krops bug): reported as a failure, never as success.
fn internal_error(join_error: tokio::task::JoinError) -> DeployError {
    failure(&None, Stage::Populate, None, format!("internal error: {join_error}"))
}

fn deploy_one(
    deployment: &Deployment,
    action: &Action,
    wait_lock: Option<u64>,
    registry: &Registry,
    origin: &Origin,
    ssh: &Multiplexer,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let connect = |target: &crate::target::Target| {
        let transport = Transport::new(target.clone(), origin);
        let Some(host) = transport.host_label() else { return Ok(transport) };
        let connecting =
            |done| Event::Connecting { deployment: reporter.deployment.clone(), host: host.clone(), done };
        reporter.emit(connecting(false));
        let connected = ssh.connect(&transport);
        reporter.emit(connecting(true));
        connected.map_err(|message| {
            DeployError::new(Some(host.clone()), Stage::Connect, None, Some("ssh".to_owned()), message)
        })
    };
    let target = connect(&deployment.target)?;
    match action {
        Action::Status => return status(&target, deployment, reporter),
        Action::Exec { argv } => {
            let script = activation::run_script(deployment, Some(argv));
            let env = [("KROPS_TARGET_PATH", target.target.path.as_str())];
            let program = user_command(&crate::shell_words::join(argv));
            let argv = target.shell(&script, &[], &env, Tty::No);
            return activate(&target, &argv, &program, (Io::Forwarded, Stage::Exec), reporter);
        }
        _ => {}
    }
    // Plugins resolve what may fail before anything is written; they may ask the target
    // (read-only), e.g. for a git URL only the target reaches.
    let (prepared, fingerprints) = prepare(deployment, &target, registry, reporter)?;
    let deployment = &prepared;
    if let Action::Diff = action {
        return diff(&target, deployment, registry, reporter);
    }
    // krops populates the build host too when it differs from the target.
    let mut hosts = Vec::new();
    if let (Action::Deploy { .. }, Some(build)) = (action, &deployment.build_target) {
        let build = connect(build)?;
        // The same place written another way (`localhost/…`, a trailing slash) is no build host.
        if !build.same_place(&target) {
            hosts.push(build);
        }
    }
    hosts.push(target.clone());
    // Each host's lock is held until this function returns: through activation, and released
    // on every way out (the holder's input closes when its `Held` is dropped or released).
    let mut locks = Locks(Vec::new(), false);
    // The target's system generation before activation (the target comes last).
    let mut profile_before = None;
    for host in &hosts {
        let (lock, seen) = lock_with_sentinel(host, deployment, &fingerprints, wait_lock, origin, reporter)?;
        locks.0.push((lock, host.local));
        profile_before = seen.profile.clone();
        if deployment.backup {
            backup(host, reporter)?;
        }
        let unchanged = seen.unchanged(&fingerprints);
        populate(host, deployment, registry, &unchanged, reporter)?;
        // A target without a record gets one, even for a deployment without sources.
        if unchanged.len() < deployment.source.len() || seen.header.is_empty() {
            write_record(host, deployment, &fingerprints, origin, reporter)?;
        } else if let Some((lock, _)) = locks.0.last_mut() {
            // Nothing changed: the record's sources still hold; the lock holder renews who
            // populated and when, without a round trip of its own.
            let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            lock.tell(&format!(
                "populated {}@{} {when} {}",
                origin.user,
                origin.host,
                env!("CARGO_PKG_VERSION")
            ));
        }
    }
    let (operation, result) = match action {
        Action::Populate | Action::Status | Action::Diff | Action::Exec { .. } => return Ok(()),
        Action::Deploy { operation, reboot } => {
            let operation = operation.as_deref().unwrap_or(&deployment.operation);
            let host = hosts.first().unwrap_or(&target);
            let (result, record) =
                deploy(host, &target, deployment, (operation, *reboot), profile_before.as_deref(), reporter);
            if !record {
                return result;
            }
            (operation.to_owned(), result)
        }
        Action::Build { trace } => {
            let script = activation::build_script(&target.target, *trace || deployment.trace);
            let argv = target.shell(&script, &[], &[], Tty::No);
            (
                "build".to_owned(),
                activate(&target, &argv, "nix-build", (Io::Forwarded, Stage::Build), reporter),
            )
        }
        Action::Run { argv, interactive } => {
            let script = activation::run_script(deployment, argv.as_deref());
            let env = [("KROPS_TARGET_PATH", target.target.path.as_str())];
            let tty = if deployment.allocate_tty { Tty::Yes } else { Tty::No };
            let program = match (argv, &deployment.command) {
                (Some(argv), _) => user_command(&crate::shell_words::join(argv)),
                (None, Some(command)) => user_command(command),
                (None, None) => "nixos-rebuild".to_owned(),
            };
            let io = if *interactive { Io::Terminal } else { Io::Forwarded };
            (
                "run".to_owned(),
                activate(
                    &target,
                    &target.shell(&script, &[], &env, tty),
                    &program,
                    (io, Stage::Run),
                    reporter,
                ),
            )
        }
    };
    locks.record_activation(&operation, &result);
    result
}

/// `deploy`'s activation on `host` (the build host, else the target), then what SPEC's
/// "Knowing before and after" adds: the confirm watchdog armed before, the health checks
/// after, a rollback when either fails and `rollback` is set. Also says whether krops records
/// the activation (not when a fired or unconfirmed watchdog writes its own verdict).
fn deploy(
    host: &Transport,
    target: &Transport,
    deployment: &Deployment,
    (operation, reboot): (&str, Option<std::time::Duration>),
    profile_before: Option<&str>,
    reporter: &Reporter,
) -> (Result<(), DeployError>, bool) {
    let reboot = reboot.filter(|_| crate::reboot::fits(operation));
    let guarded = recovery::checks_after(operation) || reboot.is_some();
    let watchdog = match deployment.confirm_timeout {
        seconds if seconds > 0 && guarded => match recovery::arm(target, seconds, operation, reporter) {
            Ok(watchdog) => Some(watchdog),
            Err(error) => return (Err(error), false),
        },
        _ => None,
    };
    let script = activation::deploy_script(deployment, operation);
    let argv = host.shell(&script, &[], &[], Tty::No);
    let mut result = activate(host, &argv, "nixos-rebuild", (Io::Forwarded, Stage::Activate), reporter);
    // After a reboot the run's connection is gone: checks go over new ones.
    let mut checked = target.clone();
    if let (Ok(()), Some(timeout)) = (&result, reboot) {
        result = timed(reporter, &target.host_label(), Stage::Reboot, || {
            crate::reboot::reboot(target, timeout, reporter)
        });
        checked = crate::reboot::reconnected(target);
    }
    if result.is_ok() && guarded && !deployment.health_checks.is_empty() {
        result = timed(reporter, &target.host_label(), Stage::HealthCheck, || {
            recovery::run_checks(&checked, &deployment.health_checks, reporter)
        });
    }
    let wants_rollback = deployment.rollback && recovery::rolls_back_after(operation);
    let mut watchdog_records = false;
    match (watchdog, &mut result) {
        (None, Err(error)) if wants_rollback => {
            error.rollback =
                Some(recovery::roll_back(host, target, deployment, operation, profile_before, reporter));
        }
        (None, _) => {}
        // The watchdog first: krops and it must never both roll back.
        (Some(watchdog), Err(error)) if wants_rollback => match recovery::disarm(target, &watchdog, reporter)
        {
            Some(fired) if fired.watchdog_records() => {
                error.rollback = fired.failure(target, &watchdog).and_then(|f| f.rollback);
                watchdog_records = true;
            }
            _ => {
                let note = recovery::roll_back(host, target, deployment, operation, profile_before, reporter);
                error.rollback = Some(note);
            }
        },
        // Confirmed even after a failed activation or check when krops does not roll back:
        // the watchdog guards reachability; `rollback` is what answers a failure.
        (Some(watchdog), _) => {
            let label = target.host_label();
            let started = Instant::now();
            reporter.stage_started(&label, Stage::Confirm);
            let confirmation = recovery::confirm(target, &watchdog, reporter);
            reporter.stage_finished(&label, Stage::Confirm, started.elapsed());
            watchdog_records = confirmation.watchdog_records();
            if let Some(unconfirmed) = confirmation.failure(target, &watchdog) {
                match &mut result {
                    Ok(()) => result = Err(unconfirmed),
                    Err(error) => error.rollback = unconfirmed.rollback,
                }
            }
        }
    }
    (result, !watchdog_records)
}

/// Runs `work` as `stage` on `host` (`None`: before any host), reporting its start and, when
/// it succeeds, its end.
fn timed<T>(
    reporter: &Reporter,
    host: &Option<String>,
    stage: Stage,
    work: impl FnOnce() -> Result<T, DeployError>,
) -> Result<T, DeployError> {
    let started = Instant::now();
    reporter.stage_started(host, stage);
    let result = work()?;
    reporter.stage_finished(host, stage, started.elapsed());
    Ok(result)
}

/// How `stage` failed on `host`, for a source or the whole stage.
fn failure(host: &Option<String>, stage: Stage, source: Option<&str>, message: String) -> DeployError {
    DeployError::new(host.clone(), stage, source.map(str::to_owned), None, message)
}

/// A failed child as a [`DeployError`] naming `program`: what the command line ran (through
/// `/bin/sh`, ssh or sudo, which say nothing). ssh's own failures (exit status 255: the
/// connection) are ssh's.
fn exec_failure(host: &Option<String>, stage: Stage, program: &str, error: exec::ExecError) -> DeployError {
    let status = match &error {
        // A child killed by a signal ends as a shell reports it: 128 + the signal.
        exec::ExecError::Failed { status, .. } => {
            status.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(status).map(|s| 128 + s))
        }
        _ => None,
    };
    let program = match (&error, status) {
        (exec::ExecError::Failed { program: ssh, .. }, Some(255)) if ssh == "ssh" => "ssh",
        _ => program,
    };
    let mut failed = DeployError::new(host.clone(), stage, None, Some(program.to_owned()), error.to_string());
    failed.exit_status = status;
    failed
}

/// How a user's command is named in errors: the command itself, shortened.
fn user_command(command: &str) -> String {
    let command = command.trim();
    match command.char_indices().nth(60) {
        Some((cut, _)) => format!("`{}…`", &command[..cut]),
        None => format!("`{command}`"),
    }
}

/// The program a plugin's error is about, from its first words (`rsync failed (…)`), where
/// the host ran it; a script run through ssh or a shell is named by its source type instead
/// (a pipe source by its command). A git source's errors are git's, even those of resolving
/// a ref in-process.
fn program_of_plugin_error(source: &crate::config::Source, message: &str) -> Option<String> {
    let ran = message.split_once(" failed (").map(|(program, _)| program).filter(|p| !p.contains(' '));
    let by_type = || match source.source_type.as_str() {
        "pipe" => source.attrs.get("command").and_then(|c| c.as_str()).map(user_command),
        "git" => Some("git".to_owned()),
        "derivation" => Some("nix-build".to_owned()),
        "file" => Some("rsync".to_owned()),
        "symlink" => Some("ln".to_owned()),
        "pass" => Some("gpg".to_owned()),
        "passage" => Some("age".to_owned()),
        _ => None,
    };
    match ran {
        Some("ssh" | "sudo" | "/bin/sh") => by_type(),
        Some(program) => Some(program.to_owned()),
        None if source.source_type == "git" => by_type(),
        None => None,
    }
}

/// Runs one stage's script on `host`, turning failure into a [`DeployError`].
fn stage_script(
    host: &Transport,
    stage: Stage,
    script: &str,
    args: &[String],
    reporter: &Reporter,
) -> Result<Vec<u8>, DeployError> {
    let argv = host.shell(script, args, &[], Tty::No);
    reporter.log(&host.host_label(), Level::Trace, format!("running {}", argv.display()));
    exec::run(&argv, &[], Input::Null, Output::Capture)
        .map_err(|e| exec_failure(&host.host_label(), stage, "sh", e))
}

/// The locks a deployment holds on its hosts (and whether each host is local), released when
/// it ends, and whether the holders were told an activation to record. A local holder is
/// waited for (it ends at once); so is every holder that has an activation to write into the
/// record (a `status` right after must see it). A remote holder with nothing left to do is let
/// go: waiting would cost a round trip, and the next run needs a connection of its own first.
struct Locks(Vec<(exec::Held, bool)>, bool);

impl Locks {
    /// Has every host record how activation ended (in its deploy record, when it has one).
    fn record_activation(&mut self, operation: &str, result: &Result<(), DeployError>) {
        let ended = match result {
            Ok(()) => "ok",
            Err(error) if error.rollback.as_deref() == Some("rolled back") => "rolled-back",
            Err(_) => "failed",
        };
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        for (lock, _) in &mut self.0 {
            lock.tell(&format!("activation {operation} {ended} {when}"));
        }
        self.1 = true;
    }
}

impl Drop for Locks {
    fn drop(&mut self) {
        let wait = self.1;
        for (lock, local) in self.0.drain(..) {
            if local || wait {
                lock.release();
            } else {
                lock.let_go();
            }
        }
    }
}

/// The sentinel stage and the target-side lock, in one round trip that stays open: `$0` the
/// run's marker, `$1` path,
/// `$2` what `force` creates (`file`, `dir` or nothing), `$3` who holds the lock, `$4` how long
/// to wait for it (empty: not at all). Answers `missing` (nothing was touched), `busy HOLDER`
/// (`busy foreign uid UID PID PID` when the lock's holder is no krops run), or `locked`, then holds `flock` on krops's own directory (`own_dir.rs`) until its input
/// closes: when krops releases it, exits, is killed, or its connection drops. The kernel
/// releases a flock with its holder, so a lock is never stale; and only the directory's owner
/// can open it, so no one else can hold it.
const LOCK_SCRIPT: &str = include_str!("sh/lock_script.sh");

fn lock_with_sentinel(
    host: &Transport,
    deployment: &Deployment,
    fingerprints: &BTreeMap<String, String>,
    wait_lock: Option<u64>,
    origin: &Origin,
    reporter: &Reporter,
) -> Result<(exec::Held, record::Seen), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Sentinel, || {
        let path = host.target.path.clone();
        // With backup the sentinel must be a directory (it holds the backup), so force creates
        // it as one; otherwise as krops does, an empty file.
        let create = match (deployment.force, deployment.backup) {
            (false, _) => "",
            (true, true) => "dir",
            (true, false) => "file",
        };
        let holder = format!("{}@{}", origin.user, origin.host);
        let wait = wait_lock.map(|s| s.to_string()).unwrap_or_default();
        let mut args = vec![path.clone(), create.to_owned(), holder, wait];
        // The sources whose state decides whether they are unchanged.
        args.extend(fingerprints.keys().map(|name| {
            let source_type = deployment.source.get(name).map_or("", |s| s.source_type.as_str());
            record::state_argument(source_type, name)
        }));
        let script = crate::own_dir::with_functions(&format!("{}\n{LOCK_SCRIPT}", record::STATE_FUNCTION));
        let argv = host.shell(&script, &args, &[], Tty::No);
        reporter.log(&label, Level::Trace, format!("running {}", argv.display()));
        let fail = |message: String| failure(&label, Stage::Sentinel, None, message);
        let (held, answer, before) = exec::Held::start(&argv).map_err(|e| fail(e.to_string()))?;
        if answer == "locked" {
            return Ok((held, record::Seen::parse(&before)));
        }
        held.release();
        let waiting =
            if wait_lock.is_some() { "; gave up waiting" } else { "; wait for it with --wait-lock SECONDS" };
        let busy = |message: String| failure(&label, Stage::Lock, None, message);
        match answer.strip_prefix("busy") {
            Some(holder) => match holder.trim().strip_prefix("foreign ") {
                Some(process) => Err(busy(format!(
                    "{} is locked by a process that is no krops run ({process}){waiting}",
                    host.location(&path),
                ))),
                None => Err(busy(format!(
                    "{} is locked by another krops run ({}){waiting}",
                    host.location(&path),
                    holder.trim(),
                ))),
            },
            None => Err(fail(format!(
                "missing sentinel file: {}; create it, or set force = true",
                host.location(&format!("{path}/.populate"))
            ))),
        }
    })
}

fn backup(host: &Transport, reporter: &Reporter) -> Result<(), DeployError> {
    // The snapshot is written relative to the sentinel directory, entered once and checked:
    // inside the target, and writable by no one else (who could otherwise point `backup` or
    // anything below it elsewhere meanwhile).
    let script = include_str!("sh/backup_script.sh");
    timed(reporter, &host.host_label(), Stage::Backup, || {
        stage_script(host, Stage::Backup, script, std::slice::from_ref(&host.target.path), reporter).map(drop)
    })
}

/// Resolves every source (`Populator::prepare`) before any target is touched; returns the
/// deployment with the attributes to populate with.
/// Resolves every source (`prepare`) and fingerprints it, before anything is written on any
/// target; returns the deployment with the attributes to populate with, and the fingerprints.
fn prepare(
    deployment: &Deployment,
    target: &Transport,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(Deployment, BTreeMap<String, String>), DeployError> {
    timed(reporter, &None, Stage::Prepare, || {
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let prepared = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            let fail = |message: String| {
                let program = program_of_plugin_error(source, &message);
                DeployError::new(None, Stage::Prepare, Some(name.to_string()), program, message)
            };
            let plugin = registry.plugin(&source.source_type).map_err(fail)?;
            let handle = HostHandle::for_target(target, reporter);
            let attrs = plugin.prepare(name, source.attrs.clone(), &handle).map_err(fail)?;
            // A source that cannot say what it would ship is simply always populated.
            let fingerprint = plugin.fingerprint(name, attrs.clone(), &handle).unwrap_or_else(|e| {
                reporter.log(&None, Level::Debug, format!("{name}: no fingerprint ({e})"));
                None
            });
            let source = crate::config::Source { source_type: source.source_type.clone(), attrs };
            Ok(((*name).clone(), source, fingerprint))
        });
        let mut sources = BTreeMap::new();
        let mut fingerprints = BTreeMap::new();
        for result in prepared {
            let (name, source, fingerprint) = result?;
            if let Some(fingerprint) = fingerprint {
                fingerprints.insert(name.clone(), fingerprint);
            }
            sources.insert(name, source);
        }
        Ok((Deployment { source: sources, ..deployment.clone() }, fingerprints))
    })
}

/// How many sources of one host are populated at once. They are independent (each owns
/// `<path>/<name>`), and over a multiplexed connection their round trips overlap (as many as
/// the connection has sessions free; see `ssh::SESSIONS_PER_CONNECTION`).
const SOURCES_AT_ONCE: usize = 8;

/// Populates every source but the `unchanged` ones (reported as such).
fn populate(
    host: &Transport,
    deployment: &Deployment,
    registry: &Registry,
    unchanged: &BTreeSet<String>,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    timed(reporter, &host.host_label(), Stage::Populate, || {
        for (name, source) in deployment.source.iter().filter(|(name, _)| unchanged.contains(*name)) {
            reporter.emit(Event::SourcePopulated {
                deployment: reporter.deployment.clone(),
                host: host.host_label(),
                source: name.clone(),
                source_type: source.source_type.clone(),
                millis: 0,
                report: serde_json::json!({ "unchanged": true }),
            });
        }
        let sources: Vec<(&String, &crate::config::Source)> =
            deployment.source.iter().filter(|(name, _)| !unchanged.contains(*name)).collect();
        let parents = crate::nested::parents(deployment);
        if !sources.is_empty() && !parents.is_empty() {
            let mut args = vec![host.target.path.clone()];
            args.extend(parents);
            stage_script(host, Stage::Populate, crate::nested::MAKE_PARENTS_SCRIPT, &args, reporter)?;
        }
        let results = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            populate_source(host, name, source, registry, reporter)
        });
        // The first failing source in configuration order, whatever finished first.
        results.into_iter().collect::<Result<Vec<()>, DeployError>>().map(drop)
    })
}

fn populate_source(
    host: &Transport,
    name: &str,
    source: &crate::config::Source,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    let fail = |message: String| {
        let program = program_of_plugin_error(source, &message);
        DeployError::new(label.clone(), Stage::Populate, Some(name.to_owned()), program, message)
    };
    let plugin = registry.plugin(&source.source_type).map_err(fail)?;
    let handle = HostHandle::for_target(host, reporter);
    let started = Instant::now();
    let (directory, leaf) = crate::config::placement(&host.target.path, name);
    let report = plugin.populate(&handle, &leaf, source.attrs.clone(), &directory).map_err(fail)?;
    reporter.emit(Event::SourcePopulated {
        deployment: reporter.deployment.clone(),
        host: label.clone(),
        source: name.to_owned(),
        source_type: source.source_type.clone(),
        millis: started.elapsed().as_millis(),
        report,
    });
    Ok(())
}

/// Reads the deploy record and every configured source's state on `host`, without a lock and
/// without writing, and reports them (`Event::Status`).
fn status(host: &Transport, deployment: &Deployment, reporter: &Reporter) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Status, || {
        let mut args = vec![host.target.path.clone()];
        args.extend(deployment.source.iter().map(|(name, s)| record::state_argument(&s.source_type, name)));
        let script = crate::own_dir::with_functions(&format!("{}\n{STATUS_SCRIPT}", record::STATE_FUNCTION));
        let lines = stage_script(host, Stage::Status, &script, &args, reporter)?;
        let lines: Vec<String> = String::from_utf8_lossy(&lines).lines().map(str::to_owned).collect();
        let seen = record::Seen::parse(&lines);
        let sources = deployment
            .source
            .keys()
            .map(|name| {
                let state = seen.states.get(name).map_or("unknown", String::as_str);
                let verdict = match seen.states_recorded.get(name) {
                    None => "not recorded",
                    Some(_) if state == "absent" => "missing",
                    Some(recorded) if recorded == state => "as recorded",
                    Some(_) => "drifted",
                };
                let (source_type, commit) = seen.kinds.get(name).cloned().unzip();
                crate::events::SourceStatus {
                    name: name.clone(),
                    verdict: verdict.to_owned(),
                    source_type,
                    commit: commit.flatten(),
                }
            })
            .collect();
        reporter.emit(Event::Status {
            deployment: reporter.deployment.clone(),
            host: label.clone(),
            deployed: !seen.header.is_empty(),
            record: seen.header,
            sources,
        });
        Ok(())
    })
}

/// Asks every source's plugin what populating it would change on `host` (the target: a build
/// host gets the same sources), and reports each answer; nothing is written, no lock taken.
fn diff(
    host: &Transport,
    deployment: &Deployment,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Diff, || {
        if !deployment.force {
            let sentinel = format!("{}/.populate", host.target.path.trim_end_matches('/'));
            let there = stage_script(
                host,
                Stage::Diff,
                "[ -e \"$1\" ] || echo missing",
                std::slice::from_ref(&sentinel),
                reporter,
            )?;
            if !there.is_empty() {
                reporter.log(
                    &label,
                    Level::Warn,
                    format!("populate would fail here: missing sentinel file: {}", host.location(&sentinel)),
                );
            }
        }
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let results = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            let fail = |message: String| {
                let program = program_of_plugin_error(source, &message);
                DeployError::new(label.clone(), Stage::Diff, Some(name.to_string()), program, message)
            };
            let plugin = registry.plugin(&source.source_type).map_err(fail)?;
            let handle = HostHandle::for_target(host, reporter);
            let (directory, leaf) = crate::config::placement(&host.target.path, name);
            plugin.diff(&handle, &leaf, source.attrs.clone(), &directory).map_err(fail)
        });
        // Reported in configuration order, whichever finished first; a failed source (populate
        // would fail too) fails the deployment after the others are told.
        let mut failed = None;
        for ((name, source), result) in sources.iter().zip(results) {
            match result {
                Ok(diff) => reporter.emit(Event::Diff {
                    deployment: reporter.deployment.clone(),
                    host: label.clone(),
                    source: (*name).clone(),
                    source_type: source.source_type.clone(),
                    changes: diff.map(|d| d.changes),
                }),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    })
}

/// `$1` path, then `KIND NAME` per source: the record's lines and each source's state.
const STATUS_SCRIPT: &str = include_str!("sh/status_script.sh");

/// Records what was populated (fingerprints, and the states they left on `host`), so that the
/// next run can skip what is still the same.
fn write_record(
    host: &Transport,
    deployment: &Deployment,
    fingerprints: &BTreeMap<String, String>,
    origin: &Origin,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let mut args = vec![
        host.target.path.clone(),
        format!("{}@{}", origin.user, origin.host),
        env!("CARGO_PKG_VERSION").to_owned(),
    ];
    args.extend(record::write_arguments(fingerprints, &deployment.source));
    let script =
        crate::own_dir::with_functions(&format!("{}\n{}", record::STATE_FUNCTION, record::WRITE_SCRIPT));
    stage_script(host, Stage::Populate, &script, &args, reporter).map(drop)
}

/// Where an activation command's input and output go.
enum Io {
    /// Output forwarded line by line as events (deploy, build).
    Forwarded,
    /// The user's terminal (`run`: the command may be interactive).
    Terminal,
}

/// Runs the activation command (`program` names it in errors). With forwarded output the
/// child's stderr was shown line by line already: the error keeps only its headline.
fn activate(
    host: &Transport,
    argv: &Argv,
    program: &str,
    (io, stage): (Io, Stage),
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, stage, || {
        let forward = |_: Stream, line: &str| reporter.output(&label, stage, line);
        let forwarded = matches!(io, Io::Forwarded);
        let (input, output) = match io {
            Io::Forwarded => (Input::Null, Output::Lines(&forward)),
            Io::Terminal => (Input::Inherit, Output::Inherit),
        };
        reporter.log(&label, Level::Trace, format!("running {}", argv.display()));
        exec::run(argv, &[], input, output).map(drop).map_err(|error| {
            let stderr = match &error {
                exec::ExecError::Failed { stderr, status, .. } if forwarded => {
                    Some((stderr.clone(), *status))
                }
                _ => None,
            };
            let mut failed = exec_failure(&label, stage, program, error);
            let program = failed.program.clone().unwrap_or_default();
            match (stderr, failed.exit_status) {
                (Some((stderr, status)), _) => {
                    // The output was shown as it came; `Display` says so, `--json` carries it.
                    failed.message = format!("{program} failed ({status})");
                    failed.headline = match crate::events::headline(&stderr) {
                        line if line.is_empty() => failed.message.clone(),
                        line => line,
                    };
                    failed.output = Some(stderr);
                }
                // The user's terminal saw its output; krops only knows how it ended.
                (None, Some(code)) if !forwarded => {
                    failed.message = format!("{program} exited with status {code}");
                    failed.headline = failed.message.clone();
                }
                _ => {}
            }
            failed
        })
    })
}
