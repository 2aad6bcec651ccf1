//! The stage pipeline, which only orchestrates: deployments run concurrently (bounded by
//! `jobs`, and by the sessions of each ssh connection); within one, the stages (connect,
//! prepare, lock and sentinel, backup, populate, record, activate; see `lock.rs`,
//! `populate.rs`, `record.rs`, `activate.rs`, `diff.rs`) run in order and the first failure
//! stops it, so nothing is activated after a failed stage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc::UnboundedSender, Semaphore};

use crate::activate::{activate, deploy, Io};
use crate::activation;
use crate::config::Deployment;
use crate::diff::diff;
use crate::events::{DeployError, Event, Reporter, Stage};
use crate::loader::Registry;
use crate::lock::{lock_with_sentinel, Locks};
use crate::populate::{backup, populate, prepare};
use crate::record::{status, write_record};
use crate::ssh::{self, Multiplexer};
use crate::stage::{failure, user_command};
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
