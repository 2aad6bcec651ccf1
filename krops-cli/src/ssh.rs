//! One multiplexed ssh connection per target per run. The first use of a target starts an
//! OpenSSH ControlMaster (so `~/.ssh/config`, agents and prompts work as usual, and a prompt
//! appears once per host, not once per step); every later ssh and rsync rides on its socket.
//! Sockets live in a private 0700 directory that disappears, with every master, at shutdown.
//! A master that cannot connect or loses its server gives up after [`DEFAULT_OPTIONS`]' times,
//! unless the target's options or the user's ssh configuration say otherwise.
//!
//! A connection carries at most [`SESSIONS_PER_CONNECTION`] commands at once; the others
//! queue for a session ([`exec::Sessions`]). Past sshd's `MaxSessions` (10 by default) the
//! server would refuse a session and ssh would silently open a connection of its own (no
//! option turns that off): the cap keeps krops below it, and a guard makes a refused session
//! fail instead (see `Transport::ssh_base`). Each deployment's target lock holds a
//! session throughout, so at most [`DEPLOYMENTS_PER_CONNECTION`] deployments hold one
//! connection at once (the pipeline admits them), leaving the other sessions for work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::exec::{self, Background, Input, Output, Sessions};
use crate::target::Target;
use crate::transport::Transport;

/// The options every master gets unless the target's `extraOptions` or the user's ssh
/// configuration set them: (`ssh -G`'s name, its value when unset, the option). A host that
/// does not answer fails after 10 s (ConnectTimeout covers the TCP connect and ssh's banner
/// exchange); a server that stops answering later, while authenticating or deploying, after
/// 30 s (a keepalive every 10 s, and ssh's default ServerAliveCountMax of 3).
const DEFAULT_OPTIONS: [(&str, &str, &str); 2] =
    [("connecttimeout", "none", "ConnectTimeout=10"), ("serveraliveinterval", "0", "ServerAliveInterval=10")];

/// How many commands ride on one connection at once: sshd's default `MaxSessions` is 10, and a
/// session the server has just closed may still count there for a moment.
pub const SESSIONS_PER_CONNECTION: usize = 8;

/// How many deployments hold sessions of one connection at once. Each holds its lock's for its
/// whole run (two with a build host on the same connection), and needs more to work with.
pub const DEPLOYMENTS_PER_CONNECTION: usize = SESSIONS_PER_CONNECTION / 2;

/// What makes two targets share a connection: everything ssh connects with.
pub type Key = (String, String, Option<u16>, Vec<String>);

/// The connection a remote target rides on; `None` for a local one.
pub fn connection(transport: &Transport) -> Option<Key> {
    (!transport.local).then(|| key(&transport.target))
}

enum Slot {
    Connected(PathBuf, Sessions),
    Failed(String),
}

/// The run's ssh masters.
pub struct Multiplexer {
    dir: Mutex<Option<tempfile::TempDir>>,
    slots: Mutex<HashMap<Key, Arc<Mutex<Option<Slot>>>>>,
    masters: Mutex<Vec<Background>>,
    /// Names the sockets; a count of masters would race between concurrent starts.
    next_socket: std::sync::atomic::AtomicUsize,
    /// Held while a master authenticates when a terminal is attached, so that two hosts never
    /// prompt at once.
    prompt: Mutex<()>,
}

