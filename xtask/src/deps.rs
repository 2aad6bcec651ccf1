//! Debian packages the tasks need, installed with apt-get when missing (as root), so a fresh
//! machine needs nothing but this repository and a Rust toolchain.

use anyhow::{anyhow, Result};
pub use krops_tests::packages::Requirement;

/// Installs what `requirements` lists and the machine lacks.
pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    krops_tests::packages::ensure(requirements).map_err(|e| anyhow!(e))
}

/// What building the workspace needs beyond Rust: the git plugin's http(s) transport links
/// the system libcurl.
pub const BUILD: &[Requirement] =
    &[("/usr/include/x86_64-linux-gnu/curl/curl.h", "libcurl4-openssl-dev"), ("pkg-config", "pkgconf")];

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
    ("tmux", "tmux"),
    ("shellcheck", "shellcheck"),
];

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
