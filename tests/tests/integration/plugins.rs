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
    sb.krops(&["--plugin-dir", dir.to_str().unwrap(), "plugins"]).code(2).stderr_has(
        "libkrops_populator_garbage.so: is not a shared library for this machine: 19 bytes, too short",
    );
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
        .stderr_has("libkrops_populator_old.so: was built for plugin ABI 0, but this krops speaks ABI 2");
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
fn plugin_named_for_another_type_is_broken() {
    let sb = Sandbox::new();
    let builtin = build_dir().join("libkrops_populator_file.so");
    let dir = plugin_dir(&sb, "libkrops_populator_file2.so", &builtin);
    sb.krops(&["--plugin-dir", &dir, "plugins"]).code(2).stdout_has("file\t").stderr_has(
        "libkrops_populator_file2.so: declares source type \"file\" but its file is named for \"file2\"",
    );
}

#[test]
fn an_earlier_plugin_dir_serves_a_type_first() {
    let sb = Sandbox::new();
    // The panicky fixture under the symlink type's name: it is broken (it declares another
    // type), and being first in the search path, it is what serves `symlink` now.
    let dir = plugin_dir(&sb, "libkrops_populator_symlink.so", &fixture("plugin_panics"));
    let out = sb.krops(&["--plugin-dir", &dir, "plugins"]);
    out.code(2).stderr_has(&format!("{dir}/libkrops_populator_symlink.so: declares source type \"panicky\""));
    assert!(!out.stdout.contains("symlink\t"), "the built-in symlink plugin was not shadowed:\n{out}");
}

/// Two deployments, `a` using `kind` and `b` using the built-in symlink type.
fn two_deployments(sb: &Sandbox, kind: &str) {
    sb.target_dir("a");
    sb.target_dir("b");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.x.{kind} = {{}}\n[deployments.b]\ntarget = {:?}\nsource.l.symlink = \"x\"\n",
            sb.path("a").display().to_string(),
            sb.path("b").display().to_string()
        ),
    );
}

#[test]
fn a_truncated_plugin_fails_only_its_deployments() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    let whole = std::fs::read(fixture("plugin_panics")).unwrap();
    // dlopen of a library cut short of its segments dies of SIGBUS unless krops checks first.
    std::fs::write(dir.join("libkrops_populator_panicky.so"), &whole[..whole.len() / 3]).unwrap();
    let dir = dir.display().to_string();
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stdout_has("symlink\t")
        .stderr_has("libkrops_populator_panicky.so: is not a shared library for this machine: ");
    two_deployments(&sb, "panicky");
    sb.krops(&["--plugin-dir", &dir, "populate"])
        .code(1)
        .stderr_has("prepare of source \"x\" failed: plugin ")
        .stderr_has("libkrops_populator_panicky.so: is not a shared library for this machine: ")
        .stderr_has("1 of 2 deployments failed");
    assert!(sb.path("b/l").is_symlink(), "the other deployment completed");
    assert_eq!(sb.listing("a"), [".populate"], "nothing touched on the broken type's target");
}

/// `eval` shows sources as their plugins normalise them: a source whose plugin is broken is a
/// usage error with the plugin's reason, not printed raw; another deployment evaluates.
#[test]
fn eval_refuses_a_source_whose_plugin_is_broken() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    std::fs::write(dir.join("libkrops_populator_panicky.so"), b"not a library").unwrap();
    let dir = dir.display().to_string();
    two_deployments(&sb, "panicky");
    let out = sb.krops(&["--plugin-dir", &dir, "eval"]);
    out.code(2)
        .stderr_has("source \"x\": the panicky plugin ")
        .stderr_has("libkrops_populator_panicky.so cannot be used: is not a shared library for this machine");
    assert!(out.stdout.is_empty(), "{out}");
    sb.krops(&["--plugin-dir", &dir, "eval", "b"]).success().stdout_has("\"symlink\"");
}

#[test]
fn a_fifo_named_like_a_plugin_does_not_hang_krops() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    let fifo = dir.join("libkrops_populator_fifo.so");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(status.success());
    // Nothing ever writes to the FIFO: opening it for reading would block forever.
    let mut command = sb.krops_command(&["--plugin-dir", dir.to_str().unwrap(), "plugins"]);
    command.stdin(std::process::Stdio::null());
    let started = std::time::Instant::now();
    crate::support::Outcome::of(command)
        .code(2)
        .stderr_has("libkrops_populator_fifo.so: is not a regular file");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "krops hung on the FIFO");
}

