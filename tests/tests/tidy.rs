//! Project rules checked as tests, so CI has nothing extra to remember: every module says
//! what it is for, formatting is `cargo fmt`'s, processes start in one place (clippy), the
//! crate boundaries of ARCHITECTURE.md hold (cargo tree), and every target-side script (the
//! `.sh` files beside the sources, embedded with `include_str!`) passes `sh -n` and shellcheck.

// Test and build tooling starts its helper programs directly; the exec-only rule is krops's.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Every `.rs` file below the workspace's source directories.
fn sources() -> Vec<PathBuf> {
    files_ending_in("rs")
}

/// Every `.sh` file below the workspace's source directories (examples and fixtures too).
fn scripts() -> Vec<PathBuf> {
    files_ending_in("sh")
}

/// Every file with `extension` below the workspace, but for `target` and `.git`, sorted.
fn files_ending_in(extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![workspace()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && name != ".git" {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace()).unwrap_or(path).display().to_string()
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let undocumented: Vec<String> = sources()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap_or_default().starts_with("//!"))
        .map(|p| relative(&p))
        .collect();
    assert!(undocumented.is_empty(), "add a `//!` line saying what these are for: {undocumented:?}");
}

#[test]
fn formatting_is_cargo_fmt() {
    let output = Command::new("cargo")
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(workspace())
        .output()
        .expect("cargo fmt runs");
    assert!(
        output.status.success(),
        "run `cargo fmt --all` and commit the result:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The product crates: the contract, the host and every built-in populator.
fn product_crates() -> Vec<String> {
    let mut crates = vec!["krops-abi".to_owned(), "krops-core".to_owned(), "krops-cli".to_owned()];
    let populators = std::fs::read_dir(workspace().join("populators")).expect("populators/");
    let mut names: Vec<String> = populators
        .flatten()
        .map(|e| format!("krops-populator-{}", e.file_name().to_string_lossy()))
        .collect();
    names.sort();
    crates.extend(names);
    crates
}

/// Populators never spawn processes (they act through the target handle), and krops-cli starts
/// them in exec.rs only: clippy's `disallowed-methods` (clippy.toml) over the product crates.
#[test]
fn processes_are_started_in_one_place() {
    let mut command = Command::new("cargo");
    command.args(["clippy", "--quiet", "--target-dir", "target/tidy-clippy"]);
    for name in product_crates() {
        command.args(["-p", &name]);
    }
    command.args(["--", "-A", "clippy::all", "-D", "clippy::disallowed_methods"]);
    let output = command.current_dir(workspace()).output().expect("cargo clippy runs");
    assert!(
        output.status.success(),
        "start processes through krops-cli's exec module (populators: through the target handle):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dependencies of `package` (normal edges, the whole tree), by crate name.
fn dependency_names(package: &str) -> Vec<String> {
    let output = Command::new("cargo")
        .args(["tree", "--quiet", "-e", "normal", "--prefix", "none", "--format", "{lib}", "-p", package])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// krops-core is the contract and nothing else: no runtime, no ssh, no configuration, no git.
#[test]
fn the_contract_crate_stays_small() {
    let names = dependency_names("krops-core");
    for heavy in ["tokio", "toml", "gix", "clap", "ssh2", "openssh", "thrussh", "krops"] {
        assert!(!names.iter().any(|n| n == heavy), "krops-core depends on {heavy}: {names:?}");
    }
}

/// Populators link the contract only, never the host's library.
#[test]
fn populators_depend_on_the_contract_only() {
    for name in product_crates().into_iter().filter(|n| n.starts_with("krops-populator-")) {
        let names = dependency_names(&name);
        assert!(names.iter().any(|n| n == "krops_core"), "{name} does not use krops-core: {names:?}");
        assert!(!names.iter().any(|n| n == "krops"), "{name} links krops-cli's library: {names:?}");
    }
}

/// The shell krops runs on targets lives in `.sh` files, where tools can read it: each parses
/// (`sh -n`) and is clean for shellcheck as POSIX sh (a finding that is meant carries its
/// `# shellcheck disable=` with the reason).
#[test]
fn target_side_scripts_pass_sh_n_and_shellcheck() {
    let scripts: Vec<PathBuf> = scripts().into_iter().filter(|p| relative(p).contains("/src/sh/")).collect();
    assert!(scripts.len() >= 19, "the target-side scripts are not where they should be: {scripts:?}");
    let mut failures = Vec::new();
    for script in &scripts {
        for (tool, args) in [("sh", vec!["-n"]), ("shellcheck", vec!["-s", "sh", "-f", "gcc"])] {
            let output = Command::new(tool)
                .args(&args)
                .arg(script)
                .output()
                .unwrap_or_else(|e| panic!("{tool} does not run ({e}); `cargo xtask test` installs it"));
            if !output.status.success() {
                failures.push(format!(
                    "{tool} {}:\n{}{}",
                    relative(script),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// ARCHITECTURE.md stays true: its codemap names every source file of the crates and of the
/// test harness, and every test its invariants cite (`module::name`, or
/// `module::site::name` for the scenarios run on every site) exists.
#[test]
fn architecture_names_every_module_and_cites_real_tests() {
    let root = workspace();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let dirs = [
        "krops-cli/src",
        "krops-core/src",
        "krops-core/abi/src",
        "tests/src",
        "tests/tests/integration",
        "xtask/src",
    ];
    let mut unnamed = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(root.join(dir)).expect("read_dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") && !architecture.contains(&name) {
                unnamed.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(unnamed.is_empty(), "ARCHITECTURE.md's codemap does not name: {unnamed:?}");
    let invariants = &architecture[architecture.find("## Invariants").expect("an Invariants section")..];
    let mut missing = Vec::new();
    for cited in invariants.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = cited.split("::").collect();
        let (module, test) = match parts.as_slice() {
            [module, test] | [module, "local" | "root" | "sudo", test] => (*module, *test),
            _ => continue,
        };
        let file = if module == "tidy" {
            root.join("tests/tests/tidy.rs")
        } else {
            root.join(format!("tests/tests/integration/{module}.rs"))
        };
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        // A test is a function, or a name a macro makes one of (`on_every_site!`, `corpus!`).
        let defined = [format!("fn {test}("), format!("    {test},"), format!("    {test}: ")];
        if !defined.iter().any(|d| text.contains(d.as_str())) {
            missing.push(cited.to_owned());
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md's invariants cite tests that do not exist: {missing:?}");
}

/// The host's library (krops-cli but for the binary's own modules) knows nothing of clap or
/// terminals, and only the plugin loader and the host's handle touch abi_stable: every other
/// stage calls plugins through `loader::Plugin`'s typed methods.
#[test]
fn the_library_knows_no_terminal_and_only_the_loader_knows_abi_stable() {
    let binary_only = ["main.rs", "render.rs", "man.rs", "completions.rs"];
    let abi_side = ["loader.rs", "handle.rs"];
    let mut offences = Vec::new();
    for entry in std::fs::read_dir(workspace().join("krops-cli/src")).expect("read_dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("source");
        // Code only: the module's own documentation may say what it does not do.
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        if !binary_only.contains(&name.as_str()) {
            for word in ["clap", "indicatif", "is_terminal", "IsTerminal"] {
                if code.contains(word) {
                    offences.push(format!("krops-cli/src/{name} uses {word}"));
                }
            }
        }
        if !abi_side.contains(&name.as_str()) && code.contains("abi_stable") {
            offences.push(format!("krops-cli/src/{name} uses abi_stable"));
        }
    }
    assert!(offences.is_empty(), "{offences:?}");
}

/// The host treats every source type alike: what it needs to know about one (its short form,
/// its state on the target, the program its errors name, its version attribute) the type's
/// plugin says in its description, as a third party's plugin does. So no built-in type's name
/// is a string in the host's code (its tests aside). A JSON key (`"file": …`) and a flag's
/// name (`long = "file"`) are no type.
#[test]
fn the_host_knows_no_built_in_type_by_name() {
    let types: Vec<String> = std::fs::read_dir(workspace().join("populators"))
        .expect("populators")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(types.len() >= 7, "the built-in populators moved: {types:?}");
    let host = workspace().join("krops-cli/src");
    let mut offences = Vec::new();
    for path in sources().into_iter().chain(scripts()).filter(|p| p.starts_with(&host)) {
        let text = std::fs::read_to_string(&path).expect("source");
        let comment = if path.extension().is_some_and(|e| e == "sh") { "#" } else { "//" };
        // Code only, up to the module's tests.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            if line.trim_start().starts_with(comment) {
                continue;
            }
            for source_type in &types {
                let literal = format!("\"{source_type}\"");
                let named = line.match_indices(&literal).any(|(at, _)| {
                    let after = &line[at + literal.len()..];
                    !after.starts_with(':') && !line[..at].ends_with("long = ")
                });
                let pattern = line.trim_start().starts_with(&format!("{source_type})"));
                if named || pattern {
                    offences.push(format!("{}:{}: {}", relative(&path), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "the host names built-in types:\n{}", offences.join("\n"));
}
