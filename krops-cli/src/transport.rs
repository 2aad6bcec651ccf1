//! How a command reaches a target. Every command krops runs on a target is built here, as an
//! argv vector; for ssh targets that vector is quoted exactly once into ssh's command string.

use std::path::{Path, PathBuf};

use crate::exec::{Argv, Sessions};
use crate::shell_words::{join, run_marker};
use crate::target::{Origin, Target};

/// What a command riding on a master says when the master had no session for it (see
/// [`Transport::ssh_base`]): plain words, for it is a shell script's, written in double quotes
/// inside a single-quoted `-e` of rsync (whose splitting knows no backslash escapes).
const NO_SESSION: &str = "krops: no session free on the ssh connection to %h, as sshd MaxSessions is reached or the connection is gone, and krops opens no other";

/// A target plus the way to reach it.
#[derive(Debug, Clone)]
pub struct Transport {
    pub target: Target,
    pub local: bool,
    /// The ssh ControlMaster socket every ssh and rsync to this target rides on, once
    /// [`crate::ssh::Multiplexer::connect`] has set one up.
    pub control_socket: Option<PathBuf>,
    /// That master's sessions: each command riding on it takes one while it runs.
    pub sessions: Option<Sessions>,
}

/// Whether the remote side gets a terminal (`run` with `allocateTTY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tty {
    No,
    Yes,
}

impl Transport {
    pub fn new(target: Target, origin: &Origin) -> Self {
        let local = target.is_local(origin);
        Transport { target, local, control_socket: None, sessions: None }
    }

    /// Whether both reach the same directory: both local with one path, or one login to one
    /// host and port with one path.
    pub fn same_place(&self, other: &Transport) -> bool {
        self.place() == other.place()
    }

    /// Where this transport writes, as one string: two transports with the same place are
    /// the same directory (see [`Transport::same_place`]).
    pub fn place(&self) -> String {
        // Lexically: `/a//b/./` is `/a/b` (a symlink to it is a place krops cannot see).
        let normal = krops_core::sdk::normalise(std::path::Path::new(&self.target.path));
        let normal = normal.to_string_lossy();
        let path = normal.trim_end_matches('/');
        if self.local {
            format!("local:{path}")
        } else {
            format!("{}@{}:{}:{path}", self.target.user, self.target.host, self.target.port.unwrap_or(0))
        }
    }

    /// This transport on a connection of its own, never the run's master nor one that
    /// `~/.ssh/config` shares (`-S none`), giving up on connecting after `timeout` seconds.
    pub fn new_connection(&self, timeout: u64) -> Transport {
        let mut fresh = self.clone();
        fresh.control_socket = Some(PathBuf::from("none"));
        fresh.sessions = None;
        fresh.target.extra_options.extend(["-o".to_owned(), format!("ConnectTimeout={timeout}")]);
        fresh
    }

    /// The host as shown in messages: `None` for a local target.
    pub fn host_label(&self) -> Option<String> {
        (!self.local).then(|| self.target.display_host())
    }

    /// `HOST:PATH` (or just `PATH` locally), as in SPEC's messages.
    pub fn location(&self, path: &str) -> String {
        match self.host_label() {
            Some(host) => format!("{host}:{path}"),
            None => path.to_owned(),
        }
    }