#[test]
fn a_panicking_constructor_is_reported_and_krops_survives() {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_panicky.so", &fixture("plugin_panics"));
    let mut command = sb.krops_command(&["--plugin-dir", &dir, "plugins"]);
    command.env("KROPS_TEST_PANIC_IN_NEW", "1");
    crate::support::Outcome::of(command)
        .code(2)
        .stdout_has("file\t")
        .stderr_has("libkrops_populator_panicky.so: cannot start: constructor panicked: the panicky populator panics in its constructor");
    two_deployments(&sb, "panicky");
    let mut command = sb.krops_command(&["--plugin-dir", &dir, "populate"]);
    command.env("KROPS_TEST_PANIC_IN_NEW", "1");
    crate::support::Outcome::of(command).code(1).stderr_has("1 of 2 deployments failed");
    assert!(sb.path("b/l").is_symlink(), "the other deployment completed");
}

/// The capabilities fixture, built against today's ABI, populated by `krops`.
fn capabilities_seen_by(krops: &std::path::Path) -> String {
    let sb = Sandbox::new();
    let dir = plugin_dir(&sb, "libkrops_populator_capabilities.so", &fixture("plugin_capabilities"));
    sb.target_dir("a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.caps.capabilities = {{}}\n",
            sb.path("a").display().to_string()
        ),
    );
    let mut command = std::process::Command::new(krops);
    command.current_dir(sb.path("")).args(["--plugin-dir", &dir, "populate"]);
    crate::support::Outcome::of(command).success();
    sb.read("a/caps")
}

