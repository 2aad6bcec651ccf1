//! Daily use: finding the configuration from a subdirectory, the selection grammar.

use std::process::Command;

use crate::support::{krops_bin, Kind, Outcome, Sandbox, Site};

/// krops in `dir` (below the sandbox), with no `-f`.
fn krops_in(sb: &Sandbox, dir: &str, args: &[&str]) -> Outcome {
    let mut command = Command::new(krops_bin());
    command.current_dir(sb.mkdir(dir)).env_remove("KROPS_PLUGIN_PATH").args(args);
    Outcome::of(command)
}

/// From a subdirectory, krops takes the nearest krops.toml above it (relative paths in it still
/// count from its own directory); two configurations in one directory: the first in SPEC's
/// order, with a warning naming both.
#[test]
fn the_configuration_is_found_from_a_subdirectory() {
    let sb = Sandbox::new();
    sb.one_local_file_deployment();
    krops_in(&sb, "deep/er/still", &["populate"]).success();
    assert_eq!(sb.read("site/a"), "a");
    sb.write("deep/krops.json", "{\"deployments\": {}}");
    krops_in(&sb, "deep/er", &["eval"])
        .code(2)
        .stderr_has(&format!("{}: defines no deployments", sb.path("deep/krops.json").display()));
    std::fs::remove_file(sb.path("deep/krops.json")).unwrap();
    sb.write("krops.nix", "throw \"not this one\"");
    krops_in(&sb, "deep", &["eval", "--names"]).success().stdout_has("site").stderr_has(&format!(
        "warning: using {} and not {} beside it",
        sb.path("krops.toml").display(),
        sb.path("krops.nix").display()
    ));
    let nowhere = tempfile::tempdir().unwrap();
    let mut command = Command::new(krops_bin());
    command.current_dir(nowhere.path()).args(["eval"]);
    Outcome::of(command).code(2).stderr_has("or a directory above it; name a file with -f");
}

/// `,` union, `&` intersection, `!` all but; a name as written wins.
#[test]
fn selection_by_union_intersection_and_negation() {
    let sb = Sandbox::new();
    let mut toml = String::new();
    for (name, tags) in [
        ("web-eu", "\"web\", \"eu\""),
        ("web-us", "\"web\", \"us\""),
        ("db-eu", "\"db\", \"eu\""),
        ("a,b", ""),
    ] {
        toml.push_str(&format!(
            "[deployments.{name:?}]\ntarget = \"/tmp/krops-{}\"\ntags = [{tags}]\n",
            name.replace(',', "-")
        ));
    }
    sb.write("krops.toml", &toml);
    let names = |selection: &str| {
        let out = sb.krops(&["eval", "--names", selection]);
        out.success();
        out.stdout.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(names("@web,@db"), ["web-eu", "web-us", "db-eu"]);
    assert_eq!(names("@web&@eu"), ["web-eu"]);
    assert_eq!(names("!@eu"), ["a,b", "web-us"]);
    assert_eq!(names("@eu&!db-*"), ["web-eu"]);
    assert_eq!(names("a,b"), ["a,b"]);
    sb.krops(&["eval", "--names", "@web&@db"]).code(2).stderr_has("selects no deployment");
    sb.krops(&["eval", "--names", "@web&@asia"]).code(2).stderr_has("no deployment matches \"@asia\"");
}

/// `krops exec` runs a command on every selected target at once, locally and over ssh (sudo
/// too), populating nothing and needing no sentinel; a failing host fails its deployment with
/// the command's status, the others still answer.
#[test]
fn exec_runs_a_command_on_every_target_without_populating() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let local = Site::new(&sb, Kind::Local);
    let root = Site::new(&sb, Kind::Root);
    let sudo = Site::new(&sb, Kind::Sudo);
    sb.write("conf/a", "a");
    let mut toml = String::new();
    for (name, site) in [("local", &local), ("root", &root), ("sudo", &sudo)] {
        toml.push_str(&format!(
            "[deployments.{name}]\ntarget = {}\nsource.a.file = \"conf/a\"\n",
            site.target()
        ));
    }
    sb.write("krops.toml", &toml);
    let out = sb.krops(&["exec", "--", "echo \"on $(id -un) at $KROPS_TARGET_PATH\""]);
    out.success();
    for (name, site) in [("local", &local), ("root", &root), ("sudo", &sudo)] {
        let user = if name == "local" {
            String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap()
        } else {
            "root".into()
        };
        out.stderr_has(&format!("[{name}"));
        assert!(
            out.stderr.contains(&format!("on {} at {}", user.trim(), site.target_path())),
            "{name}\n{out}"
        );
        assert!(!site.path("a").exists(), "exec populated {name}");
        assert!(!site.path(".krops").exists(), "exec locked {name}");
    }
    let out = sb.krops(&["--json", "exec", "root,local", "--", "sh", "-c", "echo out; exit 7"]);
    out.code(1);
    let lines: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().any(|l| l["event"] == "output" && l["stage"] == "exec" && l["line"] == "out"),
        "{out}"
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["deployments"]["root"]["error"]["exit_status"], 7, "{out}");
    assert_eq!(summary["deployments"]["root"]["error"]["stage"], "exec", "{out}");
    sb.krops(&["exec", "local"]).code(2);
    // A command line that starts with `-` is a command, never an option of the shell.
    let out = sb.krops(&["exec", "local", "--", "-x"]);
    out.code(1).stderr_has("-x: not found");
    assert!(!out.stderr.contains("krops-run-"), "{out}");
    // With -q, exec's output is still what it is run for.
    sb.krops(&["-q", "exec", "local", "--", "echo quiet but shown"]).success().stderr_has("quiet but shown");
}

