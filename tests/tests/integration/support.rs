//! The test DSL: a fresh temporary directory per test, helpers to write files, and a runner for
//! the real `krops` binary that dumps command, status, stdout and stderr when an expectation
//! fails.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>`: where `cargo xtask test` built krops, its plugins and the fixtures.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test binary>
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_owned();
    assert!(
        dir.join("krops").is_file() && dir.join("libkrops_populator_file.so").is_file(),
        "krops and its plugins are not built in {}; run `cargo xtask test`",
        dir.display()
    );
    dir
}

pub fn krops_bin() -> PathBuf {
    build_dir().join("krops")
}

/// A built test-fixture library, e.g. `fixture("plugin_panics")`.
pub fn fixture(name: &str) -> PathBuf {
    let path = build_dir().join(format!("libfixture_{name}.so"));
    assert!(path.is_file(), "{} is not built; run `cargo xtask test`", path.display());
    path
}

pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: tempfile::Builder::new().prefix("krops-test-").tempdir().expect("tempdir") }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file, creating its parents.
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write");
        path
    }

    pub fn mkdir(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// A target directory with its sentinel, ready to populate.
    pub fn target_dir(&self, relative: &str) -> PathBuf {
        let path = self.mkdir(relative);
        std::fs::write(path.join(".populate"), "").expect("sentinel");
        path
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
    }

    /// `krops ARGS...`, run in the sandbox directory.
    pub fn krops(&self, args: &[&str]) -> Outcome {
        Outcome::of(self.krops_command(args))
    }

    /// The `krops ARGS...` command, to add environment or run in the background.
    /// krops with TMPDIR pointing into the sandbox (`tmp/`), so that its ssh control directory
    /// is the test's to inspect.
    pub fn krops_with_tmpdir(&self, args: &[&str]) -> Command {
        let mut command = self.krops_command(args);
        command.env("TMPDIR", self.mkdir("tmp"));
        command
    }

    pub fn krops_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(krops_bin());
        command.args(args).current_dir(self.dir.path()).env_remove("KROPS_PLUGIN_PATH");
        command
    }

    /// A krops.toml with one local deployment `site` into `site/` (sentinel made) with one
    /// file source `a` (`conf/a`, content "a").
    pub fn one_local_file_deployment(&self) {
        self.target_dir("site");
        self.write("conf/a", "a");
        self.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n",
                self.path("site").display().to_string()
            ),
        );
    }

    /// Names, recursively, of everything below `relative` (for "nothing was touched").
    pub fn listing(&self, relative: &str) -> Vec<String> {
        list(&self.path(relative))
    }
}

pub fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino()
}

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

/// What a finished `krops` run left behind.
pub struct Outcome {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn of(mut command: Command) -> Outcome {
        let line = format!("{command:?}");
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
        Outcome { command: line, ..Outcome::from_output(output) }
    }

    /// What a child started by the test itself (e.g. to signal it) ended with.
    pub fn from_output(output: std::process::Output) -> Outcome {
        Outcome {
            command: "(started by the test)".to_owned(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit status; on mismatch shows everything.
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, Some(expected), "unexpected exit status\n{self}");
        self
    }

    pub fn success(&self) -> &Self {
        self.code(0)
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}\n{self}");
        self
    }

    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}\n{self}");
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        writeln!(f, "status: {:?}", self.code)?;
        writeln!(f, "--- stdout\n{}", self.stdout)?;
        write!(f, "--- stderr\n{}", self.stderr)
    }
}

/// Where a scenario deploys to: a local directory, or a real sshd test host as root or as the
/// sudo user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    Root,
    Sudo,
}

pub struct Site {
    pub kind: Kind,
    /// The target directory as the test sees it.
    dir: PathBuf,
    host: Option<krops_tests::hosts::TestHost>,
}

impl Site {
    /// A site whose target directory is empty (no sentinel).
    pub fn new(sb: &Sandbox, kind: Kind) -> Site {
        Site::named(sb, kind, "site")
    }

    /// Like [`Site::new`]; `name` tells several local sites of one sandbox apart.
    pub fn named(sb: &Sandbox, kind: Kind, name: &str) -> Site {
        match kind {
            Kind::Local => Site { kind, dir: sb.mkdir(name), host: None },
            Kind::Root | Kind::Sudo => {
                let host = krops_tests::hosts::TestHost::start("krops-test-host");
                Site { kind, dir: host.var_src(), host: Some(host) }
            }
        }
    }

    /// A remote site on `host`, started by the test (e.g. with other sshd settings), logged in
    /// to as `kind` says.
    pub fn on_host(kind: Kind, host: krops_tests::hosts::TestHost) -> Site {
        assert!(kind != Kind::Local, "a site on a test host is remote");
        Site { kind, dir: host.var_src(), host: Some(host) }
    }

    /// A site with its sentinel in place.
    pub fn ready(sb: &Sandbox, kind: Kind) -> Site {
        Site::new(sb, kind).with_sentinel()
    }