#[test]
fn a_plugin_keeps_working_when_the_host_gains_a_capability() {
    let today = capabilities_seen_by(&crate::support::krops_bin());
    assert_eq!(today, "run_local\nrun_script\nrsync\nwrite_file\n");
    // `cargo xtask test` also builds krops with the test-only capability (krops-test-capability).
    let later = build_dir().join("krops-test-capability");
    assert!(later.is_file(), "{} is not built; run `cargo xtask test`", later.display());
    let with_more = capabilities_seen_by(&later);
    assert_eq!(
        with_more,
        "run_local\nrun_script\nrsync\nwrite_file\nkrops_test_reverse\nkrops_test_reverse answered reverse\n"
    );
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

/// The authoring path of PLUGINS.md, as a third party walks it: the template copied out of
/// this workspace, built with plain `cargo build` (and its own unit test, on the fake target,
/// run with `cargo test`) against a krops-core whose crate version was bumped, then loaded
/// with `--plugin-dir` and deployed. Compatibility is the ABI version's, not the crate's.
#[test]
fn the_template_builds_out_of_tree_against_a_bumped_krops_core_and_deploys() {
    let sb = Sandbox::new();
    let plugins = build_out_of_tree(&sb, "populator-template");
    sb.krops(&["--plugin-dir", &plugins, "plugins"]).success().stdout_has("greeting\t0.1.0\t");
    sb.target_dir("site");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.motd.greeting = {{ name = \"world\" }}\n",
            sb.path("site").display().to_string()
        ),
    );
    sb.krops(&["--plugin-dir", &plugins, "populate"]).success();
    assert_eq!(sb.read("site/motd"), "hello, world\n");
    let template_lines =
        std::fs::read_to_string(workspace().join("examples/populator-template/src/lib.rs")).unwrap();
    assert!(template_lines.lines().count() <= 60, "the template grew past 60 lines of Rust");
}

/// A third party's type as first-class as a built-in one: the `tarball` example, built out of
/// tree (its unit tests run a fake remote sudo host offering run_script alone), has a short
/// form, installs a directory whole with its own modes through `install_dir` (locally and on a
/// real ssh host), names its program, and its type errors and its own checks name the
/// attribute (exit 2, nothing touched).
#[test]
fn an_out_of_tree_tarball_plugin_installs_a_directory_whole() {
    let sb = Sandbox::new();
    let plugins = build_out_of_tree(&sb, "populator-tarball");
    sb.krops(&["--plugin-dir", &plugins, "plugins"]).success().stdout_has("tarball\t0.1.0\t");
    let www = sb.mkdir("www");
    std::fs::create_dir_all(www.join("cgi")).unwrap();
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    std::fs::write(www.join("cgi/run"), "#!/bin/sh\n").unwrap();
    chmod(&www.join("cgi/run"), 0o755);
    chmod(&www.join("index.html"), 0o640);
    let tar = std::process::Command::new("tar")
        .args(["-C"])
        .arg(&www)
        .args(["-cf"])
        .arg(sb.path("site.tar"))
        .arg(".")
        .status();
    assert!(tar.unwrap().success());
    let local = crate::support::Site::ready(&sb, crate::support::Kind::Local);
    let remote = crate::support::Site::ready(&sb, crate::support::Kind::Root);
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.local]\ntarget = {}\nsource.www.tarball = \"site.tar\"\n\
             [deployments.remote]\ntarget = {}\nsource.www.tarball = {{ archive = \"site.tar\", modes = {{ directory = 0o750 }} }}\n",
            local.target(),
            remote.target()
        ),
    );
    sb.krops(&["--plugin-dir", &plugins, "populate"]).success();
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: std::path::PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    for (site, directory) in [(&local, 0o755), (&remote, 0o750)] {
        assert_eq!(site.read("www/index.html"), "hello\n");
        assert_eq!(
            (
                mode(site.path("www")),
                mode(site.path("www/cgi")),
                mode(site.path("www/cgi/run")),
                mode(site.path("www/index.html"))
            ),
            (directory, directory, 0o755, 0o640)
        );
    }
    // Type errors (serde's) and the plugin's own checks name the attribute's path.
    for (value, error) in [
        (
            "{ archive = \"site.tar\", modes = { directory = \"755\" } }",
            "at modes.directory: invalid type: string",
        ),
        (
            "{ archive = \"site.tar\", modes = { directory = 0o644 } }",
            "at modes.directory: 644 must be within 700..777",
        ),
        ("{ archive = \"missing.tar\" }", "at archive: "),
        ("3", "tarball must be a string (shorthand for tarball.archive) or a table"),
    ] {
        sb.write(
            "krops.toml",
            &format!("[deployments.local]\ntarget = {}\nsource.other.tarball = {value}\n", local.target()),
        );
        sb.krops(&["--plugin-dir", &plugins, "populate"])
            .code(2)
            .stderr_has("krops.toml:3:")
            .stderr_has(error);
        assert!(!local.path("other").exists());
    }
    // A failure names the plugin's program: the installed tree cannot be swapped out, for
    // it is a mount point.
    sb.write(
        "krops.toml",
        &format!("[deployments.local]\ntarget = {}\nsource.www.tarball = \"site.tar\"\n", local.target()),
    );
    let installed = local.path("www");
    let mounted =
        std::process::Command::new("mount").arg("--bind").arg(sb.mkdir("empty")).arg(&installed).status();
    assert!(mounted.unwrap().success(), "mount --bind");
    let out = sb.krops(&["--plugin-dir", &plugins, "--json", "populate"]);
    let _ = std::process::Command::new("umount").arg(&installed).status();
    out.code(1);
    let summary: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    let error = &summary["deployments"]["local"]["error"];
    assert_eq!(error["program"], "tar", "{summary}");
    assert!(error.to_string().contains("busy"), "{summary}");
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

