//! The activation stage: the deploy, build, run and exec commands, and around a deploy's
//! activation the confirm watchdog, `--reboot`, the health checks and the rollback.

use std::time::Instant;

use crate::activation;
use crate::config::Deployment;
use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self, Argv, Input, Output, Stream};
use crate::recovery;
use crate::stage::{exec_failure, timed};
use crate::transport::{Transport, Tty};

/// `deploy`'s activation on `host` (the build host, else the target), then what SPEC's
/// "Knowing before and after" adds: the confirm watchdog armed before, the health checks
/// after, a rollback when either fails and `rollback` is set. Also says whether krops records
/// the activation (not when a fired or unconfirmed watchdog writes its own verdict).
pub(crate) fn deploy(
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

/// Where an activation command's input and output go.
pub(crate) enum Io {
    /// Output forwarded line by line as events (deploy, build).
    Forwarded,
    /// The user's terminal (`run`: the command may be interactive).
    Terminal,
}

/// Runs the activation command (`program` names it in errors). With forwarded output the
/// child's stderr was shown line by line already: the error keeps only its headline.
pub(crate) fn activate(
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