/// The last deployment's error of a `--json` run: its stage, program and hint, and that no
/// krops-run- name shows anywhere.
fn failure_of(out: &Outcome, deployment: &str) -> serde_json::Value {
    assert!(!out.stdout.contains("krops-run-") && !out.stderr.contains("krops-run-"), "{out}");
    let summary: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    summary["deployments"][deployment]["error"].clone()
}

/// The common failures name the program and the right stage, and say what to do.
#[test]
fn common_failures_come_with_hints() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let host = site.host().unwrap();
    // No nixos-rebuild on the target: not NixOS.
    std::fs::remove_file(host.root_dir().join("bin/nixos-rebuild")).unwrap();
    crate::support::nixos_deployment(&sb, &site, "hints", "", "");
    let out = sb.krops(&["--json", "deploy"]);
    out.code(1);
    let error = failure_of(&out, "site");
    assert_eq!(
        (error["stage"].as_str(), error["program"].as_str()),
        (Some("activate"), Some("nixos-rebuild")),
        "{error}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("127.0.0.1 has no nixos-rebuild: is it NixOS?"),
        "{error}"
    );
    assert!(error["stderr_tail"].as_str().unwrap().contains("nixos-rebuild: not found"), "{error}");
    let text = sb.krops(&["deploy"]);
    text.code(1).stderr_has("    hint: 127.0.0.1 has no nixos-rebuild: is it NixOS?");
    assert!(!text.stderr.contains("krops-run-"), "{text}");

    // No nixpkgs source shipped (to a fresh target): `build` fails in stage build, naming
    // nix-build.
    let fresh = Site::ready(&sb, Kind::Root);
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\nsource.nixos-config.file = \"configuration.nix\"\n",
            fresh.target()
        ),
    );
    let out = sb.krops(&["--json", "build"]);
    out.code(1);
    let error = failure_of(&out, "site");
    assert_eq!(
        (error["stage"].as_str(), error["program"].as_str()),
        (Some("build"), Some("nix-build")),
        "{error}"
    );
    assert!(
        error["hint"].as_str().unwrap_or_default().starts_with("no source named nixpkgs is shipped"),
        "{error}"
    );

    // Nothing listens: stage connect, program ssh.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let options = krops_tests::hosts::quoted(&krops_tests::hosts::TestHost::extra_options()).join(", ");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.refused]\ntarget = {{ host = \"127.0.0.1\", user = \"root\", port = {port}, extraOptions = [{options}] }}\n\
             [deployments.proxy]\ntarget = {{ host = \"proxied.invalid\", user = \"root\", extraOptions = [{options}, \"-o\", \"ProxyCommand=false\"] }}\n\
             [deployments.plugin]\ntarget = \"/tmp/krops-hint-plugin\"\nsource.a.frobnicate = \"x\"\n"
        ),
    );
    let out = sb.krops(&["--json", "populate", "refused,proxy"]);
    out.code(1);
    let error = failure_of(&out, "refused");
    assert_eq!(
        (error["stage"].as_str(), error["program"].as_str()),
        (Some("connect"), Some("ssh")),
        "{error}"
    );
    assert_eq!(
        error["hint"].as_str(),
        Some(
            format!(
                "nothing answers ssh on 127.0.0.1 port {port}: is sshd running there, and the port right?"
            )
            .as_str()
        )
    );
    let error = failure_of(&out, "proxy");
    assert_eq!(error["stage"], "connect", "{error}");
    assert!(error["hint"].as_str().unwrap_or_default().contains("a ProxyCommand or ProxyJump"), "{error}");

    // A type without a plugin: where krops looked, and what the plugin file would be called.
    sb.krops(&["eval", "plugin"])
        .code(2)
        .stderr_has("unknown source type \"frobnicate\"; available types: ")
        .stderr_has("(searched ")
        .stderr_has("hint: a plugin for it is a file named libkrops_populator_frobnicate.so");
}

