//! After a deploy's activation (SPEC "Knowing before and after"): health checks, rollback,
//! and the confirm watchdog. The watchdog is a detached shell on the target, armed before
//! activation: unless krops confirms over a *new* connection within `confirmTimeout`, it runs
//! `nixos-rebuild switch --rollback` there itself, for configurations that lock krops out.
//!
//! Rolling back is guarded by the system profile: when the profile exists and still names the
//! generation it named before activation (the new system never became a generation, e.g. its
//! build failed), there is nothing to roll back, and `--rollback` would go one generation too
//! far.

use std::time::{Duration, Instant, SystemTime};

use crate::config::{Deployment, HealthCheck, Probe};
use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self, Input, Output, Stream};
use crate::transport::{join, Transport, Tty};

/// The operations after which health checks run and the watchdog guards the new system.
pub fn checks_after(operation: &str) -> bool {
    matches!(operation, "switch" | "test")
}

/// The operations whose failure `rollback = true` undoes: those that change the system.
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
/// would leave the remote command running).
fn command_check(target: &Transport, command: &str, seconds: u64, reporter: &Reporter) -> Result<(), String> {
    let script = "exec timeout -k 2 \"$1\" /bin/sh -c \"$2\"";
    let argv = target.shell(script, &[seconds.to_string(), command.to_owned()], &[], Tty::No);
    reporter.log(&target.host_label(), Level::Trace, format!("running {}", argv.display()));
    match exec::run(&argv, &[], Input::Null, Output::Capture) {
        Ok(_) => Ok(()),
        Err(exec::ExecError::Failed { status, stderr, stdout, .. }) => {
            let said = crate::events::headline(&format!("{}\n{stderr}", String::from_utf8_lossy(&stdout)));
            let how = match status.code() {
                Some(124) => format!("timed out after {seconds} s"),
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
        .build()
        .into();
    match agent.get(url).call() {
        Ok(response) if response.status().as_u16() == expected => Ok(()),
        Ok(response) => Err(format!("status {}, expected {expected}", response.status().as_u16())),
        Err(ureq::Error::Timeout(_)) => Err(format!("no answer within {seconds} s")),
        Err(error) => Err(crate::redact::credentials(&error.to_string()).into_owned()),
    }
}

/// `nixos-rebuild switch --rollback` on the activation host, with the deployment's sudo and
/// host flags, unless the target's system profile shows nothing was switched. Returns what to
/// add to the failure: `rolled back`, or why not.
pub fn roll_back(
    activation_host: &Transport,
    target: &Transport,
    deployment: &Deployment,
    profile_before: Option<&str>,
    reporter: &Reporter,
) -> String {
    let label = activation_host.host_label();
    if let Some(before) = profile_before.filter(|p| !p.is_empty()) {
        let argv = target.shell("readlink -- \"$1\" || true", &[PROFILE.to_owned()], &[], Tty::No);
        if let Ok(now) = exec::run(&argv, &[], Input::Null, Output::Capture) {
            if String::from_utf8_lossy(&now).trim() == before {
                return "not rolled back: the system profile did not change".to_owned();
            }
        }
    }
    let argv = activation_host.shell(&rollback_script(deployment), &[], &[], Tty::No);
    reporter.log(&label, Level::Info, "rolling back: nixos-rebuild switch --rollback".to_owned());
    let forward = |_: Stream, line: &str| reporter.output(&label, line);
    match exec::run(&argv, &[], Input::Null, Output::Lines(&forward)) {
        Ok(_) => "rolled back".to_owned(),
        Err(exec::ExecError::Failed { stderr, .. }) => {
            format!("rollback failed: nixos-rebuild: {}", crate::events::headline(&stderr))
        }
        Err(other) => format!("rollback failed: {other}"),
    }
}

/// The rollback command line: like the deploy's, without building anything.
fn rollback_script(deployment: &Deployment) -> String {
    let target = &deployment.target;
    let mut args = vec!["switch".to_owned(), "--rollback".to_owned()];
    if let Some(build) = &deployment.build_target {
        args.extend(["--build-host".into(), build.user_at_host()]);
        args.extend(["--target-host".into(), target.user_at_host()]);
    }
    if target.sudo {
        args.push("--use-remote-sudo".into());
    }
    format!("nixos-rebuild {}", join(&args))
}

/// An armed watchdog: when it fires, unless confirmed.
pub struct Watchdog {
    pub deadline: Instant,
    pub fires_at: SystemTime,
}

/// `$1` path, `$2` seconds. Starts the watchdog, detached from the connection (its own
/// session, no inherited descriptors), and leaves its PID in `<path>/.krops-watchdog`: the
/// armed file. Whoever renames that file first decides: krops confirming
/// (`.krops-watchdog.confirmed`) or the watchdog firing (`.krops-watchdog.fired`, which then
/// holds its log). The lock holder of the run keeps the lock while an armed watchdog lives.
const ARM_SCRIPT: &str = r#"set -e
p=$1 seconds=$2
w="$p/.krops-watchdog"
rm -rf -- "$w" "$w.confirmed" "$w.fired"
profile=$(readlink -- /nix/var/nix/profiles/system 2>/dev/null || true)
: > "$w"
setsid /bin/sh -c '
w=$1 seconds=$2 before=$3
sleep "$seconds"
mv -T -- "$w" "$w.fired" 2>/dev/null || exit 0
exec >> "$w.fired" 2>&1
now=$(readlink -- /nix/var/nix/profiles/system 2>/dev/null || true)
if [ -n "$before" ] && [ "$now" = "$before" ]; then
  echo "not confirmed; nothing to roll back: the system profile did not change"
  exit 0
fi
echo "not confirmed within $seconds s: rolling back"
if nixos-rebuild switch --rollback; then result=rolled-back; else result=rollback-failed; fi
echo "$result"
rec="${w%/*}/.krops-record"
if [ -f "$rec" ] && [ ! -L "$rec" ]; then
  tmp=$(mktemp -- "$rec.XXXXXX")
  { grep -v "^activation " "$rec" || true
    printf "activation watchdog %s %s\n" "$result" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } > "$tmp"
  mv -fT -- "$tmp" "$rec"
fi
' krops-watchdog "$w" "$seconds" "$profile" < /dev/null > /dev/null 2>&1 &
echo $! > "$w""#;

/// Arms the watchdog on `target` (over the run's connection), before activation.
pub fn arm(target: &Transport, seconds: u64, reporter: &Reporter) -> Result<Watchdog, DeployError> {
    let label = target.host_label();
    let argv = target.shell(ARM_SCRIPT, &[target.target.path.clone(), seconds.to_string()], &[], Tty::No);
    reporter.log(&label, Level::Trace, format!("running {}", argv.display()));
    let armed_at = Instant::now();
    exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| {
        DeployError::new(
            label.clone(),
            Stage::Activate,
            None,
            Some("sh".to_owned()),
            format!("cannot arm the confirm watchdog: {e}"),
        )
    })?;
    Ok(Watchdog {
        deadline: armed_at + Duration::from_secs(seconds),
        fires_at: SystemTime::now() + Duration::from_secs(seconds),
    })
}

/// `$1` path: takes the armed file before the watchdog does, and ends the watchdog. Answers
/// `confirmed`, or `fired` when the watchdog was first.
const CONFIRM_SCRIPT: &str = r#"w="$1/.krops-watchdog"
if [ -f "$w" ] && [ ! -L "$w" ] && pid=$(cat -- "$w") && mv -T -- "$w" "$w.confirmed" 2>/dev/null; then
  case $pid in ''|*[!0-9]*) ;; *) kill -- "-$pid" 2>/dev/null || true ;; esac
  echo confirmed
