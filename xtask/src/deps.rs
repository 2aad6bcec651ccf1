//! Debian packages the tasks need, installed with apt-get when missing (as root), so a fresh
//! machine needs nothing but this repository and a Rust toolchain.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// (command that must exist, Debian package that provides it)
pub type Requirement = (&'static str, &'static str);

pub const EXAMPLE: &[Requirement] = &[("rsync", "rsync")];

pub const TEST: &[Requirement] = &[
    ("rsync", "rsync"),
    ("sudo", "sudo"),
    ("ssh", "openssh-client"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("unshare", "util-linux"),
    ("git", "git"),
    ("gpg", "gnupg"),
    ("pass", "pass"),
    ("age", "age"),
    ("nix-build", "nix-bin"),
    ("script", "bsdutils"),
];

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\" >/dev/null", "sh", command])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    let mut missing: Vec<&str> =
        requirements.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root {
        bail!(
            "missing Debian packages: {}; install them (sudo apt-get install {}) and try again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

pub const TEST_VM: &[Requirement] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("ssh", "openssh-client"),
    ("rsync", "rsync"),
    ("git", "git"),
    ("gpg", "gnupg"),
    ("pass", "pass"),
    ("age", "age"),
];
