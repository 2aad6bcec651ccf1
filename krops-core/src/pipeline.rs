//! The stage pipeline: sentinel, backup, populate, activate, per SPEC. Deployments run
//! concurrently (bounded by `jobs`); within one, stages run in order and the first failure
//! stops it, so nothing is activated after a failed stage.

use std::sync::Arc;
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RStr, RString};
use tokio::sync::{mpsc::UnboundedSender, Semaphore};

use crate::abi::TargetHandle_TO;
use crate::activation;
use crate::concurrent;
use crate::config::Deployment;
use crate::events::{DeployError, Event, Reporter, Stage};
use crate::exec::{self, Argv, Input, Output, Stream};
use crate::handle::HostHandle;
use crate::loader::Registry;
use crate::plugin::{PopulateRequest, PrepareRequest};
use crate::ssh::Multiplexer;
use crate::target::Origin;
use crate::transport::{Transport, Tty};

/// What to do after populating.
#[derive(Debug, Clone)]
pub enum Action {
    Populate,
    Deploy { operation: Option<String> },
    Build { trace: bool },
    Run { argv: Option<Vec<String>> },
}

/// A whole run's inputs.
pub struct Run {
    pub action: Action,
    pub deployments: Vec<(String, Deployment)>,
    pub jobs: usize,
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
    let mut tasks = Vec::new();
    for (name, deployment) in run.deployments {
        let semaphore = semaphore.clone();
        let registry = registry.clone();
        let origin = origin.clone();
        let ssh = ssh.clone();
        let action = run.action.clone();
        let reporter = Reporter::new(name.clone(), events.clone());
        let task = tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let started = Instant::now();
            // Stages call plugins and wait for child processes: blocking work.
            let result = tokio::task::spawn_blocking({
                let reporter = reporter.clone();
                move || deploy_one(&deployment, &action, &registry, &origin, &ssh, &reporter)
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

/// A deployment whose task died (a krops bug): reported as a failure, never as success.
fn internal_error(join_error: tokio::task::JoinError) -> DeployError {
    failure(&None, Stage::Populate, None, format!("internal error: {join_error}"))
}

fn deploy_one(
    deployment: &Deployment,
    action: &Action,
    registry: &Registry,
    origin: &Origin,
    ssh: &Multiplexer,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let prepared = prepare(deployment, registry, reporter)?;
    let deployment = &prepared;
    let connect = |target: &crate::target::Target| {
        let transport = Transport::new(target.clone(), origin);
        ssh.connect(&transport)
            .map_err(|message| failure(&transport.host_label(), Stage::Sentinel, None, message))
    };
    let target = connect(&deployment.target)?;
    // krops populates the build host too when it differs from the target.
    let mut hosts = Vec::new();
    if let (Action::Deploy { .. }, Some(build)) = (action, &deployment.build_target) {
        hosts.push(connect(build)?);
    }
    hosts.push(target.clone());
    for host in &hosts {
        check_sentinel(host, deployment, reporter)?;
        if deployment.backup {
            backup(host, reporter)?;
        }
        populate(host, deployment, registry, reporter)?;
    }
    match action {
        Action::Populate => Ok(()),
        Action::Deploy { operation } => {
            let operation = operation.as_deref().unwrap_or(&deployment.operation);
            let host = hosts.first().unwrap_or(&target);
            let script = activation::deploy_script(deployment, operation);
            activate(host, &host.shell(&script, &[], &[], Tty::No), Io::Forwarded, reporter)
        }
        Action::Build { trace } => {
            let script = activation::build_script(&target.target, *trace || deployment.trace);
            activate(&target, &target.shell(&script, &[], &[], Tty::No), Io::Forwarded, reporter)
        }
        Action::Run { argv } => {
            let script = activation::run_script(deployment, argv.as_deref());
            let env = [("KROPS_TARGET_PATH", target.target.path.as_str())];
            let tty = if deployment.allocate_tty { Tty::Yes } else { Tty::No };
            activate(&target, &target.shell(&script, &[], &env, tty), Io::Terminal, reporter)
        }
    }
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
    DeployError { host: host.clone(), stage, source_name: source.map(str::to_owned), message }
}

/// Runs one stage's script on `host`, turning failure into a [`DeployError`].
fn stage_script(
    host: &Transport,
    stage: Stage,
    script: &str,
    args: &[String],
) -> Result<Vec<u8>, DeployError> {
    let argv = host.shell(script, args, &[], Tty::No);
    exec::run(&argv, &[], Input::Null, Output::Capture)
        .map_err(|e| failure(&host.host_label(), stage, None, e.to_string()))
}

fn check_sentinel(host: &Transport, deployment: &Deployment, reporter: &Reporter) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Sentinel, || {
        let path = host.target.path.clone();
        // With backup the sentinel must be a directory (it holds the backup), so force creates it
        // as one; otherwise as krops does, an empty file. Creation and check share one round trip.
        let create = match (deployment.force, deployment.backup) {
            (false, _) => "",
            (true, true) => r#"set -e; mkdir -p -- "$1"; [ -e "$1/.populate" ] || mkdir -- "$1/.populate"; "#,
            (true, false) => {
                r#"set -e; mkdir -p -- "$1"; [ -e "$1/.populate" ] || touch -- "$1/.populate"; "#
            }
        };
        let script = format!(r#"{create}if [ -e "$1/.populate" ]; then echo present; fi"#);
        let answer = stage_script(host, Stage::Sentinel, &script, std::slice::from_ref(&path))?;
        if answer.trim_ascii() != b"present" {
            let missing = format!("missing sentinel file: {}", host.location(&format!("{path}/.populate")));
            return Err(failure(&label, Stage::Sentinel, None, missing));
        }
        Ok(())
    })
}

fn backup(host: &Transport, reporter: &Reporter) -> Result<(), DeployError> {
    let script = r#"if [ ! -d "$1/.populate" ]; then
  echo "backup needs $1/.populate to be a directory" >&2; exit 1
fi
mkdir -p -- "$1/.populate/backup"
rsync -aAXF --delete --exclude /.populate --link-dest="$1" "$1/" "$1/.populate/backup/""#;
    timed(reporter, &host.host_label(), Stage::Backup, || {
        stage_script(host, Stage::Backup, script, std::slice::from_ref(&host.target.path)).map(drop)
    })
}

/// Resolves every source (`Populator::prepare`) before any target is touched; returns the
/// deployment with the attributes to populate with.
fn prepare(
    deployment: &Deployment,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<Deployment, DeployError> {
    timed(reporter, &None, Stage::Prepare, || {
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let prepared = concurrent::map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            let fail = |message: String| failure(&None, Stage::Prepare, Some(name), message);
            let plugin = registry
                .get(&source.source_type)
                .ok_or_else(|| fail(format!("no plugin for source type {:?}", source.source_type)))?;
            let request = PrepareRequest { name: name.to_string(), attrs: source.attrs.clone() };
            let request = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
            let attrs = plugin
                .populator
                .prepare(RStr::from(request.as_str()))
                .into_result()
                .map_err(|e| fail(RString::into_string(e)))?;
            let attrs = serde_json::from_str(&attrs)
                .map_err(|e| fail(format!("plugin returned malformed attributes: {e}")))?;
            Ok(((*name).clone(), crate::config::Source { source_type: source.source_type.clone(), attrs }))
        });
        let source = prepared.into_iter().collect::<Result<_, DeployError>>()?;
        Ok(Deployment { source, ..deployment.clone() })
    })
}

/// How many sources of one host are populated at once. They are independent (each owns
/// `<path>/<name>`), and over a multiplexed connection their round trips overlap; sshd's
/// default `MaxSessions` is 10 channels per connection.
const SOURCES_AT_ONCE: usize = 8;

fn populate(
    host: &Transport,
    deployment: &Deployment,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    timed(reporter, &host.host_label(), Stage::Populate, || {
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let results = concurrent::map(&sources, SOURCES_AT_ONCE, |(name, source)| {
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
    let fail = |message: String| failure(&label, Stage::Populate, Some(name), message);
    let plugin = registry
        .get(&source.source_type)
        .ok_or_else(|| fail(format!("no plugin for source type {:?}", source.source_type)))?;
    let request = PopulateRequest {
        name: name.to_owned(),
        attrs: source.attrs.clone(),
        target_path: host.target.path.clone(),
    };
    let request = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
    let handle = HostHandle { transport: host, reporter };
    let started = Instant::now();
    let report = plugin
        .populator
        .populate(TargetHandle_TO::from_ptr(&handle, TD_Opaque), RStr::from(request.as_str()))
        .into_result()
        .map_err(|e| fail(RString::into_string(e)))?;
    reporter.emit(Event::SourcePopulated {
        deployment: reporter.deployment.clone(),
        host: label.clone(),
        source: name.to_owned(),
        source_type: source.source_type.clone(),
        millis: started.elapsed().as_millis(),
        report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
    });
    Ok(())
}

/// Where an activation command's input and output go.
enum Io {
    /// Output forwarded line by line as events (deploy, build).
    Forwarded,
    /// The user's terminal (`run`: the command may be interactive).
    Terminal,
}

fn activate(host: &Transport, argv: &Argv, io: Io, reporter: &Reporter) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Activate, || {
        let forward = |_: Stream, line: &str| reporter.output(&label, line);
        let (input, output) = match io {
            Io::Forwarded => (Input::Null, Output::Lines(&forward)),
            Io::Terminal => (Input::Inherit, Output::Inherit),
        };
        exec::run(argv, &[], input, output)
            .map(drop)
            .map_err(|e| failure(&label, Stage::Activate, None, e.to_string()))
    })
}
