//! After a deploy's activation (SPEC "Knowing before and after"): health checks, rollback,
//! and the confirm watchdog. The watchdog is a detached shell on the target, armed before
//! activation: unless krops confirms over a *new* connection within `confirmTimeout`, it rolls
//! back there itself, for configurations that lock krops out.
//!
//! Rolling back is guarded by the system profile: when the profile exists and still names the
//! generation it named before activation (the new system never became a generation, e.g. its
//! build failed), there is nothing to roll back, and `--rollback` would go one generation too
//! far.

use std::time::{Duration, Instant, SystemTime};

use crate::config::{Deployment, HealthCheck, Probe};
use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self, Input, Output, Stream};
use crate::own_dir;
use crate::shell_words::join;
use crate::transport::{Transport, Tty};

/// The operations after which health checks run and the watchdog guards the new system.
pub fn checks_after(operation: &str) -> bool {
    matches!(operation, "switch" | "test")
}

/// The operations whose failure `rollback = true` undoes: those that change the system
/// (`switch` and `boot` make a generation; `test` only activates one).
pub fn rolls_back_after(operation: &str) -> bool {
    matches!(operation, "switch" | "test" | "boot")
}

/// The system profile (a NixOS machine's generations), read before activation.
pub const PROFILE: &str = "/nix/var/nix/profiles/system";

/// Pause between two attempts of a health check.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs every check in order, each until it passes or its attempts are used up; the first
/// failing check fails the deployment.
pub fn run_checks(
    target: &Transport,
    checks: &[HealthCheck],
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = target.host_label();
    for check in checks {
        let attempts = check.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            reporter.log(
                &label,
                Level::Debug,
                format!("health check {} (attempt {attempt} of {attempts})", check.label()),
            );
            let result = match &check.probe {
                Probe::Command { command } => command_check(target, command, check.timeout, reporter),
                Probe::Url { url, status } => url_check(url, *status, check.timeout),
            };
            match result {
                Ok(()) => break,
                Err(why) if attempt >= attempts => {
                    let tries = if attempts > 1 { format!(" ({attempts} attempts)") } else { String::new() };
                    return Err(DeployError::new(
                        label.clone(),
                        Stage::HealthCheck,
                        None,
                        Some("health check".to_owned()),
                        format!("health check {} failed{tries}: {why}", check.label()),
                    ));
                }
                Err(why) => {
                    reporter.log(
                        &label,
                        Level::Info,
                        format!(
                            "health check {} failed (attempt {attempt} of {attempts}): {why}; retrying",
                            check.label()
                        ),
                    );
                    std::thread::sleep(RETRY_PAUSE);
                    attempt += 1;
                }
            }
        }
    }
    Ok(())
}

/// `/bin/sh -c COMMAND` on the target, ended by `timeout` there (ending the local ssh client
/// would leave the remote command running). `timeout` runs it in a process group of its own;
/// whatever the command left running there when it ended (`sleep 60 &`) is ended with it, for
/// it would hold the connection open, and the check with it, until it exits.
const COMMAND_CHECK_SCRIPT: &str = include_str!("sh/command_check_script.sh");

fn command_check(target: &Transport, command: &str, seconds: u64, reporter: &Reporter) -> Result<(), String> {
    let script = COMMAND_CHECK_SCRIPT;
    let argv = target.shell(script, &[seconds.to_string(), command.to_owned()], &[], Tty::No);
    reporter.log(&target.host_label(), Level::Trace, format!("running {}", argv.display()));
    match exec::run(&argv, &[], Input::Null, Output::Capture) {
        Ok(_) => Ok(()),
        Err(exec::ExecError::Failed { status, stderr, stdout, .. }) => {
            let said = crate::events::headline(&format!("{}\n{stderr}", String::from_utf8_lossy(&stdout)));
            let how = match status.code() {
                // `timeout` says 124, or 137 when the command needed its KILL.
                Some(124 | 137) => format!("timed out after {seconds} s"),
                Some(code) => format!("exited with status {code}"),
                None => format!("ended by {status}"),
            };
            Err(if said.is_empty() { how } else { format!("{how}: {said}") })
        }
        Err(other) => Err(other.to_string()),
    }
}

/// An HTTP GET from this machine, passing when the response's status is `expected`.
fn url_check(url: &str, expected: u16, seconds: u64) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(seconds)))
        .http_status_as_error(false)
        // A redirect is an answer of its own: `status = 302` can be checked, and a failure is
        // never reported against an address the check does not name.
        .max_redirects(0)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(response) if response.status().as_u16() == expected => Ok(()),
        Ok(response) => Err(format!("status {}, expected {expected}", response.status().as_u16())),
        Err(ureq::Error::Timeout(_)) => Err(format!("no answer within {seconds} s")),
        Err(error) => Err(crate::redact::credentials(&error.to_string()).into_owned()),
    }
}

