//! The target lock and the sentinel: one long-lived script per host (`sh/lock_script.sh`)
//! checks (or makes, with `force`) the sentinel, takes a flock on krops's own directory and
//! reports each source's state and the deploy record; it holds the lock until krops lets its
//! input go ([`Locks`]), and writes how activation ended into the record.

use std::collections::BTreeMap;

use crate::config::Deployment;
use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self};
use crate::record;
use crate::stage::{failure, timed};
use crate::target::Origin;
use crate::transport::{Transport, Tty};

/// The locks a deployment holds on its hosts (and whether each host is local), released when
/// it ends, and whether the holders were told an activation to record. A local holder is
/// waited for (it ends at once); so is every holder that has an activation to write into the
/// record (a `status` right after must see it). A remote holder with nothing left to do is let
/// go: waiting would cost a round trip, and the next run needs a connection of its own first.
pub(crate) struct Locks(pub(crate) Vec<(exec::Held, bool)>, pub(crate) bool);

impl Locks {
    /// Has every host record how activation ended (in its deploy record, when it has one).
    pub(crate) fn record_activation(&mut self, operation: &str, result: &Result<(), DeployError>) {
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
pub(crate) const LOCK_SCRIPT: &str = include_str!("sh/lock_script.sh");

pub(crate) fn lock_with_sentinel(
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
            (true, false) => "empty",
        };
        let holder = format!("{}@{}", origin.user, origin.host);
        let wait = wait_lock.map(|s| s.to_string()).unwrap_or_default();
        let mut args = vec![path.clone(), create.to_owned(), holder, wait];
        // The sources whose state decides whether they are unchanged.
        args.extend(fingerprints.keys().filter_map(|name| {
            deployment.source.get(name).map(|source| record::state_argument(source, name))
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
