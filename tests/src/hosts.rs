//! Real sshd test hosts on 127.0.0.1. Each host is an sshd in its own mount and UTS
//! namespace, with private `/var/src`, `/root`, `/home` and `/etc/hosts` bind-mounted from a
//! temporary directory, its own port and host key. Logins: `root`, and `kropsdeploy` with
//! passwordless sudo, both by one client key. Needs root. The sshd is a child of the test
//! process and is killed by PID when the [`TestHost`] is dropped, also on panic.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The non-root login, which deploys through sudo.
pub const SUDO_USER: &str = "kropsdeploy";

/// Debian packages the hosts need: (command, package).
const PACKAGES: [crate::packages::Requirement; 4] =
    [("/usr/sbin/sshd", "openssh-server"), ("rsync", "rsync"), ("sudo", "sudo"), ("nix-build", "nix-bin")];

/// Where each host's private state (`/var/lib/krops-test`) is mounted: the test
/// nixos-rebuild and switch-to-configuration record their calls there.
pub const STATE_DIR: &str = "/var/lib/krops-test";

/// Daemonless, offline, root-only Nix: no build users, no sandbox, no binary cache.
const NIX_CONF: &str = "build-users-group =\nsandbox = false\nsubstituters =\n";

/// How a test logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Root,
    /// [`SUDO_USER`], with `sudo = true`.
    Sudo,
}

pub struct TestHost {
    pub name: String,
    pub port: u16,
    dir: tempfile::TempDir,
    sshd: Child,
}

/// The client key and known-hosts file, shared by every host of the process.
struct Client {
    key: PathBuf,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    crate::command::output(Command::new(program).args(args), None).map(drop)
}

/// Makes this machine ready for test hosts and for running nix as root without a daemon
/// (packages, `/etc/nix/nix.conf`, the sudo user); once per process. Tests that run nix on
/// the deploying machine without a test host call it too.
pub fn prepare_machine() {
    setup();
}

/// Once per process: packages, `/run/sshd`, the sudo user, the client key.
fn setup() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| setup_machine().unwrap_or_else(|e| panic!("test host setup: {e}")))
}

fn setup_machine() -> Result<Client, String> {
    crate::packages::ensure(&PACKAGES)?;
    if !Path::new("/etc/nix/nix.conf").exists() {
        std::fs::create_dir_all("/etc/nix").map_err(|e| format!("mkdir /etc/nix: {e}"))?;
        std::fs::write("/etc/nix/nix.conf", NIX_CONF).map_err(|e| format!("/etc/nix/nix.conf: {e}"))?;
    }
    for dir in ["/run/sshd", "/var/src", STATE_DIR, "/usr/local/sbin", "/nix/var/nix/profiles"] {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    if run("id", &["-u", SUDO_USER]).is_err() {
        // Races with a parallel test process are harmless: the loser's useradd fails, the
        // user exists either way.
        let _ = run("useradd", &["-M", "-s", "/bin/sh", SUDO_USER]);
    }
    // With UsePAM no, a locked password ('!') refuses even key logins.
    run("usermod", &["-p", "*", SUDO_USER])?;
    let sudoers = format!("/etc/sudoers.d/{SUDO_USER}");
    if !Path::new(&sudoers).exists() {
        std::fs::write(&sudoers, format!("{SUDO_USER} ALL=(ALL) NOPASSWD: ALL\n"))
            .and_then(|()| std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)))
            .map_err(|e| format!("{sudoers}: {e}"))?;
    }
    // One test client key for every test process on this machine: made in a private
    // directory, then moved into place whole, so concurrent processes never see half a key.
    let dir = std::env::temp_dir().join("krops-test-client");
    let key = dir.join("id_ed25519");
    if !key.exists() {
        let fresh =
            tempfile::Builder::new().prefix("krops-test-client.").tempdir().map_err(|e| e.to_string())?;
        let fresh_key = fresh.path().join("id_ed25519");
        run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", "krops-test", "-f", &fresh_key.to_string_lossy()],
        )?;
        // Losing the race to another process is fine: its key serves as well.
        let made = fresh.keep();
        if std::fs::rename(&made, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&made);
        }
    }
    Ok(Client { key })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Starts sshd inside fresh namespaces with the host's private directories mounted.