/// Builds `examples/EXAMPLE` as a third party would: copied out of this workspace, against a
/// copy of krops-core whose crate version was bumped, with `cargo test` and `cargo build`;
/// returns the directory holding the plugin library.
fn build_out_of_tree(sb: &Sandbox, example: &str) -> String {
    let workspace = workspace();
    let core = sb.mkdir("krops-core");
    copy_tree(&workspace.join("krops-core"), &core);
    let manifest = std::fs::read_to_string(workspace.join("krops-core/Cargo.toml")).unwrap();
    std::fs::write(core.join("Cargo.toml"), standalone_manifest(&manifest, "0.99.0")).unwrap();
    let crate_dir = sb.mkdir(example);
    copy_tree(&workspace.join("examples").join(example), &crate_dir);
    let cargo_toml = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let pointed = cargo_toml
        .replace("path = \"../../krops-core\"", &format!("path = {:?}", core.display().to_string()));
    assert_ne!(pointed, cargo_toml, "the example's krops-core dependency moved; update this test");
    std::fs::write(crate_dir.join("Cargo.toml"), pointed).unwrap();
    // The workspace's lock file: the same dependency versions, already downloaded.
    std::fs::copy(workspace.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target_dir = workspace.join("target/out-of-tree").join(example);
    for step in ["test", "build"] {
        let mut cargo = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args([step, "--offline", "--quiet"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target_dir);
        crate::support::Outcome::of(cargo).success();
    }
    target_dir.join("debug").display().to_string()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if entry.file_name() == "target" {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// krops-core's manifest without the workspace's inheritance, at `version`.
fn standalone_manifest(manifest: &str, version: &str) -> String {
    let inherited = [
        ("version.workspace = true", format!("version = {version:?}")),
        ("edition.workspace = true", "edition = \"2021\"".to_owned()),
        ("license.workspace = true", "license = \"MIT\"".to_owned()),
        ("abi_stable.workspace = true", "abi_stable = \"0.11.3\"".to_owned()),
        ("serde.workspace = true", "serde = { version = \"1\", features = [\"derive\"] }".to_owned()),
        ("serde_json.workspace = true", "serde_json = \"1\"".to_owned()),
        ("[lints]\nworkspace = true", String::new()),
    ];
    let standalone = inherited.iter().fold(manifest.to_owned(), |text, (from, to)| text.replace(from, to));
    assert!(
        !standalone.contains("workspace = true"),
        "krops-core inherits more; update this test:\n{standalone}"
    );
    standalone
}

/// A library whose dynamic section points nowhere: complete, so it passes every file check,
/// but `dlopen` dies of it. The probe dies instead of krops, and only its type fails.
#[test]
fn a_library_that_crashes_the_loader_fails_only_its_type() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    let mut bytes = std::fs::read(fixture("plugin_panics")).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(&bytes, 0x36), u16_at(&bytes, 0x38));
    let dynamic = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|at| u32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap()) == 2)
        .expect("a PT_DYNAMIC header");
    // p_vaddr of PT_DYNAMIC, far outside every mapping.
    bytes[dynamic + 0x10..dynamic + 0x18].copy_from_slice(&0x7fff_0000_0000u64.to_le_bytes());
    std::fs::write(dir.join("libkrops_populator_panicky.so"), &bytes).unwrap();
    let dir = dir.display().to_string();
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stdout_has("symlink\t")
        .stderr_has("libkrops_populator_panicky.so: crashed the process loading it (");
    two_deployments(&sb, "panicky");
    sb.krops(&["--plugin-dir", &dir, "populate"]).code(1).stderr_has("1 of 2 deployments failed");
    assert!(sb.path("b/l").is_symlink(), "the other deployment completed");
    assert_eq!(sb.listing("a"), [".populate"]);
}

#[test]
fn a_huge_sparse_file_and_kernel_files_are_rejected_quickly() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("plugins");
    let sparse = std::fs::File::create(dir.join("libkrops_populator_sparse.so")).unwrap();
    sparse.set_len(4 << 30).unwrap();
    std::os::unix::fs::symlink("/proc/self/pagemap", dir.join("libkrops_populator_pagemap.so")).unwrap();
    std::os::unix::fs::symlink("/proc/kmsg", dir.join("libkrops_populator_kmsg.so")).unwrap();
    let started = std::time::Instant::now();
    sb.krops(&["--plugin-dir", dir.to_str().unwrap(), "plugins"])
        .code(2)
        .stderr_has("libkrops_populator_sparse.so: is not a shared library for this machine: not an ELF file")
        .stderr_has("libkrops_populator_pagemap.so: is not a shared library for this machine: 0 bytes")
        .stderr_has("libkrops_populator_kmsg.so: is not a shared library for this machine: 0 bytes");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn a_missing_plugin_dir_is_a_usage_error() {
    let sb = Sandbox::new();
    sb.krops(&["--plugin-dir", "/nonexistent/plugins", "plugins"])
        .code(2)
        .stderr_has("--plugin-dir /nonexistent/plugins: not a directory");
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A pipe deployment `a` and a symlink deployment `b`.
fn pipe_and_symlink_deployments(sb: &Sandbox) {
    sb.target_dir("a");
    sb.target_dir("b");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.x.pipe = \"echo x\"\n[deployments.b]\ntarget = {:?}\nsource.l.symlink = \"x\"\n",
            sb.path("a").display().to_string(),
            sb.path("b").display().to_string()
        ),
    );
}

