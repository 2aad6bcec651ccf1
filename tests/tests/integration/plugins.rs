//! Plugin discovery and every way a plugin can fail to load or misbehave.

use crate::support::{build_dir, fixture, Sandbox};

#[test]
fn lists_the_builtin_plugins() {
    let sb = Sandbox::new();
    let out = sb.krops(&["plugins"]);
    out.success();
    for source_type in ["file", "pipe", "symlink"] {
        let file = build_dir().join(format!("libkrops_populator_{source_type}.so"));
        let line = format!(
            "{source_type}\t{}\t{}",
            env!("CARGO_PKG_VERSION").replace("0.0.0", "0.1.0"),
            file.display()
        );
        assert!(out.stdout.lines().any(|l| l == line), "no line {line:?}\n{out}");
    }
}

/// A plugin directory holding one file under a plugin's name.
fn plugin_dir(sb: &Sandbox, file_name: &str, library: &std::path::Path) -> String {
    let dir = sb.mkdir("plugins");
    std::fs::copy(library, dir.join(file_name)).expect("copy plugin");
    dir.display().to_string()
}

#[test]
fn garbage_library_is_rejected() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    std::fs::write(dir.join("libkrops_populator_garbage.so"), b"\x7fELF but not really").unwrap();
    sb.krops(&["--plugin-dir", dir.to_str().unwrap(), "plugins"])
        .code(2)
        .stderr_has("libkrops_populator_garbage.so: cannot be loaded as a shared library");
}

#[test]
fn library_without_the_abi_symbol_is_rejected() {
    let sb = Sandbox::new();
    // A real shared library, but not a krops plugin.
    let libc = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib64/libz.so.1"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .expect("libz on this machine");
    let dir = plugin_dir(&sb, "libkrops_populator_z.so", libc);
    sb.krops(&["--plugin-dir", &dir, "plugins"]).code(2).stderr_has("is not a krops populator plugin");
}

#[test]
fn plugin_for_another_abi_version_is_rejected() {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_old.so", &fixture("plugin_old_abi"));
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stderr_has("libkrops_populator_old.so: was built for plugin ABI 0, but this krops speaks ABI 1");
}

#[test]
fn plugin_with_another_layout_gets_a_short_message() {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_other.so", &fixture("plugin_bad_layout"));
    let out = sb.krops(&["--plugin-dir", &dir, "plugins"]);
    out.code(2).stderr_has("libkrops_populator_other.so: is incompatible with this krops");
    assert!(out.stderr.lines().count() <= 3, "abi_stable's whole report leaked:\n{out}");
}

#[test]
fn two_plugins_claiming_one_type() {
    let sb = Sandbox::new();
    let builtin = build_dir().join("libkrops_populator_file.so");
    let dir = plugin_dir(&sb, "libkrops_populator_file2.so", &builtin);
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stderr_has("claims source type \"file\", which")
        .stderr_has(&format!("{}", builtin.display()))
        .stderr_has("libkrops_populator_file2.so");
}

#[test]
fn panicking_plugin_fails_its_source_and_krops_survives() {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_panicky.so", &fixture("plugin_panics"));
    sb.target_dir("a");
    sb.target_dir("b");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.x.panicky = {{}}\n[deployments.b]\ntarget = {:?}\nsource.l.symlink = \"x\"\n",
            sb.path("a").display().to_string(),
            sb.path("b").display().to_string()
        ),
    );
    sb.krops(&["--plugin-dir", &dir, "populate"])
        .code(1)
        .stderr_has("populate of source \"x\" failed: panicked: the panicky populator always panics")
        .stderr_has("1 of 2 deployments failed");
    assert!(sb.path("b/l").is_symlink(), "the other deployment completed");
}

#[test]
fn krops_plugin_path_is_searched() {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_panicky.so", &fixture("plugin_panics"));
    let mut command = std::process::Command::new(crate::support::krops_bin());
    command.arg("plugins").env("KROPS_PLUGIN_PATH", format!("relative/ignored::{dir}"));
    crate::support::Outcome::of(command).success().stdout_has("panicky\t0.0.0\t");
}
