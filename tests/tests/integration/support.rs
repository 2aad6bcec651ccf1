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
        let mut command = Command::new(krops_bin());
        command.args(args).current_dir(self.dir.path()).env_remove("KROPS_PLUGIN_PATH");
        Outcome::of(command)
    }

    /// Names, recursively, of everything below `relative` (for "nothing was touched").
    pub fn listing(&self, relative: &str) -> Vec<String> {
        let root = self.path(relative);
        let mut names = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                names.push(path.strip_prefix(&root).expect("prefix").display().to_string());
                if path.is_dir() && !path.is_symlink() {
                    stack.push(path);
                }
            }
        }
        names.sort();
        names
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
        Outcome {
            command: line,
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
