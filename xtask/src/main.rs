//! `cargo xtask`: the project's own tasks. `test` is what CI runs; `example` is a newcomer's
//! first deploy. Both install the Debian packages they need (as root) before anything else.

// Test and build tooling starts its helper programs directly; the exec-only rule is krops's.
#![allow(clippy::disallowed_methods)]

mod bench;
mod deps;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test      install test dependencies, build the workspace (plugins included), run every test,
            then test-vm (extra arguments go to cargo test and skip test-vm)
  example   build krops and deploy examples/local into /tmp/krops-example/src
  install PREFIX
            release build, then PREFIX/bin/krops, PREFIX/lib/krops/plugins/*.so and
            PREFIX/share/man/man1/krops.1
  bench     release build, then benchmarks against loopback test hosts (see BENCHMARKS.md);
            `bench cost`: only the deployer's CPU and memory for 20, 50 and 100 hosts
  test-vm   boot a QEMU VM and deploy every source type into it
            (--missing-sentinel: deploy without force, which must fail)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("example") => example(),
        Some("test-vm") => {
            let mode = match args.get(1).map(String::as_str) {
                None => vm::Mode::Deploy,
                Some("--missing-sentinel") => vm::Mode::MissingSentinel,
                Some(other) => bail!("test-vm: unknown option {other}"),
            };
            test_vm(mode)
        }
        Some("install") => match args.get(1) {
            Some(prefix) => install(Path::new(prefix)),
            None => bail!("usage: cargo xtask install PREFIX"),
        },
        Some("bench") => {
            deps::ensure(deps::TEST)?;
            deps::ensure(deps::BUILD)?;
            run("cargo", &["build", "--workspace", "--release"])?;
            let release = workspace_root().join("target/release");
            match args.get(1).map(String::as_str) {
                None => bench::run_all(&release),
                Some("cost") => bench::deployer_cost(&release, &[20, 50, 100]),
                Some(other) => bail!("bench: unknown part {other} (only `cost`)"),
            }
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_owned()
}

/// Runs a command in the workspace root, failing with its status.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Plugins are cdylibs that `cargo test` does not build; the tests use these builds.
fn build_workspace() -> Result<()> {
    deps::ensure(deps::BUILD)?;
    run("cargo", &["build", "--workspace"])
}

/// Every test: the workspace's, then a real deploy into a VM (skipped when test arguments,
/// such as a name filter, are given).
fn test(extra: &[String]) -> Result<()> {
    deps::ensure(deps::TEST)?;
    deps::ensure(deps::TEST_VM)?;
    build_capability_host()?;
    build_workspace()?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    run("cargo", &args)?;
    if extra.is_empty() {
        let root = workspace_root();
        let krops = root.join("target/debug/krops");
        vm::run(&root, &krops, vm::Mode::Deploy)?;
        vm::expect_failure(
            &root,
            &krops,
            vm::Mode::MissingSentinel,
            "missing sentinel file: 127.0.0.1:/var/src/.populate",
        )?;
    }
    Ok(())
}

/// `target/debug/krops-test-capability`: krops as a later release that offers one more
/// host capability (feature `test-capability`), for the test that plugins built before keep
/// working. Built with the workspace's feature set, so only krops-cli itself is compiled twice;
/// the plain build that follows puts the normal `krops` back.
fn build_capability_host() -> Result<()> {
    deps::ensure(deps::BUILD)?;
    run("cargo", &["build", "--workspace", "--features", "krops-cli/test-capability"])?;
    let debug = workspace_root().join("target/debug");
    std::fs::copy(debug.join("krops"), debug.join("krops-test-capability"))
        .context("cannot keep the test-capability build of krops")?;
    Ok(())
}

fn test_vm(mode: vm::Mode) -> Result<()> {
    deps::ensure(deps::TEST_VM)?;
    build_workspace()?;
    let root = workspace_root();
    vm::run(&root, &root.join("target/debug/krops"), mode)
}

/// `cargo install` installs binaries only; krops needs its plugins beside it, where the
/// loader looks: `<exe dir>/../lib/krops/plugins`.
fn install(prefix: &Path) -> Result<()> {
    deps::ensure(deps::BUILD)?;
    run("cargo", &["build", "--workspace", "--release"])?;
    let release = workspace_root().join("target/release");
    let bin = prefix.join("bin");
    let plugins = prefix.join("lib/krops/plugins");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(release.join("krops"), bin.join("krops"))?;
    for entry in std::fs::read_dir(&release)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with("libkrops_populator_") && name.ends_with(".so") {
            std::fs::copy(&path, plugins.join(&name))?;
        }
    }
    // The man page comes from krops's own command-line definition (`krops man`, hidden).
    let man = prefix.join("share/man/man1");
    std::fs::create_dir_all(&man)?;
    let page = Command::new(bin.join("krops")).arg("man").output().context("cannot run krops man")?;
    if !page.status.success() {
        bail!("krops man failed: {}", String::from_utf8_lossy(&page.stderr));
    }
    std::fs::write(man.join("krops.1"), page.stdout)?;
    eprintln!(
        "installed {}, its plugins in {} and {}",
        bin.join("krops").display(),
        plugins.display(),
        man.join("krops.1").display()
    );
    Ok(())
}

fn example() -> Result<()> {
    deps::ensure(deps::EXAMPLE)?;
    build_workspace()?;
    let krops = workspace_root().join("target/debug/krops");
    let krops = krops.to_str().context("non-UTF-8 workspace path")?;
    run(krops, &["-f", "examples/local/krops.toml", "run"])
}