    pub fn with_sentinel(self) -> Site {
        let site = self;
        std::fs::write(site.dir.join(".populate"), "").expect("sentinel");
        site
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        if relative.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(relative)
        }
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
    }
    /// Puts a file on the target behind krops's back (as a user or an earlier deploy would),
    /// creating its parents.
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {relative}: {e}"));
    }

    /// The target path as krops sees it (what `KROPS_TARGET_PATH` says).
    pub fn target_path(&self) -> String {
        match self.host {
            None => self.dir.display().to_string(),
            Some(_) => "/var/src".to_owned(),
        }
    }

    /// `HOST:` as in krops's messages; empty for a local target.
    pub fn host_prefix(&self) -> &'static str {
        match self.host {
            None => "",
            Some(_) => "127.0.0.1:",
        }
    }

    /// The TOML value of `target`.
    pub fn target(&self) -> String {
        self.target_via(self.host.as_ref().map_or(0, |h| h.port))
    }

    /// The TOML value of `target`, reaching a remote host through `port` (e.g. a proxy).
    pub fn target_via(&self, port: u16) -> String {
        match (&self.host, self.kind) {
            (None, _) => format!("{:?}", self.target_path()),
            (Some(host), Kind::Sudo) => host.target_toml(krops_tests::hosts::Login::Sudo, port, "/var/src"),
            (Some(host), _) => host.target_toml(krops_tests::hosts::Login::Root, port, "/var/src"),
        }
    }

    /// A new ed25519 key protected by the passphrase `sesame`, the only key root on this
    /// (remote) site accepts; returns its private half.
    pub fn protected_key(&self, sb: &Sandbox) -> PathBuf {
        let key = sb.path("id_protected");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "sesame", "-C", "protected", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
        let host = self.host.as_ref().expect("a remote site");
        std::fs::write(host.root_dir().join("root-home/.ssh/authorized_keys"), public)
            .expect("authorized_keys");
        key
    }

    pub fn host(&self) -> Option<&krops_tests::hosts::TestHost> {
        self.host.as_ref()
    }

    /// Everything below `relative` (see [`Sandbox::listing`]).
    pub fn listing(&self, relative: &str) -> Vec<String> {
        list(&self.path(relative))
    }
}

fn list(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            names.push(path.strip_prefix(root).expect("prefix").display().to_string());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    names.sort();
    names
}

/// Runs each named scenario `fn(Kind)` as three tests: `local::NAME`, `root::NAME`, `sudo::NAME`.
#[macro_export]
macro_rules! on_every_site {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $( #[test] fn $scenario() { super::$scenario($crate::support::Kind::Local) } )*
        }
        mod root {
            $( #[test] fn $scenario() { super::$scenario($crate::support::Kind::Root) } )*
        }
        mod sudo {
            $( #[test] fn $scenario() { super::$scenario($crate::support::Kind::Sudo) } )*
        }
    };
}

/// Runs each named scenario `fn(Kind)` as two tests on real sshd hosts, `root::NAME` and
/// `sudo::NAME` (for what the local machine cannot do, such as nixos-rebuild).
#[macro_export]
macro_rules! on_remote_sites {
    ($($scenario:ident),* $(,)?) => {
        mod root {
            $( #[test] fn $scenario() { super::$scenario($crate::support::Kind::Root) } )*
        }
        mod sudo {
            $( #[test] fn $scenario() { super::$scenario($crate::support::Kind::Sudo) } )*
        }
    };
}

/// The test `<nixpkgs/nixos>` (tests/fixtures/nix), populated as the `nixpkgs` source.
pub const NIXPKGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nix/nixpkgs");

/// Writes a deployment of the test nixpkgs and a nixos-config whose `krops-test` attributes
/// are `marker` and `test` (more of them, e.g. `failsSwitch = true;`); `extra` goes into the
/// deployment's table.
pub fn nixos_deployment(sb: &Sandbox, site: &Site, marker: &str, test: &str, extra: &str) {
    sb.write(
        "configuration.nix",
        &format!("{{ ... }}: {{ krops-test = {{ marker = \"{marker}\"; {test} }}; }}\n"),
    );
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n{extra}\n[deployments.site.source]\n\
             nixpkgs.file = {NIXPKGS:?}\nnixos-config.file = \"configuration.nix\"\n",
            site.target()
        ),
    );
}

/// A file of a remote site's private state directory (`/var/lib/krops-test`, where the test
/// nixos-rebuild and switch-to-configuration record their calls); empty when absent.
pub fn state(site: &Site, file: &str) -> String {
    std::fs::read_to_string(site.host().expect("a remote site").state().join(file)).unwrap_or_default()
}

/// Processes whose command line mentions `needle` (an ssh master's socket directory, a marked
/// command), as `PID: COMMAND LINE`; the test harness's own (cargo) left out.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("cargo") {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Waits (up to 15 s) until `done`, failing with `what`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A real terminal: a private tmux server running one shell command in a pane, whose screen
/// (with its scrollback) tests read and whose keyboard they type on. The server ends with it.
pub struct Terminal {
    server: String,
}

impl Terminal {
    /// Runs `command` (a shell command line) in a 160x50 pane, then keeps the pane open.
    pub fn start(command: &str) -> Terminal {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let terminal = Terminal { server: format!("krops-test-{}-{n}", std::process::id()) };
        let line = format!("{command}; echo krops-exit-$?; sleep 600");
        let started = terminal.tmux(&["new-session", "-d", "-x", "160", "-y", "50", "-s", "main", &line]);
        assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
        terminal
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.server]).args(args).output().expect("tmux runs")
    }

    /// The screen and 500 lines of scrollback, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-S", "-500", "-t", "main"]).stdout)
            .into_owned()
    }

    /// The screen once it shows `needle` (within `seconds`), else a failed test.
    pub fn wait_for(&self, needle: &str, seconds: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let text = self.screen();
            if text.contains(needle) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "no {needle:?} on the terminal:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Ctrl-C.
    pub fn interrupt(&self) {
        self.tmux(&["send-keys", "-t", "main", "C-c"]);
    }

    /// Types `text`, then Enter.
    pub fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "main", "-l", text]);
        self.tmux(&["send-keys", "-t", "main", "Enter"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}
