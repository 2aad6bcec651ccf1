//! Git fixtures: repositories made by the tests themselves, and `git daemon` on loopback for
//! `git://` URLs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git with a fixed identity; panics with git's stderr on failure. Returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=krops test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository on the deploying machine.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// `git init` with branch `main`.
    pub fn init(dir: PathBuf) -> Repo {
        std::fs::create_dir_all(&dir).expect("mkdir repo");
        git(&dir, &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    /// Writes `file` and commits it; returns the commit id.
    pub fn commit(&self, file: &str, contents: &str) -> String {
        let path = self.dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write");
        git(&self.dir, &["add", "--", file]);
        git(&self.dir, &["commit", "-q", "-m", &format!("{file}: {contents}")]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// `git daemon` serving every repository below `base` on 127.0.0.1; killed on drop.
pub struct Daemon {
    pub port: u16,
    child: Child,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let daemon = Daemon { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    /// `git://127.0.0.1:PORT/<path below base>`.
    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