const START_SCRIPT: &str = r#"set -e
mount --bind "$1/var-src" /var/src
mount --bind "$1/root-home" /root
mount --bind "$1/home" /home
mount --bind "$1/hosts" /etc/hosts
mount --bind "$1/state" /var/lib/krops-test
mount --bind "$1/bin" /usr/local/sbin
# A boot id of its own, which the test `reboot` renews (this machine's kernel never reboots).
cat /proc/sys/kernel/random/uuid > /var/lib/krops-test/boot_id
mount --bind /var/lib/krops-test/boot_id /proc/sys/kernel/random/boot_id
# A private /etc/nixos, for tests of hosts that have a flake there (the directory is made on
# this machine once, empty, as the mount point).
mkdir -p /etc/nixos
mount --bind "$1/etc-nixos" /etc/nixos
# A private system profile, whose generations the test nixos-rebuild keeps.
mount --bind "$1/profiles" /nix/var/nix/profiles
hostname "$2"
# The sshd's PID (this shell's, after exec): a configuration can stop it (see the fixtures).
echo $$ > /var/lib/krops-test/sshd.pid
exec /usr/sbin/sshd -D -e -f "$1/sshd_config""#;

/// sshd's limits for the usual test host: room for many sessions per connection and many
/// connections being set up at once, so that only what a test is about can fail.
const ROOMY: &str = "MaxSessions 100\nMaxStartups 100:30:200\n";

/// The key exchange of [`TestHost::start_light`]'s hosts.
const LIGHT_KEX: &str = "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n";

impl TestHost {
    /// Starts a host; panics (killing what it started) if it does not come up.
    pub fn start(name: &str) -> TestHost {
        TestHost::start_with_limits(name, ROOMY)
    }

    /// A usual test host whose sshd offers only the light curve25519 key exchange, for tests
    /// that connect to many hosts at once: OpenSSH's default `sntrup761x25519-sha512` costs the
    /// client ~80 ms of CPU per connection, which a hundred connections on two cores feel. The
    /// client (krops's ssh) keeps its defaults; the server's choice alone settles it.
    pub fn start_light(name: &str) -> TestHost {
        TestHost::start_with_limits(name, &format!("{ROOMY}{LIGHT_KEX}"))
    }

    /// A host whose sshd keeps its stock limits, as most servers do: `MaxSessions 10` (sessions
    /// per connection) and `MaxStartups 10:30:100` (connections being set up at once).
    pub fn start_stock(name: &str) -> TestHost {
        TestHost::start_with_limits(name, "")
    }

    /// A host whose sshd has `limits` (sshd_config lines) instead of the usual test host's.
    pub fn start_with_limits(name: &str, limits: &str) -> TestHost {
        let client = setup();
        let mut last_error = String::new();
        // A free port can be taken by someone else before sshd binds it; try again then.
        for _ in 0..5 {
            match TestHost::try_start(name, client, limits) {
                Ok(host) => return host,
                Err(e) => last_error = e,
            }
        }
        panic!("test host {name} did not start: {last_error}");
    }

