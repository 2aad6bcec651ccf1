//! Debian packages that tests, benchmarks and xtask tasks need, installed with apt-get when
//! missing, so that a fresh machine needs nothing but the repository and a Rust toolchain.

use std::process::Command;

/// (a command, or an absolute path, that must exist; the Debian package that provides it)
pub type Requirement = (&'static str, &'static str);

fn have(command: &str) -> bool {
    if command.starts_with('/') {
        return std::path::Path::new(command).exists();
    }
    Command::new("sh")
        .args(["-c", "command -v \"$1\" >/dev/null", "sh", command])
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")))
    }
}

/// Installs the packages of every requirement whose command is missing (needs root).
pub fn ensure(requirements: &[Requirement]) -> Result<(), String> {
    let mut missing: Vec<&str> =
        requirements.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root {
        return Err(format!(
            "missing Debian packages: {}; install them (sudo apt-get install {}) and try again",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    eprintln!("installing {}", missing.join(" "));
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install)
}