/// Undoes a failed `operation` and returns what to add to the failure: `rolled back`, or why
/// not. `switch` and `boot`: `nixos-rebuild OPERATION --rollback` on the activation host, with
/// the deployment's sudo and host flags, unless the target's system profile shows nothing was
/// switched. `test` makes no generation: the profile's current one is activated again.
pub fn roll_back(
    activation_host: &Transport,
    target: &Transport,
    deployment: &Deployment,
    operation: &str,
    profile_before: Option<&str>,
    reporter: &Reporter,
) -> String {
    let (host, script) = if operation == "test" {
        (target, REACTIVATE_SCRIPT.to_owned())
    } else {
        if let Some(before) = profile_before.filter(|p| !p.is_empty()) {
            let argv = target.shell("readlink -- \"$1\" || true", &[PROFILE.to_owned()], &[], Tty::No);
            if let Ok(now) = exec::run(&argv, &[], Input::Null, Output::Capture) {
                if String::from_utf8_lossy(&now).trim() == before {
                    return "not rolled back: the system profile did not change".to_owned();
                }
            }
        }
        (activation_host, rollback_script(deployment, operation))
    };
    let label = host.host_label();
    let argv = host.shell(&script, &[PROFILE.to_owned()], &[], Tty::No);
    reporter.log(&label, Level::Info, "rolling back".to_owned());
    reporter.log(&label, Level::Trace, format!("running {}", argv.display()));
    let forward = |_: Stream, line: &str| reporter.output(&label, Stage::Activate, line);
    match exec::run(&argv, &[], Input::Null, Output::Lines(&forward)) {
        Ok(_) => "rolled back".to_owned(),
        Err(exec::ExecError::Failed { stderr, .. }) => {
            format!("rollback failed: {}", crate::events::headline(&stderr))
        }
        Err(other) => format!("rollback failed: {other}"),
    }
}

/// After a failed `test`, the system profile's generation (`$1`), activated again.
const REACTIVATE_SCRIPT: &str = include_str!("sh/reactivate_script.sh");

/// The rollback command line: like the deploy's, without building anything.
fn rollback_script(deployment: &Deployment, operation: &str) -> String {
    let target = &deployment.target;
    let mut args = vec![operation.to_owned(), "--rollback".to_owned()];
    if let Some(build) = &deployment.build_target {
        args.extend(["--build-host".into(), build.user_at_host()]);
        args.extend(["--target-host".into(), target.user_at_host()]);
    }
    if target.sudo {
        args.push("--use-remote-sudo".into());
    }
    format!("nixos-rebuild {}", join(&args))
}

/// An armed watchdog: when it fires, unless confirmed, and its process on the target.
pub struct Watchdog {
    pub deadline: Instant,
    pub fires_at: SystemTime,
    pub pid: String,
}

/// `$1` path, `$2` seconds, `$3` the operation it guards (`switch` or `test`). Starts the
/// watchdog, detached from the connection (its own session, no inherited descriptors), and
/// leaves its PID in `watchdog`, the armed file, in krops's own directory (`own_dir.rs`), which
/// is also the watchdog's working directory: it uses no other name. Whoever renames that file
/// first decides: krops confirming (`watchdog.confirmed`) or the watchdog firing
/// (`watchdog.fired`, which then holds its log). Until then no other run takes the target's
/// lock (see `pipeline::LOCK_SCRIPT`). The watchdog records what it did as the record's last
/// activation. Answers the watchdog's PID.
const ARM_SCRIPT: &str = include_str!("sh/arm_script.sh");

/// Arms the watchdog on `target` (over the run's connection), before activation.
pub fn arm(
    target: &Transport,
    seconds: u64,
    operation: &str,
    reporter: &Reporter,
) -> Result<Watchdog, DeployError> {
    let label = target.host_label();
    let args = [target.target.path.clone(), seconds.to_string(), operation.to_owned()];
    let argv = target.shell(&own_dir::with_functions(ARM_SCRIPT), &args, &[], Tty::No);
    reporter.log(&label, Level::Trace, format!("running {}", argv.display()));
    let armed_at = Instant::now();
    let answer = exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| {
        DeployError::new(
            label.clone(),
            Stage::Confirm,
            None,
            Some("sh".to_owned()),
            format!("cannot arm the confirm watchdog: {e}"),
        )
    })?;
    let watchdog = Watchdog {
        deadline: armed_at + Duration::from_secs(seconds),
        fires_at: SystemTime::now() + Duration::from_secs(seconds),
        pid: String::from_utf8_lossy(&answer).trim().to_owned(),
    };
    reporter.emit(crate::events::Event::WatchdogArmed {
        deployment: reporter.deployment.clone(),
        host: label,
        fires_at: humantime::format_rfc3339_seconds(watchdog.fires_at).to_string(),
    });
    Ok(watchdog)
}

/// `$1` path, `$2` the watchdog's PID: takes the armed file before the watchdog does, and ends
/// the watchdog (its whole session). The watchdog's own working directory is where its files
/// are, even when someone renamed krops's directory meanwhile; once it has ended, krops's
/// directory is. Answers `confirmed`; `fired VERDICT` when the watchdog was first
/// (`rolled-back`, `rollback-failed`, `unchanged`, or `running` while it still rolls back);
/// `gone` when there is neither (removed by hand).
const CONFIRM_SCRIPT: &str = include_str!("sh/confirm_script.sh");