else
  echo fired
fi"#;

/// How long one attempt to reach the target over a new connection may take.
const RECONNECT_TIMEOUT: u64 = 5;

/// Confirms the new system over a *new* connection (the run's own may survive a change that
/// locks out everyone else), trying until the watchdog's deadline.
pub fn confirm(target: &Transport, watchdog: &Watchdog, reporter: &Reporter) -> Result<(), String> {
    let fresh = target.new_connection(RECONNECT_TIMEOUT);
    let label = target.host_label();
    let argv = fresh.shell(CONFIRM_SCRIPT, std::slice::from_ref(&target.target.path), &[], Tty::No);
    let fires_at = humantime::format_rfc3339_seconds(watchdog.fires_at);
    loop {
        reporter.log(&label, Level::Debug, "confirming the new system over a new connection".to_owned());
        let why = match exec::run(&argv, &[], Input::Null, Output::Capture) {
            Ok(answer) if String::from_utf8_lossy(&answer).trim() == "confirmed" => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "the confirm watchdog fired before krops confirmed (at {fires_at}): the target rolls itself back"
                ))
            }
            Err(exec::ExecError::Failed { stderr, .. }) => crate::events::headline(&stderr),
            Err(other) => other.to_string(),
        };
        if Instant::now() + RETRY_PAUSE >= watchdog.deadline {
            return Err(format!(
                "cannot reach the target over a new connection to confirm ({why}); it rolls itself back at {fires_at}"
            ));
        }
        reporter.log(
            &label,
            Level::Info,
            format!("cannot confirm yet over a new connection ({why}); retrying"),
        );
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// Ends the watchdog after krops rolled back itself (over the run's connection, else a new
/// one): two rollbacks would go back two generations.
pub fn disarm(target: &Transport, reporter: &Reporter) {
    let label = target.host_label();
    for transport in [target.clone(), target.new_connection(RECONNECT_TIMEOUT)] {
        let argv = transport.shell(CONFIRM_SCRIPT, std::slice::from_ref(&target.target.path), &[], Tty::No);
        if exec::run(&argv, &[], Input::Null, Output::Capture).is_ok() {
            return;
        }
    }
    reporter.log(
        &label,
        Level::Warn,
        "could not disarm the confirm watchdog; it may roll back once more".to_owned(),
    );
}