    /// argv that runs `/bin/sh -c SCRIPT sh ARGS...` on the target, with `env` set, under sudo
    /// when the target asks for it.
    pub fn shell(&self, script: &str, args: &[String], env: &[(&str, &str)], tty: Tty) -> Argv {
        let mut remote: Vec<String> = Vec::new();
        if self.target.sudo {
            remote.extend(["sudo".into(), "--".into()]);
        }
        if !env.is_empty() {
            remote.push("env".into());
            remote.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        // `$0` is the run's marker: the lock holder on the target waits for every process of
        // its run to end before it lets the lock go (see `pipeline::LOCK_SCRIPT`).
        // A user's command line may start with `-`: after `--` sh never reads it as an option.
        remote.extend(["/bin/sh".into(), "-c".into()]);
        if script.starts_with('-') {
            remote.push("--".into());
        }
        remote.extend([script.into(), run_marker().to_owned()]);
        remote.extend(args.iter().cloned());
        if self.local {
            return Argv::new(remote);
        }
        let mut argv = self.ssh_base();
        argv.push(if tty == Tty::Yes { "-t" } else { "-T" }.into());
        argv.extend(["--".into(), self.target.host.clone(), join(&remote)]);
        Argv::new(argv).riding(self.sessions.clone())
    }

    /// argv that copies a local `source` to `destination` on the target with rsync.
    pub fn rsync(&self, options: &[String], source: &Path, destination: &str) -> Argv {
        let mut argv: Vec<String> = Vec::new();
        if self.local {
            if self.target.sudo {
                argv.extend(["sudo".into(), "--".into()]);
            }
            argv.push("rsync".into());
            argv.extend(options.iter().cloned());
            argv.extend(["--".into(), source.to_string_lossy().into_owned(), destination.to_owned()]);
            return Argv::new(argv);
        }
        argv.push("rsync".into());
        // rsync splits -e on white space itself but honours shell-style quotes.
        argv.extend(["-e".into(), join(&self.ssh_base())]);
        if self.target.sudo {
            argv.push("--rsync-path=sudo rsync".into());
        }
        argv.extend(options.iter().cloned());
        let host = if self.target.host.contains(':') {
            format!("[{}]", self.target.host)
        } else {
            self.target.host.clone()
        };
        let remote = if self.target.user.is_empty() {
            format!("{host}:{destination}")
        } else {
            format!("{}@{host}:{destination}", self.target.user)
        };
        // `--` keeps a source path beginning with '-' from being read as an option.
        argv.extend(["--".into(), source.to_string_lossy().into_owned(), remote]);
        Argv::new(argv).riding(self.sessions.clone())
    }

    /// argv of the ControlMaster for this target: authenticates (prompting on the terminal
    /// if it must), then serves every later ssh and rsync through `socket` until killed.
    /// `defaults` (ssh options) come after the target's own options, which win (ssh takes an
    /// option's first value).
    pub fn master(&self, socket: &Path, defaults: &[String]) -> Argv {
        let mut argv = vec!["ssh".to_owned(), "-M".into(), "-N".into()];
        argv.extend(["-S".into(), socket.to_string_lossy().into_owned()]);
        argv.extend(["-o".into(), "ControlPersist=no".into()]);
        argv.extend(self.login_options());
        argv.extend(defaults.iter().cloned());
        argv.extend(["--".into(), self.target.host.clone()]);
        Argv::new(argv)
    }

    /// argv that prints the ssh configuration this target's connection would use (`ssh -G`:
    /// the target's options, then the user's and the system's configuration), connecting
    /// nowhere.
    pub fn resolved_config(&self) -> Argv {
        let mut argv = vec!["ssh".to_owned(), "-G".into()];
        argv.extend(self.login_options());
        argv.extend(["--".into(), self.target.host.clone()]);
        Argv::new(argv)
    }

    /// `ssh` and the options that every connection to this target carries.
    fn ssh_base(&self) -> Vec<String> {
        let mut argv = vec!["ssh".to_owned()];
        if let Some(socket) = &self.control_socket {
            argv.extend(["-S".into(), socket.to_string_lossy().into_owned()]);
            argv.extend(["-o".into(), "ControlMaster=no".into()]);
        }
        if self.sessions.is_some() {
            // When the master cannot give it a session (the server's MaxSessions, or the
            // master is gone), ssh connects on its own instead, and nothing turns that off:
            // this ProxyCommand, used only then, makes it fail. It comes before the target's
            // options (ssh takes the first value; one ProxyJump or ProxyCommand excludes the
            // other), and ssh expands `%h` to the host.
            argv.extend(["-o".into(), format!("ProxyCommand=/bin/sh -c \"echo {NO_SESSION} >&2; exit 1\"")]);
        }
        argv.extend(self.login_options());
        argv
    }

    fn login_options(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if !self.target.user.is_empty() {
            argv.extend(["-l".into(), self.target.user.clone()]);
        }
        if let Some(port) = self.target.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        argv.extend(self.target.extra_options.iter().cloned());
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(s: &str) -> Transport {
        let origin = Origin { user: "alice".into(), host: "deployer".into() };
        Transport::new(Target::parse(s, &origin).unwrap(), &origin)
    }

    #[test]
    fn local_shell_is_plain_argv() {
        let t = transport("/tmp/site");
        let argv = t.shell("test -e \"$1\"", &["/tmp/site/.populate".into()], &[], Tty::No);
        assert_eq!(argv.0, ["/bin/sh", "-c", "test -e \"$1\"", run_marker(), "/tmp/site/.populate"]);
    }

    #[test]
    fn remote_shell_quotes_once() {
        let mut t = transport("root@web1:2222/var/src");
        t.target.sudo = true;
        t.target.extra_options = vec!["-o".into(), "LogLevel=ERROR".into()];
        let argv = t.shell("echo \"$1\"", &["it's $(x)".into()], &[("K", "v w")], Tty::No);
        assert_eq!(
            argv.0,
            [
                "ssh",
                "-l",
                "root",
                "-p",
                "2222",
                "-o",
                "LogLevel=ERROR",
                "-T",
                "--",
                "web1",
                &format!("sudo -- env 'K=v w' /bin/sh -c 'echo \"$1\"' {} \"it's \"'$(x)'", run_marker())
            ]
        );
    }

    /// Only commands riding on a master carry the failing ProxyCommand, and before the target's
    /// options (ssh takes the first value); a new connection must connect.
    #[test]
    fn riding_commands_fail_instead_of_connecting_anew() {
        let mut t = transport("root@web1/var/src");
        t.target.extra_options = vec!["-o".into(), "ProxyJump=bastion".into()];
        t.control_socket = Some(PathBuf::from("/tmp/socket"));
        t.sessions = Some(Sessions::new(8));
        let guard = |argv: &Argv| {
            argv.0.iter().position(|w| w.starts_with("ProxyCommand=") && w.contains(NO_SESSION))
        };
        let argv = t.shell("true", &[], &[], Tty::No);
        let jump = argv.0.iter().position(|w| w == "ProxyJump=bastion");
        assert!(guard(&argv).zip(jump).is_some_and(|(guard, jump)| guard < jump), "{argv:?}");
        let rsync = t.rsync(&[], Path::new("/a"), "/b");
        assert!(rsync.0[2].contains(NO_SESSION), "{rsync:?}");
        assert_eq!(guard(&t.new_connection(5).shell("true", &[], &[], Tty::No)), None);
    }

    #[test]
    fn rsync_argv() {
        let t = transport("@web1/var/src");
        let argv = t.rsync(&["-vFrlptD".into()], Path::new("/src/"), "/var/src/x");
        assert_eq!(argv.0, ["rsync", "-e", "ssh", "-vFrlptD", "--", "/src/", "web1:/var/src/x"]);
        let argv = transport("root@[::1]:22").rsync(&[], Path::new("/a"), "/b");
        assert_eq!(argv.0, ["rsync", "-e", "ssh -l root -p 22", "--", "/a", "root@[::1]:/b"]);
        let mut local = transport("/tmp/t");
        local.target.sudo = true;
        let argv = local.rsync(&["-r".into()], Path::new("/a"), "/tmp/t/x");
        assert_eq!(argv.0, ["sudo", "--", "rsync", "-r", "--", "/a", "/tmp/t/x"]);
    }
}