/// Loading a library runs its code as whoever runs krops, often root: a plugin that other
/// users can write (its file, or a directory on its path) is refused, naming the path and why,
/// and only its type fails.
#[test]
fn a_plugin_others_can_write_is_refused() {
    let sb = Sandbox::new();
    let dir =
        plugin_dir(&sb, "libkrops_populator_symlink.so", &build_dir().join("libkrops_populator_symlink.so"));
    let file = format!("{dir}/libkrops_populator_symlink.so");
    chmod(std::path::Path::new(&dir), 0o777);
    let out = sb.krops(&["--plugin-dir", &dir, "plugins"]);
    out.code(2).stdout_has("file\t").stderr_has(&format!(
        "plugin {file}: not loaded: {dir} can be written by users other than its owner (mode 777)"
    ));
    assert!(
        !out.stdout.contains("symlink\t"),
        "the refused plugin was loaded, or not in its type's place:\n{out}"
    );
    pipe_and_symlink_deployments(&sb);
    sb.krops(&["--plugin-dir", &dir, "populate"])
        .code(1)
        .stderr_has("1 of 2 deployments failed")
        .stderr_has(&format!("{dir} can be written by users other than its owner"));
    assert_eq!(sb.read("a/x"), "x\n", "the other type's deployment completed");
    assert_eq!(sb.listing("b"), [".populate"]);

    chmod(std::path::Path::new(&dir), 0o755);
    chmod(std::path::Path::new(&file), 0o666);
    sb.krops(&["--plugin-dir", &dir, "plugins"]).code(2).stderr_has(&format!(
        "plugin {file}: not loaded: {file} can be written by users other than its owner (mode 666)"
    ));
    chmod(std::path::Path::new(&dir), 0o775);
    chmod(std::path::Path::new(&file), 0o644);
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stderr_has(&format!("not loaded: {dir} can be written by users other than its owner (mode 775)"));

    // As they should be: loaded.
    chmod(std::path::Path::new(&dir), 0o755);
    for mode in [0o644, 0o755] {
        chmod(std::path::Path::new(&file), mode);
        sb.krops(&["--plugin-dir", &dir, "plugins"]).success().stdout_has(&format!("\t{file}"));
    }
}

/// What belongs to another user, that user can replace: a plugin file, or a symlink on the way
/// to it in a directory everyone may write to (such as /tmp, whose sticky bit protects only
/// what is not the writer's own). Below such a directory, a directory of root's is fine.
#[test]
fn a_plugin_on_a_path_another_user_owns_is_refused() {
    use std::os::unix::fs::{chown, lchown, symlink};
    let sb = Sandbox::new();
    let shared = sb.mkdir("shared");
    chmod(&shared, 0o1777);
    let dir = shared.join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("libkrops_populator_panicky.so");
    std::fs::copy(fixture("plugin_panics"), &file).unwrap();
    let (dir, file) = (dir.display().to_string(), file.display().to_string());
    sb.krops(&["--plugin-dir", &dir, "plugins"]).success().stdout_has(&format!("panicky\t0.0.0\t{file}"));

    let link = shared.join("link");
    symlink(&dir, &link).unwrap();
    lchown(&link, Some(65534), Some(65534)).unwrap();
    let link = link.display().to_string();
    sb.krops(&["--plugin-dir", &link, "plugins"])
        .code(2)
        .stderr_has(&format!("not loaded: {link} belongs to uid 65534, not to root"));

    chown(&file, Some(65534), None).unwrap();
    sb.krops(&["--plugin-dir", &dir, "plugins"])
        .code(2)
        .stderr_has(&format!("plugin {file}: not loaded: {file} belongs to uid 65534, not to root"));
}

/// Run by another user than root, krops loads plugins of root's and of that user's, not of a
/// third user's.
#[test]
fn a_user_trusts_root_and_themselves() {
    use std::os::unix::fs::chown;
    let sb = Sandbox::new();
    chmod(&sb.path(""), 0o755);
    let plugins_of = |name: &str, uid: u32| {
        let dir = sb.mkdir(name);
        let file = dir.join("libkrops_populator_panicky.so");
        std::fs::copy(fixture("plugin_panics"), &file).unwrap();
        for path in [&dir, &file] {
            chown(path, Some(uid), None).unwrap();
        }
        dir.display().to_string()
    };
    let as_nobody = |dir: &str| {
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::support::krops_bin())
            .args(["--plugin-dir", dir, "plugins"])
            .current_dir(sb.path(""))
            .env_remove("KROPS_PLUGIN_PATH");
        crate::support::Outcome::of(command)
    };
    for (name, uid) in [("roots", 0), ("own", 65534)] {
        as_nobody(&plugins_of(name, uid)).success().stdout_has("panicky\t");
    }
    let strangers = plugins_of("strangers", 1234);
    as_nobody(&strangers).code(2).stderr_has(&format!(
        "not loaded: {strangers} belongs to uid 1234, not to root or uid 65534 (who runs krops)"
    ));
}