/// How long one attempt to reach the target over a new connection may take.
const RECONNECT_TIMEOUT: u64 = 5;

/// What became of an armed watchdog when krops came to confirm (or disarm) it.
pub enum Confirmation {
    Confirmed,
    /// It fired first; its verdict (`rolled-back`, `rollback-failed`, `unchanged`, `running`).
    Fired(String),
    /// Neither armed nor fired: removed by hand.
    Gone,
    /// No new connection reached the target before the deadline (why not).
    Unreachable(String),
}

impl Confirmation {
    /// Whether the watchdog writes the record's activation line (krops must not overwrite it).
    pub fn watchdog_records(&self) -> bool {
        matches!(self, Confirmation::Fired(_) | Confirmation::Unreachable(_))
    }

    /// What to tell about the new system when it was not confirmed, as a failure with the
    /// watchdog's doing as its rollback note; `None` when confirmed.
    pub fn failure(&self, target: &Transport, watchdog: &Watchdog) -> Option<DeployError> {
        let fires_at = humantime::format_rfc3339_seconds(watchdog.fires_at);
        let (program, message, note) = match self {
            Confirmation::Confirmed => return None,
            Confirmation::Fired(verdict) => (
                "krops",
                format!("the confirm watchdog fired at {fires_at}, before krops confirmed"),
                fired_note(verdict),
            ),
            Confirmation::Gone => (
                "krops",
                "the confirm watchdog is gone from the target (removed by hand?)".to_owned(),
                "nothing guards the new system".to_owned(),
            ),
            Confirmation::Unreachable(why) => (
                "ssh",
                format!("cannot reach the target over a new connection to confirm: {why}"),
                format!("not confirmed: the target rolls itself back at {fires_at}"),
            ),
        };
        let mut failed =
            DeployError::new(target.host_label(), Stage::Confirm, None, Some(program.to_owned()), message);
        failed.rollback = Some(note);
        Some(failed)
    }
}

/// A fired watchdog's verdict, said for a summary.
fn fired_note(verdict: &str) -> String {
    match verdict {
        "rolled-back" => "the target rolled itself back".to_owned(),
        "rollback-failed" => "the target's own rollback failed".to_owned(),
        "unchanged" => {
            "the target found nothing to roll back (the system profile had not changed yet)".to_owned()
        }
        _ => "the target is rolling itself back".to_owned(),
    }
}

/// Runs `CONFIRM_SCRIPT` over `transport`: `None` when it could not (why not).
fn settle(transport: &Transport, path: &str, watchdog: &Watchdog) -> Result<Confirmation, String> {
    let args = [path.to_owned(), watchdog.pid.clone()];
    let argv = transport.shell(&own_dir::with_functions(CONFIRM_SCRIPT), &args, &[], Tty::No);
    match exec::run(&argv, &[], Input::Null, Output::Capture) {
        Ok(answer) => {
            let answer = String::from_utf8_lossy(&answer);
            Ok(match answer.trim().split_once(' ') {
                None if answer.trim() == "confirmed" => Confirmation::Confirmed,
                Some(("fired", verdict)) => Confirmation::Fired(verdict.to_owned()),
                _ => Confirmation::Gone,
            })
        }
        Err(exec::ExecError::Failed { stderr, .. }) => Err(crate::events::headline(&stderr)),
        Err(other) => Err(other.to_string()),
    }
}

/// Confirms the new system over a *new* connection (the run's own may survive a change that
/// locks out everyone else), trying until the watchdog's deadline.
pub fn confirm(target: &Transport, watchdog: &Watchdog, reporter: &Reporter) -> Confirmation {
    let label = target.host_label();
    let fresh = target.new_connection(RECONNECT_TIMEOUT);
    loop {
        reporter.log(&label, Level::Debug, "confirming the new system over a new connection".to_owned());
        match settle(&fresh, &target.target.path, watchdog) {
            Ok(confirmation) => return confirmation,
            Err(why) if Instant::now() + RETRY_PAUSE >= watchdog.deadline => {
                return Confirmation::Unreachable(why)
            }
            Err(why) => {
                reporter.log(
                    &label,
                    Level::Info,
                    format!("cannot confirm yet over a new connection ({why}); retrying"),
                );
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Ends the watchdog before krops rolls back itself (over the run's connection, else a new
/// one): two rollbacks would go back two generations. `None` when neither reached it.
pub fn disarm(target: &Transport, watchdog: &Watchdog, reporter: &Reporter) -> Option<Confirmation> {
    for transport in [target.clone(), target.new_connection(RECONNECT_TIMEOUT)] {
        if let Ok(confirmation) = settle(&transport, &target.target.path, watchdog) {
            return Some(confirmation);
        }
    }
    reporter.log(
        &target.host_label(),
        Level::Warn,
        "could not disarm the confirm watchdog; it may roll back once more".to_owned(),
    );
    None
}
