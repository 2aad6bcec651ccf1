//! `krops deploy --reboot`: after a `switch` or `boot` activation, the target reboots into the
//! new system and krops waits for it to come back with a new boot id (the kernel's
//! `/proc/sys/kernel/random/boot_id`, new on every boot), over new connections, before the
//! health checks.

use std::time::{Duration, Instant};

use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self, Input, Output};
use crate::transport::{Transport, Tty};

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

/// Reboots, detached from the session that asks (which the reboot ends), a second later.
const REBOOT: &str = "setsid -f sh -c 'sleep 1; exec reboot' < /dev/null > /dev/null 2>&1";

/// How long one attempt to reach the rebooting host may take, and the pause between attempts.
const ATTEMPT_TIMEOUT: u64 = 5;
const PAUSE: Duration = Duration::from_secs(2);

/// Which operations leave a new system to reboot into.
pub fn fits(operation: &str) -> bool {
    matches!(operation, "switch" | "boot")
}

/// Reboots `target` and waits, at most `timeout`, until it answers with another boot id.
pub fn reboot(target: &Transport, timeout: Duration, reporter: &Reporter) -> Result<(), DeployError> {
    let label = target.host_label();
    let fail = |message: String| {
        DeployError::new(label.clone(), Stage::Reboot, None, Some("reboot".to_owned()), message)
    };
    let before = boot_id(target).map_err(|e| fail(format!("cannot read the boot id: {e}")))?;
    reporter.log(&label, Level::Info, format!("rebooting (boot id {before})"));
    let argv = target.shell(REBOOT, &[], &[], Tty::No);
    exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| fail(format!("cannot reboot: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        std::thread::sleep(PAUSE);
        match boot_id(&target.new_connection(ATTEMPT_TIMEOUT)) {
            Ok(now) if now != before => {
                reporter.log(&label, Level::Info, format!("back with boot id {now}"));
                return Ok(());
            }
            Ok(_) => last = "it still runs the same boot".to_owned(),
            Err(e) => last = e,
        }
        reporter.log(&label, Level::Debug, format!("not back yet: {last}"));
    }
    Err(fail(format!(
        "{} did not come back with a new boot id within {} s ({last})",
        label.as_deref().unwrap_or("this machine"),
        timeout.as_secs()
    )))
}

/// The target over connections of their own: the run's went down with the reboot.
pub fn reconnected(target: &Transport) -> Transport {
    target.new_connection(ATTEMPT_TIMEOUT)
}

fn boot_id(target: &Transport) -> Result<String, String> {
    let argv = target.shell(BOOT_ID, &[], &[], Tty::No);
    let out = exec::run(&argv, &[], Input::Null, Output::Capture).map_err(|e| e.to_string())?;
    let id = String::from_utf8_lossy(&out).trim().to_owned();
    if id.is_empty() {
        return Err("an empty boot id".to_owned());
    }
    Ok(id)
}