    fn try_start(name: &str, client: &Client, limits: &str) -> Result<TestHost, String> {
        // On tmpfs when there is one: this machine's disk takes ~0.5 ms to create a file,
        // which would dominate every test and benchmark that writes many files.
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_owned() } else { std::env::temp_dir() };
        let dir =
            tempfile::Builder::new().prefix("krops-host-").tempdir_in(base).map_err(|e| e.to_string())?;
        let root = dir.path();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        for sub in ["var-src", "root-home/.ssh", "home", "state", "bin", "etc-nixos", "profiles"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| io(sub, e))?;
        }
        std::fs::set_permissions(root.join("home"), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("home", e))?;
        std::fs::set_permissions(root.join("var-src"), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("var-src", e))?;
        let public =
            std::fs::read_to_string(client.key.with_extension("pub")).map_err(|e| io("client key", e))?;
        std::fs::write(root.join("root-home/.ssh/authorized_keys"), &public).map_err(|e| io("keys", e))?;
        let user_ssh = root.join(format!("home/{SUDO_USER}/.ssh"));
        std::fs::create_dir_all(&user_ssh).map_err(|e| io("user home", e))?;
        std::fs::write(user_ssh.join("authorized_keys"), &public).map_err(|e| io("user keys", e))?;
        let user_home = root.join(format!("home/{SUDO_USER}"));
        std::fs::set_permissions(&user_home, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("home", e))?;
        run("chown", &["-R", &format!("{SUDO_USER}:"), &user_home.to_string_lossy()])?;
        // The test nixos-rebuild and nix-build wrapper, first on root's and sudo's PATH.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nix/bin");
        for tool in ["nixos-rebuild", "nix-build", "reboot"] {
            std::fs::copy(fixtures.join(tool), root.join("bin").join(tool)).map_err(|e| io(tool, e))?;
        }
        std::fs::write(root.join("hosts"), format!("127.0.0.1 localhost\n127.0.1.1 {name}\n"))
            .map_err(|e| io("hosts", e))?;
        let host_key = root.join("ssh_host_ed25519_key");
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", &host_key.to_string_lossy()])?;
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nListenAddress ::1\nHostKey {}\nPidFile none\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             StrictModes yes\nUseDNS no\nAuthorizedKeysFile .ssh/authorized_keys\n{limits}\
             Subsystem sftp internal-sftp\n",
            host_key.display()
        );
        std::fs::write(root.join("sshd_config"), config).map_err(|e| io("sshd_config", e))?;
        let sshd = Command::new("unshare")
            .args(["--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", START_SCRIPT, "sh"])
            .arg(root)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        let mut host = TestHost { name: name.to_owned(), port, dir, sshd };
        host.wait_ready()?;
        Ok(host)
    }

    /// Ready when the port *answers* with an SSH banner.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.sshd.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.sshd.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!("sshd exited ({status}): {stderr}"));
            }
            if let Ok(mut stream) = TcpStream::connect(self.address()) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("sshd did not answer within 10 s".to_owned())
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory holding the host's private file systems (homes, `/var/src`, state).
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host's private `/var/lib/krops-test`, as seen from the test.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The host's `/var/src`, as seen from the test.
    /// The host's private `/etc/nixos`.
    pub fn etc_nixos(&self) -> PathBuf {
        self.dir.path().join("etc-nixos")
    }

    pub fn var_src(&self) -> PathBuf {
        self.dir.path().join("var-src")
    }

    /// The client options every ssh to a test host needs (passed as `extraOptions`).
    pub fn extra_options() -> Vec<String> {
        let client = setup();
        [
            "-F",
            "/dev/null",
            "-i",
            &client.key.to_string_lossy(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A TOML inline table for this host as a krops target, reached on `port` (the host's own,
    /// or a proxy's in front of it).
    pub fn target_toml(&self, login: Login, port: u16, path: &str) -> String {
        let (user, sudo) = match login {
            Login::Root => ("root", false),
            Login::Sudo => (SUDO_USER, true),
        };
        let options = quoted(&TestHost::extra_options());
        format!(
            "{{ host = \"127.0.0.1\", port = {port}, user = \"{user}\", path = {path:?}, sudo = {sudo}, extraOptions = [{}] }}",
            options.join(", ")
        )
    }
}

/// Options as double-quoted strings, for a TOML or Nix list: the options used here are plain
/// ASCII, for which Rust's escaping is both languages' too.
pub fn quoted(options: &[String]) -> Vec<String> {
    options.iter().map(|o| format!("{o:?}")).collect()
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}