impl Multiplexer {
    pub fn new() -> std::io::Result<Multiplexer> {
        // Socket paths are limited to ~108 bytes; a long TMPDIR would not fit.
        let base = std::env::temp_dir();
        let base = if base.as_os_str().len() > 60 { PathBuf::from("/tmp") } else { base };
        let dir = tempfile::Builder::new().prefix("krops-ssh-").tempdir_in(base)?;
        // Whoever can reach a control socket can use the authenticated connection: 0700,
        // whatever the umask and tempfile's defaults.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Multiplexer {
            dir: Mutex::new(Some(dir)),
            slots: Mutex::new(HashMap::new()),
            masters: Mutex::new(Vec::new()),
            next_socket: std::sync::atomic::AtomicUsize::new(0),
            prompt: Mutex::new(()),
        })
    }

    /// Returns `transport` riding on its target's master, starting the master if this is the
    /// target's first use in this run. Local transports are returned unchanged.
    pub fn connect(&self, transport: &Transport) -> Result<Transport, String> {
        if transport.local {
            return Ok(transport.clone());
        }
        let slot = {
            let mut slots = self.slots.lock().map_err(|_| "ssh multiplexer poisoned")?;
            slots.entry(key(&transport.target)).or_default().clone()
        };
        // Concurrent deployments to one host wait here for the first one's master.
        let mut slot = slot.lock().map_err(|_| "ssh multiplexer poisoned")?;
        if slot.is_none() {
            *slot = Some(match self.start_master(transport) {
                Ok(socket) => Slot::Connected(socket, Sessions::new(SESSIONS_PER_CONNECTION)),
                Err(message) => Slot::Failed(message),
            });
        }
        match slot.as_ref() {
            Some(Slot::Connected(socket, sessions)) => Ok(Transport {
                control_socket: Some(socket.clone()),
                sessions: Some(sessions.clone()),
                ..transport.clone()
            }),
            Some(Slot::Failed(message)) => Err(message.clone()),
            None => Err("ssh master slot empty".to_owned()),
        }
    }

    fn start_master(&self, transport: &Transport) -> Result<PathBuf, String> {
        let socket = {
            let dir = self.dir.lock().map_err(|_| "ssh multiplexer poisoned")?;
            let dir = dir.as_ref().ok_or("the run is shutting down")?;
            let number = self.next_socket.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            dir.path().join(number.to_string())
        };
        // ssh takes an option's first value, and its command line's before its configuration's:
        // krops's defaults go only where neither the target nor the user set one. When `ssh -G`
        // fails, the master will fail too, and say why.
        let resolved = exec::run(&transport.resolved_config(), &[], Input::Null, Output::Capture)
            .map(|out| String::from_utf8_lossy(&out).into_owned())
            .unwrap_or_default();
        let argv = transport.master(&socket, &defaults(&resolved));
        let _prompting = if exec::prompts_allowed() { Some(self.prompt.lock()) } else { None };
        let master = Background::start(&argv).map_err(|e| e.to_string())?;
        let pid = master.pid();
        // Registered before it is ready, so that a shutdown meanwhile (Ctrl-C) ends it too.
        self.masters.lock().map_err(|_| "ssh multiplexer poisoned")?.push(master);
        while !socket_ready(&socket) {
            let exited = {
                let mut masters = self.masters.lock().map_err(|_| "ssh multiplexer poisoned")?;
                match masters.iter_mut().find(|m| m.pid() == pid) {
                    Some(master) => master.exited(),
                    None => return Err("the run is shutting down".to_owned()),
                }
            };
            if let Some(error) = exited {
                return Err(format!("cannot connect: {error}"));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        tracing::debug!(pid, socket = %socket.display(), "ssh master up");
        Ok(socket)
    }

    /// Ends every master and removes the control directory. Safe to call more than once.
    pub fn shutdown(&self) {
        if let Ok(mut masters) = self.masters.lock() {
            for master in masters.iter_mut() {
                master.stop();
            }
            masters.clear();
        }
        if let Ok(mut dir) = self.dir.lock() {
            if let Some(dir) = dir.take() {
                let _ = dir.close();
            }
        }
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn key(target: &Target) -> Key {
    (target.user.clone(), target.host.clone(), target.port, target.extra_options.clone())
}

fn socket_ready(socket: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
}

/// The [`DEFAULT_OPTIONS`] that `resolved` (`ssh -G`'s output for the target) leaves unset, as
/// ssh arguments.
fn defaults(resolved: &str) -> Vec<String> {
    DEFAULT_OPTIONS
        .iter()
        .filter(|(name, unset, _)| {
            let value = resolved.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' '));
            value.is_none_or(|value| value.trim() == *unset)
        })
        .flat_map(|(_, _, option)| ["-o".to_owned(), (*option).to_owned()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_the_target_and_the_user_leave_unset() {
        let all = ["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10"];
        assert_eq!(
            defaults("user root\nconnecttimeout none\nserveraliveinterval 0\nserveralivecountmax 3\n"),
            all
        );
        // `ssh -G` failed: every default.
        assert_eq!(defaults(""), all);
        assert_eq!(defaults("connecttimeout 3\nserveraliveinterval 0\n"), ["-o", "ServerAliveInterval=10"]);
        assert_eq!(defaults("connecttimeout none\nserveraliveinterval 60\n"), ["-o", "ConnectTimeout=10"]);
        assert!(defaults("connecttimeout 30\nserveraliveinterval 5\n").is_empty());
    }

    /// The target's options come before krops's defaults, so they win: ssh takes an option's
    /// first value, as `ssh -G` shows.
    #[test]
    fn the_targets_options_win_over_the_defaults() {
        let origin = crate::target::Origin { user: "alice".into(), host: "deployer".into() };
        let mut transport =
            Transport::new(crate::target::Target::parse("root@web1/var/src", &origin).unwrap(), &origin);
        transport.target.extra_options =
            vec!["-F".into(), "/dev/null".into(), "-o".into(), "ConnectTimeout=3".into()];
        let argv = transport.master(Path::new("/tmp/socket"), &defaults(""));
        let position = |word: &str| argv.0.iter().position(|w| w == word).unwrap();
        assert!(position("ConnectTimeout=3") < position("ConnectTimeout=10"));
        assert!(position("ServerAliveInterval=10") < position("--"));
        let mut resolved = argv.0.clone();
        resolved.splice(1..3, ["-G".to_owned()]);
        let resolved =
            exec::run(&crate::exec::Argv::new(resolved), &[], Input::Null, Output::Capture).unwrap();
        let resolved = String::from_utf8_lossy(&resolved);
        assert!(resolved.lines().any(|line| line == "connecttimeout 3"), "{resolved}");
        assert!(resolved.lines().any(|line| line == "serveraliveinterval 10"), "{resolved}");
        assert_eq!(defaults(&resolved), Vec::<String>::new());
    }
}