/// `--log-dir DIR`: each deployment's stages, output and whole error in DIR/NAME.log, whatever
/// the display shows (`-q` here).
#[test]
fn log_dir_keeps_each_deployments_story() {
    let sb = Sandbox::new();
    sb.target_dir("good");
    sb.target_dir("bad");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.good]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n\
             [deployments.\"team/bad\"]\ntarget = {:?}\nsource.p.pipe = \"echo the reason >&2; exit 4\"\n",
            sb.path("good").display().to_string(),
            sb.path("bad").display().to_string()
        ),
    );
    sb.krops(&["-q", "--log-dir", "logs", "populate"]).code(1);
    let good = sb.read("logs/good.log");
    assert!(good.contains("[good] populate: a (file)") && good.contains("[good] finished in"), "{good}");
    let bad = sb.read("logs/team%2Fbad.log");
    assert!(bad.contains("the reason") && bad.contains("prepare of source \"p\" failed"), "{bad}");
    assert!(!bad.contains("[good]") && !good.contains("[team/bad]"));
    // Each line starts with its time.
    assert!(good.lines().all(|l| l.len() > 24 && l.as_bytes()[10] == b'T'), "{good}");
    // Planted in the log directory: a link (whose target must stay as it is) and a FIFO (which
    // must not block krops): refused, said once, and the deployments still run.
    std::fs::remove_file(sb.path("logs/good.log")).unwrap();
    sb.write("victim", "ORIGINAL");
    std::os::unix::fs::symlink(sb.path("victim"), sb.path("logs/good.log")).unwrap();
    std::fs::remove_file(sb.path("logs/team%2Fbad.log")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(sb.path("logs/team%2Fbad.log"))
        .status()
        .unwrap()
        .success());
    let out = sb.krops(&["-q", "--log-dir", "logs", "populate"]);
    out.code(1).stderr_has("cannot write logs/good.log: ").stderr_has("cannot write logs/team%2Fbad.log: ");
    assert_eq!(sb.read("victim"), "ORIGINAL");
    // Names that a simpler encoding would merge keep files of their own.
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.\"a/b\"]\ntarget = {0:?}\nsource.a.file = \"conf/a\"\n[deployments.a_b]\ntarget = {0:?}\nsource.a.file = \"conf/a\"\n",
            sb.path("good").display().to_string()
        ),
    );
    sb.krops(&["-q", "--log-dir", "split", "populate"]).success();
    assert!(sb.read("split/a%2Fb.log").contains("[a/b]") && !sb.read("split/a_b.log").contains("[a/b]"));
}

/// `deploy --reboot`: switch, reboot (the test host's `reboot` gives it a new boot id), wait
/// for the new boot over a new connection, then the health checks; a host that never comes
/// back fails in stage reboot; operations without a new system to boot, and local targets, are
/// usage errors.
#[test]
fn reboot_waits_for_the_new_boot_then_checks() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let host = site.host().unwrap();
    crate::support::nixos_deployment(
        &sb,
        &site,
        "rebooted",
        "",
        "healthChecks = [{ command = \"test -s /var/lib/krops-test/reboots\" }]",
    );
    let before = std::fs::read_to_string(host.state().join("boot_id")).unwrap();
    let out = sb.krops(&["--json", "deploy", "--reboot"]);
    out.success();
    assert_eq!(std::fs::read_to_string(host.state().join("reboots")).unwrap().lines().count(), 1, "{out}");
    assert_ne!(std::fs::read_to_string(host.state().join("boot_id")).unwrap(), before);
    let stages: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "stage_finished")
        .map(|l| l["stage"].as_str().unwrap().to_owned())
        .collect();
    let at = |stage: &str| {
        stages.iter().position(|s| s == stage).unwrap_or_else(|| panic!("no {stage}: {stages:?}"))
    };
    assert!(at("activate") < at("reboot") && at("reboot") < at("health_check"), "{stages:?}");
    // A host that does not come back.
    std::fs::remove_file(host.root_dir().join("bin/reboot")).unwrap();
    sb.krops(&["deploy", "--reboot", "--reboot-timeout", "3"]).code(1).stderr_has(
        "reboot on 127.0.0.1 failed: reboot: 127.0.0.1 did not come back with a new boot id within 3 s",
    );
    sb.krops(&["deploy", "--reboot", "--operation", "test"])
        .code(2)
        .stderr_has("--reboot goes with switch and boot");
    sb.write(
        "krops.toml",
        &format!("[deployments.here]\ntarget = {:?}\n", sb.path("here").display().to_string()),
    );
    sb.krops(&["deploy", "--reboot"]).code(2).stderr_has("--reboot would reboot this machine");
}
